// Package imapintake owns mmgate's IMAP intake: one Poller per configured
// mailbox logs in to an IMAP server (implicit TLS, STARTTLS or, on loopback,
// plain), watches one folder with IDLE when the server offers it (else polls it
// at an interval), streams each new message into a Store, and only then marks
// it processed: flagged \Seen plus the keyword $MmgateStored, or moved to a
// processed folder.
//
// It only stores. It must never flag or move a message before Store.Accept
// returned nil for it, never parse a message (routing is the relay's job: the
// envelope says only which mailbox the message came from), never talk to
// Mattermost, and never delete a message other than by moving it.
//
// Which messages are taken: in flag mode those without $MmgateStored, in move
// mode every message in the folder (messages marked \Deleted are left alone),
// further restricted by Mailbox.Since:
//
//   - "" (the default): mail that arrived after mmgate first saw the folder.
//     On the first successful SELECT the poller records, in State,
//     imap/<name>/first_seen (RFC 3339 time) and imap/<name>/first_seen_uid
//     ("UIDVALIDITY UIDNEXT FOLDER"). While the folder keeps that UIDVALIDITY,
//     a message is new exactly when its UID is at least that UIDNEXT (no clock
//     is involved); if the UIDVALIDITY changed (folder recreated, server
//     migrated), messages whose INTERNALDATE is at or after first_seen are new.
//   - "all": the whole folder.
//   - "YYYY-MM-DD": mail whose INTERNALDATE is at or after that day's midnight,
//     local time.
//
// A message is fetched with BODY.PEEK[] (fetching does not set \Seen), one at a
// time and streamed from the connection into Store.Accept, so memory does not
// grow with message or folder size. A message stored whose flag or move did not
// reach the server (the connection broke in between) is remembered in memory
// and marked after reconnecting without being stored again; after a crash of
// mmgate in that window it is stored a second time (the relay deduplicates by
// Message-ID).
//
// A temporary Store failure leaves the message as it is and is retried with
// backoff; a permanent one (fault.Permanent, Invalid, TooLarge: e.g. a message
// over the spool's body limit) is logged and the message left in the folder,
// unmarked, and not tried again by this process. Connection failures (server
// down or restarted, network, authentication) are logged and retried with
// capped exponential backoff, 1s to 1m.
//
// Metrics are recorded by the spool's Accept; this package records none.
package imapintake

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/spool"
)

// Store is what the intake needs from the spool (spool.Spool satisfies it).
// Accept must read body to io.EOF and return nil only once the message is
// durable; if reading body fails it must return an error.
type Store interface {
	Accept(ctx context.Context, env spool.Envelope, body io.Reader) (string, error)
}

// State keeps small per-mailbox values durably (the spool implements it).
type State interface {
	StateGet(ctx context.Context, key string) (string, bool, error)
	StateSet(ctx context.Context, key, value string) error
}

// Mailbox is one watched IMAP folder and what its messages mean.
type Mailbox struct {
	Name      string      // config key, used in logs, state keys and Envelope.Mailbox
	Address   string      // host:port
	TLS       string      // "imaps" (default), "starttls", "none"
	TLSConfig *tls.Config // may be nil: then ServerName from Address, system roots

	Username, Password string

	Folder string // default "INBOX"
	// MoveTo moves stored messages to this folder (created if missing); ""
	// flags them instead (\Seen plus the keyword $MmgateStored).
	MoveTo string
	// Since is "" (mail that arrived after the mailbox was first seen, see the
	// package documentation), "all", or a date YYYY-MM-DD.
	Since string
	// PollInterval is the time between cycles when the server has no IDLE (or
	// DisableIDLE is set), and the IDLE refresh: IDLE is restarted and the
	// folder searched again at least this often (capped at 29 minutes).
	// Default 1m.
	PollInterval time.Duration
	DisableIDLE  bool // force polling (for tests and broken servers)

	App        string   // copied to Envelope.App ("" = routed later)
	Recipients []string // copied to Envelope.Recipients (may be empty)
}

// StoredKeyword marks a message as stored in flag mode.
const StoredKeyword imap.Flag = "$MmgateStored"

// Defaults and limits.
const (
	DefaultFolder       = "INBOX"
	DefaultPollInterval = time.Minute
	// MaxIdleRefresh caps the IDLE refresh below the 30 minutes after which a
	// server may log an idle client out (RFC 2177).
	MaxIdleRefresh = 29 * time.Minute

	backoffMin = time.Second
	backoffMax = time.Minute

	dialTimeout    = 30 * time.Second
	commandTimeout = 2 * time.Minute // one command and its response
	// messageTimeout bounds fetching one message and storing it (the library
	// further limits reading one literal to 5 minutes).
	messageTimeout = 15 * time.Minute
	// keepaliveInterval: a NOOP is sent this often while polling waits.
	keepaliveInterval = 10 * time.Minute
	// dateChunk is how many UIDs' INTERNALDATE are fetched at once when the
	// since rule needs a date check.
	dateChunk = 256
)

// Poller watches one mailbox. Create it with New; Run it once.
type Poller struct {
	store Store
	state State
	mb    Mailbox
	log   *slog.Logger

	// pending: stored in the spool, flag or move not yet confirmed by the
	// server; marked first thing on the next cycle with the same UIDVALIDITY.
	pendingValidity uint32
	pending         []imap.UID
	// refused: refused permanently by the store; left alone by this process.
	refusedValidity uint32
	refused         map[imap.UID]bool

	hooks hooks
}

// hooks let the package's tests observe the poller; nil in production.
type hooks struct {
	cycleStart func()    // a cycle begins
	cycleDone  func()    // a cycle finished without error
	idling     func()    // IDLE was started (the server acknowledged it)
	trace      io.Writer // receives the IMAP protocol (with the password!)
}

// New returns a Poller for mb. Zero values of mb take the documented defaults;
// a nil log means slog.Default().
func New(store Store, state State, mb Mailbox, log *slog.Logger) *Poller {
	if log == nil {
		log = slog.Default()
	}
	if mb.TLS == "" {
		mb.TLS = "imaps"
	}
	if mb.Folder == "" {
		mb.Folder = DefaultFolder
	}
	if mb.PollInterval <= 0 {
		mb.PollInterval = DefaultPollInterval
	}
	return &Poller{store: store, state: state, mb: mb, log: log.With("intake", "imap", "mailbox", mb.Name)}
}

// Check reports configuration mistakes that retrying cannot fix; Run
// returns the same error at once.
func (p *Poller) Check() error {
	var problems []error
	if p.store == nil || p.state == nil {
		problems = append(problems, errors.New("store and state are required"))
	}
	switch p.mb.TLS {
	case "imaps", "starttls", "none":
	default:
		problems = append(problems, fmt.Errorf("tls must be imaps, starttls or none, not %q", p.mb.TLS))
	}
	if _, _, err := net.SplitHostPort(p.mb.Address); err != nil {
		problems = append(problems, fmt.Errorf("address %q: %v", p.mb.Address, err))
	}
	if p.mb.Name == "" {
		problems = append(problems, errors.New("name is required"))
	}
	if p.mb.Since != "" && p.mb.Since != "all" {
		if _, err := time.ParseInLocation(time.DateOnly, p.mb.Since, time.Local); err != nil {
			problems = append(problems, fmt.Errorf("since must be a date (YYYY-MM-DD), \"all\" or empty, not %q", p.mb.Since))
		}
	}
	if p.mb.MoveTo != "" && p.mb.MoveTo == p.mb.Folder {
		problems = append(problems, errors.New("move_to must differ from folder"))
	}
	if len(problems) > 0 {
		return fmt.Errorf("imap mailbox %q: %w", p.mb.Name, errors.Join(problems...))
	}
	return nil
}

// Run watches the mailbox until ctx is done, then returns nil. Connection
// errors (server down, restarted, refused login) and temporary Store failures
// are logged and retried with capped exponential backoff (1s..1m). Run returns
// an error at once, without connecting, only when the Mailbox itself is
// invalid (unknown TLS mode, malformed Address or Since, MoveTo equal to
// Folder). Run must not be called concurrently on one Poller.
func (p *Poller) Run(ctx context.Context) error {
	if err := p.Check(); err != nil {
		return err
	}
	backoff := backoffMin
	for {
		progressed, err := p.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if progressed {
			backoff = backoffMin
		}
		var se *storeError
		if errors.As(err, &se) {
			p.log.Error("imap: storing a message failed; it stays in the mailbox and is tried again",
				"uid", uint32(se.uid), "err", se.err, "retry_in", backoff)
		} else {
			p.log.Warn("imap: mailbox unavailable; retrying", "address", p.mb.Address,
				"folder", p.mb.Folder, "err", err, "retry_in", backoff)
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		if !progressed {
			backoff = min(backoff*2, backoffMax)
		}
	}
}

// storeError is a temporary Store.Accept failure.
type storeError struct {
	uid imap.UID
	err error
}

func (e *storeError) Error() string {
	return fmt.Sprintf("storing message uid %d: %v", e.uid, e.err)
}
func (e *storeError) Unwrap() error { return e.err }

// conn is one logged-in connection with its selected folder.
type conn struct {
	c           *imapclient.Client
	newMail     chan struct{} // a unilateral EXISTS arrived
	uidValidity uint32
	idle        bool // use IDLE between cycles
}

// guard closes the connection if the returned stop function is not called
// within d: imapclient has no timeout for waiting on a response, so a server
// that stops answering would block a command forever.
func (cn *conn) guard(d time.Duration) (stop func() bool) {
	return time.AfterFunc(d, func() { _ = cn.c.Close() }).Stop
}

// session connects, selects the folder and runs cycles until an error.
// progressed reports whether at least one cycle completed.
func (p *Poller) session(ctx context.Context) (progressed bool, err error) {
	cn, err := p.connect(ctx)
	if err != nil {
		return false, err
	}
	stopAfter := context.AfterFunc(ctx, func() { _ = cn.c.Close() })
	defer stopAfter()
	defer cn.c.Close()

	rule, err := p.sinceRule(ctx, cn)
	if err != nil {
		return false, err
	}
	p.log.Info("imap: watching mailbox", "address", p.mb.Address, "folder", p.mb.Folder,
		"idle", cn.idle, "since", rule.String())

	for {
		select { // only EXISTS arriving from now on warrants another cycle
		case <-cn.newMail:
		default:
		}
		if p.hooks.cycleStart != nil {
			p.hooks.cycleStart()
		}
		if err := p.cycle(ctx, cn, rule); err != nil {
			return progressed, err
		}
		progressed = true
		if p.hooks.cycleDone != nil {
			p.hooks.cycleDone()
		}
		if cn.idle {
			err = p.waitIdle(ctx, cn)
		} else {
			err = p.waitPoll(ctx, cn)
		}
		if err != nil {
			return progressed, err
		}
		if ctx.Err() != nil {
			return progressed, ctx.Err()
		}
	}
}

// connect dials, logs in, creates MoveTo if needed and selects the folder.
func (p *Poller) connect(ctx context.Context) (*conn, error) {
	newMail := make(chan struct{}, 1)
	opts := &imapclient.Options{
		UnilateralDataHandler: &imapclient.UnilateralDataHandler{
			Mailbox: func(d *imapclient.UnilateralDataMailbox) {
				if d.NumMessages != nil {
					select {
					case newMail <- struct{}{}:
					default:
					}
				}
			},
		},
	}
	opts.DebugWriter = p.hooks.trace
	c, err := p.dial(ctx, opts)
	if err != nil {
		return nil, err
	}
	cn := &conn{c: c, newMail: newMail}
	ok := false
	defer func() {
		if !ok {
			_ = c.Close()
		}
	}()
	stopAfter := context.AfterFunc(ctx, func() { _ = c.Close() })
	defer stopAfter()

	stop := cn.guard(commandTimeout)
	if err := c.WaitGreeting(); err != nil {
		stop()
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if err := c.Login(p.mb.Username, p.mb.Password).Wait(); err != nil {
		stop()
		return nil, fmt.Errorf("login as %q: %w", p.mb.Username, err)
	}
	caps := c.Caps()
	stop()
	cn.idle = !p.mb.DisableIDLE && caps.Has(imap.CapIdle)

	if p.mb.MoveTo != "" {
		if err := p.ensureFolder(cn, p.mb.MoveTo); err != nil {
			return nil, err
		}
	}

	stop = cn.guard(commandTimeout)
	sel, err := c.Select(p.mb.Folder, nil).Wait()
	stop()
	if err != nil {
		return nil, fmt.Errorf("select %q: %w", p.mb.Folder, err)
	}
	if p.mb.MoveTo == "" && !slices.Contains(sel.PermanentFlags, imap.FlagWildcard) &&
		!slices.Contains(sel.PermanentFlags, StoredKeyword) {
		return nil, fmt.Errorf("folder %q does not accept the keyword %s (PERMANENTFLAGS %v): set move_to to move stored mail instead",
			p.mb.Folder, StoredKeyword, sel.PermanentFlags)
	}
	cn.uidValidity = sel.UIDValidity
	if err := p.recordFirstSeen(ctx, sel); err != nil {
		return nil, err
	}
	ok = true
	return cn, nil
}

func (p *Poller) dial(ctx context.Context, opts *imapclient.Options) (*imapclient.Client, error) {
	host, _, err := net.SplitHostPort(p.mb.Address)
	if err != nil {
		return nil, err
	}
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	var tc *tls.Config
	if p.mb.TLSConfig != nil {
		tc = p.mb.TLSConfig.Clone()
	} else {
		tc = &tls.Config{}
	}
	if tc.ServerName == "" {
		tc.ServerName = host
	}
	switch p.mb.TLS {
	case "imaps":
		if tc.NextProtos == nil {
			tc.NextProtos = []string{"imap"}
		}
		nc, err := (&tls.Dialer{NetDialer: d, Config: tc}).DialContext(ctx, "tcp", p.mb.Address)
		if err != nil {
			return nil, err
		}
		return imapclient.New(nc, opts), nil
	case "starttls":
		nc, err := d.DialContext(ctx, "tcp", p.mb.Address)
		if err != nil {
			return nil, err
		}
		// NewStartTLS waits for the greeting and the TLS handshake.
		t := time.AfterFunc(commandTimeout, func() { _ = nc.Close() })
		stopAfter := context.AfterFunc(ctx, func() { _ = nc.Close() })
		o := *opts
		o.TLSConfig = tc
		c, err := imapclient.NewStartTLS(nc, &o)
		t.Stop()
		stopAfter()
		if err != nil {
			return nil, fmt.Errorf("starttls: %w", err)
		}
		return c, nil
	default: // "none"
		nc, err := d.DialContext(ctx, "tcp", p.mb.Address)
		if err != nil {
			return nil, err
		}
		return imapclient.New(nc, opts), nil
	}
}

// ensureFolder creates name unless it exists.
func (p *Poller) ensureFolder(cn *conn, name string) error {
	stop := cn.guard(commandTimeout)
	defer stop()
	l, err := cn.c.List("", name, nil).Collect()
	if err != nil {
		return fmt.Errorf("list %q: %w", name, err)
	}
	for _, m := range l {
		if m.Mailbox == name || (strings.EqualFold(name, "INBOX") && strings.EqualFold(m.Mailbox, "INBOX")) {
			return nil
		}
	}
	if err := cn.c.Create(name, nil).Wait(); err != nil {
		var ie *imap.Error
		if errors.As(err, &ie) && ie.Code == imap.ResponseCodeAlreadyExists {
			return nil
		}
		return fmt.Errorf("create %q: %w", name, err)
	}
	p.log.Info("imap: created folder for stored mail", "folder", name)
	return nil
}

// State keys.
func (p *Poller) keyFirstSeen() string    { return "imap/" + p.mb.Name + "/first_seen" }
func (p *Poller) keyFirstSeenUID() string { return "imap/" + p.mb.Name + "/first_seen_uid" }

// recordFirstSeen records, on the first successful SELECT ever, when and at
// which UID the folder was first seen. It is recorded whatever Since says, so
// that switching to the default later still means "since first configured".
func (p *Poller) recordFirstSeen(ctx context.Context, sel *imap.SelectData) error {
	_, ok, err := p.state.StateGet(ctx, p.keyFirstSeen())
	if err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	if ok {
		return nil
	}
	// The UID mark is written first: if mmgate stops between the two writes,
	// the next start keeps the mark (same folder) rather than moving it on.
	_, haveUID, err := p.state.StateGet(ctx, p.keyFirstSeenUID())
	if err != nil {
		return fmt.Errorf("reading state: %w", err)
	}
	if !haveUID && sel.UIDValidity != 0 && sel.UIDNext != 0 {
		v := fmt.Sprintf("%d %d %s", sel.UIDValidity, sel.UIDNext, p.mb.Folder)
		if err := p.state.StateSet(ctx, p.keyFirstSeenUID(), v); err != nil {
			return fmt.Errorf("writing state: %w", err)
		}
	}
	now := time.Now().UTC().Truncate(time.Second)
	if err := p.state.StateSet(ctx, p.keyFirstSeen(), now.Format(time.RFC3339)); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	p.log.Info("imap: first time this mailbox is seen; earlier mail is not taken unless since says so",
		"first_seen", now.Format(time.RFC3339), "uidvalidity", sel.UIDValidity, "uidnext", uint32(sel.UIDNext))
	return nil
}

// since says which messages of the folder are new enough to be taken.
type since struct {
	desc   string
	minUID imap.UID  // UIDs below are not taken (0: no UID bound)
	after  time.Time // INTERNALDATE before this is not taken (zero: no date bound)
}

func (s since) String() string { return s.desc }

// sinceRule turns Mailbox.Since (and, for the default, the recorded first
// sighting) into a rule for the selected folder.
func (p *Poller) sinceRule(ctx context.Context, cn *conn) (since, error) {
	switch p.mb.Since {
	case "all":
		return since{desc: "all"}, nil
	case "":
	default:
		t, err := time.ParseInLocation(time.DateOnly, p.mb.Since, time.Local)
		if err != nil {
			return since{}, err
		}
		return since{desc: p.mb.Since, after: t}, nil
	}
	if v, ok, err := p.state.StateGet(ctx, p.keyFirstSeenUID()); err != nil {
		return since{}, fmt.Errorf("reading state: %w", err)
	} else if ok {
		f := strings.SplitN(v, " ", 3)
		if len(f) == 3 && f[2] == p.mb.Folder {
			validity, err1 := strconv.ParseUint(f[0], 10, 32)
			next, err2 := strconv.ParseUint(f[1], 10, 32)
			if err1 == nil && err2 == nil && uint32(validity) == cn.uidValidity {
				return since{desc: "first seen at uid " + f[1], minUID: imap.UID(next)}, nil
			}
		}
	}
	v, ok, err := p.state.StateGet(ctx, p.keyFirstSeen())
	if err != nil {
		return since{}, fmt.Errorf("reading state: %w", err)
	}
	if !ok {
		return since{}, errors.New("state has no " + p.keyFirstSeen())
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return since{}, fmt.Errorf("state %s: %w", p.keyFirstSeen(), err)
	}
	return since{desc: "first seen " + v, after: t}, nil
}

// cycle marks what is pending, then stores and marks every new message,
// oldest UID first.
func (p *Poller) cycle(ctx context.Context, cn *conn, rule since) error {
	if len(p.pending) > 0 {
		if p.pendingValidity != cn.uidValidity {
			p.log.Warn("imap: UIDVALIDITY changed; stored messages not yet marked will be taken again",
				"count", len(p.pending))
			p.pending = nil
		} else if err := p.markPending(cn); err != nil {
			return err
		}
	}
	if p.refusedValidity != cn.uidValidity {
		p.refused, p.refusedValidity = nil, cn.uidValidity
	}

	uids, err := p.candidates(cn, rule)
	if err != nil {
		return err
	}
	for len(uids) > 0 {
		chunk := uids[:min(len(uids), dateChunk)]
		uids = uids[len(chunk):]
		if !rule.after.IsZero() {
			if chunk, err = p.filterByDate(cn, chunk, rule.after); err != nil {
				return err
			}
		}
		for _, uid := range chunk {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if err := p.storeOne(ctx, cn, uid); err != nil {
				return err
			}
		}
	}
	return nil
}

// candidates searches the folder for messages not yet processed.
func (p *Poller) candidates(cn *conn, rule since) ([]imap.UID, error) {
	crit := &imap.SearchCriteria{NotFlag: []imap.Flag{imap.FlagDeleted}}
	if p.mb.MoveTo == "" {
		crit.NotFlag = append(crit.NotFlag, StoredKeyword)
	}
	if rule.minUID > 0 {
		crit.UID = []imap.UIDSet{{imap.UIDRange{Start: rule.minUID, Stop: 0}}}
	}
	if !rule.after.IsZero() {
		// SEARCH SINCE compares dates only, in the server's time zone: ask for
		// a day more and compare INTERNALDATE exactly afterwards.
		crit.Since = rule.after.AddDate(0, 0, -1)
	}
	stop := cn.guard(commandTimeout)
	data, err := cn.c.UIDSearch(crit, nil).Wait()
	stop()
	if err != nil {
		return nil, fmt.Errorf("search: %w", err)
	}
	all := data.AllUIDs()
	uids := all[:0]
	for _, u := range all {
		// "UID n:*" matches the last message even when its UID is below n.
		if u < rule.minUID || p.refused[u] || slices.Contains(p.pending, u) {
			continue
		}
		uids = append(uids, u)
	}
	slices.Sort(uids)
	return slices.Compact(uids), nil
}

// filterByDate keeps the UIDs whose INTERNALDATE is not before after.
func (p *Poller) filterByDate(cn *conn, uids []imap.UID, after time.Time) ([]imap.UID, error) {
	stop := cn.guard(commandTimeout)
	msgs, err := cn.c.Fetch(imap.UIDSetNum(uids...), &imap.FetchOptions{UID: true, InternalDate: true}).Collect()
	stop()
	if err != nil {
		return nil, fmt.Errorf("fetch internaldate: %w", err)
	}
	keep := make(map[imap.UID]bool, len(msgs))
	for _, m := range msgs {
		if !m.InternalDate.IsZero() && !m.InternalDate.Before(after) {
			keep[m.UID] = true
		}
	}
	out := uids[:0]
	for _, u := range uids {
		if keep[u] {
			out = append(out, u)
		}
	}
	return out, nil
}

// storeOne fetches message uid, streams it into the store and, once stored,
// marks it. A message that vanished meanwhile is skipped.
func (p *Poller) storeOne(ctx context.Context, cn *conn, uid imap.UID) error {
	stop := cn.guard(messageTimeout)
	defer stop()
	fetch := cn.c.Fetch(imap.UIDSetNum(uid), &imap.FetchOptions{
		UID:         true,
		BodySection: []*imap.FetchItemBodySection{{Peek: true}},
	})
	var (
		found    bool
		id       string
		size     int64
		storeErr error
	)
	if msg := fetch.Next(); msg != nil {
		for item := msg.Next(); item != nil; item = msg.Next() {
			b, ok := item.(imapclient.FetchItemDataBodySection)
			if !ok || b.Literal == nil || found {
				continue
			}
			found = true
			size = b.Literal.Size()
			env := spool.Envelope{
				Intake:     "imap",
				Mailbox:    p.mb.Name,
				NoEnvelope: true,
				App:        p.mb.App,
				Recipients: append([]string{}, p.mb.Recipients...),
				RemoteAddr: p.mb.Address,
			}
			id, storeErr = p.store.Accept(ctx, env, &exactReader{r: b.Literal, left: size})
		}
	}
	// Close drains whatever the store did not read and waits for the
	// command's completion.
	fetchErr := fetch.Close()
	switch {
	case !found && fetchErr != nil:
		return fmt.Errorf("fetch uid %d: %w", uid, fetchErr)
	case !found:
		p.log.Debug("imap: message vanished before it was fetched", "uid", uint32(uid))
		return nil
	case storeErr != nil:
		if ctx.Err() != nil {
			return ctx.Err()
		}
		switch fault.KindOf(storeErr) {
		case fault.Permanent, fault.Invalid, fault.TooLarge:
			p.log.Error("imap: the store refused a message; it is left in the mailbox, unmarked, and not tried again until mmgate restarts",
				"uid", uint32(uid), "size", size, "err", storeErr)
			if p.refused == nil {
				p.refused = make(map[imap.UID]bool)
			}
			p.refused[uid] = true
			if fetchErr != nil {
				return fmt.Errorf("fetch uid %d: %w", uid, fetchErr)
			}
			return nil
		}
		return &storeError{uid: uid, err: storeErr}
	}
	p.log.Info("imap: message stored", "uid", uint32(uid), "id", id, "size", size)
	p.pending, p.pendingValidity = append(p.pending, uid), cn.uidValidity
	if fetchErr != nil {
		// Stored all the same (the body was complete); it is marked after
		// reconnecting.
		return fmt.Errorf("fetch uid %d: %w", uid, fetchErr)
	}
	return p.markPending(cn)
}

// markPending flags or moves the stored messages in p.pending.
func (p *Poller) markPending(cn *conn) error {
	set := imap.UIDSetNum(p.pending...)
	stop := cn.guard(commandTimeout)
	defer stop()
	if p.mb.MoveTo == "" {
		err := cn.c.Store(set, &imap.StoreFlags{
			Op:     imap.StoreFlagsAdd,
			Silent: true,
			Flags:  []imap.Flag{imap.FlagSeen, StoredKeyword},
		}, nil).Close()
		if err != nil {
			return fmt.Errorf("flag uid %v as stored: %w", set, err)
		}
		p.log.Debug("imap: flagged as stored", "uid", set.String())
	} else {
		// MOVE when the server has it; else COPY, \Deleted and UID EXPUNGE
		// (UIDPLUS) or EXPUNGE.
		if _, err := cn.c.Move(set, p.mb.MoveTo).Wait(); err != nil {
			return fmt.Errorf("move uid %v to %q: %w", set, p.mb.MoveTo, err)
		}
		p.log.Debug("imap: moved as stored", "uid", set.String(), "to", p.mb.MoveTo)
	}
	p.pending = p.pending[:0]
	return nil
}

// waitIdle IDLEs until the server reports new mail, the refresh interval
// passes, or the connection or ctx ends.
func (p *Poller) waitIdle(ctx context.Context, cn *conn) error {
	stop := cn.guard(commandTimeout)
	cmd, err := cn.c.Idle()
	stop()
	if err != nil {
		return fmt.Errorf("idle: %w", err)
	}
	if p.hooks.idling != nil {
		p.hooks.idling()
	}
	t := time.NewTimer(min(p.mb.PollInterval, MaxIdleRefresh))
	defer t.Stop()
	select {
	case <-ctx.Done():
		_ = cmd.Close()
		return ctx.Err()
	case <-cn.c.Closed():
		_ = cmd.Close()
		return errors.New("the server closed the connection while idling")
	case <-cn.newMail:
	case <-t.C:
	}
	stop = cn.guard(commandTimeout)
	defer stop()
	if err := cmd.Close(); err != nil {
		return fmt.Errorf("idle done: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("idle: %w", err)
	}
	return nil
}

// waitPoll waits PollInterval (sending a NOOP now and then to keep a long
// wait's connection alive), or less when the server reports new mail.
func (p *Poller) waitPoll(ctx context.Context, cn *conn) error {
	t := time.NewTimer(p.mb.PollInterval)
	defer t.Stop()
	keep := time.NewTicker(keepaliveInterval)
	defer keep.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-cn.c.Closed():
			return errors.New("connection closed by the server")
		case <-cn.newMail:
			return nil
		case <-t.C:
			return nil
		case <-keep.C:
			stop := cn.guard(commandTimeout)
			err := cn.c.Noop().Wait()
			stop()
			if err != nil {
				return fmt.Errorf("noop: %w", err)
			}
		}
	}
}

// exactReader passes on an IMAP literal and turns a short one (the connection
// ended inside it: imapclient then reports a plain io.EOF) into an error, so
// that a truncated message is never stored as complete.
type exactReader struct {
	r    io.Reader
	left int64
}

func (e *exactReader) Read(b []byte) (int, error) {
	if e.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(b)) > e.left {
		b = b[:e.left]
	}
	n, err := e.r.Read(b)
	e.left -= int64(n)
	if e.left > 0 && errors.Is(err, io.EOF) {
		return n, fmt.Errorf("imap: connection ended %d bytes before the end of the message: %w", e.left, io.ErrUnexpectedEOF)
	}
	if e.left == 0 && err == nil {
		err = io.EOF
	}
	return n, err
}
