package account

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/sso"
)

// ClientID is the sign-in bridge client of the link page.
const ClientID = "mmgate-link"

// CallbackPath is where the bridge sends the link page's code.
const CallbackPath = "/link/callback"

// Users is what the service asks Mattermost (with a bot's token).
type Users interface {
	User(ctx context.Context, id string) (*mattermost.User, error)
	UserByEmail(ctx context.Context, email string) (*mattermost.User, error)
}

// Redeemer turns the sign-in bridge's code into the person who signed in
// (sso.Bridge).
type Redeemer interface {
	Redeem(ctx context.Context, clientID, redirectURI, code string) (sso.Identity, error)
}

// App is an app as the commands show it.
type App struct {
	DisplayName string
	// Subscribable apps allow /mmgate subscribe.
	Subscribable bool
	// Restricted apps have allow or deny groups (or the global deny group
	// applies): subscribers must have proven their directory identity.
	Restricted bool
}

// Options configure a Service.
type Options struct {
	Store *Store
	Users Users
	Apps  map[string]App
	// MayReceive applies an app's allow and deny groups (and the global deny
	// group) to a directory address; why says why not.
	MayReceive func(ctx context.Context, app, email string) (ok bool, why string, err error)
	// Bridge is the sign-in bridge and Issuer its public URL; without them
	// linking is off, and Off says why when it is not the missing bridge.
	Bridge Redeemer
	Issuer string
	Off    string
	// Notify sends a person a direct message from mmgate (an app's bot):
	// who linked an address is told, and so is whoever its mail reached
	// before. nil: nobody is told.
	Notify func(ctx context.Context, userID, text string) error
	// Key signs the confirmation form (shared by replicas).
	Key []byte
	// CodeTTL is how long a link code works (default 10 minutes).
	CodeTTL time.Duration
	Logger  *slog.Logger
}

// Service answers the link and subscribe commands and serves the link page.
type Service struct {
	o Options
}

// New returns a service.
func New(o Options) *Service {
	if o.CodeTTL <= 0 {
		o.CodeTTL = 10 * time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	o.Issuer = strings.TrimRight(o.Issuer, "/")
	return &Service{o: o}
}

// unavailable is shown when Mattermost or the store does not answer.
func unavailable(what string) string {
	return "mmgate cannot " + what + " right now; try again in a minute."
}

func (s *Service) user(ctx context.Context, userID string) (*mattermost.User, error) {
	if userID == "" {
		return nil, errors.New("the command came without a user id")
	}
	return s.o.Users.User(ctx, userID)
}

// Link answers `/mmgate link`: a one-time link to the sign-in page.
func (s *Service) Link(ctx context.Context, userID string) string {
	if s.o.Bridge == nil {
		if s.o.Off != "" {
			return "Linking is off in this mmgate: " + s.o.Off
		}
		return "Linking needs mmgate's sign-in (`sso` in its configuration), which is not set up here. " +
			"Ask your Mattermost admin to give your account your directory email address instead."
	}
	u, err := s.user(ctx, userID)
	if err != nil {
		s.o.Logger.Error("accounts: asking Mattermost who typed /mmgate link", "err", err)
		return unavailable("read your Mattermost account")
	}
	code, err := s.o.Store.NewCode(ctx, u.ID, u.Username, s.o.CodeTTL)
	if err != nil {
		s.o.Logger.Error("accounts: recording a link code", "err", err)
		return unavailable("start a link")
	}
	var b strings.Builder
	fmt.Fprintf(&b, "#### Link your directory identity to @%s\n", u.Username)
	fmt.Fprintf(&b, "[Open this link](%s/link/%s) within %s and sign in with your directory account. ", s.o.Issuer, code, minutes(s.o.CodeTTL))
	fmt.Fprintf(&b, "Mail addressed to you there will then reach this Mattermost account, whatever its email.\n\n")
	fmt.Fprintf(&b, "The link works once and only for @%s. Do not share it: whoever signs in with it sends their mail here.", u.Username)
	if links, err := s.o.Store.LinksOf(ctx, u.ID); err == nil && len(links) > 0 {
		fmt.Fprintf(&b, "\n\nAlready linked: %s.", emails(links))
	}
	return b.String()
}

// Unlink answers `/mmgate unlink`.
func (s *Service) Unlink(ctx context.Context, userID string) string {
	links, err := s.o.Store.Unlink(ctx, userID)
	if err != nil {
		s.o.Logger.Error("accounts: removing links", "err", err)
		return unavailable("remove your link")
	}
	if len(links) == 0 {
		return "Your account has no link to a directory identity. `/mmgate link` makes one."
	}
	s.o.Logger.Info("accounts: unlinked", "user_id", userID, "emails", emails(links))
	return fmt.Sprintf("Unlinked. Mail for %s no longer comes to this account: it goes to the Mattermost account "+
		"with that email, if there is one.", emails(links))
}

func emails(links []Link) string {
	var out []string
	for _, l := range links {
		out = append(out, l.Email)
	}
	return strings.Join(out, ", ")
}

func minutes(d time.Duration) string {
	if m := int(d.Round(time.Minute) / time.Minute); m > 1 {
		return fmt.Sprintf("%d minutes", m)
	}
	return "a minute"
}

func (s *Service) appName(name string) string {
	if a := s.o.Apps[name]; a.DisplayName != "" {
		return "**" + a.DisplayName + "** (`" + name + "`)"
	}
	return "`" + name + "`"
}

// subscribable lists the apps that allow subscribing.
func (s *Service) subscribable() []string {
	var out []string
	for n, a := range s.o.Apps {
		if a.Subscribable {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}

func (s *Service) choices() string {
	apps := s.subscribable()
	if len(apps) == 0 {
		return "No app in this mmgate allows subscribing."
	}
	var names []string
	for _, a := range apps {
		names = append(names, s.appName(a))
	}
	return "Apps you can subscribe to: " + strings.Join(names, ", ") + "."
}

// Subscribe answers `/mmgate subscribe [APP]`.
func (s *Service) Subscribe(ctx context.Context, userID, app string) string {
	app = strings.ToLower(strings.TrimSpace(app))
	if app == "" {
		subs, err := s.o.Store.SubscriptionsOf(ctx, userID)
		if err != nil {
			s.o.Logger.Error("accounts: listing subscriptions", "err", err)
			return unavailable("list your subscriptions")
		}
		text := s.choices()
		if len(subs) > 0 {
			var names []string
			for _, sub := range subs {
				names = append(names, s.appName(sub.App))
			}
			text += "\n\nYou are subscribed to " + strings.Join(names, ", ") + "."
		}
		return text + "\n\n`/mmgate subscribe APP` sends you every message of that app as a direct message."
	}
	if a, ok := s.o.Apps[app]; !ok || !a.Subscribable {
		what := "mmgate has no app `" + app + "`."
		if ok {
			what = s.appName(app) + " does not allow subscribing: its messages go to the people they are addressed to."
		}
		return what + " " + s.choices()
	}
	u, err := s.user(ctx, userID)
	if err != nil {
		s.o.Logger.Error("accounts: asking Mattermost who typed /mmgate subscribe", "err", err)
		return unavailable("read your Mattermost account")
	}
	// The app's groups are checked against the directory identity the
	// account proved with /mmgate link. Its Mattermost email proves nothing:
	// people can change it themselves.
	email := ""
	links, err := s.o.Store.LinksOf(ctx, u.ID)
	if err != nil {
		s.o.Logger.Error("accounts: reading links", "err", err)
		return unavailable("read your link")
	}
	if len(links) > 0 {
		email = links[0].Email
	}
	if s.o.Apps[app].Restricted && email == "" {
		return fmt.Sprintf("%s only reaches some directory groups, so mmgate must know who you are in the directory: "+
			"prove it with `/mmgate link`, then subscribe again.", s.appName(app))
	}
	if s.o.MayReceive != nil && email != "" {
		ok, why, err := s.o.MayReceive(ctx, app, email)
		if err != nil {
			s.o.Logger.Error("accounts: checking the app's groups", "app", app, "err", err)
			return unavailable("check the app's groups in the directory")
		}
		if !ok {
			return fmt.Sprintf("You cannot subscribe to %s: %s (checked for %s).", s.appName(app), why, email)
		}
	}
	fresh, err := s.o.Store.Subscribe(ctx, Subscriber{App: app, UserID: u.ID, Username: u.Username, Email: email})
	if err != nil {
		s.o.Logger.Error("accounts: recording a subscription", "err", err)
		return unavailable("record your subscription")
	}
	if !fresh {
		return fmt.Sprintf("You are already subscribed to %s. `/mmgate unsubscribe %s` stops it.", s.appName(app), app)
	}
	s.o.Logger.Info("accounts: subscribed", "app", app, "user", u.Username)
	return fmt.Sprintf("Subscribed: every message of %s now also comes to you as a direct message from its bot. "+
		"`/mmgate unsubscribe %s` stops them.", s.appName(app), app)
}

// Unsubscribe answers `/mmgate unsubscribe APP`.
func (s *Service) Unsubscribe(ctx context.Context, userID, app string) string {
	app = strings.ToLower(strings.TrimSpace(app))
	if app == "" {
		return "Say which app: `/mmgate unsubscribe APP`. `/mmgate subscribe` lists yours."
	}
	gone, err := s.o.Store.Unsubscribe(ctx, app, userID)
	if err != nil {
		s.o.Logger.Error("accounts: ending a subscription", "err", err)
		return unavailable("end your subscription")
	}
	if !gone {
		return fmt.Sprintf("You are not subscribed to %s.", s.appName(app))
	}
	s.o.Logger.Info("accounts: unsubscribed", "app", app, "user_id", userID)
	return fmt.Sprintf("Unsubscribed from %s: its messages no longer come to you, unless they are addressed to you.", s.appName(app))
}

// authorizeURL is the bridge's sign-in for the link page, with state.
func (s *Service) authorizeURL(state string) string {
	q := url.Values{}
	q.Set("client_id", ClientID)
	q.Set("redirect_uri", s.o.Issuer+CallbackPath)
	q.Set("response_type", "code")
	q.Set("scope", "read_user")
	q.Set("state", state)
	// A password now, not an old session: linking moves the person's mail.
	q.Set("prompt", "login")
	return s.o.Issuer + "/oauth/authorize?" + q.Encode()
}
