package sso

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The upstream is an interface: these tests give it a table of passwords
// and check the protocol around it. The real LDAP and OIDC upstreams are
// tested end to end (test/e2e/sso_test.go) with a real slapd, a real OIDC
// provider and the real Mattermost.
type passwords struct {
	mu    sync.Mutex
	users map[string]Profile // login → profile; the password is "pw-" + login
	down  bool
}

func (p *passwords) CheckPassword(_ context.Context, login, password string) (Profile, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return Profile{}, errors.New("ldap: connection refused")
	}
	u, ok := p.users[login]
	if !ok {
		return Profile{}, ErrBadCredentials
	}
	if password != "pw-"+login {
		return Profile{}, WrongPassword{Account: u.Subject}
	}
	return u, nil
}

func (p *passwords) Refresh(_ context.Context, subject string) (Profile, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.down {
		return Profile{}, errors.New("ldap: connection refused")
	}
	for _, u := range p.users {
		if u.Subject == subject {
			return u, nil
		}
	}
	return Profile{}, ErrBadCredentials
}

const (
	mmRedirect = "http://mm.test/signup/gitlab/complete"
	clientID   = "mattermost"
	secret     = "s3cret-client"
)

type env struct {
	t     testing.TB
	srv   *httptest.Server
	store *Store
	b     *Bridge
	pw    *passwords
}

func newEnv(t testing.TB, mod func(*Options)) *env {
	t.Helper()
	e := &env{t: t, pw: &passwords{users: map[string]Profile{
		"alice": {Subject: "ldap:uuid-alice", Username: "alice", Email: "alice@corp.test", Name: "Alice Smith"},
	}}}
	var h http.Handler
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(e.srv.Close)
	st, err := openSQLite(t)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	e.store = st
	o := Options{Issuer: e.srv.URL, Organization: "Corp", Store: st, Passwords: e.pw,
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Clients: []ClientConfig{{ID: clientID, Secret: secret, RedirectURIs: []string{mmRedirect}}}}
	if mod != nil {
		mod(&o)
	}
	b, err := New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	e.b = b
	mux := http.NewServeMux()
	for p, hh := range b.Routes() {
		mux.Handle(p, hh)
	}
	h = mux
	return e
}

// browser is a cookie-keeping client that stops at the client's redirect URI.
func (e *env) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if !strings.HasPrefix(req.URL.String(), e.srv.URL) {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

func (e *env) authorizeURL(extra url.Values) string {
	q := url.Values{"response_type": {"code"}, "client_id": {clientID}, "redirect_uri": {mmRedirect},
		"state": {"eyJ0b2tlbiI6ImFiYyJ9+/= odd&chars"}}
	for k, v := range extra {
		q[k] = v
	}
	return e.srv.URL + "/oauth/authorize?" + q.Encode()
}

func get(t testing.TB, c *http.Client, u string) (*http.Response, string) {
	t.Helper()
	resp, err := c.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

var hidden = regexp.MustCompile(`name="(id|csrf)" value="([^"]+)"`)

func formFields(t testing.TB, page string) url.Values {
	t.Helper()
	v := url.Values{}
	for _, m := range hidden.FindAllStringSubmatch(page, -1) {
		v.Set(m[1], m[2])
	}
	if v.Get("id") == "" || v.Get("csrf") == "" {
		t.Fatalf("no sign-in form in the page:\n%s", page)
	}
	return v
}

func (e *env) submit(c *http.Client, fields url.Values, login, password string) (*http.Response, string) {
	e.t.Helper()
	f := url.Values{"id": {fields.Get("id")}, "csrf": {fields.Get("csrf")}, "login": {login}, "password": {password}}
	resp, err := c.PostForm(e.srv.URL+"/sso/login", f)
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(b)
}

// signIn runs the browser part and returns the redirect to the client.
func (e *env) signIn(c *http.Client, login string, extra url.Values) *url.URL {
	e.t.Helper()
	resp, page := get(e.t, c, e.authorizeURL(extra))
	if resp.StatusCode == http.StatusOK {
		resp, page = e.submit(c, formFields(e.t, page), login, "pw-"+login)
	}
	if resp.StatusCode != http.StatusFound && resp.StatusCode != http.StatusSeeOther {
		e.t.Fatalf("sign-in ended with %d, not a redirect to the client:\n%s", resp.StatusCode, page)
	}
	u, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || !strings.HasPrefix(u.String(), mmRedirect) {
		e.t.Fatalf("redirected to %q, want %s", resp.Header.Get("Location"), mmRedirect)
	}
	return u
}

// exchange is Mattermost's token request: credentials in the body.
func (e *env) exchange(code, clientSecret string, extra url.Values) (int, map[string]any) {
	e.t.Helper()
	f := url.Values{"client_id": {clientID}, "client_secret": {clientSecret}, "code": {code},
		"grant_type": {"authorization_code"}, "redirect_uri": {mmRedirect}}
	for k, v := range extra {
		f[k] = v
	}
	req, _ := http.NewRequest(http.MethodPost, e.srv.URL+"/oauth/token", strings.NewReader(f.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return e.jsonCall(req)
}

func (e *env) gitlabUser(token string) (int, map[string]any) {
	e.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/api/v4/user", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	return e.jsonCall(req)
}

// jsonCall sends req as Mattermost does (Accept: application/json) and
// decodes the JSON answer.
func (e *env) jsonCall(req *http.Request) (int, map[string]any) {
	e.t.Helper()
	req.Header.Set("Accept", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var out map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return resp.StatusCode, out
}

func TestMattermostFlowAndStableID(t *testing.T) {
	e := newEnv(t, nil)
	c := e.browser()
	u := e.signIn(c, "alice", nil)
	if got := u.Query().Get("state"); got != "eyJ0b2tlbiI6ImFiYyJ9+/= odd&chars" {
		t.Errorf("state came back as %q: it must pass through untouched", got)
	}
	code := u.Query().Get("code")
	st, tok := e.exchange(code, secret, nil)
	if st != 200 || !strings.EqualFold(tok["token_type"].(string), "bearer") || tok["access_token"] == "" {
		t.Fatalf("token exchange: %d %v", st, tok)
	}
	st, user := e.gitlabUser(tok["access_token"].(string))
	id, _ := user["id"].(float64)
	if st != 200 || id == 0 || id != float64(int64(id)) || user["username"] != "alice" || user["email"] != "alice@corp.test" || user["name"] != "Alice Smith" {
		t.Fatalf("/api/v4/user: %d %v", st, user)
	}

	// The second sign-in in the same browser needs no password.
	resp, _ := get(t, c, e.authorizeURL(nil))
	if resp.StatusCode/100 != 3 || !strings.HasPrefix(resp.Header.Get("Location"), mmRedirect) {
		t.Fatalf("second sign-in in the same browser: %d %q, want a redirect to the client without a form", resp.StatusCode, resp.Header.Get("Location"))
	}
	u2, _ := url.Parse(resp.Header.Get("Location"))
	_, tok2 := e.exchange(u2.Query().Get("code"), secret, nil)
	_, user2 := e.gitlabUser(tok2["access_token"].(string))
	if user2["id"] != user["id"] {
		t.Errorf("second sign-in: id %v, first %v", user2["id"], user["id"])
	}
	e.pw.mu.Lock()
	// Renamed and re-addressed upstream: same subject, same id.
	e.pw.users["alice"] = Profile{Subject: "ldap:uuid-alice", Username: "alice.smith", Email: "asmith@corp.test", Name: "Alice Smith"}
	e.pw.users["bob"] = Profile{Subject: "ldap:uuid-bob", Username: "bob", Email: "bob@corp.test", Name: "Bob"}
	e.pw.mu.Unlock()
	u3 := e.signIn(e.browser(), "alice", nil)
	_, tok3 := e.exchange(u3.Query().Get("code"), secret, nil)
	_, user3 := e.gitlabUser(tok3["access_token"].(string))
	if user3["id"] != user["id"] || user3["username"] != "alice.smith" || user3["email"] != "asmith@corp.test" {
		t.Errorf("after a rename: %v, want id %v with the new username and email", user3, user["id"])
	}
	u4 := e.signIn(e.browser(), "bob", nil)
	_, tok4 := e.exchange(u4.Query().Get("code"), secret, nil)
	_, user4 := e.gitlabUser(tok4["access_token"].(string))
	if user4["id"] == user["id"] || user4["id"] == nil {
		t.Errorf("bob got id %v, alice has %v", user4["id"], user["id"])
	}
}

func TestNegativeCases(t *testing.T) {
	e := newEnv(t, nil)
	// Wrong redirect_uri: an error page, never a redirect to it.
	c := e.browser()
	resp, body := get(t, c, e.authorizeURL(url.Values{"redirect_uri": {"http://evil.test/signup/gitlab/complete"}}))
	if resp.StatusCode/100 == 3 || resp.StatusCode == 200 && strings.Contains(body, `name="password"`) {
		t.Errorf("wrong redirect_uri: %d %s (Location %q)", resp.StatusCode, body, resp.Header.Get("Location"))
	}
	// Unknown client.
	resp, _ = get(t, c, e.authorizeURL(url.Values{"client_id": {"nobody"}}))
	if resp.StatusCode/100 == 3 || resp.StatusCode == 200 {
		t.Errorf("unknown client: %d", resp.StatusCode)
	}

	// Wrong client secret: refused, and the code is not used up by it (a
	// caller without the secret cannot burn a code).
	u := e.signIn(c, "alice", nil)
	if st, out := e.exchange(u.Query().Get("code"), "wrong", nil); st != 401 && st != 400 || out["error"] != "invalid_client" {
		t.Errorf("wrong secret: %d %v", st, out)
	}
	if st, out := e.exchange(u.Query().Get("code"), secret, nil); st != 200 {
		t.Errorf("the right client after a wrong secret: %d %v", st, out)
	}

	// Reused code: the second exchange fails and the first token is revoked.
	u = e.signIn(c, "alice", nil)
	code := u.Query().Get("code")
	st, tok := e.exchange(code, secret, nil)
	if st != 200 {
		t.Fatalf("first exchange: %d %v", st, tok)
	}
	if st, out := e.exchange(code, secret, nil); st != 400 || out["error"] != "invalid_grant" {
		t.Errorf("reused code: %d %v, want 400 invalid_grant", st, out)
	}
	if st, _ := e.gitlabUser(tok["access_token"].(string)); st != 401 {
		t.Errorf("token of a replayed code: %d, want 401 (revoked)", st)
	}
	// A made-up or altered token.
	if st, _ := e.gitlabUser("not-a-token"); st != 401 {
		t.Errorf("bogus token: %d", st)
	}

	// Expired code.
	u = e.signIn(c, "alice", nil)
	e.store.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
	if st, out := e.exchange(u.Query().Get("code"), secret, nil); st != 400 || out["error"] != "invalid_grant" {
		t.Errorf("expired code: %d %v", st, out)
	}
	e.store.now = time.Now

	// The redirect_uri of the exchange must be the authorization's.
	u = e.signIn(c, "alice", nil)
	if st, out := e.exchange(u.Query().Get("code"), secret, url.Values{"redirect_uri": {"http://mm.test/other"}}); st != 400 {
		t.Errorf("exchange with another redirect_uri: %d %v", st, out)
	}
}

func TestPKCE(t *testing.T) {
	e := newEnv(t, nil)
	verifier := "a-verifier-that-is-long-enough-for-rfc-7636-0123456789"
	sum := sha256.Sum256([]byte(verifier))
	challenge := url.Values{"code_challenge": {base64.RawURLEncoding.EncodeToString(sum[:])}, "code_challenge_method": {"S256"}}
	c := e.browser()
	u := e.signIn(c, "alice", challenge)
	if st, out := e.exchange(u.Query().Get("code"), secret, nil); st != 400 {
		t.Errorf("PKCE without verifier: %d %v", st, out)
	}
	u = e.signIn(c, "alice", challenge)
	if st, out := e.exchange(u.Query().Get("code"), secret, url.Values{"code_verifier": {"wrong-verifier-wrong-verifier-wrong-verifier-00"}}); st != 400 {
		t.Errorf("PKCE with a wrong verifier: %d %v", st, out)
	}
	u = e.signIn(c, "alice", challenge)
	if st, out := e.exchange(u.Query().Get("code"), secret, url.Values{"code_verifier": {verifier}}); st != 200 {
		t.Errorf("PKCE with the verifier: %d %v", st, out)
	}
}

func TestLoginPageGuards(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.LoginAttempts = 3 })
	c := e.browser()
	resp, page := get(t, c, e.authorizeURL(nil))
	if resp.StatusCode != 200 || !strings.Contains(page, "Corp") || !strings.Contains(page, `autocomplete="current-password"`) {
		t.Fatalf("login page: %d\n%s", resp.StatusCode, page)
	}
	fields := formFields(t, page)

	// A post from another browser (another site's form: no cookies) is
	// refused, and so is one whose CSRF field does not match the cookie.
	plain := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	r2, err := plain.PostForm(e.srv.URL+"/sso/login", url.Values{"id": {fields.Get("id")}, "csrf": {fields.Get("csrf")},
		"login": {"alice"}, "password": {"pw-alice"}})
	if err != nil {
		t.Fatal(err)
	}
	drain(r2)
	if r2.StatusCode != http.StatusBadRequest && r2.StatusCode != http.StatusForbidden {
		t.Errorf("post from a browser without the cookies: %d, want 400 or 403", r2.StatusCode)
	}
	forged := url.Values{"id": {fields.Get("id")}, "csrf": {"forged"}}
	if resp, page := e.submit(c, forged, "alice", "pw-alice"); resp.StatusCode != http.StatusForbidden {
		t.Errorf("post with a CSRF field that is not the cookie's: %d, want 403\n%s", resp.StatusCode, page)
	}
	_, page = get(t, c, e.srv.URL+"/sso/login?id="+url.QueryEscape(fields.Get("id")))
	fields = formFields(t, page)

	// Wrong passwords: 401 with the message, then 429 once the attempts are spent.
	resp, page = e.submit(c, fields, "alice", "guess1")
	if resp.StatusCode != 401 || !strings.Contains(page, "Wrong username or password.") || !strings.Contains(page, `role="alert"`) {
		t.Errorf("wrong password: %d\n%s", resp.StatusCode, page)
	}
	fields = formFields(t, page)
	_, page = e.submit(c, fields, "alice", "guess2")
	fields = formFields(t, page)
	_, page = e.submit(c, fields, "alice", "guess3")
	fields = formFields(t, page)
	resp, page = e.submit(c, fields, "alice", "pw-alice")
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" || !strings.Contains(page, "Too many sign-in attempts") {
		t.Errorf("fourth attempt: %d (Retry-After %q), want 429\n%s", resp.StatusCode, resp.Header.Get("Retry-After"), page)
	}

	// The directory down: 503 and a message that says so, not "wrong password".
	e.pw.mu.Lock()
	e.pw.down = true
	e.pw.users["carol"] = Profile{Subject: "ldap:c", Username: "carol", Email: "carol@corp.test"}
	e.pw.mu.Unlock()
	fields = formFields(t, page)
	resp, page = e.submit(c, fields, "carol", "pw-carol")
	if resp.StatusCode != 503 || !strings.Contains(page, "cannot be reached") {
		t.Errorf("directory down: %d\n%s", resp.StatusCode, page)
	}

	// prompt=none without a session: back to the client with login_required.
	resp, _ = get(t, e.browser(), e.authorizeURL(url.Values{"prompt": {"none"}}))
	loc, _ := url.Parse(resp.Header.Get("Location"))
	if resp.StatusCode/100 != 3 || loc == nil || loc.Query().Get("error") != "login_required" {
		t.Errorf("prompt=none: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	// An unknown request id: a clear page.
	resp, page = get(t, c, e.srv.URL+"/sso/login?id=nope")
	if resp.StatusCode != 400 || !strings.Contains(page, "expired") {
		t.Errorf("unknown request: %d\n%s", resp.StatusCode, page)
	}
}

func TestLogoutEndsTheSession(t *testing.T) {
	e := newEnv(t, nil)
	c := e.browser()
	e.signIn(c, "alice", nil)
	resp, page := get(t, c, e.srv.URL+"/sso/logout")
	m := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if resp.StatusCode != 200 || m == nil {
		t.Fatalf("logout page: %d\n%s", resp.StatusCode, page)
	}
	r, err := c.PostForm(e.srv.URL+"/sso/logout", url.Values{"csrf": {m[1]}})
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != 200 || !strings.Contains(string(body), "signed out") {
		t.Fatalf("logout: %d %s", r.StatusCode, body)
	}
	resp, page = get(t, c, e.authorizeURL(nil))
	if resp.StatusCode != 200 || !strings.Contains(page, `name="password"`) {
		t.Errorf("after logout the password is asked again: got %d\n%s", resp.StatusCode, page)
	}
}

func TestCookiesAreSecureOverHTTPS(t *testing.T) {
	e := newEnv(t, nil)
	b, err := New(context.Background(), Options{Issuer: "https://sso.corp.test", Store: e.store, Passwords: e.pw})
	if err != nil {
		t.Fatal(err)
	}
	w := httptest.NewRecorder()
	b.setCookie(w, sessionCookie, "v", "/", time.Hour)
	sc := w.Header().Get("Set-Cookie")
	for _, want := range []string{"Secure", "HttpOnly", "SameSite=Lax"} {
		if !strings.Contains(sc, want) {
			t.Errorf("Set-Cookie %q lacks %s", sc, want)
		}
	}
	if !strings.HasPrefix(sc, "__Host-mmgate_session=") {
		t.Errorf("Set-Cookie %q: over https the session cookie is a __Host- cookie", sc)
	}
	if e.b.secure {
		t.Error("an http:// issuer cannot set Secure cookies (the browser would drop them)")
	}
}

func TestDiscoveryAndUserinfo(t *testing.T) {
	e := newEnv(t, nil)
	resp, body := get(t, http.DefaultClient, e.srv.URL+"/.well-known/openid-configuration")
	var d map[string]any
	if err := json.Unmarshal([]byte(body), &d); err != nil || resp.StatusCode != 200 {
		t.Fatalf("discovery: %d %s", resp.StatusCode, body)
	}
	if d["issuer"] != e.srv.URL || d["authorization_endpoint"] != e.srv.URL+"/oauth/authorize" ||
		d["token_endpoint"] != e.srv.URL+"/oauth/token" || d["jwks_uri"] != e.srv.URL+"/oauth/discovery/keys" {
		t.Errorf("discovery: %v", d)
	}
	resp, body = get(t, http.DefaultClient, e.srv.URL+"/oauth/discovery/keys")
	if resp.StatusCode != 200 || !strings.Contains(body, `"kty":"RSA"`) {
		t.Errorf("jwks: %d %s", resp.StatusCode, body)
	}
	u := e.signIn(e.browser(), "alice", url.Values{"scope": {"openid profile email"}, "nonce": {"n-1"}})
	st, tok := e.exchange(u.Query().Get("code"), secret, nil)
	if st != 200 || tok["id_token"] == nil {
		t.Fatalf("openid exchange: %d %v", st, tok)
	}
	req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/oauth/userinfo", nil)
	req.Header.Set("Authorization", "Bearer "+tok["access_token"].(string))
	r, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var info map[string]any
	_ = json.NewDecoder(r.Body).Decode(&info)
	r.Body.Close()
	if r.StatusCode != 200 || info["email"] != "alice@corp.test" || info["preferred_username"] != "alice" || info["sub"] == "" {
		t.Errorf("userinfo: %d %v", r.StatusCode, info)
	}
}

// FuzzUntrustedInputs sends arbitrary bearer tokens, sign-in forms and
// callback queries: nothing panics, nothing answers 5xx, and no made-up
// token reads a user.
func FuzzUntrustedInputs(f *testing.F) {
	e := newEnv(f, nil)
	f.Add("not-a-token", "id=x&csrf=y&login=alice&password=pw-alice", "state=s&code=c")
	f.Add("", "id=&csrf=&login=&password=", "error=access_denied&state=")
	f.Add("Zm9vOmJhcg", "login=%00%ff&password=*", "code=%zz")
	c := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	f.Fuzz(func(t *testing.T, token, form, query string) {
		req, _ := http.NewRequest(http.MethodGet, e.srv.URL+"/api/v4/user", nil)
		req.Header.Set("Authorization", "Bearer "+strings.Map(func(r rune) rune {
			if r < 0x20 || r == 0x7f {
				return -1
			}
			return r
		}, token))
		if resp, err := c.Do(req); err == nil {
			drain(resp)
			if resp.StatusCode != http.StatusUnauthorized {
				t.Errorf("token %q: %d, want 401", token, resp.StatusCode)
			}
		}
		if resp, err := c.Post(e.srv.URL+"/sso/login", "application/x-www-form-urlencoded", strings.NewReader(form)); err == nil {
			drain(resp)
			if resp.StatusCode >= 500 || resp.StatusCode/100 == 3 {
				t.Errorf("form %q: %d", form, resp.StatusCode)
			}
		}
		for _, path := range []string{"/sso/upstream/callback?", "/sso/login?", "/oauth/authorize?", "/oauth/authorize/callback?"} {
			if resp, err := c.Get(e.srv.URL + path + url.PathEscape(query)); err == nil {
				drain(resp)
				if resp.StatusCode >= 500 {
					t.Errorf("%s%s: %d", path, query, resp.StatusCode)
				}
			}
		}
	})
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
}

// The attack: someone starts a sign-in in their browser and gets a signed-in
// person to open its /sso/login link; the sign-in must not complete for the
// attacker, and the attacker cannot redeem it.
func TestSignInIsBoundToTheBrowser(t *testing.T) {
	e := newEnv(t, nil)
	victim := e.browser()
	e.signIn(victim, "alice", nil) // the victim has a session
	attacker := e.browser()
	attacker.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, _ := get(t, attacker, e.authorizeURL(url.Values{"state": {"ATTACKER"}}))
	link := resp.Header.Get("Location")
	if !strings.Contains(link, "/sso/login?id=") {
		t.Fatalf("authorize: %d %q", resp.StatusCode, link)
	}
	victim.CheckRedirect = attacker.CheckRedirect
	resp, page := get(t, victim, link)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, "another browser") {
		t.Errorf("the victim opening the attacker's link: %d %q\n%s", resp.StatusCode, resp.Header.Get("Location"), page)
	}

	// A sign-in completed in its own browser can only be collected there:
	// another browser gets no code, by GET or POST.
	owner := e.browser()
	owner.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(req.URL.Path, "/oauth/authorize/callback") {
			return http.ErrUseLastResponse
		}
		return nil
	}
	resp, page = get(t, owner, e.authorizeURL(nil))
	resp, _ = e.submit(owner, formFields(t, page), "alice", "pw-alice")
	callback := resp.Header.Get("Location")
	if !strings.Contains(callback, "/oauth/authorize/callback?id=") {
		t.Fatalf("after the password: %d %q", resp.StatusCode, callback)
	}
	if !strings.HasPrefix(callback, "http") {
		callback = e.srv.URL + callback
	}
	resp, _ = get(t, attacker, callback)
	if resp.StatusCode != http.StatusBadRequest || strings.Contains(resp.Header.Get("Location"), "code=") {
		t.Errorf("GET callback from another browser: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	r, err := attacker.Post(callback, "application/x-www-form-urlencoded", strings.NewReader("id="+url.QueryEscape(callback[strings.Index(callback, "id=")+3:])))
	if err != nil {
		t.Fatal(err)
	}
	drain(r)
	if r.StatusCode/100 == 3 || strings.Contains(r.Header.Get("Location"), "code=") {
		t.Errorf("POST callback from another browser: %d %q", r.StatusCode, r.Header.Get("Location"))
	}
	owner.CheckRedirect = attacker.CheckRedirect
	resp, _ = get(t, owner, callback)
	if !strings.Contains(resp.Header.Get("Location"), "code=") {
		t.Errorf("the owner's own callback: %d %q, want the code", resp.StatusCode, resp.Header.Get("Location"))
	}
}

type slowWrong struct{ n atomic.Int32 }

func (s *slowWrong) CheckPassword(context.Context, string, string) (Profile, error) {
	s.n.Add(1)
	time.Sleep(100 * time.Millisecond)
	return Profile{}, ErrBadCredentials
}

func TestParallelGuessesAreLimited(t *testing.T) {
	sw := &slowWrong{}
	e := newEnv(t, func(o *Options) { o.Passwords = sw; o.LoginAttempts = 5 })
	c := e.browser()
	_, page := get(t, c, e.authorizeURL(nil))
	f := formFields(t, page)
	var wg sync.WaitGroup
	var limited atomic.Int32
	for range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := c.PostForm(e.srv.URL+"/sso/login", url.Values{"id": {f.Get("id")}, "csrf": {f.Get("csrf")}, "login": {"alice"}, "password": {"x"}})
			if err == nil {
				if r.StatusCode == http.StatusTooManyRequests {
					limited.Add(1)
				}
				drain(r)
			}
		}()
	}
	wg.Wait()
	if n := sw.n.Load(); n > 5 {
		t.Errorf("%d passwords checked in parallel with a budget of 5", n)
	}
	if limited.Load() < 35 {
		t.Errorf("%d of 40 parallel guesses got 429", limited.Load())
	}
}

func TestAccountBudgetCoversEveryName(t *testing.T) {
	e := newEnv(t, func(o *Options) { o.LoginAttempts = 2 })
	e.pw.mu.Lock()
	e.pw.users["alice@corp.test"] = e.pw.users["alice"] // the same account by its email
	e.pw.mu.Unlock()
	c := e.browser()
	_, page := get(t, c, e.authorizeURL(nil))
	for _, login := range []string{"alice", "alice"} {
		_, page = e.submit(c, formFields(t, page), login, "guess")
	}
	resp, page := e.submit(c, formFields(t, page), "alice@corp.test", "pw-alice@corp.test")
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Errorf("the account's budget is spent, another name of it: %d, want 429\n%s", resp.StatusCode, page)
	}
}

func TestClientAddressBehindTrustedProxies(t *testing.T) {
	b := &Bridge{o: Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}}}
	for _, c := range []struct{ remote, xff, want string }{
		{"192.0.2.1:5000", "203.0.113.9", "192.0.2.1"},                // not a proxy: its header is ignored
		{"10.0.0.2:5000", "203.0.113.9", "203.0.113.9"},               // the proxy names the client
		{"10.0.0.2:5000", "198.51.100.7, 203.0.113.9", "203.0.113.9"}, // the client cannot pick its address
		{"10.0.0.2:5000", "203.0.113.9, 10.0.0.3", "203.0.113.9"},     // two proxies
		{"10.0.0.2:5000", "", "10.0.0.2"},
		{"10.0.0.2:5000", "203.0.113.9:41000", "203.0.113.9"},             // a port in the header
		{"10.0.0.2:5000", "[2001:db8:1:2:3::9]:443", "2001:db8:1:2::/64"}, // IPv6 counts by /64
		{"[2001:db8:1:2::1]:5000", "", "2001:db8:1:2::/64"},
	} {
		r := httptest.NewRequest(http.MethodPost, "/sso/login", nil)
		r.RemoteAddr = c.remote
		if c.xff != "" {
			r.Header.Set("X-Forwarded-For", c.xff)
		}
		if got := b.clientIP(r); got != c.want {
			t.Errorf("%s with X-Forwarded-For %q: %s, want %s", c.remote, c.xff, got, c.want)
		}
	}
}

func TestEndSessionAndDisabledAccounts(t *testing.T) {
	e := newEnv(t, nil)
	c := e.browser()
	e.signIn(c, "alice", nil)
	resp, page := get(t, c, e.srv.URL+"/oauth/logout")
	if resp.StatusCode != 200 || !strings.Contains(page, "signed out") {
		t.Fatalf("/oauth/logout: %d\n%s", resp.StatusCode, page)
	}
	resp, page = get(t, c, e.authorizeURL(nil))
	if resp.StatusCode != 200 || !strings.Contains(page, `name="password"`) {
		t.Errorf("after GET /oauth/logout the password is asked again: %d", resp.StatusCode)
	}
	e.signIn(c, "alice", nil)
	if r, err := c.PostForm(e.srv.URL+"/oauth/logout", nil); err != nil || r.StatusCode != 200 {
		t.Fatalf("POST /oauth/logout: %v %v", r, err)
	} else {
		drain(r)
	}
	resp, page = get(t, c, e.authorizeURL(nil))
	if resp.StatusCode != 200 || !strings.Contains(page, `name="password"`) {
		t.Errorf("after /oauth/logout the password is asked again: %d", resp.StatusCode)
	}
	// A session whose account is gone from the directory asks for the password.
	c2 := e.browser()
	e.signIn(c2, "alice", nil)
	e.pw.mu.Lock()
	delete(e.pw.users, "alice")
	e.pw.mu.Unlock()
	resp, page = get(t, c2, e.authorizeURL(nil))
	if resp.StatusCode != 200 || !strings.Contains(page, `name="password"`) {
		t.Errorf("a session of a deleted account: %d %q, want the password page", resp.StatusCode, resp.Header.Get("Location"))
	}
}

// idp is a Redirector that records what it was asked.
type idp struct {
	mu     sync.Mutex
	forced []bool
	p      Profile
}

func (i *idp) AuthURL(_ context.Context, state string, force bool) (string, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.forced = append(i.forced, force)
	return "http://idp.test/authorize?state=" + url.QueryEscape(state), nil
}

func (i *idp) Exchange(_ context.Context, code, _ string) (Profile, error) {
	switch code {
	case "good":
		return i.p, nil
	case "unusable":
		return Profile{}, AccountError{Reason: "the sign-in service has not verified your email address"}
	}
	return Profile{}, errors.New("bad code")
}

// The upstream's answers that sign nobody in: a refusal, a code that does
// not redeem, an account that cannot be used.
func TestUpstreamCallbackFailures(t *testing.T) {
	up := &idp{p: Profile{Subject: "oidc:https://idp.test#42", Username: "pat", Email: "pat@corp.test"}}
	e := newEnv(t, func(o *Options) { o.Passwords, o.Upstream = nil, up })
	for _, c := range []struct {
		query  string
		status int
		want   string
	}{
		{"error=access_denied", http.StatusUnauthorized, "did not sign you in (access_denied)"},
		{"code=bad", http.StatusBadGateway, "could not be verified"},
		{"code=unusable", http.StatusForbidden, "has not verified your email address"},
	} {
		b := e.browser()
		b.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		resp, _ := get(t, b, e.authorizeURL(nil))
		resp, _ = get(t, b, resp.Header.Get("Location"))
		to, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || to.Host != "idp.test" {
			t.Fatalf("not sent to the upstream: %d", resp.StatusCode)
		}
		resp, page := get(t, b, e.srv.URL+"/sso/upstream/callback?state="+url.QueryEscape(to.Query().Get("state"))+"&"+c.query)
		if resp.StatusCode != c.status || !strings.Contains(page, c.want) || strings.Contains(resp.Header.Get("Location"), "code=") {
			t.Errorf("%s: %d %q\n%s", c.query, resp.StatusCode, resp.Header.Get("Location"), page)
		}
	}
}

func TestUpstreamCallbackIsBoundToTheBrowser(t *testing.T) {
	up := &idp{p: Profile{Subject: "oidc:https://idp.test#42", Username: "pat", Email: "pat@corp.test", Name: "Pat"}}
	e := newEnv(t, func(o *Options) { o.Passwords, o.Upstream = nil, up })
	b := e.browser()
	b.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	resp, _ := get(t, b, e.authorizeURL(url.Values{"prompt": {"login"}}))
	resp, _ = get(t, b, resp.Header.Get("Location"))
	to, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || to.Host != "idp.test" {
		t.Fatalf("not sent to the upstream: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	if len(up.forced) != 1 || !up.forced[0] {
		t.Errorf("prompt=login did not reach the upstream: %v", up.forced)
	}
	back := e.srv.URL + "/sso/upstream/callback?code=good&state=" + url.QueryEscape(to.Query().Get("state"))
	other := e.browser()
	other.CheckRedirect = b.CheckRedirect
	if resp, page := get(t, other, back); resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, "does not belong") {
		t.Errorf("the upstream's answer in another browser: %d", resp.StatusCode)
	}
	if resp, _ := get(t, b, back+"x"); resp.StatusCode != http.StatusBadRequest {
		t.Errorf("a tampered state: %d", resp.StatusCode)
	}
	resp, _ = get(t, b, back)
	if !strings.Contains(resp.Header.Get("Location"), "/oauth/authorize/callback?id=") {
		t.Fatalf("the genuine answer: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	resp, _ = get(t, b, resp.Header.Get("Location"))
	loc, _ := url.Parse(resp.Header.Get("Location"))
	_, tok := e.exchange(loc.Query().Get("code"), secret, nil)
	if _, u := e.gitlabUser(tok["access_token"].(string)); u["username"] != "pat" || u["email"] != "pat@corp.test" {
		t.Errorf("user from the upstream: %v", u)
	}
}

func TestUnverifiedEmailClaims(t *testing.T) {
	for v, want := range map[any]bool{false: true, "false": true, "FALSE": true, true: false, "true": false, nil: false} {
		if got := unverified(v); got != want {
			t.Errorf("email_verified %#v: unverified %v, want %v", v, got, want)
		}
	}
}
