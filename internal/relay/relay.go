// Package relay is the delivery worker: for one stored message it parses the
// mail, decides the source app, resolves recipients to Mattermost users, and
// posts to every destination exactly once. It implements spool.Handler and
// answers with an Outcome; it never changes a message's state itself.
//
// Exactly once: every post is a part (destination, part name) recorded in the
// spool's ledger. Before posting a part the relay records an intent; after
// Mattermost answers it records the post id. A part that is done is never posted
// again. A part with an intent but no post id (a crash or timeout between the two)
// is reconciled by looking in the channel for a post carrying the part's key in
// its props before posting it again. Every post also carries a pending_post_id
// derived from the part's key, which makes Mattermost itself return the first
// post for a repeat within 30 seconds (a lost answer, a timeout).
package relay

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/mail"
	"runtime/debug"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mmgate/mmgate/internal/account"
	"github.com/mmgate/mmgate/internal/directory"
	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/mailparse"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/metrics"
	"github.com/mmgate/mmgate/internal/route"
	"github.com/mmgate/mmgate/internal/spool"
)

// Spool is what the relay needs from the spool.
type Spool interface {
	// Body is the raw mail of the message Handle was given.
	Body(ctx context.Context, msg spool.Message) (io.ReadCloser, error)
	LedgerGet(ctx context.Context, msgID, dest, part string) (spool.LedgerEntry, bool, error)
	LedgerIntent(ctx context.Context, msgID, dest, part, channelID string) error
	LedgerDone(ctx context.Context, msgID, dest, part, postID string) error
	ClaimDelivery(ctx context.Context, mailKey, dest, msgID string, first spool.Intent) (spool.Claim, error)
}

// Mattermost is what the relay needs from one bot's REST client.
type Mattermost interface {
	Me(ctx context.Context) (*mattermost.User, error)
	User(ctx context.Context, id string) (*mattermost.User, error)
	UserByEmail(ctx context.Context, email string) (*mattermost.User, error)
	UserByUsername(ctx context.Context, username string) (*mattermost.User, error)
	DirectChannel(ctx context.Context, userA, userB string) (*mattermost.Channel, error)
	ChannelByName(ctx context.Context, team, channel string) (*mattermost.Channel, error)
	UploadFiles(ctx context.Context, channelID string, files []mattermost.Upload) ([]mattermost.FileInfo, error)
	CreatePost(ctx context.Context, p *mattermost.Post) (*mattermost.Post, error)
	ChannelPostsSince(ctx context.Context, channelID string, since time.Time) ([]mattermost.Post, error)
	MaxPostRunes(ctx context.Context) (int, error)
}

// Directory maps an address to a person.
type Directory interface {
	Lookup(ctx context.Context, email string) (directory.Person, error)
}

// GroupDirectory is a Directory that also knows the groups a person is in,
// nested groups included (LDAP). Allow and deny groups need one.
type GroupDirectory interface {
	Directory
	Groups(ctx context.Context, p directory.Person) (directory.Groups, error)
}

// Accounts are the links and subscriptions people made with /mmgate.
type Accounts interface {
	LinkedUser(ctx context.Context, email string) (account.Link, bool, error)
	// LinkOf is the link a Mattermost account holds, if any.
	LinkOf(ctx context.Context, userID string) (account.Link, bool, error)
	Subscribers(ctx context.Context, app string) ([]account.Subscriber, error)
}

// App is one source app as the relay sees it.
type App struct {
	Name               string
	DisplayName        string // shown in the history next to the name, optional
	Client             Mattermost
	DirectMessages     bool
	Channels           []string // team/channel
	MaxAttachmentBytes int64
	PostAutoReplies    bool // post out-of-office replies instead of quarantining them
	PostBounces        bool // post bounces instead of quarantining them
	// AllowGroup (a group DN), when set, is the only people who receive the
	// app's messages; nobody in DenyGroup does (deny wins).
	AllowGroup string
	DenyGroup  string
	// Subscribable apps also send each message to their subscribers
	// (/mmgate subscribe), as direct messages.
	Subscribable bool
}

// Options configures a Relay.
type Options struct {
	Spool     Spool
	Router    *route.Router
	Directory Directory // may be nil when only MattermostLookup is used
	// Accounts, when set, send a directory identity's mail to the account
	// its owner linked, and subscribable apps' mail to their subscribers.
	Accounts Accounts
	// MattermostLookup resolves addresses missing from Directory by email in Mattermost.
	MattermostLookup bool
	// DenyGroup (a group DN): its members receive no app's messages.
	DenyGroup string
	Apps      map[string]*App
	// SiteURL is Mattermost's URL, used to link inline images to their files.
	SiteURL string
	// MaxPostRunes overrides the server's limit when > 0.
	MaxPostRunes int
	// SpillDir holds large decoded attachments while a message is processed.
	SpillDir string
	// Domains are the recipient domains mmgate serves (smtp.domains): a
	// message without envelope recipients (postback, IMAP) is delivered to
	// the header's addresses in these domains.
	Domains []string
	Logger  *slog.Logger
}

// Relay implements spool.Handler.
type Relay struct {
	o     Options
	log   *slog.Logger
	mu    sync.Mutex
	bots  map[string]string // app → bot user id
	runes map[string]int    // app → max post runes
	users map[string]cached // app+"\x00"+key → user
	chans map[string]cached // app+"\x00"+team/channel → channel id
}

type cached struct {
	id, name string
	at       time.Time
}

const cacheTTL = 10 * time.Minute

// New returns a relay.
func New(o Options) *Relay {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Relay{o: o, log: o.Logger, bots: map[string]string{}, runes: map[string]int{},
		users: map[string]cached{}, chans: map[string]cached{}}
}

var _ spool.Handler = (*Relay)(nil)

// SetSpool gives the relay its spool when the spool is opened after the relay
// (the spool needs the relay as its handler).
func (r *Relay) SetSpool(s Spool) { r.o.Spool = s }

// PropPart is the post prop that names the ledger part a post belongs to.
const (
	PropSpoolID   = "mmgate_id"
	PropPart      = "mmgate_part"
	PropMessageID = "mmgate_message_id"
	PropFrom      = "mmgate_from"
)

// Handle delivers one message. What it decides along the way (the app and
// why, each recipient, each post) goes into the message's history with the
// outcome, in the same transaction: the ledger, not the history, is what
// makes a retry after a crash safe.
func (r *Relay) Handle(ctx context.Context, msg spool.Message) (out spool.Outcome) {
	var events []spool.Event
	note := func(kind, format string, a ...any) {
		events = append(events, spool.Event{At: time.Now(), Kind: kind, Detail: fmt.Sprintf(format, a...)})
	}
	var at attempt
	defer func() {
		// A panic after a post must not lose the post's record: the
		// attempt's posts still go with the (retry) outcome.
		if v := recover(); v != nil {
			r.log.Error("relay: panic while delivering", "id", msg.ID, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			out = spool.Outcome{Kind: spool.OutcomeRetry, Reason: fmt.Sprintf("panic: %v", v), Events: events, Posts: at.posts}
		}
	}()
	out = r.handle(ctx, msg, &at, note, nil)
	out.Events = append(events, out.Events...)
	out.Info = &at.info
	out.Posts = at.posts
	return out
}

// attempt is what one delivery attempt hands to its outcome besides the
// history: what it learned of the message, and its posts the ledger does
// not have yet (each post is recorded before the next delivery claim or
// intent; the last ones go with the outcome, one commit fewer per message).
type attempt struct {
	info  spool.Info
	posts []spool.Post
}

// handle delivers msg, or with dry set only plans: it reads dry.raw instead
// of the spool, creates nothing in Mattermost (it only looks users and
// channels up) and records the posts it would make in dry.
func (r *Relay) handle(ctx context.Context, msg spool.Message, at *attempt, note func(kind, format string, a ...any), dry *Explanation) spool.Outcome {
	log := r.log.With("id", msg.ID)

	var body io.ReadCloser
	var err error
	if dry != nil {
		body = io.NopCloser(dry.raw)
	} else {
		body, err = r.o.Spool.Body(ctx, msg)
	}
	if fault.Is(err, fault.NotFound) {
		// Retrying cannot bring back raw mail that is gone: an operator must look.
		note("decision", "raw message unavailable: %v", err)
		return quarantine("body_missing", fmt.Sprintf("the raw message cannot be read: %v", err))
	}
	if err != nil {
		return retry(fmt.Errorf("opening raw message: %w", err))
	}
	m, err := mailparse.Parse(body, mailparse.Options{SpillDir: r.o.SpillDir})
	_ = body.Close()
	if fault.Is(err, fault.Temporary) {
		// Reading the spool or spilling a large part to disk failed: not the mail's fault.
		return retry(fmt.Errorf("parsing: %w", err))
	}
	if err != nil {
		note("decision", "message cannot be parsed: %v", err)
		return quarantine("unparseable", fmt.Sprintf("message cannot be parsed: %v", err))
	}
	defer func() { _ = m.Close() }()
	for _, w := range m.Warnings {
		note("warning", "%s", w)
	}

	env := msg.Envelope
	sender, senderHow := env.Sender, "envelope sender"
	if env.NoEnvelope {
		sender, senderHow = returnPath(m.Header), "Return-Path"
	}
	in := route.Input{App: env.App, AuthUser: env.AuthIdentity, Sender: sender,
		Recipients: env.Recipients, Subject: m.Subject, Header: m.Header}
	if env.NoEnvelope {
		in.SenderFrom = senderHow + " header"
	}
	for _, a := range m.From {
		in.From = append(in.From, a.Email)
	}
	dec, ok := r.o.Router.Identify(in)
	at.info = spool.Info{App: dec.App, Subject: m.Subject, MessageID: m.MessageID}
	app := r.o.Apps[dec.App]
	if out, stop := r.screen(m, env, sender, app, note); stop {
		return out
	}
	if !ok {
		note("decision", "%s", dec.Why)
		return quarantine("unknown_source", dec.Why)
	}
	if app == nil {
		note("decision", "app %s: %s", dec.App, dec.Why)
		return quarantine("unknown_source", fmt.Sprintf("app %s has no bot configured", dec.App))
	}
	if app.DisplayName != "" {
		note("decision", "app %s (%s): %s", dec.App, app.DisplayName, dec.Why)
	} else {
		note("decision", "app %s: %s", dec.App, dec.Why)
	}
	log = log.With("app", app.Name)

	rcpts, fromHeader := env.Recipients, false
	if len(rcpts) == 0 {
		rcpts, fromHeader = r.headerRecipients(m), true
		note("decision", "no envelope recipients: the header names %s", listOrNone(rcpts))
	}
	dests, unresolved, err := r.destinations(ctx, app, rcpts, note, dry != nil)
	if err != nil {
		return failure(err)
	}
	if len(dests) == 0 {
		reason := "no destination: " + strings.Join(unresolved, "; ")
		if len(unresolved) == 0 {
			reason = "no destination: no recipient in " + strings.Join(r.o.Domains, ", ") + " and no channel"
		}
		note("decision", "%s", reason)
		return quarantine("no_recipient", reason)
	}
	if fromHeader && len(unresolved) > 0 {
		// Header addresses include lists, the gateway's own mailbox and
		// people cc'd for information: skipping them is not a failure.
		note("decision", "header recipients without a Mattermost user are skipped: %s", strings.Join(unresolved, "; "))
		unresolved = nil
	}

	if dry != nil {
		dry.explainPosts(ctx, r, app, m, dests, unresolved)
		if len(unresolved) > 0 {
			return quarantine("no_recipient", fmt.Sprintf("would post to %d destination(s), then quarantine for: %s", len(dests), strings.Join(unresolved, "; ")))
		}
		return spool.Outcome{Kind: spool.OutcomePosted, Reason: fmt.Sprintf("would post to %d destination(s)", len(dests))}
	}
	mailKey := dedupeKey(m)
	posted, dups := 0, []string{}
	for _, d := range dests {
		var pre *ledgerRead
		if mailKey != "" {
			// The attempt's earlier posts are recorded before the claim,
			// which records this destination's first intent.
			if err := r.recordPosts(ctx, msg.ID, at); err != nil {
				log.Warn("delivery failed", "dest", d.key, "err", err)
				return failure(err)
			}
			c, err := r.o.Spool.ClaimDelivery(ctx, mailKey, d.key, msg.ID, spool.Intent{Part: firstPart, ChannelID: d.channelID})
			if err != nil {
				return retry(fmt.Errorf("recording the delivery claim: %w", err))
			}
			if c.Holder != msg.ID && !c.Delivered {
				// The copy that holds the claim has not posted here yet, and
				// may never (a quarantined one can be deleted): wait for it.
				note("duplicate", "%s: this mail (Message-ID <%s>) is held by message %s (%s), which has not posted it there yet", d.label, m.MessageID, c.Holder, c.HolderState)
				return retry(fmt.Errorf("waiting for message %s (%s), which holds this mail's delivery to %s: it is posted once that message is posted, released or deleted", c.Holder, c.HolderState, d.label))
			}
			if c.Holder != msg.ID {
				note("duplicate", "%s already receives this mail (Message-ID <%s>) from message %s: not posted again", d.label, m.MessageID, c.Holder)
				dups = append(dups, c.Holder)
				continue
			}
			pre = &ledgerRead{entries: c.Ledger}
		}
		if err := r.deliver(ctx, at, app, msg, m, d, pre, note); err != nil {
			log.Warn("delivery failed", "dest", d.key, "err", err)
			return failure(err)
		}
		posted++
	}
	if len(unresolved) > 0 {
		reason := fmt.Sprintf("posted to %d destination(s), but not to: %s", len(dests), strings.Join(unresolved, "; "))
		note("decision", "%s", reason)
		return quarantine("no_recipient", reason+" (release after fixing the directory: delivered parts are not posted again)")
	}
	if posted == 0 && len(dups) > 0 {
		reason := fmt.Sprintf("duplicate of %s: every destination already has this mail (Message-ID <%s>)", dups[0], m.MessageID)
		log.Info("duplicate, nothing posted", "of", dups[0])
		return spool.Outcome{Kind: spool.OutcomePosted, Reason: reason, Code: spool.CodeDuplicate}
	}
	log.Info("posted", "destinations", posted, "duplicates", len(dups))
	return spool.Outcome{Kind: spool.OutcomePosted}
}

// screen sets auto-replies, bounces and loops aside unless the app posts
// them; stop is true when out is the message's outcome.
func (r *Relay) screen(m *mailparse.Message, env spool.Envelope, sender string, app *App, note func(string, string, ...any)) (out spool.Outcome, stop bool) {
	kind, why := route.Classify(route.ClassifyInput{Sender: sender, NoEnvelope: env.NoEnvelope, Subject: m.Subject, Header: m.Header})
	if kind == route.KindNormal {
		return spool.Outcome{}, false
	}
	if app != nil {
		if (kind == route.KindAutoReply && app.PostAutoReplies) || (kind == route.KindBounce && app.PostBounces) {
			note("decision", "%s (%s), posted as app %s is configured to", kind, why, app.Name)
			return spool.Outcome{}, false
		}
	}
	reason := fmt.Sprintf("%s: %s", kind, why)
	note("decision", "%s", reason)
	return quarantine(strings.ReplaceAll(string(kind), "-", "_"), reason), true
}

// returnPath is the address of the Return-Path header ("" when missing or <>).
func returnPath(h map[string][]string) string {
	v := h["Return-Path"]
	if len(v) == 0 {
		return ""
	}
	s := strings.TrimSpace(v[0])
	if a, err := mail.ParseAddress(s); err == nil {
		return a.Address
	}
	return strings.Trim(s, "<> ")
}

// headerRecipients are the people a message without envelope recipients is
// for: Delivered-To / X-Original-To (the mailbox it was delivered to), or else
// To and Cc; only addresses in Domains, each once.
func (r *Relay) headerRecipients(m *mailparse.Message) []string {
	var cands []string
	for _, name := range []string{"X-Original-To", "Delivered-To"} {
		for _, v := range m.Header[name] {
			if a, err := mail.ParseAddress(strings.TrimSpace(v)); err == nil {
				cands = append(cands, a.Address)
			} else if s := strings.Trim(strings.TrimSpace(v), "<>"); strings.Contains(s, "@") {
				cands = append(cands, s)
			}
		}
	}
	out := r.inDomains(cands)
	if len(out) == 0 {
		cands = cands[:0]
		for _, a := range append(append([]mailparse.Address(nil), m.To...), m.Cc...) {
			cands = append(cands, a.Email)
		}
		out = r.inDomains(cands)
	}
	return out
}

func (r *Relay) inDomains(addrs []string) []string {
	var out []string
	seen := map[string]bool{}
	for _, a := range addrs {
		a = strings.ToLower(strings.TrimSpace(a))
		at := strings.LastIndexByte(a, '@')
		if at < 0 || seen[a] {
			continue
		}
		dom := a[at+1:]
		for _, d := range r.o.Domains {
			if strings.EqualFold(dom, d) {
				seen[a] = true
				out = append(out, a)
				break
			}
		}
	}
	return out
}

func listOrNone(xs []string) string {
	if len(xs) == 0 {
		return "nobody in the configured domains"
	}
	return strings.Join(xs, ", ")
}

// dedupeKey identifies a mail across copies: its Message-ID with its Date
// and Subject (a tool that reuses one Message-ID for different mail still
// gets each posted). "" for a generated Message-ID: such mail cannot be
// recognised again.
func dedupeKey(m *mailparse.Message) string {
	if m.MessageIDGenerated || m.MessageID == "" {
		return ""
	}
	var date int64
	if !m.Date.IsZero() {
		date = m.Date.Unix()
	}
	sum := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d\x00%s", strings.ToLower(m.MessageID), date, m.Subject)))
	return hex.EncodeToString(sum[:16])
}

// destination is one channel to post into.
type destination struct {
	key       string // ledger dest: "dm:username" or "channel:team/name"
	channelID string
	label     string
}

func (r *Relay) destinations(ctx context.Context, app *App, recipients []string, note func(string, string, ...any), dry bool) ([]destination, []string, error) {
	var dests []destination
	var unresolved, skipped []string
	seen := map[string]bool{}
	if app.DirectMessages {
		botID, err := r.botID(ctx, app)
		if err != nil {
			return nil, nil, err
		}
		rcpts := append([]string(nil), recipients...)
		sort.Strings(rcpts)
		for _, rc := range rcpts {
			res, err := r.resolve(ctx, app, rc)
			if err != nil {
				return nil, nil, err
			}
			for _, line := range res.lines {
				note("recipient", "%s: %s", rc, line)
			}
			if res.skip != "" {
				metrics.RecipientsSkipped.WithLabelValues(app.Name, res.code).Inc()
				if res.skip == skipPolicy {
					// The decision line above says why.
					skipped = append(skipped, rc+" ("+res.why+")")
					note("recipient", "%s: skipped", rc)
				} else {
					unresolved = append(unresolved, rc+" ("+res.why+")")
					note("recipient", "%s: skipped, %s", rc, res.why)
				}
				continue
			}
			u := res.user
			key := "dm:" + u.name
			if seen[key] || seen["id:"+u.id] {
				note("recipient", "%s: @%s already receives this message", rc, u.name)
				continue
			}
			seen[key], seen["id:"+u.id] = true, true
			chID := "(direct channel, not created by explain)"
			if !dry {
				if chID, err = r.directChannel(ctx, app, botID, u.id); err != nil {
					return nil, nil, err
				}
			}
			note("recipient", "%s → @%s (%s)", rc, u.name, res.why)
			dests = append(dests, destination{key: key, channelID: chID, label: "@" + u.name})
		}
	}
	for _, name := range app.Channels {
		id, err := r.channelID(ctx, app, name)
		if err != nil {
			if mattermost.IsNotFound(err) {
				unresolved = append(unresolved, "channel "+name+" (not found, or the bot is not a member of its team)")
				continue
			}
			return nil, nil, err
		}
		key := "channel:" + name
		if !seen[key] {
			seen[key] = true
			dests = append(dests, destination{key: key, channelID: id, label: "~" + name})
		}
	}
	if app.Subscribable && r.o.Accounts != nil {
		var err error
		if dests, err = r.subscribers(ctx, app, dests, seen, note, dry); err != nil {
			return nil, nil, err
		}
	}
	if len(dests) == 0 && len(unresolved) == 0 && len(skipped) > 0 {
		// Policy left nobody: that is the reason to give.
		unresolved = skipped
	}
	return dests, unresolved, nil
}

// Why a recipient gets no post.
const (
	skipPolicy     = "policy"     // not allowed by the app's groups: recorded, not a failure
	skipUnresolved = "unresolved" // nobody, or no Mattermost user: the message waits for an operator
)

// resolution is what became of one recipient address.
type resolution struct {
	user  *cached
	why   string   // how the user was found, or why the address is skipped
	skip  string   // "", skipPolicy or skipUnresolved
	code  string   // metric label of a skip
	lines []string // the directory entry and each group decision, for the history
}

// resolve finds the Mattermost user for an address and applies the app's
// allow and deny groups. An error means try again later (the directory or
// Mattermost is unreachable); a skip is final for this attempt.
func (r *Relay) resolve(ctx context.Context, app *App, addr string) (resolution, error) {
	addr = strings.ToLower(strings.TrimSpace(addr))
	if a, err := mail.ParseAddress(addr); err == nil {
		addr = strings.ToLower(a.Address)
	}
	var res resolution
	var p directory.Person
	how := ""
	if r.o.Directory != nil {
		var err error
		p, err = r.o.Directory.Lookup(ctx, addr)
		switch {
		case err == nil:
			how = "directory: " + p.Source
			line := "directory entry " + p.Source
			if p.DisplayName != "" {
				line += " (" + p.DisplayName + ")"
			}
			if len(p.Addresses) > 1 {
				line += ", addresses " + strings.Join(p.Addresses, ", ")
			}
			res.lines = append(res.lines, line)
		case errors.Is(err, directory.ErrAmbiguous):
			res.why, res.skip, res.code = err.Error(), skipUnresolved, "ambiguous"
			return res, nil
		case errors.Is(err, directory.ErrNotFound):
			if !r.o.MattermostLookup {
				res.why, res.skip, res.code = "not in the directory", skipUnresolved, "not_in_directory"
				return res, nil
			}
			res.lines = append(res.lines, "not in the directory; looked up in Mattermost by email")
		default:
			return res, fmt.Errorf("directory lookup of %s: %w", addr, err)
		}
	}
	if why, code, ok, err := r.policy(ctx, app, p, &res.lines); err != nil {
		return res, err
	} else if !ok {
		res.why, res.skip, res.code = why, skipPolicy, code
		return res, nil
	}
	if p.Email == "" {
		p.Email = addr
	}
	// A person with several addresses may have any of them in Mattermost
	// (or linked): the primary one first, then the others.
	addrs := []string{p.Email}
	for _, a := range p.Addresses {
		if !strings.EqualFold(a, p.Email) {
			addrs = append(addrs, a)
		}
	}
	key := app.Name + "\x00"
	var lookup func() (*mattermost.User, error)
	if p.Username != "" {
		key += "u:" + strings.ToLower(p.Username)
		lookup = func() (*mattermost.User, error) { return app.Client.UserByUsername(ctx, p.Username) }
	} else {
		key += "e:" + p.Email
		lookup = func() (*mattermost.User, error) {
			var err error
			for _, a := range addrs {
				var u *mattermost.User
				if u, err = app.Client.UserByEmail(ctx, a); err == nil {
					return u, nil
				}
				if !mattermost.IsNotFound(err) {
					return nil, err
				}
			}
			return nil, err
		}
		if how == "" {
			how = "Mattermost user with this email"
		}
	}
	linked := ""
	if r.o.Accounts != nil {
		// The person linked this identity to an account (/mmgate link):
		// that account, whatever its email or username.
		for _, a := range addrs {
			l, ok, err := r.o.Accounts.LinkedUser(ctx, a)
			if err != nil {
				return res, err
			}
			if ok && p.ID != "" && strings.HasPrefix(l.Subject, "ldap:") && l.Subject != "ldap:"+p.ID {
				// The address now belongs to another entry than the one
				// that signed in to link it (a reused address).
				res.lines = append(res.lines, fmt.Sprintf("the link of %s to @%s was made by another directory entry (%s): ignored", l.Email, l.Username, l.Subject))
				continue
			}
			if ok {
				linked, key = l.Username, app.Name+"\x00id:"+l.UserID
				lookup = func() (*mattermost.User, error) { return app.Client.User(ctx, l.UserID) }
				via := "linked by its owner to @" + l.Username + " (/mmgate link, " + l.Email + ")"
				if strings.HasPrefix(how, "directory: ") {
					how += "; " + via
				} else {
					how = via // not "Mattermost user with this email"
				}
				break
			}
		}
	}
	res.why = how
	c, deactivated, err := r.user(key, lookup)
	if err != nil {
		if mattermost.IsNotFound(err) {
			who := "email " + p.Email
			if len(p.Addresses) > 1 {
				who = "any of the emails " + strings.Join(p.Addresses, ", ")
			}
			if p.Username != "" {
				who = "username " + p.Username
			}
			if linked != "" {
				who = "the id of @" + linked + ", which this address is linked to (/mmgate unlink, or `mmgate accounts unlink`, removes the link)"
			}
			res.why, res.skip, res.code = "no Mattermost user with "+who, skipUnresolved, "no_mattermost_user"
			return res, nil
		}
		var ae *mattermost.APIError // its ID names what Mattermost refused
		if errors.As(err, &ae) && ae.Status == http.StatusForbidden && p.Username == "" {
			res.why, res.skip, res.code = "Mattermost refused a lookup by email (403 "+ae.ID+"): give the username in the directory", skipUnresolved, "mattermost_refused"
			return res, nil
		}
		return res, err
	}
	if deactivated {
		res.why, res.skip, res.code = "Mattermost user @"+c.name+" is deactivated", skipUnresolved, "deactivated"
		return res, nil
	}
	res.user = &c
	return res, nil
}

// user returns the user cached under key, else the one lookup finds. A
// deactivated user is reported, not cached.
func (r *Relay) user(key string, lookup func() (*mattermost.User, error)) (c cached, deactivated bool, err error) {
	r.mu.Lock()
	c, ok := r.users[key]
	r.mu.Unlock()
	if ok && time.Since(c.at) < cacheTTL {
		return c, false, nil
	}
	u, err := lookup()
	if err != nil {
		return cached{}, false, err
	}
	c = cached{id: u.ID, name: u.Username, at: time.Now()}
	if u.DeleteAt != 0 {
		return c, true, nil
	}
	r.mu.Lock()
	r.users[key] = c
	r.mu.Unlock()
	return c, false, nil
}

// subscribers adds the app's subscribers to dests: each one the app's
// groups still allow (checked against the address the account's link
// proves now, else the one it proved when subscribing), as a direct
// message, once per person.
func (r *Relay) subscribers(ctx context.Context, app *App, dests []destination, seen map[string]bool,
	note func(string, string, ...any), dry bool) ([]destination, error) {
	subs, err := r.o.Accounts.Subscribers(ctx, app.Name)
	if err != nil || len(subs) == 0 {
		return dests, err
	}
	botID, err := r.botID(ctx, app)
	if err != nil {
		return nil, err
	}
	// A subscriber's own trouble that retrying cannot mend skips that
	// subscriber, noted; it never holds the message back from the others. A
	// refused bot token is the app's trouble: the message waits.
	final := func(err error) bool {
		return err != nil && !fault.Is(err, fault.Temporary) && !mattermost.IsUnauthorized(err)
	}
	for _, sub := range subs {
		email := sub.Email
		if l, ok, err := r.o.Accounts.LinkOf(ctx, sub.UserID); err != nil {
			return nil, err
		} else if ok {
			email = l.Email // the identity proven now, not the one at subscribe time
		}
		why, ok, err := r.mayReceive(ctx, app, email)
		switch {
		case final(err):
			note("recipient", "subscriber @%s: skipped, %v", sub.Username, err)
			continue
		case err != nil:
			return nil, err
		case !ok:
			note("recipient", "subscriber @%s: skipped, %s", sub.Username, why)
			continue
		}
		c, deactivated, err := r.user(app.Name+"\x00id:"+sub.UserID, func() (*mattermost.User, error) {
			return app.Client.User(ctx, sub.UserID)
		})
		switch {
		case mattermost.IsNotFound(err):
			note("recipient", "subscriber @%s: skipped, the Mattermost account no longer exists", sub.Username)
			continue
		case final(err):
			note("recipient", "subscriber @%s: skipped, %v", sub.Username, err)
			continue
		case err != nil:
			return nil, err
		case deactivated:
			note("recipient", "subscriber @%s: skipped, deactivated in Mattermost", c.name)
			continue
		}
		key := "dm:" + c.name
		if seen[key] || seen["id:"+c.id] {
			note("recipient", "subscriber @%s already receives this message", c.name)
			continue
		}
		seen[key], seen["id:"+c.id] = true, true
		chID := "(direct channel, not created by explain)"
		if !dry {
			if chID, err = r.directChannel(ctx, app, botID, c.id); final(err) {
				note("recipient", "subscriber @%s: skipped, %v", c.name, err)
				continue
			} else if err != nil {
				return nil, err
			}
		}
		note("recipient", "subscriber @%s (/mmgate subscribe %s)", c.name, app.Name)
		dests = append(dests, destination{key: key, channelID: chID, label: "@" + c.name})
	}
	return dests, nil
}

// mayReceive applies the global deny group and the app's groups to the
// person with address email (looked up in the directory only when a group
// is set).
func (r *Relay) mayReceive(ctx context.Context, app *App, email string) (why string, ok bool, err error) {
	if r.o.DenyGroup == "" && app.DenyGroup == "" && app.AllowGroup == "" {
		return "", true, nil
	}
	var p directory.Person
	if r.o.Directory != nil {
		p, err = r.o.Directory.Lookup(ctx, email)
		if err != nil && !errors.Is(err, directory.ErrNotFound) && !errors.Is(err, directory.ErrAmbiguous) {
			return "", false, fmt.Errorf("directory lookup of %s: %w", email, err)
		}
	}
	var lines []string // the decision's path: only why matters here
	why, _, ok, err = r.policy(ctx, app, p, &lines)
	return why, ok, err
}

// MayReceive reports whether the person with address email may receive
// app's messages, and why not (for /mmgate subscribe).
func (r *Relay) MayReceive(ctx context.Context, appName, email string) (bool, string, error) {
	app := r.o.Apps[appName]
	if app == nil {
		return false, "mmgate has no app " + appName, nil
	}
	why, ok, err := r.mayReceive(ctx, app, email)
	return ok, why, err
}

// policy applies the global deny group and the app's deny and allow groups
// to p; deny wins. Each decision, with its path through nested groups, goes
// to lines.
func (r *Relay) policy(ctx context.Context, app *App, p directory.Person, lines *[]string) (why, code string, ok bool, err error) {
	type rule struct{ group, name string }
	var denies []rule
	if r.o.DenyGroup != "" {
		denies = append(denies, rule{r.o.DenyGroup, "the global deny group (directory.deny_group)"})
	}
	if app.DenyGroup != "" {
		denies = append(denies, rule{app.DenyGroup, "app " + app.Name + "'s deny group"})
	}
	if len(denies) == 0 && app.AllowGroup == "" {
		return "", "", true, nil
	}
	gd, isGD := r.o.Directory.(GroupDirectory)
	if p.DN == "" || !isGD {
		// Without an entry, a deny group cannot be checked: not posting is
		// the only safe answer.
		why = "not in the LDAP directory, so its allow and deny groups cannot be checked"
		*lines = append(*lines, why)
		return why, "not_in_directory", false, nil
	}
	g, err := gd.Groups(ctx, p)
	if err != nil {
		return "", "", false, fmt.Errorf("groups of %s: %w", p.DN, err)
	}
	for _, d := range denies {
		if path, in := g.Has(d.group); in {
			why = fmt.Sprintf("in %s %s (%s), and deny wins", d.name, d.group, pathText(path))
			*lines = append(*lines, "denied: "+why)
			return why, "denied", false, nil
		}
		*lines = append(*lines, fmt.Sprintf("not in %s %s", d.name, d.group))
	}
	if app.AllowGroup == "" {
		*lines = append(*lines, "allowed: app "+app.Name+" has no allow group")
		return "", "", true, nil
	}
	path, in := g.Has(app.AllowGroup)
	if !in {
		why = fmt.Sprintf("not in app %s's allow group %s (groups resolved by %s)", app.Name, app.AllowGroup, g.How)
		*lines = append(*lines, "not allowed: "+why)
		return why, "not_allowed", false, nil
	}
	*lines = append(*lines, fmt.Sprintf("allowed: in app %s's allow group %s (%s)", app.Name, app.AllowGroup, pathText(path)))
	return "", "", true, nil
}

// pathText shows a membership path, group first: "direct member" or
// "through A → B".
func pathText(path []string) string {
	if len(path) <= 2 {
		return "direct member"
	}
	return "through " + strings.Join(path[1:len(path)-1], " → ")
}

func (r *Relay) botID(ctx context.Context, app *App) (string, error) {
	r.mu.Lock()
	id := r.bots[app.Name]
	r.mu.Unlock()
	if id != "" {
		return id, nil
	}
	me, err := app.Client.Me(ctx)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	r.bots[app.Name] = me.ID
	r.mu.Unlock()
	return me.ID, nil
}

// directChannel returns the bot↔user DM channel, cached: it never changes.
func (r *Relay) directChannel(ctx context.Context, app *App, botID, userID string) (string, error) {
	key := app.Name + "\x00dm:" + userID
	r.mu.Lock()
	c, ok := r.chans[key]
	r.mu.Unlock()
	if ok {
		return c.id, nil
	}
	ch, err := app.Client.DirectChannel(ctx, botID, userID)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	r.chans[key] = cached{id: ch.ID, at: time.Now()}
	r.mu.Unlock()
	return ch.ID, nil
}

func (r *Relay) channelID(ctx context.Context, app *App, name string) (string, error) {
	key := app.Name + "\x00" + name
	r.mu.Lock()
	c, ok := r.chans[key]
	r.mu.Unlock()
	if ok && time.Since(c.at) < cacheTTL {
		return c.id, nil
	}
	team, ch, _ := strings.Cut(name, "/")
	got, err := app.Client.ChannelByName(ctx, team, ch)
	if err != nil {
		return "", err
	}
	r.mu.Lock()
	r.chans[key] = cached{id: got.ID, at: time.Now()}
	r.mu.Unlock()
	return got.ID, nil
}

func (r *Relay) maxRunes(ctx context.Context, app *App) int {
	if r.o.MaxPostRunes > 0 {
		return r.o.MaxPostRunes
	}
	r.mu.Lock()
	n := r.runes[app.Name]
	r.mu.Unlock()
	if n > 0 {
		return n
	}
	n, err := app.Client.MaxPostRunes(ctx)
	if err != nil || n <= 0 {
		return 16383
	}
	r.mu.Lock()
	r.runes[app.Name] = n
	r.mu.Unlock()
	return n
}

// outcomes

func retry(err error) spool.Outcome {
	return spool.Outcome{Kind: spool.OutcomeRetry, Reason: err.Error(), RetryAfter: mattermost.RetryAfterOf(err)}
}

// quarantine sets a message aside; code labels the metric, reason is for people.
func quarantine(code, reason string) spool.Outcome {
	return spool.Outcome{Kind: spool.OutcomeQuarantine, Reason: reason, Code: code}
}

// failure turns a delivery error into a retry (temporary) or a quarantine
// (Mattermost refused the request for good).
func failure(err error) spool.Outcome {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || mattermost.Retryable(err) {
		return retry(err)
	}
	if mattermost.IsUnauthorized(err) {
		// The bot's token, not the message: it waits (the token is read
		// again every 15 seconds) rather than going to quarantine.
		return retry(fmt.Errorf("Mattermost does not accept the app's bot token (fix apps.NAME.bot_token or run `mmgate mattermost setup`; running instances read tokens again every 15 s): %w", err))
	}
	var ae *mattermost.APIError
	if errors.As(err, &ae) {
		return quarantine("mattermost_refused", fmt.Sprintf("Mattermost refused %s: %d %s: %s", ae.Op, ae.Status, ae.ID, ae.Message))
	}
	if fault.Is(err, fault.Permanent) {
		return quarantine(fault.CodeOf(err), err.Error())
	}
	return retry(err)
}
