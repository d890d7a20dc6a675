package account

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/sqldb"
	"github.com/mmgate/mmgate/internal/sso"
)

// The link page runs against the real sign-in bridge (its password
// upstream is a table here; the real LDAP one is tested end to end in
// test/e2e/accounts_test.go, with the real Mattermost).
type passwords map[string]sso.Profile // login → profile; the password is "pw-" + login

func (p passwords) CheckPassword(_ context.Context, login, password string) (sso.Profile, error) {
	u, ok := p[login]
	if !ok || password != "pw-"+login {
		return sso.Profile{}, sso.ErrBadCredentials
	}
	return u, nil
}

type users map[string]*mattermost.User // id → user

func (u users) User(_ context.Context, id string) (*mattermost.User, error) {
	if x, ok := u[id]; ok {
		return x, nil
	}
	return nil, &mattermost.APIError{Op: "get user", Status: 404}
}

func (u users) UserByEmail(_ context.Context, email string) (*mattermost.User, error) {
	for _, x := range u {
		if strings.EqualFold(x.Email, email) {
			return x, nil
		}
	}
	return nil, &mattermost.APIError{Op: "get user by email", Status: 404}
}

type env struct {
	t   testing.TB
	srv *httptest.Server
	st  *Store
	svc *Service
	mu  sync.Mutex
	dms []string // "user id: text" sent through Notify
}

const mmRedirect = "http://mm.test/signup/gitlab/complete"

func newEnv(t testing.TB) *env {
	t.Helper()
	e := &env{t: t}
	var h http.Handler
	e.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { h.ServeHTTP(w, r) }))
	t.Cleanup(e.srv.Close)
	dir := t.TempDir()
	db, err := sqldb.OpenSQLite(filepath.Join(dir, "sso.db"))
	if err != nil {
		t.Fatal(err)
	}
	ss, err := sso.NewStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ss.Close() })
	e.st = open(t, func() (*sqldb.DB, error) { return sqldb.OpenSQLite(filepath.Join(dir, "accounts.db")) })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	b, err := sso.New(context.Background(), sso.Options{Issuer: e.srv.URL, Store: ss, Logger: quiet,
		Passwords: passwords{"alice": {Subject: "ldap:uuid-alice", Username: "alice", Email: "Alice@Corp.Test", Name: "Alice Smith"}},
		Clients: []sso.ClientConfig{
			{ID: ClientID, Secret: "internal", RedirectURIs: []string{e.srv.URL + CallbackPath}},
			{ID: "mattermost", Secret: "mm", RedirectURIs: []string{mmRedirect}},
		}})
	if err != nil {
		t.Fatal(err)
	}
	e.svc = New(Options{Store: e.st, Bridge: b, Issuer: e.srv.URL, Key: []byte("0123456789abcdef0123456789abcdef"), Logger: quiet,
		Users: users{"uid-bob": {ID: "uid-bob", Username: "bob", FirstName: "Bob", LastName: "Jones", Email: "bob@personal.test"},
			"uid-carol": {ID: "uid-carol", Username: "carol", Email: "carol@personal.test"},
			"uid-alice": {ID: "uid-alice", Username: "alice", Email: "alice@corp.test"}},
		Notify: func(_ context.Context, userID, text string) error {
			e.mu.Lock()
			defer e.mu.Unlock()
			e.dms = append(e.dms, userID+": "+text)
			return nil
		}})
	mux := http.NewServeMux()
	for p, hh := range b.Routes() {
		mux.Handle(p, hh)
	}
	for p, hh := range e.svc.Routes() {
		mux.Handle(p, hh)
	}
	h = mux
	return e
}

// browser keeps cookies and stops at redirects that leave the server.
func (e *env) browser() *http.Client {
	jar, _ := cookiejar.New(nil)
	return &http.Client{Jar: jar, CheckRedirect: func(req *http.Request, _ []*http.Request) error {
		if !strings.HasPrefix(req.URL.String(), e.srv.URL) {
			return http.ErrUseLastResponse
		}
		return nil
	}}
}

func (e *env) do(c *http.Client, method, u string, form url.Values) (*http.Response, string) {
	e.t.Helper()
	var resp *http.Response
	var err error
	if method == http.MethodPost {
		resp, err = c.PostForm(u, form)
	} else {
		resp, err = c.Get(u)
	}
	if err != nil {
		e.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	return resp, string(b)
}

var field = regexp.MustCompile(`name="(id|csrf|ticket)" value="([^"]+)"`)

func fields(page string) url.Values {
	v := url.Values{}
	for _, m := range field.FindAllStringSubmatch(page, -1) {
		v.Set(m[1], strings.ReplaceAll(m[2], "&#43;", "+"))
	}
	return v
}

// linkURL is what /mmgate link shows bob.
var linkURL = regexp.MustCompile(`\((http://[^)]+/link/[^)]+)\)`)

func (e *env) command() string {
	e.t.Helper()
	text := e.svc.Link(context.Background(), "uid-bob")
	m := linkURL.FindStringSubmatch(text)
	if m == nil || !strings.Contains(text, "only for @bob") {
		e.t.Fatalf("/mmgate link answered:\n%s", text)
	}
	return m[1]
}

// signIn opens the link and signs in as alice; it returns the page the
// link callback shows and the callback's URL.
func (e *env) signIn(c *http.Client, link string) (string, string) {
	e.t.Helper()
	var callback string
	c.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
		if strings.HasPrefix(req.URL.Path, CallbackPath) {
			callback = req.URL.String()
		}
		return nil
	}
	resp, page := e.do(c, http.MethodGet, link, nil)
	if resp.StatusCode != http.StatusOK || !strings.Contains(page, `name="password"`) {
		e.t.Fatalf("the link did not lead to the sign-in page: %d\n%s", resp.StatusCode, page)
	}
	f := fields(page)
	f.Set("login", "alice")
	f.Set("password", "pw-alice")
	resp, page = e.do(c, http.MethodPost, e.srv.URL+"/sso/login", f)
	if resp.StatusCode != http.StatusOK || callback == "" {
		e.t.Fatalf("signing in ended with %d at %s:\n%s", resp.StatusCode, resp.Request.URL, page)
	}
	return page, callback
}

func TestLinkFlow(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	link := e.command()
	c := e.browser()
	page, _ := e.signIn(c, link)
	for _, want := range []string{"alice@corp.test", "@bob", "Alice Smith", "(Bob Jones, bob@personal.test)", `value="link"`} {
		if !strings.Contains(page, want) {
			t.Fatalf("the confirmation page lacks %q:\n%s", want, page)
		}
	}
	if _, ok, _ := e.st.LinkedUser(ctx, "alice@corp.test"); ok {
		t.Fatal("linked before confirming")
	}
	f := fields(page)
	f.Set("action", "link")
	resp, done := e.do(c, http.MethodPost, e.srv.URL+"/link/confirm", f)
	if resp.StatusCode != http.StatusOK || !strings.Contains(done, "Linked.") {
		t.Fatalf("confirm: %d\n%s", resp.StatusCode, done)
	}
	l, ok, err := e.st.LinkedUser(ctx, "alice@corp.test")
	if err != nil || !ok || l.UserID != "uid-bob" || l.Subject != "ldap:uuid-alice" {
		t.Fatalf("link: %+v %v %v", l, ok, err)
	}
	// bob is told, and so is the Mattermost account with alice's address.
	dms := strings.Join(e.dms, "\n")
	for _, want := range []string{"uid-bob: Mail addressed to alice@corp.test in the directory now comes to you here",
		"uid-alice: Mail addressed to alice@corp.test now goes to @bob: someone signed in to mmgate as alice@corp.test"} {
		if !strings.Contains(dms, want) {
			t.Errorf("no DM %q in:\n%s", want, dms)
		}
	}
	// The link works once.
	if resp, page := e.do(e.browser(), http.MethodGet, link, nil); resp.StatusCode != http.StatusNotFound || !strings.Contains(page, "already used") {
		t.Errorf("the link opened again: %d\n%s", resp.StatusCode, page)
	}
	// /mmgate link shows it, /mmgate unlink removes it.
	if text := e.svc.Link(ctx, "uid-bob"); !strings.Contains(text, "Already linked: alice@corp.test") {
		t.Errorf("/mmgate link does not show the link:\n%s", text)
	}
	if text := e.svc.Unlink(ctx, "uid-bob"); !strings.Contains(text, "Mail for alice@corp.test no longer comes to this account") {
		t.Errorf("/mmgate unlink:\n%s", text)
	}
	if _, ok, _ := e.st.LinkedUser(ctx, "alice@corp.test"); ok {
		t.Error("still linked after /mmgate unlink")
	}
	if text := e.svc.Unlink(ctx, "uid-bob"); !strings.Contains(text, "has no link") {
		t.Errorf("second unlink: %s", text)
	}
}

func TestLinkRefusals(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	linked := func() bool {
		_, ok, err := e.st.LinkedUser(ctx, "alice@corp.test")
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}

	t.Run("cancel", func(t *testing.T) {
		c := e.browser()
		page, _ := e.signIn(c, e.command())
		f := fields(page)
		f.Set("action", "cancel")
		if _, out := e.do(c, http.MethodPost, e.srv.URL+"/link/confirm", f); !strings.Contains(out, "Nothing was linked") || linked() {
			t.Fatalf("cancel linked, or said so:\n%s", out)
		}
	})

	t.Run("the callback in another browser", func(t *testing.T) {
		// Someone who started a link has another person sign in and
		// forwards the callback: it belongs to the browser that started it.
		_, callback := e.signIn(e.browser(), e.command())
		resp, page := e.do(e.browser(), http.MethodGet, callback, nil)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, "not started in this browser") || linked() {
			t.Fatalf("%d\n%s", resp.StatusCode, page)
		}
		// Nor in a browser that has a link flow of its own (its state differs).
		other := e.browser()
		other.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
		if resp, _ := e.do(other, http.MethodGet, e.command(), nil); resp.StatusCode != http.StatusSeeOther {
			t.Fatalf("opening a link: %d", resp.StatusCode)
		}
		resp, page = e.do(other, http.MethodGet, callback, nil)
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(page, "not started in this browser") || linked() {
			t.Fatalf("a browser with its own flow: %d\n%s", resp.StatusCode, page)
		}
	})

	t.Run("the callback replayed", func(t *testing.T) {
		c := e.browser()
		_, callback := e.signIn(c, e.command())
		resp, page := e.do(c, http.MethodGet, callback, nil)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(page, "not valid any more") {
			t.Fatalf("the bridge's code was used twice: %d\n%s", resp.StatusCode, page)
		}
	})

	t.Run("a ticket altered or for another code", func(t *testing.T) {
		c := e.browser()
		page, _ := e.signIn(c, e.command())
		good := fields(page).Get("ticket")
		payload, sig, _ := strings.Cut(good, ".")
		forged := e.svc.sign(ticket{Email: "ceo@corp.test", Subject: "x", Expires: time.Now().Add(time.Hour).Unix()}, "another code")
		for _, tk := range []string{payload + "x." + sig, forged, "", good + "x"} {
			resp, out := e.do(c, http.MethodPost, e.srv.URL+"/link/confirm", url.Values{"ticket": {tk}, "action": {"link"}})
			if resp.StatusCode != http.StatusBadRequest || linked() {
				t.Fatalf("ticket %q: %d\n%s", tk, resp.StatusCode, out)
			}
		}
		// The good ticket from a browser without the flow's cookie.
		if resp, _ := e.do(e.browser(), http.MethodPost, e.srv.URL+"/link/confirm", url.Values{"ticket": {good}, "action": {"link"}}); resp.StatusCode != http.StatusBadRequest || linked() {
			t.Fatalf("a ticket without its cookie: %d", resp.StatusCode)
		}
	})

	t.Run("a code given to Mattermost", func(t *testing.T) {
		// Mattermost's sign-in code cannot be turned into a link.
		c := e.browser()
		c.CheckRedirect = func(req *http.Request, _ []*http.Request) error {
			if strings.HasPrefix(req.URL.String(), mmRedirect) {
				return http.ErrUseLastResponse
			}
			return nil
		}
		q := url.Values{"client_id": {"mattermost"}, "redirect_uri": {mmRedirect}, "response_type": {"code"}, "state": {"s"}}
		_, page := e.do(c, http.MethodGet, e.srv.URL+"/oauth/authorize?"+q.Encode(), nil)
		f := fields(page)
		f.Set("login", "alice")
		f.Set("password", "pw-alice")
		resp, _ := e.do(c, http.MethodPost, e.srv.URL+"/sso/login", f)
		loc, _ := url.Parse(resp.Header.Get("Location"))
		mmCode := loc.Query().Get("code")
		if mmCode == "" {
			t.Fatalf("no code for Mattermost: %d %s", resp.StatusCode, resp.Header.Get("Location"))
		}
		if _, err := e.svc.o.Bridge.Redeem(ctx, ClientID, e.srv.URL+CallbackPath, mmCode); !errors.Is(err, sso.ErrNotFound) {
			t.Fatalf("Mattermost's code redeemed for the link page: %v", err)
		}
	})

	t.Run("a sign-in that did not ask for the password", func(t *testing.T) {
		// The link client's flow started by hand, without prompt=login (an
		// old session would then do): the link page refuses its code.
		code, _ := e.st.NewCode(ctx, "uid-bob", "bob", time.Minute)
		c := e.browser()
		c.Jar.SetCookies(mustURL(e.srv.URL+"/link/"), []*http.Cookie{{Name: linkCookie, Value: "st8." + code, Path: "/link/"}})
		q := url.Values{"client_id": {ClientID}, "redirect_uri": {e.srv.URL + CallbackPath}, "response_type": {"code"}, "state": {"st8"}}
		_, page := e.do(c, http.MethodGet, e.srv.URL+"/oauth/authorize?"+q.Encode(), nil)
		f := fields(page)
		f.Set("login", "alice")
		f.Set("password", "pw-alice")
		resp, page := e.do(c, http.MethodPost, e.srv.URL+"/sso/login", f)
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(page, "not valid any more") || linked() {
			t.Fatalf("%d at %s\n%s", resp.StatusCode, resp.Request.URL, page)
		}
	})

	t.Run("an unknown link", func(t *testing.T) {
		resp, page := e.do(e.browser(), http.MethodGet, e.srv.URL+"/link/not-a-code", nil)
		if resp.StatusCode != http.StatusNotFound || !strings.Contains(page, "expired or was already used") {
			t.Fatalf("%d\n%s", resp.StatusCode, page)
		}
	})

	t.Run("confirming twice", func(t *testing.T) {
		c := e.browser()
		page, _ := e.signIn(c, e.command())
		f := fields(page)
		f.Set("action", "link")
		if _, out := e.do(c, http.MethodPost, e.srv.URL+"/link/confirm", f); !strings.Contains(out, "Linked.") {
			t.Fatal(out)
		}
		// The form posted again (the cookie is gone, but a saved copy of it
		// would not help either: the code is used).
		c.Jar.SetCookies(mustURL(e.srv.URL+"/link/"), []*http.Cookie{{Name: linkCookie, Value: "s." + "x", Path: "/link/"}})
		if resp, _ := e.do(c, http.MethodPost, e.srv.URL+"/link/confirm", f); resp.StatusCode == http.StatusOK {
			t.Fatal("a confirmation was accepted twice")
		}
	})
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func TestLinkWithoutSignInBridge(t *testing.T) {
	svc := New(Options{Store: nil, Users: users{}})
	if text := svc.Link(context.Background(), "uid-bob"); !strings.Contains(text, "needs mmgate's sign-in") {
		t.Fatalf("%s", text)
	}
	if svc.Routes() != nil {
		t.Fatal("the link page is served without a bridge")
	}
}

func TestSubscribeCommands(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	allowed := map[string]bool{"bob@corp.test": true}
	e.svc.o.Apps = map[string]App{"backup": {DisplayName: "Backups", Subscribable: true, Restricted: true},
		"cron": {Subscribable: true}, "jira": {}}
	e.svc.o.MayReceive = func(_ context.Context, app, email string) (bool, string, error) {
		if allowed[email] {
			return true, "", nil
		}
		return false, "not in app " + app + "'s allow group", nil
	}
	for _, c := range []struct{ do, want string }{
		{"subscribe", "Apps you can subscribe to: **Backups** (`backup`), `cron`."},
		{"subscribe jira", "`jira` does not allow subscribing"},
		{"subscribe nope", "mmgate has no app `nope`."},
		// backup has groups: bob's Mattermost email (which he could change
		// himself) proves nothing; cron has none.
		{"subscribe backup", "only reaches some directory groups, so mmgate must know who you are in the directory: prove it with `/mmgate link`"},
		{"subscribe cron", "Subscribed: every message of `cron`"},
		// Linked to an address the app's groups exclude.
		{"link-old-then-subscribe backup", "You cannot subscribe to **Backups** (`backup`): not in app backup's allow group (checked for bob@old.test)."},
		{"link-then-subscribe backup", "Subscribed: every message of **Backups** (`backup`) now also comes to you"},
		{"subscribe backup", "You are already subscribed"},
		{"subscribe", "You are subscribed to **Backups** (`backup`), `cron`."},
		{"unsubscribe backup", "Unsubscribed from **Backups**"},
		{"unsubscribe backup", "You are not subscribed to **Backups**"},
		{"unsubscribe", "Say which app"},
	} {
		verb, app, _ := strings.Cut(c.do, " ")
		var got string
		switch verb {
		case "subscribe":
			got = e.svc.Subscribe(ctx, "uid-bob", app)
		case "link-then-subscribe", "link-old-then-subscribe":
			// Linked, the groups are checked for the linked address (the
			// first by email: bob@corp.test once it is there).
			email := "bob@corp.test"
			if verb == "link-old-then-subscribe" {
				email = "bob@old.test"
			}
			code, _ := e.st.NewCode(ctx, "uid-bob", "bob", time.Minute)
			if _, err := e.st.LinkWithCode(ctx, code, Link{Email: email}); err != nil {
				t.Fatal(err)
			}
			got = e.svc.Subscribe(ctx, "uid-bob", app)
		case "unsubscribe":
			got = e.svc.Unsubscribe(ctx, "uid-bob", app)
		}
		if !strings.Contains(got, c.want) {
			t.Errorf("/mmgate %s:\n%s\nwant %q", c.do, got, c.want)
		}
	}
}

// FuzzLinkInputs: whatever the ticket, cookie, state and codes, the link
// pages never link, never show a confirmation without a real sign-in, and
// never fail on their own (5xx).
func FuzzLinkInputs(f *testing.F) {
	e := newEnv(f)
	valid, err := e.st.NewCode(context.Background(), "uid-bob", "bob", time.Hour)
	if err != nil {
		f.Fatal(err)
	}
	forged := e.svc.sign(ticket{Email: "ceo@corp.test", Expires: time.Now().Add(time.Hour).Unix()}, "other")
	f.Add(forged, "s."+valid, "s", "code", valid)
	f.Add("e30.AAAA", "."+valid, "", "", "")
	f.Add("x.y.z", "s.", "s", valid, "x")
	f.Fuzz(func(t *testing.T, tk, cookie, state, code, linkCode string) {
		do := func(r *http.Request, h http.HandlerFunc) (int, string) {
			r.AddCookie(&http.Cookie{Name: linkCookie, Value: cookie})
			w := httptest.NewRecorder()
			h(w, r)
			return w.Code, w.Body.String()
		}
		r := httptest.NewRequest(http.MethodPost, "/link/confirm", strings.NewReader(url.Values{"ticket": {tk}, "action": {"link"}}.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if st, body := do(r, e.svc.confirm); st >= 500 || strings.Contains(body, "Linked.") {
			t.Fatalf("confirm: %d\n%s", st, body)
		}
		r = httptest.NewRequest(http.MethodGet, "/link/callback?"+url.Values{"state": {state}, "code": {code}}.Encode(), nil)
		if st, body := do(r, e.svc.callback); st >= 500 || st == http.StatusOK || strings.Contains(body, "ticket") {
			t.Fatalf("callback: %d\n%s", st, body)
		}
		r = httptest.NewRequest(http.MethodGet, "/link/x", nil)
		r.SetPathValue("code", linkCode)
		if st, _ := do(r, e.svc.start); st >= 500 {
			t.Fatalf("start: %d", st)
		}
		if ls, err := e.st.Links(context.Background()); err != nil || len(ls) != 0 {
			t.Fatalf("linked: %v %v", ls, err)
		}
	})
}
