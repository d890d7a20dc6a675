// Package sso owns the sign-in bridge: an OAuth2 provider shaped like
// GitLab's (/oauth/authorize, /oauth/token, /api/v4/user), so that
// Mattermost Team Edition signs people in with the organisation's own
// accounts, and the standard OpenID Connect endpoints (discovery, JWKS,
// userinfo) for other applications, served by zitadel/oidc's op package.
//
// People prove who they are upstream: a password checked by the directory
// on mmgate's own sign-in page (PasswordChecker), or the organisation's
// OIDC/OAuth2 platform (Redirector). The bridge keeps its own session
// cookie, so that a second sign-in needs no password, and gives every person
// a numeric id that never changes (Store), whatever happens to their
// username or email.
//
// It never logs a password, a code, a token or a cookie, and stores codes,
// tokens and cookies only as hashes.
package sso

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zitadel/oidc/v3/pkg/oidc"
	"github.com/zitadel/oidc/v3/pkg/op"

	"github.com/mmgate/mmgate/internal/httpapi"
)

// Profile is what an upstream says about a person.
type Profile struct {
	// Subject is the upstream's permanent identifier, prefixed with the
	// upstream ("ldap:<entryUUID>", "oidc:<issuer>#<sub>").
	Subject  string
	Username string
	Email    string
	Name     string
}

// ErrBadCredentials is a wrong login or password.
var ErrBadCredentials = errors.New("wrong username or password")

// WrongPassword is ErrBadCredentials for a login that names an account:
// failures are also counted against the account, whichever of its names
// (uid, mail, …) was typed.
type WrongPassword struct{ Account string }

func (e WrongPassword) Error() string        { return "wrong password for " + e.Account }
func (e WrongPassword) Is(target error) bool { return target == ErrBadCredentials }

// AccountError is an account that exists but cannot sign in (no email, no
// permanent id, disabled); Reason is shown to the person.
type AccountError struct{ Reason string }

func (e AccountError) Error() string { return e.Reason }

// PasswordChecker checks a login and password (the LDAP upstream).
// ErrBadCredentials (or WrongPassword) for a wrong one, AccountError for an
// account that cannot be used; any other error means the upstream could not
// answer.
type PasswordChecker interface {
	CheckPassword(ctx context.Context, login, password string) (Profile, error)
}

// Refresher is a PasswordChecker that can read an account again by its
// subject, so that a sign-in from mmgate's session still notices an account
// that was disabled or changed. ErrBadCredentials or AccountError end the
// session.
type Refresher interface {
	Refresh(ctx context.Context, subject string) (Profile, error)
}

// Redirector signs people in at another provider (the OIDC upstream).
type Redirector interface {
	// AuthURL is where the browser is sent; state comes back to
	// /sso/upstream/callback. forceLogin asks the provider for a fresh
	// password (the client sent prompt=login or max_age). An error means
	// the provider cannot be reached.
	AuthURL(ctx context.Context, state string, forceLogin bool) (string, error)
	// Exchange turns the callback's code into a profile.
	Exchange(ctx context.Context, code, state string) (Profile, error)
}

// ClientConfig registers an application.
type ClientConfig struct {
	ID           string
	Secret       string
	RedirectURIs []string
}

// Options configure the bridge.
type Options struct {
	// Issuer is mmgate's public URL (no path).
	Issuer       string
	Organization string
	LogoURL      string
	Store        *Store
	Clients      []ClientConfig
	// Exactly one of Passwords and Upstream.
	Passwords PasswordChecker
	Upstream  Redirector
	// Defaults: 12h, 1m, 1h, 5.
	SessionTTL    time.Duration
	CodeTTL       time.Duration
	TokenTTL      time.Duration
	LoginAttempts int
	// TrustedProxies are the reverse proxies whose X-Forwarded-For names
	// the client (for the per-address limit).
	TrustedProxies []netip.Prefix
	Logger         *slog.Logger
}

// Bridge is the sign-in bridge.
type Bridge struct {
	o        Options
	st       *Store
	provider *op.Provider
	secure   bool
	limits   *limiter
	log      *slog.Logger
	flowKey  []byte
}

// requestTTL is how long a sign-in may take, from /oauth/authorize to the
// code: the request's life and its browser-binding cookie's.
const requestTTL = 30 * time.Minute

// Cookie names.
const (
	sessionCookie  = "mmgate_session"
	csrfCookie     = "mmgate_csrf"
	upstreamCookie = "mmgate_upstream"
	flowCookie     = "mmgate_flow_" // + a digest of the request id
)

// New builds the bridge; it reads (or creates) the shared keys in the store.
func New(ctx context.Context, o Options) (*Bridge, error) {
	if (o.Passwords == nil) == (o.Upstream == nil) {
		return nil, errors.New("sso: configure exactly one upstream")
	}
	o.Issuer = strings.TrimRight(o.Issuer, "/")
	if o.SessionTTL <= 0 {
		o.SessionTTL = 12 * time.Hour
	}
	if o.CodeTTL <= 0 {
		o.CodeTTL = time.Minute
	}
	if o.TokenTTL <= 0 {
		o.TokenTTL = time.Hour
	}
	if o.LoginAttempts <= 0 {
		o.LoginAttempts = 5
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Organization == "" {
		o.Organization = "your organisation"
	}
	key, err := loadCryptoKey(ctx, o.Store)
	if err != nil {
		return nil, err
	}
	signing, err := loadSigningKey(ctx, o.Store)
	if err != nil {
		return nil, err
	}
	st := &storage{st: o.Store, clients: map[string]*Client{}, codeTTL: o.CodeTTL, reqTTL: requestTTL,
		tokTTL: o.TokenTTL, signing: signing}
	for _, c := range o.Clients {
		st.clients[c.ID] = &Client{id: c.ID, secret: c.Secret, redirect: c.RedirectURIs, loginURL: o.Issuer + "/sso/login"}
	}
	cfg := &op.Config{CryptoKey: key, CodeMethodS256: true, AuthMethodPost: true,
		SupportedScopes: []string{oidc.ScopeOpenID, oidc.ScopeProfile, oidc.ScopeEmail, gitlabScope}}
	opts := []op.Option{
		op.WithCustomAuthEndpoint(op.NewEndpoint("oauth/authorize")),
		op.WithCustomTokenEndpoint(op.NewEndpoint("oauth/token")),
		op.WithCustomUserinfoEndpoint(op.NewEndpoint("oauth/userinfo")),
		op.WithCustomKeysEndpoint(op.NewEndpoint("oauth/discovery/keys")),
		op.WithCustomRevocationEndpoint(op.NewEndpoint("oauth/revoke")),
		op.WithCustomIntrospectionEndpoint(op.NewEndpoint("oauth/introspect")),
		op.WithCustomEndSessionEndpoint(op.NewEndpoint("oauth/logout")),
	}
	secure := strings.HasPrefix(o.Issuer, "https://")
	if !secure {
		opts = append(opts, op.WithAllowInsecure())
	}
	p, err := op.NewProvider(cfg, st, op.StaticIssuer(o.Issuer), opts...)
	if err != nil {
		return nil, fmt.Errorf("sso: %w", err)
	}
	fk := hmac.New(sha256.New, key[:])
	fk.Write([]byte("mmgate sign-in flow"))
	return &Bridge{o: o, st: o.Store, provider: p, secure: secure, limits: newLimiter(o.LoginAttempts), log: o.Logger,
		flowKey: fk.Sum(nil)}, nil
}

// Routes are the bridge's endpoints by ServeMux pattern.
func (b *Bridge) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"/oauth/":                               http.HandlerFunc(b.oauth),
		"GET /.well-known/openid-configuration": b.provider,
		"GET /api/v4/user":                      http.HandlerFunc(b.gitlabUser),
		"GET /sso/login":                        http.HandlerFunc(b.loginPage),
		"POST /sso/login":                       http.HandlerFunc(b.loginSubmit),
		"GET /sso/upstream/callback":            http.HandlerFunc(b.upstreamCallback),
		"GET /sso/logout":                       http.HandlerFunc(b.logoutPage),
		"POST /sso/logout":                      http.HandlerFunc(b.logoutSubmit),
	}
}

// Purge deletes expired rows; run it now and then.
func (b *Bridge) Purge(ctx context.Context) error { return b.st.Purge(ctx) }

// oauth hands /oauth/* to the provider. An authorization request without a
// scope gets read_user, as GitLab does: Mattermost sends no scope unless
// GitLabSettings.Scope is set (and must not send openid there, which would
// switch it to its paid OpenID provider).
func (b *Bridge) oauth(w http.ResponseWriter, r *http.Request) {
	switch r.URL.Path {
	case "/oauth/authorize/callback": // any method: op reads the id from a body too
		b.authorizeCallback(w, r)
		return
	case "/oauth/logout":
		b.endSession(w, r)
		return
	case "/oauth/authorize":
		if r.Method == http.MethodGet {
			q := r.URL.Query()
			if strings.TrimSpace(q.Get("scope")) == "" {
				q.Set("scope", gitlabScope)
				r2 := r.Clone(r.Context())
				r2.URL.RawQuery = q.Encode()
				r = r2
			}
		}
		w = &bindingWriter{ResponseWriter: w, b: b}
	}
	b.provider.ServeHTTP(w, r)
}

// A sign-in is bound to the browser that started it: /oauth/authorize sets
// a cookie for the new request (an HMAC of its id), and the sign-in page,
// the upstream callback and /oauth/authorize/callback refuse a browser
// without it. Otherwise whoever started a request could have someone else's
// browser complete it (by sending them the sign-in link) and take the code.

// bindingWriter sets the flow cookie when the provider redirects a new
// request to the sign-in page.
type bindingWriter struct {
	http.ResponseWriter
	b *Bridge
}

func (w *bindingWriter) WriteHeader(code int) {
	if code == http.StatusFound || code == http.StatusSeeOther {
		prefix := w.b.o.Issuer + "/sso/login?id="
		if loc := w.Header().Get("Location"); strings.HasPrefix(loc, prefix) {
			if id, err := url.QueryUnescape(strings.TrimPrefix(loc, prefix)); err == nil && id != "" {
				w.b.setCookie(w, w.b.flowName(id), w.b.flowValue(id), "/", requestTTL)
			}
		}
	}
	w.ResponseWriter.WriteHeader(code)
}

func (b *Bridge) flowName(id string) string {
	h := sha256.Sum256([]byte(id))
	return flowCookie + base64.RawURLEncoding.EncodeToString(h[:9])
}

func (b *Bridge) flowValue(id string) string {
	m := hmac.New(sha256.New, b.flowKey)
	m.Write([]byte(id))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// bound reports whether this browser started request id.
func (b *Bridge) bound(r *http.Request, id string) bool {
	c, err := r.Cookie(b.hostCookie(b.flowName(id)))
	return err == nil && hmac.Equal([]byte(c.Value), []byte(b.flowValue(id)))
}

func (b *Bridge) notThisBrowser(w http.ResponseWriter, r *http.Request) {
	b.page(w, r, http.StatusBadRequest, pageData{Notice: "This sign-in was started in another browser (or its cookie " +
		"expired). Go back to the application in this browser and choose sign in again."})
}

// authorizeCallback hands a completed sign-in to the provider, which
// redirects to the client with the code, only in the browser that started it.
func (b *Bridge) authorizeCallback(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		http.Error(w, "GET only", http.StatusMethodNotAllowed)
		return
	}
	id := r.URL.Query().Get("id")
	if id == "" || !b.bound(r, id) {
		b.notThisBrowser(w, r)
		return
	}
	b.setCookie(w, b.flowName(id), "", "/", -1)
	b.provider.ServeHTTP(w, r)
}

// endSession is OIDC's RP-initiated logout (the end_session_endpoint of the
// discovery document): it ends mmgate's session and shows the signed-out page.
func (b *Bridge) endSession(w http.ResponseWriter, r *http.Request) {
	if !b.endOwnSession(w, r) {
		return
	}
	b.page(w, r, http.StatusOK, pageData{Notice: "You are signed out of " + b.o.Organization + "."})
}

// endOwnSession deletes the session row and cookie; false (with the error
// page written) when the store failed.
func (b *Bridge) endOwnSession(w http.ResponseWriter, r *http.Request) bool {
	if s, err := r.Cookie(b.hostCookie(sessionCookie)); err == nil && s.Value != "" {
		if err := b.st.DeleteSession(r.Context(), s.Value); err != nil {
			b.log.Error("sso: ending a session", "err", err)
			b.page(w, r, http.StatusServiceUnavailable, pageData{Notice: "Signing out failed on our side. Try again."})
			return false
		}
	}
	b.setCookie(w, sessionCookie, "", "/", -1)
	return true
}

// gitlabUser is GitLab's GET /api/v4/user as Mattermost reads it: a
// numeric, non-zero, stable id, username, email and name.
func (b *Bridge) gitlabUser(w http.ResponseWriter, r *http.Request) {
	// GitLab's error shape: {"message", "error"}.
	fail := func(status int, code, msg string) {
		if status == http.StatusUnauthorized {
			w.Header().Set("WWW-Authenticate", `Bearer realm="mmgate", error="invalid_token"`)
		}
		httpapi.WriteJSON(w, status, map[string]string{"message": msg, "error": code})
	}
	auth := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || tok == "" {
		fail(http.StatusUnauthorized, "invalid_token", "401 Unauthorized: send Authorization: Bearer <access token>")
		return
	}
	plain, err := b.provider.Crypto().Decrypt(strings.TrimSpace(tok))
	if err != nil {
		fail(http.StatusUnauthorized, "invalid_token", "401 Unauthorized: the access token is not valid")
		return
	}
	tokenID, subject, _ := strings.Cut(plain, ":")
	t, err := b.st.Token(r.Context(), tokenID)
	if errors.Is(err, ErrNotFound) || (err == nil && strconv.FormatInt(t.Identity, 10) != subject) {
		fail(http.StatusUnauthorized, "invalid_token", "401 Unauthorized: the access token is unknown, revoked or expired")
		return
	}
	if err != nil {
		b.log.Error("sso: reading a token", "err", err)
		fail(http.StatusServiceUnavailable, "unavailable", "the sign-in store cannot be read; try again")
		return
	}
	if !slices.Contains(t.Scopes, gitlabScope) && !slices.Contains(t.Scopes, oidc.ScopeProfile) {
		fail(http.StatusForbidden, "insufficient_scope", "403 Forbidden: the token was not issued for read_user or profile")
		return
	}
	p, err := b.st.IdentityByID(r.Context(), t.Identity)
	if err != nil {
		b.log.Error("sso: reading an identity", "id", t.Identity, "err", err)
		fail(http.StatusServiceUnavailable, "unavailable", "the sign-in store cannot be read; try again")
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{
		"id": p.ID, "username": p.Username, "email": p.Email, "name": p.Name,
		"state": "active", "login": p.Username,
	})
}

// ------------------------------------------------------------ sign-in

func (b *Bridge) callbackURL(id string) string {
	return b.o.Issuer + "/oauth/authorize/callback?id=" + url.QueryEscape(id)
}

func (b *Bridge) unavailable(w http.ResponseWriter, r *http.Request, what string, err error) {
	b.log.Error("sso: "+what, "err", err)
	b.page(w, r, http.StatusServiceUnavailable, pageData{Notice: "Signing in failed on our side. Try again in a minute."})
}

// finish records that p signed in for request req, starts a new session
// and sends the browser on to the provider's callback, which redirects to
// the client with a code.
func (b *Bridge) finish(w http.ResponseWriter, r *http.Request, req *AuthRequest, p Profile, amr string) {
	ident, err := b.st.Upsert(r.Context(), Identity{Subject: p.Subject, Username: p.Username, Email: p.Email, Name: p.Name})
	if err != nil {
		b.unavailable(w, r, "recording a sign-in", err)
		return
	}
	now := time.Now()
	cookie := newID()
	if err := b.st.SaveSession(r.Context(), cookie, ident.ID, now, b.o.SessionTTL); err != nil {
		b.unavailable(w, r, "recording a session", err)
		return
	}
	b.setCookie(w, sessionCookie, cookie, "/", b.o.SessionTTL)
	b.complete(w, r, req, ident.ID, now, amr)
	b.log.Info("sso: signed in", "id", ident.ID, "username", ident.Username, "client", req.ClientID, "method", amr)
}

func (b *Bridge) complete(w http.ResponseWriter, r *http.Request, req *AuthRequest, identity int64, at time.Time, amr string) {
	err := b.st.CompleteRequest(r.Context(), req.ID, identity, at, []string{amr})
	if errors.Is(err, ErrNotFound) {
		b.expired(w, r)
		return
	}
	if err != nil {
		b.unavailable(w, r, "completing a sign-in", err)
		return
	}
	http.Redirect(w, r, b.callbackURL(req.ID), http.StatusSeeOther)
}

func (b *Bridge) expired(w http.ResponseWriter, r *http.Request) {
	b.page(w, r, http.StatusBadRequest, pageData{Notice: "This sign-in link has expired or was already used. " +
		"Go back to the application and choose sign in again."})
}

// request reads the authorization request the page is for, and checks
// that this browser started it.
func (b *Bridge) request(w http.ResponseWriter, r *http.Request, id string) *AuthRequest {
	if id == "" {
		b.page(w, r, http.StatusBadRequest, pageData{Notice: "Start from the application you want to use (Mattermost): " +
			"its sign-in button brings you here."})
		return nil
	}
	// The binding first: an HMAC needs no database read.
	if !b.bound(r, id) {
		b.notThisBrowser(w, r)
		return nil
	}
	req, err := b.st.Request(r.Context(), id)
	if errors.Is(err, ErrNotFound) || (err == nil && req.Done()) {
		b.expired(w, r)
		return nil
	}
	if err != nil {
		b.unavailable(w, r, "reading a sign-in request", err)
		return nil
	}
	return req
}

// session returns the signed-in identity and the session cookie, or 0.
func (b *Bridge) session(r *http.Request) (int64, time.Time, string) {
	c, err := r.Cookie(b.hostCookie(sessionCookie))
	if err != nil || c.Value == "" {
		return 0, time.Time{}, ""
	}
	id, at, err := b.st.Session(r.Context(), c.Value)
	if err != nil {
		if !errors.Is(err, ErrNotFound) {
			b.log.Error("sso: reading a session (the person is asked to sign in again)", "err", err)
		}
		return 0, time.Time{}, ""
	}
	return id, at, c.Value
}

// fromSession completes req from mmgate's session when it may; it reports
// whether it answered. With a Refresher upstream the account is read again
// first: a disabled or deleted account ends the session.
func (b *Bridge) fromSession(w http.ResponseWriter, r *http.Request, req *AuthRequest) bool {
	id, at, cookie := b.session(r)
	if id == 0 || req.forcesLogin() || (req.MaxAge != nil && time.Since(at) > time.Duration(*req.MaxAge)*time.Second) {
		return false
	}
	ref, ok := b.o.Passwords.(Refresher)
	if !ok {
		b.complete(w, r, req, id, at, "session")
		return true
	}
	ident, err := b.st.IdentityByID(r.Context(), id)
	if err != nil {
		b.unavailable(w, r, "reading the signed-in person", err)
		return true
	}
	p, err := ref.Refresh(r.Context(), ident.Subject)
	var ae AccountError
	switch {
	case errors.Is(err, ErrBadCredentials) || errors.As(err, &ae):
		b.log.Info("sso: the session's account is gone or disabled; asking for the password", "id", id, "reason", err)
		_ = b.st.DeleteSession(r.Context(), cookie)
		b.setCookie(w, sessionCookie, "", "/", -1)
		return false
	case err != nil:
		b.log.Error("sso: the directory did not answer", "err", err)
		b.form(w, r, http.StatusServiceUnavailable, req, "",
			"The directory cannot be reached right now, so you cannot be signed in. Try again in a minute.")
		return true
	}
	if _, err := b.st.Upsert(r.Context(), Identity{Subject: p.Subject, Username: p.Username, Email: p.Email, Name: p.Name}); err != nil {
		b.unavailable(w, r, "recording a sign-in", err)
		return true
	}
	b.complete(w, r, req, id, at, "session")
	return true
}

func (b *Bridge) loginPage(w http.ResponseWriter, r *http.Request) {
	req := b.request(w, r, r.URL.Query().Get("id"))
	if req == nil {
		return
	}
	if b.fromSession(w, r, req) {
		return
	}
	if slices.Contains(req.Prompt, oidc.PromptNone) {
		u, _ := url.Parse(req.RedirectURI)
		q := u.Query()
		q.Set("error", "login_required")
		q.Set("state", req.State)
		u.RawQuery = q.Encode()
		b.setCookie(w, b.flowName(req.ID), "", "/", -1)
		http.Redirect(w, r, u.String(), http.StatusFound)
		return
	}
	if b.o.Upstream != nil {
		state := newID()
		if err := b.st.SetUpstreamState(r.Context(), req.ID, state); errors.Is(err, ErrNotFound) {
			b.expired(w, r)
			return
		} else if err != nil {
			b.unavailable(w, r, "recording the upstream state", err)
			return
		}
		to, err := b.o.Upstream.AuthURL(r.Context(), state, req.forcesLogin())
		if err != nil {
			b.log.Error("sso: the upstream provider cannot be reached", "err", err)
			b.page(w, r, http.StatusServiceUnavailable, pageData{Notice: "The " + b.o.Organization +
				" sign-in service cannot be reached right now. Try again in a minute."})
			return
		}
		b.setCookie(w, upstreamCookie, state, "/sso/upstream/", 15*time.Minute)
		http.Redirect(w, r, to, http.StatusFound)
		return
	}
	b.form(w, r, http.StatusOK, req, req.LoginHint, "")
}

// form renders the password page. Its CSRF token is derived from the
// request (an HMAC no other site can compute), not stored in a cookie that
// each drawing of the form would replace: a second tab, or Back, keeps
// working. The flow cookie already ties the request to this browser.
func (b *Bridge) form(w http.ResponseWriter, r *http.Request, status int, req *AuthRequest, login, errMsg string) {
	b.page(w, r, status, pageData{Form: true, RequestID: req.ID, CSRF: b.formToken(req.ID), Login: login, Error: errMsg})
}

func (b *Bridge) formToken(id string) string {
	m := hmac.New(sha256.New, b.flowKey)
	m.Write([]byte("csrf\x00" + id))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (b *Bridge) loginSubmit(w http.ResponseWriter, r *http.Request) {
	if b.o.Passwords == nil {
		http.Error(w, "passwords are checked by the upstream provider", http.StatusMethodNotAllowed)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	if err := r.ParseForm(); err != nil {
		b.page(w, r, http.StatusBadRequest, pageData{Notice: "The form could not be read. Go back and try again."})
		return
	}
	req := b.request(w, r, r.PostForm.Get("id"))
	if req == nil {
		return
	}
	if !hmac.Equal([]byte(b.formToken(req.ID)), []byte(r.PostForm.Get("csrf"))) {
		b.form(w, r, http.StatusForbidden, req, "", "This form expired or was not sent from this page. Enter your password again.")
		return
	}
	login, password := strings.TrimSpace(r.PostForm.Get("login")), r.PostForm.Get("password")
	if login == "" || password == "" {
		b.form(w, r, http.StatusBadRequest, req, login, "Enter your username or email and your password.")
		return
	}
	ip := b.clientIP(r)
	limited := func(wait time.Duration) {
		secs := int(wait.Seconds() + 0.999)
		w.Header().Set("Retry-After", strconv.Itoa(secs))
		b.log.Warn("sso: sign-in attempts limited", "login", login, "ip", ip)
		b.form(w, r, http.StatusTooManyRequests, req, login,
			fmt.Sprintf("Too many sign-in attempts. Wait %d seconds, then try again.", secs))
	}
	// An attempt is reserved before the password is checked, so that
	// parallel guesses cannot all pass the limit; a right password gives it back.
	release, wait := b.limits.take("i\x00"+ip, "u\x00"+strings.ToLower(login))
	if wait > 0 {
		limited(wait)
		return
	}
	p, err := b.o.Passwords.CheckPassword(r.Context(), login, password)
	var wp WrongPassword
	var ae AccountError
	account := ""
	if errors.As(err, &wp) {
		account = wp.Account
	} else if err == nil {
		account = p.Subject
	}
	// The account's own budget covers every name it can be typed as; once
	// spent, even the right password waits, so that it is not revealed.
	if account != "" {
		if wait := b.limits.gate("a\x00"+account, errors.Is(err, ErrBadCredentials)); wait > 0 {
			limited(wait)
			return
		}
	}
	switch {
	case errors.Is(err, ErrBadCredentials):
		b.log.Info("sso: wrong password", "login", login, "ip", ip)
		b.form(w, r, http.StatusUnauthorized, req, login, "Wrong username or password.")
		return
	case errors.As(err, &ae):
		release()
		b.log.Warn("sso: an account that cannot sign in", "login", login, "reason", ae.Reason)
		b.form(w, r, http.StatusForbidden, req, login, "Your account cannot be used to sign in: "+ae.Reason+". Ask your administrator.")
		return
	case err != nil:
		release()
		b.log.Error("sso: the directory did not answer", "err", err)
		b.form(w, r, http.StatusServiceUnavailable, req, login,
			"The directory cannot be reached right now, so your password cannot be checked. Try again in a minute.")
		return
	}
	release()
	b.finish(w, r, req, p, "pwd")
}

func (b *Bridge) upstreamCallback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state := q.Get("state")
	c, err := r.Cookie(upstreamCookie)
	if state == "" || err != nil || subtle.ConstantTimeCompare([]byte(c.Value), []byte(state)) != 1 {
		b.page(w, r, http.StatusBadRequest, pageData{Notice: "This answer from the sign-in service does not belong to a sign-in " +
			"started in this browser. Go back to the application and choose sign in again."})
		return
	}
	req, err := b.st.RequestByUpstreamState(r.Context(), state)
	if err != nil && !errors.Is(err, ErrNotFound) {
		b.unavailable(w, r, "reading a sign-in request", err)
		return
	}
	if err != nil || req.Done() {
		b.expired(w, r)
		return
	}
	if !b.bound(r, req.ID) {
		b.notThisBrowser(w, r)
		return
	}
	b.setCookie(w, upstreamCookie, "", "/sso/upstream/", -1)
	if e := q.Get("error"); e != "" {
		b.log.Info("sso: the upstream refused", "error", e, "description", q.Get("error_description"))
		b.page(w, r, http.StatusUnauthorized, pageData{Notice: "The sign-in service did not sign you in (" + e + "). " +
			"Go back to the application and try again."})
		return
	}
	p, err := b.o.Upstream.Exchange(r.Context(), q.Get("code"), state)
	var ae AccountError
	if errors.As(err, &ae) {
		b.log.Warn("sso: an upstream account that cannot sign in", "reason", ae.Reason)
		b.page(w, r, http.StatusForbidden, pageData{Notice: "Your account cannot be used to sign in: " + ae.Reason + ". Ask your administrator."})
		return
	}
	if err != nil {
		b.log.Error("sso: the upstream exchange failed", "err", err)
		b.page(w, r, http.StatusBadGateway, pageData{Notice: "The sign-in service's answer could not be verified. " +
			"Go back to the application and try again; if it keeps failing, tell your administrator."})
		return
	}
	b.finish(w, r, req, p, "oidc")
}

// logoutPage shows a sign-out button (a GET must not sign out: any page
// could link to it); logoutSubmit signs out.
func (b *Bridge) logoutPage(w http.ResponseWriter, r *http.Request) {
	if id, _, _ := b.session(r); id == 0 {
		b.page(w, r, http.StatusOK, pageData{Notice: "You are signed out of " + b.o.Organization + "."})
		return
	}
	csrf := newID()
	b.setCookie(w, csrfCookie, csrf, "/sso/", time.Hour)
	b.page(w, r, http.StatusOK, pageData{Logout: true, CSRF: csrf})
}

func (b *Bridge) logoutSubmit(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	_ = r.ParseForm()
	c, err := r.Cookie(csrfCookie)
	if err != nil || c.Value == "" || subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostForm.Get("csrf"))) != 1 {
		b.page(w, r, http.StatusForbidden, pageData{Notice: "This form expired. Open the sign-out page again."})
		return
	}
	if !b.endOwnSession(w, r) {
		return
	}
	b.page(w, r, http.StatusOK, pageData{Notice: "You are signed out of " + b.o.Organization + "."})
}

// setCookie sets an HttpOnly, SameSite=Lax cookie, Secure whenever mmgate
// is served over https. maxAge < 0 deletes it.
func (b *Bridge) setCookie(w http.ResponseWriter, name, value, path string, maxAge time.Duration) {
	if path == "/" {
		name = b.hostCookie(name)
	}
	c := &http.Cookie{Name: name, Value: value, Path: path, HttpOnly: true, Secure: b.secure, SameSite: http.SameSiteLaxMode}
	if maxAge < 0 {
		c.MaxAge = -1
	} else {
		c.MaxAge = int(maxAge.Seconds())
	}
	http.SetCookie(w, c)
}

// hostCookie names a Path=/ cookie: over https with the __Host- prefix,
// which browsers accept only from this very host (Secure, no Domain), so
// that a sibling subdomain cannot plant a session or flow cookie.
func (b *Bridge) hostCookie(name string) string {
	if b.secure {
		return "__Host-" + name
	}
	return name
}

// clientIP is the connection's address or, behind a trusted proxy, the
// last address in X-Forwarded-For that is not a trusted proxy.
func (b *Bridge) clientIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	trusted := func(s string) bool {
		a, err := netip.ParseAddr(hopAddr(s))
		if err != nil {
			return false
		}
		for _, p := range b.o.TrustedProxies {
			if p.Contains(a.Unmap()) {
				return true
			}
		}
		return false
	}
	if !trusted(host) {
		return addrKey(host)
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		h := hopAddr(hops[i])
		if h == "" {
			continue
		}
		if !trusted(h) {
			if _, err := netip.ParseAddr(h); err == nil {
				return addrKey(h)
			}
			return addrKey(host) // garbage: count it against the proxy
		}
	}
	return addrKey(host)
}

// hopAddr is an X-Forwarded-For entry without port or brackets.
func hopAddr(h string) string {
	h = strings.TrimSpace(h)
	if ap, err := netip.ParseAddrPort(h); err == nil {
		return ap.Addr().String()
	}
	return strings.Trim(h, "[]")
}

// addrKey is the address the limit counts: IPv4 as it is, IPv6 by /64
// (one subscriber gets a whole /64).
func addrKey(s string) string {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return s
	}
	a = a.Unmap()
	if a.Is6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.String()
}

// ------------------------------------------------------------ rate limits

// limiter bounds failed sign-ins per client address (4× the budget), per
// typed login and per account: token buckets of perMin attempts, refilled
// evenly over a minute.
type limiter struct {
	mu      sync.Mutex
	perMin  int
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	burst  float64
	last   time.Time
}

func newLimiter(perMin int) *limiter {
	return &limiter{perMin: perMin, buckets: map[string]*bucket{}, swept: time.Now()}
}

// wait is how long until the bucket holds an attempt (0: now).
func (b *bucket) wait(now time.Time) time.Duration {
	perSec := b.burst / 60
	b.tokens = min(b.burst, b.tokens+now.Sub(b.last).Seconds()*perSec)
	b.last = now
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration((1 - b.tokens) / perSec * float64(time.Second))
}

// take reserves one attempt of the address key ip and of login. When
// either is spent it reserves nothing and says how long to wait; else
// release gives the attempt back (a right password, or no answer).
func (l *limiter) take(ip, login string) (release func(), wait time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	bi := l.get(now, ip, 4*l.perMin)
	if bi == nil {
		return nil, time.Minute
	}
	if w := bi.wait(now); w > 0 {
		return nil, w // no bucket for login is made for an address that is limited
	}
	bu := l.get(now, login, l.perMin)
	if bu == nil {
		return nil, time.Minute
	}
	if w := bu.wait(now); w > 0 {
		return nil, w
	}
	bi.tokens--
	bu.tokens--
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		bi.tokens = min(bi.burst, bi.tokens+1)
		bu.tokens = min(bu.burst, bu.tokens+1)
	}, 0
}

// gate says how long key must wait (0: it has an attempt left) and, when
// it has and failed is true, spends one: one step, so that parallel
// failures cannot all pass.
func (l *limiter) gate(key string, failed bool) time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := time.Now()
	b := l.get(now, key, l.perMin)
	if b == nil {
		return time.Minute
	}
	if w := b.wait(now); w > 0 {
		return w
	}
	if failed {
		b.tokens--
	}
	return 0
}

// maxBuckets bounds the limiter's memory; past it, buckets that refilled
// are dropped, and if that is not enough new keys are refused (limited)
// until some do.
const maxBuckets = 100_000

// get returns key's bucket (keys are hashed: a login can be long), making
// it when needed; nil when the limiter is full.
func (l *limiter) get(now time.Time, key string, n int) *bucket {
	h := sha256.Sum256([]byte(key))
	k := string(h[:16])
	b := l.buckets[k]
	if b != nil {
		return b
	}
	// Swept at most once a second even when full: a spray of new keys must
	// not make every sign-in walk 100,000 buckets under the lock.
	full := len(l.buckets) >= maxBuckets
	if now.Sub(l.swept) > time.Minute || (full && now.Sub(l.swept) > time.Second) {
		for k, b := range l.buckets {
			if b.wait(now) == 0 && b.tokens >= b.burst { // refilled: it holds nothing
				delete(l.buckets, k)
			}
		}
		l.swept = now
		full = len(l.buckets) >= maxBuckets
	}
	if full {
		return nil
	}
	b = &bucket{tokens: float64(n), burst: float64(n), last: now}
	l.buckets[k] = b
	return b
}

// ------------------------------------------------------------ mmgate's own pages

// Redeem exchanges a code given to one of mmgate's own pages (which always
// send prompt=login) for the person
// who signed in. The page is a client registered in Options.Clients whose
// secret nobody else knows, so it needs no token: the code is checked
// against that client and its redirect URI and used up exactly as the token
// endpoint would (a second redemption fails and revokes nothing but itself).
func (b *Bridge) Redeem(ctx context.Context, clientID, redirectURI, code string) (Identity, error) {
	req, err := b.st.RequestByCode(ctx, code, b.o.CodeTTL)
	if err != nil {
		return Identity{}, err
	}
	// mmgate's own pages always ask for the password (prompt=login): a
	// request without it did not come from them.
	if req.ClientID != clientID || req.RedirectURI != redirectURI || req.Identity == 0 || !req.forcesLogin() {
		return Identity{}, ErrNotFound
	}
	if err := b.st.UseCode(ctx, req.ID); err != nil {
		return Identity{}, err
	}
	return b.st.IdentityByID(ctx, req.Identity)
}
