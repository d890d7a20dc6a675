// Package approval owns approval requests: a system asks people to approve
// or deny something; mmgate posts the request to the reviewers with Approve
// and Deny buttons, decides when enough of them answered, updates every copy
// of the post, replies in its thread, and calls the requesting system back
// (signed, retried until acknowledged).
//
// Mattermost does not sign the calls it makes to integrations, so a click is
// never trusted as it arrives: the button carries a short-lived signed token
// bound to the request and the action, and before a click counts mmgate
// asks Mattermost, with the bot's token, that the post exists, is the bot's
// and belongs to this request, and that the clicking person is an allowed
// reviewer (directory groups asked again; the requester never approves
// their own request). Every decision, and every refused click, is in the
// audit log.
package approval

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/mmgate/mmgate/internal/account"
	"github.com/mmgate/mmgate/internal/directory"
	"github.com/mmgate/mmgate/internal/mattermost"
)

// States.
const (
	Pending  = "pending"
	Approved = "approved"
	Denied   = "denied"
	Expired  = "expired"
)

// Request is what a system asks for.
type Request struct {
	// Requester is the person asking (email or username): never a reviewer
	// of their own request.
	Requester string    `json:"requester"`
	What      string    `json:"what"`
	Reason    string    `json:"reason,omitempty"`
	Reviewers Reviewers `json:"reviewers"`
	// Required is how many approvals are needed (default 1); one denial
	// denies.
	Required int `json:"required,omitempty"`
	// ExpiresIn is a Go duration (default 24h, at most 720h).
	ExpiresIn   string `json:"expires_in,omitempty"`
	CallbackURL string `json:"callback_url,omitempty"`
}

// Reviewers say who may decide and where the request is posted: each user
// gets a direct message; the channel gets a post (and, without users or
// groups, its members may decide); group members may decide wherever they
// see the request.
type Reviewers struct {
	Users   []string `json:"users,omitempty"`   // emails or usernames
	Groups  []string `json:"groups,omitempty"`  // directory group DNs
	Channel string   `json:"channel,omitempty"` // team/channel
}

// Decision is one reviewer's answer.
type Decision struct {
	UserID   string    `json:"user_id"`
	Username string    `json:"username"`
	Decision string    `json:"decision"` // approve or deny
	Reason   string    `json:"reason,omitempty"`
	At       time.Time `json:"at"`
}

// PostRef is one copy of the request in Mattermost.
type PostRef struct {
	PostID    string `json:"post_id"`
	ChannelID string `json:"channel_id"`
	// UserID is the reviewer of a direct message ("" for the channel).
	UserID string `json:"user_id,omitempty"`
}

// Approval is a request and where it stands.
type Approval struct {
	ID          string     `json:"id"`
	Client      string     `json:"client"`
	Request     Request    `json:"request"`
	State       string     `json:"state"`
	CreatedAt   time.Time  `json:"created_at"`
	ExpiresAt   time.Time  `json:"expires_at"`
	DecidedAt   *time.Time `json:"decided_at,omitempty"`
	Decisions   []Decision `json:"decisions"`
	RequesterID string     `json:"requester_id,omitempty"`
	ReviewerIDs []string   `json:"reviewer_ids,omitempty"`
	ChannelID   string     `json:"channel_id,omitempty"`
	Posts       []PostRef  `json:"posts"`
	Callback    struct {
		Attempts  int        `json:"attempts"`
		LastError string     `json:"last_error,omitempty"`
		DoneAt    *time.Time `json:"done_at,omitempty"`
	} `json:"callback"`

	version    int64
	callbackAt int64
}

// Approvals counts the approvals given so far.
func (a *Approval) Approvals() int {
	n := 0
	for _, d := range a.Decisions {
		if d.Decision == "approve" {
			n++
		}
	}
	return n
}

func (a *Approval) decisionOf(userID string) *Decision {
	for i := range a.Decisions {
		if a.Decisions[i].UserID == userID {
			return &a.Decisions[i]
		}
	}
	return nil
}

// Mattermost is what the service needs of Mattermost, with the bot's token.
type Mattermost interface {
	Me(ctx context.Context) (*mattermost.User, error)
	User(ctx context.Context, id string) (*mattermost.User, error)
	UserByEmail(ctx context.Context, email string) (*mattermost.User, error)
	UserByUsername(ctx context.Context, username string) (*mattermost.User, error)
	DirectChannel(ctx context.Context, userA, userB string) (*mattermost.Channel, error)
	ChannelByName(ctx context.Context, team, channel string) (*mattermost.Channel, error)
	CreatePost(ctx context.Context, p *mattermost.Post) (*mattermost.Post, error)
	GetPost(ctx context.Context, id string) (*mattermost.Post, error)
	PatchPost(ctx context.Context, id, message string, props map[string]any) error
	DeletePost(ctx context.Context, id string) error
	OpenDialog(ctx context.Context, triggerID, url string, dialog map[string]any) error
	IsChannelMember(ctx context.Context, channelID, userID string) (bool, error)
}

// Directory answers group membership (nil: no groups). FreshGroups reads
// the directory at the time of the click, past any cache: someone removed
// from a reviewers' group cannot approve a minute later.
type Directory interface {
	Lookup(ctx context.Context, email string) (directory.Person, error)
	FreshGroups(ctx context.Context, p directory.Person) (directory.Groups, error)
}

// Links are the links people made with /mmgate link (account.Store).
type Links interface {
	LinksOf(ctx context.Context, userID string) ([]account.Link, error)
}

// Client is a system allowed to ask for approvals.
type Client struct {
	Name string
	// Key authenticates the client (Bearer key, or the HMAC key of its JWT).
	Key string
	// CallbackSecret signs the callbacks (default Key).
	CallbackSecret string
	// CallbackPrefixes, when set, are the only URL prefixes its
	// callback_url may start with (mmgate calls them from inside the network).
	CallbackPrefixes []string
}

// Options configure the service.
type Options struct {
	Store     *Store
	MM        Mattermost
	Directory Directory
	// Links, when set, gives the directory addresses a Mattermost account
	// proved with /mmgate link: a reviewer whose Mattermost email is not
	// the directory's is recognised by them.
	Links Links
	// SigningKey signs the buttons' tokens (at least 32 bytes).
	SigningKey []byte
	// PublicURL is mmgate's address as Mattermost reaches it.
	PublicURL string
	// SiteURL is Mattermost's, for links to the posts.
	SiteURL string
	Clients []Client
	Logger  *slog.Logger
	Now     func() time.Time
}

// Service runs approvals.
type Service struct {
	o     Options
	mu    sync.Mutex
	botID string
}

// New builds the service.
func New(o Options) (*Service, error) {
	if len(o.SigningKey) < 32 {
		return nil, errors.New("approvals: the signing key must be at least 32 bytes")
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	o.PublicURL = strings.TrimRight(o.PublicURL, "/")
	return &Service{o: o}, nil
}

func (s *Service) bot(ctx context.Context) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.botID != "" {
		return s.botID, nil
	}
	me, err := s.o.MM.Me(ctx)
	if err != nil {
		return "", fmt.Errorf("the approvals bot's token: %w", err)
	}
	s.botID = me.ID
	return me.ID, nil
}

// InvalidError is a request that can never be accepted as it is.
type InvalidError struct{ Msg string }

func (e InvalidError) Error() string { return e.Msg }

func (s *Service) lookup(ctx context.Context, who string) (*mattermost.User, error) {
	who = strings.TrimPrefix(strings.TrimSpace(who), "@")
	if strings.Contains(who, "@") {
		u, err := s.o.MM.UserByEmail(ctx, who)
		if mattermost.IsForbidden(err) {
			return nil, InvalidError{"Mattermost does not let the bot look people up by email (PrivacySettings.ShowEmailAddress is off): give " +
				who + " by username"}
		}
		return u, err
	}
	return s.o.MM.UserByUsername(ctx, who)
}

// Create stores a request and posts it to the reviewers.
func (s *Service) Create(ctx context.Context, client string, r Request) (*Approval, error) {
	r.Requester = strings.TrimSpace(r.Requester)
	r.What = strings.TrimSpace(r.What)
	switch {
	case r.Requester == "":
		return nil, InvalidError{"requester is required (email or username)"}
	case r.What == "":
		return nil, InvalidError{"what is required: what is being asked for"}
	case len(r.What) > 2000 || len(r.Reason) > 4000:
		return nil, InvalidError{"what (2000) or reason (4000 characters) is too long"}
	case len(r.Reviewers.Users) == 0 && len(r.Reviewers.Groups) == 0 && r.Reviewers.Channel == "":
		return nil, InvalidError{"reviewers: give users, groups or a channel"}
	case len(r.Reviewers.Groups) > 0 && len(r.Reviewers.Users) == 0 && r.Reviewers.Channel == "":
		return nil, InvalidError{"reviewers: groups decide who may answer; also give a channel (or users) where the request is posted"}
	case len(r.Reviewers.Groups) > 0 && s.o.Directory == nil:
		return nil, InvalidError{"reviewers.groups need directory.ldap"}
	}
	if r.Required == 0 {
		r.Required = 1
	}
	if r.Required < 1 || r.Required > 20 {
		return nil, InvalidError{"required must be between 1 and 20"}
	}
	ttl := 24 * time.Hour
	if r.ExpiresIn != "" {
		d, err := time.ParseDuration(r.ExpiresIn)
		if err != nil || d < time.Minute || d > 720*time.Hour {
			return nil, InvalidError{"expires_in must be a duration between 1m and 720h, e.g. 4h"}
		}
		ttl = d
	}
	if r.CallbackURL != "" {
		u, err := url.Parse(r.CallbackURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil {
			return nil, InvalidError{"callback_url must be an http(s) URL"}
		}
		for _, c := range s.o.Clients {
			if c.Name == client && len(c.CallbackPrefixes) > 0 {
				ok := false
				for _, p := range c.CallbackPrefixes {
					ok = ok || strings.HasPrefix(r.CallbackURL, p)
				}
				if !ok {
					return nil, InvalidError{"callback_url is not one this client may use (approvals.clients." + client + ".callback_prefixes)"}
				}
			}
		}
	}
	botID, err := s.bot(ctx)
	if err != nil {
		return nil, err
	}
	now := s.o.Now()
	a := &Approval{ID: newID(), Client: client, Request: r, State: Pending, CreatedAt: now.UTC(), ExpiresAt: now.Add(ttl).UTC(),
		Decisions: []Decision{}, Posts: []PostRef{}}
	var inv InvalidError
	if u, err := s.lookup(ctx, r.Requester); err == nil {
		a.RequesterID = u.ID
	} else if errors.As(err, &inv) {
		return nil, err
	} else if !mattermost.IsNotFound(err) {
		return nil, fmt.Errorf("looking up the requester: %w", err)
	}
	var unknown []string
	for _, who := range r.Reviewers.Users {
		u, err := s.lookup(ctx, who)
		if mattermost.IsNotFound(err) {
			unknown = append(unknown, who)
			continue
		}
		if errors.As(err, &inv) {
			return nil, err
		}
		if err != nil {
			return nil, fmt.Errorf("looking up reviewer %s: %w", who, err)
		}
		if u.ID == a.RequesterID {
			return nil, InvalidError{"the requester cannot review their own request: " + who}
		}
		a.ReviewerIDs = append(a.ReviewerIDs, u.ID)
	}
	if len(unknown) > 0 {
		return nil, InvalidError{"no Mattermost user for reviewers: " + strings.Join(unknown, ", ")}
	}
	if c := r.Reviewers.Channel; c != "" {
		team, name, ok := strings.Cut(c, "/")
		if !ok {
			return nil, InvalidError{"reviewers.channel must be team/channel"}
		}
		ch, err := s.o.MM.ChannelByName(ctx, team, name)
		if err != nil {
			if mattermost.IsNotFound(err) {
				return nil, InvalidError{"no channel " + c + " (or the bot is not in its team)"}
			}
			return nil, fmt.Errorf("looking up %s: %w", c, err)
		}
		a.ChannelID = ch.ID
	}
	// From here on a client that hangs up must not leave half a request.
	ctx = context.WithoutCancel(ctx)
	if err := s.o.Store.insert(ctx, a); err != nil {
		return nil, fmt.Errorf("storing the request: %w", err)
	}
	if err := s.post(ctx, a, botID); err != nil {
		// Nothing half-done stays: the posts made are deleted, the request
		// is forgotten, and the client may ask again.
		for _, p := range a.Posts {
			_ = s.o.MM.DeletePost(ctx, p.PostID)
		}
		_ = s.o.Store.delete(ctx, a.ID)
		return nil, err
	}
	_ = s.o.Store.audit(ctx, AuditEntry{At: now, ApprovalID: a.ID, Actor: "client " + client, Action: "create", Result: "posted",
		Detail: fmt.Sprintf("%d post(s); requester %s", len(a.Posts), r.Requester)})
	return a, nil
}

// post makes the copies: one DM per user reviewer, and the channel.
func (s *Service) post(ctx context.Context, a *Approval, botID string) error {
	var targets []PostRef
	for _, uid := range a.ReviewerIDs {
		ch, err := s.o.MM.DirectChannel(ctx, botID, uid)
		if err != nil {
			return fmt.Errorf("direct channel with a reviewer: %w", err)
		}
		targets = append(targets, PostRef{ChannelID: ch.ID, UserID: uid})
	}
	if a.ChannelID != "" {
		targets = append(targets, PostRef{ChannelID: a.ChannelID})
	}
	msg, props := s.render(a)
	for _, t := range targets {
		p, err := s.o.MM.CreatePost(ctx, &mattermost.Post{ChannelID: t.ChannelID, Message: msg, Props: props})
		if err != nil {
			return fmt.Errorf("posting the request: %w", err)
		}
		t.PostID = p.ID
		a.Posts = append(a.Posts, t)
	}
	return s.o.Store.save(ctx, a, 0)
}

// ---------------------------------------------------------------- tokens

// Buttons and the Deny dialog's state are different kinds of token: a
// dialog state (which its reviewer's client receives) must never pass as a
// button, nor a button as a dialog state.
const (
	tokenAudience  = "mmgate-approval-button"
	dialogAudience = "mmgate-approval-dialog"
)

type buttonClaims struct {
	Action string `json:"act"`
	User   string `json:"uid,omitempty"` // the deny dialog's person
	jwt.RegisteredClaims
}

func (s *Service) sign(id, action, user string, exp time.Time) string {
	aud := tokenAudience
	if user != "" {
		aud = dialogAudience
	}
	t, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, buttonClaims{Action: action, User: user,
		RegisteredClaims: jwt.RegisteredClaims{Subject: id, Audience: jwt.ClaimStrings{aud},
			ExpiresAt: jwt.NewNumericDate(exp), IssuedAt: jwt.NewNumericDate(s.o.Now())}}).SignedString(s.o.SigningKey)
	return t
}

func (s *Service) verify(tok, audience string) (*buttonClaims, error) {
	var c buttonClaims
	_, err := jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithAudience(audience), jwt.WithExpirationRequired(),
		jwt.WithTimeFunc(s.o.Now)).ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) { return s.o.SigningKey, nil })
	if err != nil {
		return nil, err
	}
	if c.Subject == "" || (c.Action != "approve" && c.Action != "deny") || (audience == tokenAudience) != (c.User == "") {
		return nil, errors.New("token for no request or action")
	}
	return &c, nil
}
