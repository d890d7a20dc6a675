package sso

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/pkg/client/rp"
	"github.com/zitadel/oidc/v3/pkg/oidc"
	"golang.org/x/oauth2"
)

// OIDCUpstream is the organisation's OpenID Connect platform. Its
// discovery document is read at the first sign-in (and again after a
// failure), so that a platform that is down when mmgate starts costs the
// sign-ins, never the mail intake.
type OIDCUpstream struct {
	cfg    OIDCUpstreamConfig
	issuer string
	claims ClaimNames

	mu    sync.Mutex
	party rp.RelyingParty
}

// ClaimNames say where the username, email and display name are.
type ClaimNames struct {
	Username, Email, Name string
}

// OIDCUpstreamConfig configures NewOIDCUpstream.
type OIDCUpstreamConfig struct {
	Issuer       string
	ClientID     string
	ClientSecret string
	// RedirectURI is mmgate's ISSUER/sso/upstream/callback.
	RedirectURI string
	Scopes      []string
	Claims      ClaimNames
	// AllowUnverifiedEmail accepts an email the platform marks
	// email_verified=false.
	AllowUnverifiedEmail bool
}

type nonceKey struct{}

// nonceFor derives the ID token's nonce from the state, which only this
// browser (its cookie) and mmgate know.
func nonceFor(state string) string {
	h := sha256.Sum256([]byte("mmgate-nonce\x00" + state))
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// NewOIDCUpstream configures the upstream; it does not connect.
func NewOIDCUpstream(c OIDCUpstreamConfig) *OIDCUpstream {
	if len(c.Scopes) == 0 {
		c.Scopes = []string{oidc.ScopeOpenID, oidc.ScopeProfile, oidc.ScopeEmail}
	}
	if c.Claims.Username == "" {
		c.Claims.Username = "preferred_username"
	}
	if c.Claims.Email == "" {
		c.Claims.Email = "email"
	}
	if c.Claims.Name == "" {
		c.Claims.Name = "name"
	}
	return &OIDCUpstream{cfg: c, issuer: strings.TrimRight(c.Issuer, "/"), claims: c.Claims}
}

// relyingParty reads the discovery document once it can.
func (u *OIDCUpstream) relyingParty(ctx context.Context) (rp.RelyingParty, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.party != nil {
		return u.party, nil
	}
	c := u.cfg
	dctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	party, err := rp.NewRelyingPartyOIDC(dctx, c.Issuer, c.ClientID, c.ClientSecret, c.RedirectURI, c.Scopes,
		rp.WithHTTPClient(&http.Client{Timeout: 30 * time.Second}),
		rp.WithVerifierOpts(rp.WithNonce(func(ctx context.Context) string {
			n, _ := ctx.Value(nonceKey{}).(string)
			return n
		})))
	if err != nil {
		return nil, fmt.Errorf("the upstream provider %s: %w", c.Issuer, err)
	}
	u.party = party
	return party, nil
}

// AuthURL implements Redirector.
func (u *OIDCUpstream) AuthURL(ctx context.Context, state string, forceLogin bool) (string, error) {
	party, err := u.relyingParty(ctx)
	if err != nil {
		return "", err
	}
	params := func() []oauth2.AuthCodeOption {
		o := []oauth2.AuthCodeOption{oauth2.SetAuthURLParam("nonce", nonceFor(state))}
		if forceLogin {
			o = append(o, oauth2.SetAuthURLParam("prompt", "login"), oauth2.SetAuthURLParam("max_age", "0"))
		}
		return o
	}
	return rp.AuthURL(state, party, params), nil
}

// Exchange implements Redirector: it redeems the code, verifies the ID
// token (signature, issuer, audience, expiry, nonce) and reads the claims,
// asking the userinfo endpoint for what the ID token leaves out.
func (u *OIDCUpstream) Exchange(ctx context.Context, code, state string) (Profile, error) {
	if code == "" {
		return Profile{}, errors.New("the upstream sent no code")
	}
	party, err := u.relyingParty(ctx)
	if err != nil {
		return Profile{}, err
	}
	ctx = context.WithValue(ctx, nonceKey{}, nonceFor(state))
	tokens, err := rp.CodeExchange[*oidc.IDTokenClaims](ctx, code, party)
	if err != nil {
		return Profile{}, fmt.Errorf("code exchange: %w", err)
	}
	c := tokens.IDTokenClaims
	if c == nil || c.Subject == "" {
		return Profile{}, errors.New("the upstream's ID token names no subject")
	}
	claims := map[string]any{}
	for k, v := range c.Claims {
		claims[k] = v
	}
	get := func(name string) string {
		s, _ := claims[name].(string)
		return strings.TrimSpace(s)
	}
	if get(u.claims.Email) == "" || get(u.claims.Username) == "" {
		info, err := rp.Userinfo[*oidc.UserInfo](ctx, tokens.AccessToken, tokens.TokenType, c.Subject, party)
		if err != nil {
			return Profile{}, fmt.Errorf("userinfo: %w", err)
		}
		for k, v := range info.Claims {
			claims[k] = v
		}
	}
	p := Profile{Subject: "oidc:" + u.issuer + "#" + c.Subject, Username: strings.ToLower(get(u.claims.Username)),
		Email: strings.ToLower(get(u.claims.Email)), Name: get(u.claims.Name)}
	if p.Email == "" {
		return Profile{}, AccountError{Reason: fmt.Sprintf("the sign-in service gave no email address (claim %q), which Mattermost needs", u.claims.Email)}
	}
	// Mattermost marks the address verified: never hand it one the
	// platform says it has not verified (someone could claim another's).
	if unverified(claims["email_verified"]) && !u.cfg.AllowUnverifiedEmail {
		return Profile{}, AccountError{Reason: "the sign-in service has not verified your email address " + p.Email}
	}
	if p.Username == "" {
		p.Username, _, _ = strings.Cut(p.Email, "@")
	}
	return p, nil
}

// unverified reports an email_verified claim that says false: a JSON
// false, or the string "false" some platforms (Cognito) send. A missing
// claim is not a refusal: many platforms only send verified addresses and
// leave it out.
func unverified(v any) bool {
	switch x := v.(type) {
	case bool:
		return !x
	case string:
		return strings.EqualFold(strings.TrimSpace(x), "false")
	}
	return false
}
