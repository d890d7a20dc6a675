package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"

	"github.com/mmgate/mmgate/internal/account"
	"github.com/mmgate/mmgate/internal/config"
	ldapdir "github.com/mmgate/mmgate/internal/directory/ldap"
	"github.com/mmgate/mmgate/internal/sso"
)

// ldapPasswords checks sign-in passwords against the LDAP directory.
type ldapPasswords struct {
	d    *ldapdir.Directory
	opts ldapdir.AuthOptions
}

func (l ldapPasswords) CheckPassword(ctx context.Context, login, password string) (sso.Profile, error) {
	a, err := l.d.Authenticate(ctx, login, password, l.opts)
	if err != nil {
		return sso.Profile{}, ldapError(err)
	}
	return ldapProfile(a), nil
}

// Refresh reads the account again on a sign-in from mmgate's session.
func (l ldapPasswords) Refresh(ctx context.Context, subject string) (sso.Profile, error) {
	id, ok := strings.CutPrefix(subject, "ldap:")
	if !ok {
		return sso.Profile{}, sso.ErrBadCredentials
	}
	a, err := l.d.AccountByID(ctx, id, l.opts)
	if err != nil {
		return sso.Profile{}, ldapError(err)
	}
	return ldapProfile(a), nil
}

func ldapProfile(a ldapdir.Account) sso.Profile {
	return sso.Profile{Subject: "ldap:" + a.ID, Username: a.Username, Email: a.Email, Name: a.DisplayName}
}

func ldapError(err error) error {
	var wp *ldapdir.WrongPasswordError
	var ue *ldapdir.UnusableError
	switch {
	case errors.As(err, &wp):
		account := "ldap:" + wp.ID // the key a right password's Profile.Subject has
		if wp.ID == "" {
			account = wp.DN
		}
		return sso.WrongPassword{Account: account}
	case errors.Is(err, ldapdir.ErrBadCredentials):
		return sso.ErrBadCredentials
	case errors.As(err, &ue):
		return sso.AccountError{Reason: ue.Reason}
	}
	return err
}

// OpenSSOStore opens the sign-in bridge's store (sso.db).
func OpenSSOStore(ctx context.Context, cfg config.Config) (*sso.Store, error) {
	db, err := OpenSideDB(cfg, "sso.db")
	if err != nil {
		return nil, fmt.Errorf("sso: %w", err)
	}
	return sso.NewStore(ctx, db)
}

// startSSO builds the sign-in bridge's routes (nil when it is off).
func (s *Server) startSSO(ctx context.Context, cfg config.Config, log *slog.Logger) (map[string]http.Handler, error) {
	c := cfg.SSO
	if !c.Enabled {
		return nil, nil
	}
	st, err := OpenSSOStore(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.ssoStore = st
	o := sso.Options{Issuer: c.Issuer, Organization: c.Organization, LogoURL: c.LogoURL, Store: st,
		SessionTTL: c.SessionTTL, CodeTTL: c.CodeTTL, TokenTTL: c.TokenTTL, LoginAttempts: c.LoginAttempts,
		Logger: log}
	if o.TrustedProxies, err = c.TrustedPrefixes(); err != nil {
		return nil, err
	}
	for i, cl := range c.Clients {
		secret, err := cl.Secret.Resolve()
		if err != nil {
			return nil, fmt.Errorf("sso.clients[%d].secret: %w", i, err)
		}
		o.Clients = append(o.Clients, sso.ClientConfig{ID: cl.ID, Secret: secret, RedirectURIs: cl.RedirectURIs})
	}
	switch c.Upstream {
	case "ldap":
		ld, ok := s.dir.(*ldapdir.Directory)
		if !ok {
			return nil, errors.New("sso.upstream ldap needs directory.ldap")
		}
		o.Passwords = ldapPasswords{d: ld, opts: ldapdir.AuthOptions{LoginAttributes: c.LDAP.LoginAttributes,
			UsernameAttribute: c.LDAP.UsernameAttribute}}
	case "oidc":
		secret, err := c.OIDC.ClientSecret.Resolve()
		if err != nil {
			return nil, fmt.Errorf("sso.oidc.client_secret: %w", err)
		}
		o.Upstream = sso.NewOIDCUpstream(sso.OIDCUpstreamConfig{Issuer: c.OIDC.Issuer, ClientID: c.OIDC.ClientID,
			ClientSecret: secret, RedirectURI: c.Issuer + "/sso/upstream/callback", Scopes: c.OIDC.Scopes,
			Claims:               sso.ClaimNames{Username: c.OIDC.UsernameClaim, Email: c.OIDC.EmailClaim, Name: c.OIDC.NameClaim},
			AllowUnverifiedEmail: c.OIDC.AllowUnverifiedEmail})
	}
	// The /mmgate link page signs people in as a client of its own; its
	// secret is never used (the page redeems its codes in-process).
	for _, cl := range o.Clients {
		if cl.ID == account.ClientID {
			return nil, fmt.Errorf("sso.clients: the client id %s is mmgate's own (the /mmgate link page); choose another", cl.ID)
		}
	}
	o.Clients = append(o.Clients, sso.ClientConfig{ID: account.ClientID, Secret: randomSecret(),
		RedirectURIs: []string{c.Issuer + account.CallbackPath}})
	b, err := sso.New(ctx, o)
	if err != nil {
		return nil, err
	}
	s.bridge = b
	pctx, cancel := context.WithCancel(context.Background())
	s.stopSSO = cancel
	go every(pctx, 10*time.Minute, func(ctx context.Context) {
		if err := b.Purge(ctx); err != nil {
			log.Warn("sso: purging expired sign-ins", "err", err)
		}
	})
	return b.Routes(), nil
}
