package app

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sort"

	"github.com/mmgate/mmgate/internal/account"
	"github.com/mmgate/mmgate/internal/config"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/relay"
)

// OpenAccounts opens the store of links and subscriptions (accounts.db).
func OpenAccounts(ctx context.Context, cfg config.Config) (*account.Store, error) {
	db, err := OpenSideDB(cfg, "accounts.db")
	if err != nil {
		return nil, fmt.Errorf("accounts: %w", err)
	}
	st, err := account.Open(ctx, db)
	if err != nil {
		_ = db.Close()
	}
	return st, err
}

// startAccounts builds what answers /mmgate link, unlink, subscribe and
// unsubscribe, and the link page's routes (none without the sign-in bridge).
func (s *Server) startAccounts(ctx context.Context, cfg config.Config, rel *relay.Relay,
	clients map[string]*mattermost.Client, log *slog.Logger) (map[string]http.Handler, error) {
	apps := map[string]account.App{}
	for name, a := range cfg.Apps {
		apps[name] = account.App{DisplayName: a.DisplayName, Subscribable: a.AllowSubscribe,
			Restricted: a.AllowGroup != "" || a.DenyGroup != "" || cfg.Directory.DenyGroup != ""}
	}
	users := anyClient(clients)
	o := account.Options{Store: s.accounts, Users: users, Apps: apps, MayReceive: rel.MayReceive, Notify: users.notify, Logger: log}
	switch {
	case s.bridge != nil && cfg.SSO.Upstream == "oidc" && cfg.SSO.OIDC.AllowUnverifiedEmail:
		// Anyone could then claim an address they do not own.
		o.Off = "sso.oidc.allow_unverified_email is on, so a sign-in does not prove that an email address is yours. " +
			"Ask your Mattermost admin to give your account your directory email address instead."
	case s.bridge != nil:
		key, err := s.sharedKey(ctx, "account_link_key")
		if err != nil {
			return nil, err
		}
		o.Bridge, o.Issuer, o.Key = s.bridge, cfg.SSO.Issuer, key
	}
	s.accountSvc = account.New(o)
	return s.accountSvc.Routes(), nil
}

// anyClient returns the first app's Mattermost client (by name), to ask
// Mattermost about users with a bot's token.
func anyClient(clients map[string]*mattermost.Client) usersByID {
	names := make([]string, 0, len(clients))
	for n := range clients {
		names = append(names, n)
	}
	sort.Strings(names)
	if len(names) == 0 {
		return usersByID{}
	}
	return usersByID{clients[names[0]]}
}

// usersByID asks Mattermost for users with an app bot's token.
type usersByID struct{ c *mattermost.Client }

var errNoBot = errors.New("no app bot to ask Mattermost with")

func (u usersByID) User(ctx context.Context, id string) (*mattermost.User, error) {
	if u.c == nil {
		return nil, errNoBot
	}
	return u.c.User(ctx, id)
}

func (u usersByID) UserByEmail(ctx context.Context, email string) (*mattermost.User, error) {
	if u.c == nil {
		return nil, errNoBot
	}
	return u.c.UserByEmail(ctx, email)
}

// notify sends userID a direct message from the bot.
func (u usersByID) notify(ctx context.Context, userID, text string) error {
	if u.c == nil {
		return errNoBot
	}
	me, err := u.c.Me(ctx)
	if err != nil {
		return err
	}
	ch, err := u.c.DirectChannel(ctx, me.ID, userID)
	if err != nil {
		return err
	}
	_, err = u.c.CreatePost(ctx, &mattermost.Post{ChannelID: ch.ID, Message: text})
	return err
}

// sharedKey is a 32-byte key kept in the secret store under name, made on
// first use: every replica uses the same one.
func (s *Server) sharedKey(ctx context.Context, name string) ([]byte, error) {
	sec, err := s.secretStore(ctx)
	if err != nil {
		return nil, err
	}
	v, err := sec.GetOrCreate(ctx, name, func() (string, error) { return randomSecret(), nil })
	if err != nil {
		return nil, err
	}
	key, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fmt.Errorf("the stored key %s: %w", name, err)
	}
	return key, nil
}

// randomSecret is 32 random bytes in base64.
func randomSecret() string {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return base64.StdEncoding.EncodeToString(b)
}
