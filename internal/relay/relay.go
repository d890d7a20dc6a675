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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/mail"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mmgate/mmgate/internal/directory"
	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/mailparse"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/route"
	"github.com/mmgate/mmgate/internal/spool"
)

// Spool is what the relay needs from the spool.
type Spool interface {
	OpenBody(ctx context.Context, id string) (io.ReadCloser, error)
	AddEvent(ctx context.Context, id, kind, detail string) error
	SetInfo(ctx context.Context, id, app, subject, messageID string) error
	LedgerGet(ctx context.Context, msgID, dest, part string) (spool.LedgerEntry, bool, error)
	LedgerIntent(ctx context.Context, msgID, dest, part, channelID string) error
	LedgerDone(ctx context.Context, msgID, dest, part, postID string) error
}

// Mattermost is what the relay needs from one bot's REST client.
type Mattermost interface {
	Me(ctx context.Context) (*mattermost.User, error)
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

// App is one source app as the relay sees it.
type App struct {
	Name               string
	DisplayName        string // shown in the history next to the name, optional
	Client             Mattermost
	DirectMessages     bool
	Channels           []string // team/channel
	MaxAttachmentBytes int64
}

// Options configures a Relay.
type Options struct {
	Spool     Spool
	Router    *route.Router
	Directory Directory // may be nil when only MattermostLookup is used
	// MattermostLookup resolves addresses missing from Directory by email in Mattermost.
	MattermostLookup bool
	Apps             map[string]*App
	// SiteURL is Mattermost's URL, used to link inline images to their files.
	SiteURL string
	// MaxPostRunes overrides the server's limit when > 0.
	MaxPostRunes int
	// SpillDir holds large decoded attachments while a message is processed.
	SpillDir string
	Logger   *slog.Logger
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

// Handle delivers one message.
func (r *Relay) Handle(ctx context.Context, msg spool.Message) spool.Outcome {
	log := r.log.With("id", msg.ID)
	note := func(kind, format string, a ...any) {
		d := fmt.Sprintf(format, a...)
		if err := r.o.Spool.AddEvent(ctx, msg.ID, kind, d); err != nil {
			log.Warn("recording event failed", "kind", kind, "err", err)
		}
	}

	body, err := r.o.Spool.OpenBody(ctx, msg.ID)
	if fault.Is(err, fault.NotFound) {
		// Retrying cannot bring back raw mail that is gone: an operator must look.
		note("decision", "raw message unavailable: %v", err)
		return quarantine("body_missing", fmt.Sprintf("the raw message cannot be read: %v", err), "")
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
		return quarantine("unparseable", fmt.Sprintf("message cannot be parsed: %v", err), "")
	}
	defer func() { _ = m.Close() }()
	for _, w := range m.Warnings {
		note("warning", "%s", w)
	}

	in := route.Input{App: msg.Envelope.App, AuthUser: msg.Envelope.AuthIdentity, Sender: msg.Envelope.Sender,
		Recipients: msg.Envelope.Recipients, Subject: m.Subject, Header: m.Header}
	for _, a := range m.From {
		in.From = append(in.From, a.Email)
	}
	dec, ok := r.o.Router.Identify(in)
	if err := r.o.Spool.SetInfo(ctx, msg.ID, dec.App, m.Subject, m.MessageID); err != nil {
		return retry(fmt.Errorf("recording message info: %w", err))
	}
	if !ok {
		note("decision", "%s", dec.Why)
		return quarantine("unknown_source", dec.Why, "")
	}
	app := r.o.Apps[dec.App]
	if app == nil {
		note("decision", "app %s: %s", dec.App, dec.Why)
		return quarantine("unknown_source", fmt.Sprintf("app %s has no bot configured", dec.App), dec.App)
	}
	if app.DisplayName != "" {
		note("decision", "app %s (%s): %s", dec.App, app.DisplayName, dec.Why)
	} else {
		note("decision", "app %s: %s", dec.App, dec.Why)
	}
	log = log.With("app", app.Name)

	dests, unresolved, err := r.destinations(ctx, app, msg, note)
	if err != nil {
		return failure(err, app.Name)
	}
	if len(dests) == 0 {
		reason := "no destination: " + strings.Join(unresolved, "; ")
		note("decision", "%s", reason)
		return quarantine("no_recipient", reason, app.Name)
	}

	for _, d := range dests {
		if err := r.deliver(ctx, app, msg, m, d, note); err != nil {
			log.Warn("delivery failed", "dest", d.key, "err", err)
			return failure(err, app.Name)
		}
	}
	if len(unresolved) > 0 {
		reason := fmt.Sprintf("posted to %d destination(s), but not to: %s", len(dests), strings.Join(unresolved, "; "))
		note("decision", "%s", reason)
		return quarantine("no_recipient", reason+" (release after fixing the directory: delivered parts are not posted again)", app.Name)
	}
	log.Info("posted", "destinations", len(dests))
	return spool.Outcome{Kind: spool.OutcomePosted}
}

// destination is one channel to post into.
type destination struct {
	key       string // ledger dest: "dm:username" or "channel:team/name"
	channelID string
	label     string
}

func (r *Relay) destinations(ctx context.Context, app *App, msg spool.Message, note func(string, string, ...any)) ([]destination, []string, error) {
	var dests []destination
	var unresolved []string
	seen := map[string]bool{}
	if app.DirectMessages {
		botID, err := r.botID(ctx, app)
		if err != nil {
			return nil, nil, err
		}
		rcpts := append([]string(nil), msg.Envelope.Recipients...)
		sort.Strings(rcpts)
		for _, rc := range rcpts {
			u, why, err := r.resolve(ctx, app, rc)
			if err != nil {
				return nil, nil, err
			}
			if u == nil {
				unresolved = append(unresolved, rc+" ("+why+")")
				note("recipient", "%s: skipped, %s", rc, why)
				continue
			}
			key := "dm:" + u.name
			if seen[key] {
				note("recipient", "%s: @%s already receives this message", rc, u.name)
				continue
			}
			seen[key] = true
			chID, err := r.directChannel(ctx, app, botID, u.id)
			if err != nil {
				return nil, nil, err
			}
			note("recipient", "%s → @%s (%s)", rc, u.name, why)
			dests = append(dests, destination{key: key, channelID: chID, label: "@" + u.name})
		}
	}
	for _, name := range app.Channels {
		id, err := r.channelID(ctx, app, name)
		if err != nil {
			var ae *mattermost.APIError
			if errors.As(err, &ae) && ae.Status == 404 {
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
	return dests, unresolved, nil
}

// resolve finds the Mattermost user for an address; a nil user with a reason
// means the address has nobody (final), an error means try again later.
func (r *Relay) resolve(ctx context.Context, app *App, addr string) (*cached, string, error) {
	addr = strings.ToLower(strings.TrimSpace(addr))
	if a, err := mail.ParseAddress(addr); err == nil {
		addr = strings.ToLower(a.Address)
	}
	var p directory.Person
	how := ""
	if r.o.Directory != nil {
		var err error
		p, err = r.o.Directory.Lookup(ctx, addr)
		switch {
		case err == nil:
			how = "directory: " + p.Source
		case errors.Is(err, directory.ErrNotFound):
			if !r.o.MattermostLookup {
				return nil, "not in the directory", nil
			}
		default:
			return nil, "", fmt.Errorf("directory lookup of %s: %w", addr, err)
		}
	}
	if p.Email == "" {
		p.Email = addr
	}
	key := app.Name + "\x00"
	var lookup func() (*mattermost.User, error)
	if p.Username != "" {
		key += "u:" + strings.ToLower(p.Username)
		lookup = func() (*mattermost.User, error) { return app.Client.UserByUsername(ctx, p.Username) }
	} else {
		key += "e:" + p.Email
		lookup = func() (*mattermost.User, error) { return app.Client.UserByEmail(ctx, p.Email) }
		if how == "" {
			how = "Mattermost user with this email"
		}
	}
	r.mu.Lock()
	c, ok := r.users[key]
	r.mu.Unlock()
	if ok && time.Since(c.at) < cacheTTL {
		return &c, how, nil
	}
	u, err := lookup()
	if err != nil {
		var ae *mattermost.APIError
		if errors.As(err, &ae) && ae.Status == 404 {
			return nil, "no Mattermost user for " + p.Email, nil
		}
		if errors.As(err, &ae) && ae.Status == 403 && p.Username == "" {
			return nil, "Mattermost refused a lookup by email (403 " + ae.ID + "): give the username in the directory file", nil
		}
		return nil, "", err
	}
	if u.DeleteAt != 0 {
		return nil, "Mattermost user @" + u.Username + " is deactivated", nil
	}
	c = cached{id: u.ID, name: u.Username, at: time.Now()}
	r.mu.Lock()
	r.users[key] = c
	r.mu.Unlock()
	return &c, how, nil
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
func quarantine(code, reason, _ string) spool.Outcome {
	return spool.Outcome{Kind: spool.OutcomeQuarantine, Reason: reason, Code: code}
}

// failure turns a delivery error into a retry (temporary) or a quarantine
// (Mattermost refused the request for good).
func failure(err error, app string) spool.Outcome {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) || mattermost.Retryable(err) {
		return retry(err)
	}
	var ae *mattermost.APIError
	if errors.As(err, &ae) {
		return quarantine("mattermost_refused", fmt.Sprintf("Mattermost refused %s: %d %s: %s", ae.Op, ae.Status, ae.ID, ae.Message), app)
	}
	return retry(err)
}
