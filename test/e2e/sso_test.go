package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image"
	"image/png"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

// browser is a cookie-keeping HTTP client that records every URL it visits.
type browser struct {
	t    *testing.T
	c    *http.Client
	jar  *cookiejar.Jar
	hops []string
	// stopAt, when it matches a redirect's URL, stops following there.
	stopAt func(*url.URL) bool
}

func newBrowser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	b := &browser{t: t, jar: jar}
	b.c = &http.Client{Jar: jar, Timeout: 30 * time.Second, CheckRedirect: func(req *http.Request, via []*http.Request) error {
		b.hops = append(b.hops, req.URL.String())
		if b.stopAt != nil && b.stopAt(req.URL) {
			return http.ErrUseLastResponse
		}
		if len(via) > 20 {
			return fmt.Errorf("more than 20 redirects")
		}
		return nil
	}}
	return b
}

func (b *browser) do(req *http.Request) (*http.Response, string) {
	b.t.Helper()
	b.hops = append(b.hops, req.Method+" "+req.URL.String())
	resp, err := b.c.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v (hops %v)", req.Method, req.URL, err, b.hops)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func (b *browser) get(u string) (*http.Response, string) {
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	return b.do(req)
}

func (b *browser) post(u string, form url.Values) (*http.Response, string) {
	req, _ := http.NewRequest(http.MethodPost, u, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	return b.do(req)
}

// mmUser asks Mattermost who the browser's session is.
func (b *browser) mmUser(s *suite) (map[string]any, error) {
	req, _ := http.NewRequest(http.MethodGet, s.mmURL+"/api/v4/users/me", nil)
	req.Header.Set("X-Requested-With", "XMLHttpRequest")
	resp, err := b.c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, fmt.Errorf("GET /users/me: %d %s", resp.StatusCode, truncate(string(body), 300))
	}
	var u map[string]any
	return u, json.Unmarshal(body, &u)
}

func (b *browser) mmLogout(s *suite) {
	mmURL, _ := url.Parse(s.mmURL)
	var csrf string
	for _, c := range b.jar.Cookies(mmURL) {
		if c.Name == "MMCSRF" {
			csrf = c.Value
		}
	}
	req, _ := http.NewRequest(http.MethodPost, s.mmURL+"/api/v4/users/logout", nil)
	req.Header.Set("X-Requested-With", "XMLHttpRequest")
	req.Header.Set("X-CSRF-Token", csrf)
	resp, _ := b.do(req)
	if resp.StatusCode != 200 {
		b.t.Fatalf("Mattermost logout: %d", resp.StatusCode)
	}
	if _, err := b.mmUser(s); err == nil {
		b.t.Fatal("still signed in to Mattermost after logging out")
	}
}

var hiddenField = regexp.MustCompile(`name="(id|csrf)" value="([^"]+)"`)

func loginFields(t *testing.T, page string) url.Values {
	t.Helper()
	v := url.Values{}
	for _, m := range hiddenField.FindAllStringSubmatch(page, -1) {
		v.Set(m[1], m[2])
	}
	if v.Get("id") == "" || v.Get("csrf") == "" {
		t.Fatalf("no sign-in form on the page:\n%s", truncate(page, 2000))
	}
	return v
}

// configureGitLab points the real Mattermost's GitLab sign-in at the gate,
// with the settings `mmgate sso mattermost-config` prints.
func configureGitLab(t *testing.T, s *suite, g *gate) map[string]any {
	t.Helper()
	out := g.mustCLI("sso", "mattermost-config", "--site-url", s.mmURL)
	start, end := strings.Index(out, `"GitLabSettings": {`), strings.Index(out, "\n}\n")
	if start < 0 || end < start {
		t.Fatalf("mattermost-config printed no GitLabSettings block:\n%s", out)
	}
	var block map[string]map[string]any
	if err := json.Unmarshal([]byte("{"+out[start:end+2]+"}"), &block); err != nil {
		t.Fatalf("the GitLabSettings block is not JSON: %v\n%s", err, out)
	}
	for _, want := range []string{"mmctl config set GitLabSettings.TokenEndpoint http://" + g.httpAddr + "/oauth/token",
		"mmctl config set TeamSettings.EnableUserCreation true", `mmctl config set GitLabSettings.Secret "$(cat `} {
		if !strings.Contains(out, want) {
			t.Errorf("mattermost-config lacks %q:\n%s", want, out)
		}
	}
	gl := block["GitLabSettings"]
	patch := map[string]any{"GitLabSettings": gl, "TeamSettings": map[string]any{"EnableUserCreation": true}}
	if _, err := s.admin.do("PUT", "/config/patch", patch, nil); err != nil {
		t.Fatalf("configuring Mattermost's GitLab sign-in: %v", err)
	}
	t.Cleanup(func() {
		_, _ = s.admin.do("PUT", "/config/patch", map[string]any{"GitLabSettings": map[string]any{"Enable": false}}, nil)
	})
	return gl
}

// mmSignIn starts at Mattermost's /oauth/gitlab/login and signs in on the
// gate's page (when it shows one) with login and password; it returns the
// Mattermost user and whether a password page was shown.
func mmSignIn(t *testing.T, s *suite, g *gate, b *browser, login, password string) (map[string]any, bool) {
	t.Helper()
	b.hops = nil
	resp, page := b.get(s.mmURL + "/oauth/gitlab/login")
	prompted := false
	if strings.HasPrefix(resp.Request.URL.String(), "http://"+g.httpAddr+"/sso/login") && resp.StatusCode == 200 {
		prompted = true
		f := loginFields(t, page)
		f.Set("login", login)
		f.Set("password", password)
		resp, page = b.post("http://"+g.httpAddr+"/sso/login", f)
	}
	u, err := b.mmUser(s)
	if err != nil {
		t.Fatalf("no Mattermost session after signing in (%v); last page %d at %s:\n%s\nhops: %v",
			err, resp.StatusCode, resp.Request.URL, truncate(page, 1500), b.hops)
	}
	return u, prompted
}

// seedSSO adds a person with a password to the running slapd.
func seedSSO(t *testing.T, l *ldapPeer, uid, email, pw string) {
	c := l.admin()
	defer c.Close()
	req := goldap.NewAddRequest("uid="+uid+",ou=people,"+ldapBase, nil)
	for k, v := range map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {uid}, "cn": {uid}, "sn": {"Tester"},
		"displayName": {"Sam " + uid}, "mail": {email}, "userPassword": {pw}} {
		req.Attribute(k, v)
	}
	if err := c.Add(req); err != nil {
		t.Fatal(err)
	}
}

func setLDAPMail(t *testing.T, l *ldapPeer, uid, email string) {
	c := l.admin()
	defer c.Close()
	m := goldap.NewModifyRequest("uid="+uid+",ou=people,"+ldapBase, nil)
	m.Replace("mail", []string{email})
	if err := c.Modify(m); err != nil {
		t.Fatal(err)
	}
}

func ssoYAML(upstream string) string {
	return `sso:
  enabled: true
  issuer: http://{http_addr}
  organization: Example Corp
  upstream: ` + upstream + `
  login_attempts: 5
  clients:
    - id: mattermost
      secret: file:{gate_dir}/client.secret
      redirect_uris: ['{mm_url}/signup/gitlab/complete']
`
}

// TestSSOSignInToMattermostWithLDAP: the real Mattermost, with GitLab
// sign-in pointed at mmgate, creates a user on the first sign-in against a
// real slapd, signs the same user in again without a password, keeps the
// user when the email changes in LDAP, refuses a tampered state and a
// replayed code, and mmgate answers password guessing with 429.
func TestSSOSignInToMattermostWithLDAP(t *testing.T) {
	s := setup(t)
	l := startLDAP(t, s)
	l.seed()
	n := nonce()
	uid, email, pw := "sso"+n, "sso"+n+"@"+mailDomain, "Pa55-"+n
	seedSSO(t, l, uid, email, pw)
	pwFile := filepath.Join(l.dir, "bind.pw")
	if err := os.WriteFile(pwFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(s.root, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "client.secret"), []byte("client-secret-"+n+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newGate(t, s, gateConfig{
		Directory: fmt.Sprintf("{ldap: {urls: ['ldap://127.0.0.1:%d'], bind_dn: '%s', bind_password: 'file:%s', base_dn: '%s', timeout: 3s}}",
			l.port, ldapAdmin, pwFile, ldapBase),
		Extra: ssoYAML("ldap"),
	})
	gl := configureGitLab(t, s, g)
	if gl["Secret"] != "client-secret-"+n || gl["UserAPIEndpoint"] != "http://"+g.httpAddr+"/api/v4/user" {
		t.Errorf("GitLabSettings: %v", gl)
	}

	// 1. First sign-in: Mattermost creates the user.
	b := newBrowser(t)
	u, prompted := mmSignIn(t, s, g, b, uid, pw)
	if !prompted {
		t.Error("the first sign-in showed no password page")
	}
	if u["email"] != email || u["username"] != uid || u["auth_service"] != "gitlab" || u["first_name"] != "Sam" {
		t.Fatalf("Mattermost user: %v", u)
	}
	authData, _ := u["auth_data"].(string)
	if id, err := strconv.ParseInt(authData, 10, 64); err != nil || id < 1_000_000 {
		t.Errorf("auth_data %q is not mmgate's numeric id", authData)
	}
	mmID := u["id"]

	// 2. Second sign-in in the same browser: no password, the same user.
	b.mmLogout(s)
	u2, prompted := mmSignIn(t, s, g, b, "", "")
	if prompted || u2["id"] != mmID {
		t.Errorf("second sign-in: prompted %v, user %v (first %v)", prompted, u2["id"], mmID)
	}

	// 3. The email changes in LDAP: a fresh browser signs in with the
	// password and lands in the same Mattermost user, with the new email.
	newEmail := "sam.renamed" + n + "@" + mailDomain
	setLDAPMail(t, l, uid, newEmail)
	b3 := newBrowser(t)
	u3, _ := mmSignIn(t, s, g, b3, newEmail, pw) // the email is a login too
	if u3["id"] != mmID || u3["email"] != newEmail || u3["auth_data"] != authData {
		t.Errorf("after the email change: %v, want user %v with email %s", u3, mmID, newEmail)
	}

	// 3b. A real browser (Chromium through WebDriver, at phone size): its
	// cookie rules and the page's Content-Security-Policy allow the whole
	// flow, and Mattermost creates the person.
	webUID, webPW := "web"+n, "Web-"+n
	seedSSO(t, l, webUID, webUID+"@"+mailDomain, webPW)
	wd := startWebDriver(t, 390, 844)
	wd.open(s.mmURL + "/oauth/gitlab/login")
	wd.waitURL("http://" + g.httpAddr + "/sso/login")
	wd.typeInto("#login", webUID)
	wd.typeInto("#password", webPW)
	wd.click("button[type=submit]")
	eventually(t, 60*time.Second, "Mattermost's session cookie in the browser", func() (bool, string) {
		u := wd.url()
		return strings.HasPrefix(u, s.mmURL) && wd.cookie("MMAUTHTOKEN") != "", u
	})
	webUser := &mmClient{base: s.mmURL, token: wd.cookie("MMAUTHTOKEN")}
	var me map[string]any
	if _, err := webUser.do("GET", "/users/me", nil, &me); err != nil || me["username"] != webUID || me["auth_service"] != "gitlab" {
		t.Errorf("the browser's Mattermost session: %v %v", me, err)
	}

	// 4. A tampered state: Mattermost signs nobody in. A code Mattermost
	// already redeemed: mmgate refuses it (invalid_grant); a wrong client
	// secret and a foreign redirect_uri are refused too.
	toComplete := func(b *browser) *url.URL {
		b.stopAt = func(u *url.URL) bool { return strings.HasPrefix(u.Path, "/signup/gitlab/complete") }
		defer func() { b.stopAt = nil }()
		_, page := b.get(s.mmURL + "/oauth/gitlab/login")
		f := loginFields(t, page)
		f.Set("login", uid)
		f.Set("password", pw)
		resp, _ := b.post("http://"+g.httpAddr+"/sso/login", f)
		complete, err := url.Parse(resp.Header.Get("Location"))
		if err != nil || complete.Query().Get("code") == "" || !strings.HasPrefix(complete.String(), s.mmURL) {
			t.Fatalf("mmgate did not redirect to Mattermost with a code: %d %q", resp.StatusCode, resp.Header.Get("Location"))
		}
		return complete
	}
	b4 := newBrowser(t)
	complete := toComplete(b4)
	tampered := *complete
	q := tampered.Query()
	q.Set("state", q.Get("state")+"x")
	tampered.RawQuery = q.Encode()
	b4.get(tampered.String())
	if _, err := b4.mmUser(s); err == nil {
		t.Error("Mattermost signed in with a tampered state")
	}
	b5 := newBrowser(t)
	complete = toComplete(b5)
	b5.get(complete.String())
	if u5, err := b5.mmUser(s); err != nil || u5["id"] != mmID {
		t.Fatalf("the genuine redirect did not sign in: %v %v", u5, err)
	}
	token := func(code, secret, redirect string) (int, string) {
		form := url.Values{"client_id": {"mattermost"}, "client_secret": {secret}, "code": {code},
			"grant_type": {"authorization_code"}, "redirect_uri": {redirect}}
		resp, err := http.PostForm("http://"+g.httpAddr+"/oauth/token", form)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(body)
	}
	redirect := s.mmURL + "/signup/gitlab/complete"
	if st, body := token(complete.Query().Get("code"), "client-secret-"+n, redirect); st != 400 || !strings.Contains(body, "invalid_grant") {
		t.Errorf("a code Mattermost already redeemed: %d %s, want 400 invalid_grant", st, body)
	}
	c6 := toComplete(newBrowser(t))
	if st, body := token(c6.Query().Get("code"), "wrong-secret", redirect); st/100 != 4 || !strings.Contains(body, "invalid_client") {
		t.Errorf("wrong client secret: %d %s, want invalid_client", st, body)
	}
	bad := newBrowser(t)
	bad.stopAt = func(*url.URL) bool { return true }
	resp, _ := bad.get("http://" + g.httpAddr + "/oauth/authorize?response_type=code&client_id=mattermost&state=x&redirect_uri=" +
		url.QueryEscape("http://evil.test/signup/gitlab/complete"))
	if loc := resp.Header.Get("Location"); strings.Contains(loc, "evil.test") {
		t.Errorf("a foreign redirect_uri was redirected to: %q", loc)
	}

	// 5. Password guessing: 401 for each wrong password, then 429.
	b6 := newBrowser(t)
	_, page := b6.get(s.mmURL + "/oauth/gitlab/login")
	var last *http.Response
	var wrongPage string
	for i := 0; i < 7; i++ {
		f := loginFields(t, page)
		f.Set("login", uid)
		f.Set("password", fmt.Sprintf("guess-%d", i))
		last, page = b6.post("http://"+g.httpAddr+"/sso/login", f)
		if i < 5 && last.StatusCode != http.StatusUnauthorized {
			t.Errorf("wrong password %d: %d, want 401", i, last.StatusCode)
		}
		if i == 0 {
			wrongPage = page
			if !strings.Contains(page, "Wrong username or password.") {
				t.Errorf("the wrong-password page does not say so:\n%s", truncate(page, 800))
			}
		}
	}
	if last.StatusCode != http.StatusTooManyRequests || !strings.Contains(page, "Too many sign-in attempts") {
		t.Errorf("after 7 wrong passwords: %d, want 429:\n%s", last.StatusCode, truncate(page, 800))
	}

	// 6. Screenshots of the sign-in page, desktop and phone, and its error state.
	screenshots(t, s, g, wrongPage)
	g.checkLogSecrets()
	if log, _ := os.ReadFile(g.logPath); bytes.Contains(log, []byte(pw)) || bytes.Contains(log, []byte("client-secret-"+n)) {
		t.Error("the log holds a password or the client secret")
	}
}

// screenshots renders the sign-in page in headless Chromium at desktop and
// phone widths, and the error page (errorPage, as mmgate sent it), and
// checks each picture is the size asked for and not blank, and that the
// error banner's color is in the error pictures.
func screenshots(t *testing.T, s *suite, g *gate, errorPage string) {
	t.Helper()
	chromium, err := exec.LookPath("chromium")
	needPeer(t, err == nil, "chromium is not installed (Debian package chromium)")
	out := os.Getenv("MMGATE_ARTIFACTS")
	if out == "" {
		out = filepath.Join(s.root, "screenshots")
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	// The pages as mmgate sent them to a browser that started a sign-in
	// (Chromium itself has not: the page would say so).
	fresh := newBrowser(t)
	resp, formPage := fresh.get(s.mmURL + "/oauth/gitlab/login")
	if !strings.HasPrefix(resp.Request.URL.String(), "http://"+g.httpAddr+"/sso/login") || !strings.Contains(formPage, `name="password"`) {
		t.Fatalf("no sign-in page: %d %s", resp.StatusCode, resp.Request.URL)
	}
	formFile := filepath.Join(out, "login.html")
	if err := os.WriteFile(formFile, []byte(formPage), 0o644); err != nil {
		t.Fatal(err)
	}
	loginURL := "file://" + formFile
	errFile := filepath.Join(out, "login-error.html")
	if err := os.WriteFile(errFile, []byte(errorPage), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, shot := range []struct {
		name, url string
		w, h      int
		isError   bool
	}{
		{"login-desktop.png", loginURL, 1280, 800, false},
		{"login-phone.png", loginURL, 390, 844, false},
		{"login-error-desktop.png", "file://" + errFile, 1280, 800, true},
		{"login-error-phone.png", "file://" + errFile, 390, 844, true},
	} {
		path := filepath.Join(out, shot.name)
		_ = os.Remove(path)
		ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
		cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
			"--force-prefers-reduced-motion", "--user-data-dir="+filepath.Join(out, "profile"),
			fmt.Sprintf("--window-size=%d,%d", shot.w, shot.h), "--screenshot="+path, shot.url)
		o, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("chromium %s: %v\n%s", shot.name, err, o)
		}
		f, err := os.Open(path)
		if err != nil {
			t.Fatalf("chromium wrote no %s: %v\n%s", shot.name, err, o)
		}
		img, err := png.Decode(f)
		f.Close()
		if err != nil {
			t.Fatalf("%s: %v", shot.name, err)
		}
		bounds := img.Bounds()
		if bounds.Dx() != shot.w || bounds.Dy() != shot.h {
			t.Errorf("%s is %dx%d, want %dx%d", shot.name, bounds.Dx(), bounds.Dy(), shot.w, shot.h)
		}
		colors, errorPixels, buttonPixels := colorStats(img)
		if colors < 20 {
			t.Errorf("%s has %d colors: a blank page?", shot.name, colors)
		}
		if buttonPixels < 5000 {
			t.Errorf("%s: %d pixels of the sign-in button's color: no button?", shot.name, buttonPixels)
		}
		if shot.isError != (errorPixels > 500) {
			t.Errorf("%s: %d pixels of the error banner's color, error state %v", shot.name, errorPixels, shot.isError)
		}
		t.Logf("screenshot %s (%d colors)", path, colors)
	}
}

// colorStats counts distinct colors, pixels of the error banner's
// background (#fdecec) and of the sign-in button (#1c58d9).
func colorStats(img image.Image) (int, int, int) {
	seen := map[uint32]bool{}
	banner, button := 0, 0
	b := img.Bounds()
	for y := b.Min.Y; y < b.Max.Y; y++ {
		for x := b.Min.X; x < b.Max.X; x++ {
			r, g, bl, _ := img.At(x, y).RGBA()
			r, g, bl = r>>8, g>>8, bl>>8
			seen[r<<16|g<<8|bl] = true
			if r == 0xfd && g == 0xec && bl == 0xec {
				banner++
			}
			if r == 0x1c && g == 0x58 && bl == 0xd9 {
				button++
			}
		}
	}
	return len(seen), banner, button
}

// oidcPeer is test/peers/oidc-provider: zitadel/oidc's op package with its
// example storage, in a process of its own.
type oidcPeer struct {
	addr string
	out  string // its stdout file
	cmd  *exec.Cmd
}

func startOIDCProvider(t *testing.T, s *suite, dir, redirect, secret string, users map[string]map[string]any) *oidcPeer {
	t.Helper()
	bin := filepath.Join(s.root, "oidc-provider")
	if !fileExists(bin) {
		build := exec.Command("go", "build", "-o", bin, "./test/peers/oidc-provider")
		build.Dir = filepath.Dir(filepath.Dir(s.peers))
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build ./test/peers/oidc-provider: %v\n%s", err, out)
		}
	}
	uj, _ := json.Marshal(users)
	usersFile := filepath.Join(dir, "upstream-users.json")
	if err := os.WriteFile(usersFile, uj, 0o600); err != nil {
		t.Fatal(err)
	}
	p := &oidcPeer{addr: freeAddr(t), out: filepath.Join(dir, "oidc-provider.log")}
	f, err := os.Create(p.out)
	if err != nil {
		t.Fatal(err)
	}
	p.cmd = exec.Command(bin, "-listen", p.addr, "-issuer", "http://"+p.addr, "-client", "mmgate", "-secret", secret,
		"-redirect", redirect, "-users", usersFile)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		f.Close()
		if t.Failed() {
			b, _ := os.ReadFile(p.out)
			t.Logf("oidc-provider output:\n%s", b)
		}
	})
	eventually(t, 30*time.Second, "the OIDC provider answers", func() (bool, string) {
		resp, err := http.Get("http://" + p.addr + "/.well-known/openid-configuration")
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	return p
}

func (p *oidcPeer) count(what string) int {
	b, _ := os.ReadFile(p.out)
	return strings.Count(string(b), what+"\n")
}

var upstreamID = regexp.MustCompile(`name="id" value="([^"]+)"`)

// TestSSOSignInThroughUpstreamOIDC: Mattermost → mmgate → a real OIDC
// provider (another process) and back: the user is created from the
// provider's claims; after signing out of Mattermost and of mmgate, a
// person still signed in at the provider is signed in again with no
// prompt at all; an upstream answer with a tampered state is refused.
func TestSSOSignInThroughUpstreamOIDC(t *testing.T) {
	s := setup(t)
	n := nonce()
	dir := filepath.Join(s.root, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	gateHTTP := freeAddr(t)
	upSecret := "upstream-secret-" + n
	user, email, pw := "pat"+n, "pat"+n+"@"+mailDomain, "Platform-"+n
	up := startOIDCProvider(t, s, dir, "http://"+gateHTTP+"/sso/upstream/callback", upSecret, map[string]map[string]any{
		"id-" + n: {"ID": "id-" + n, "Username": user, "Password": pw, "Email": email, "EmailVerified": true,
			"FirstName": "Pat", "LastName": "Upstream"},
	})
	for name, v := range map[string]string{"client.secret": "client-secret-" + n, "upstream.secret": upSecret} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(v+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	g := newGate(t, s, gateConfig{HTTPAddr: gateHTTP, Extra: ssoYAML("oidc") + `  oidc:
    issuer: http://` + up.addr + `
    client_id: mmgate
    client_secret: file:{gate_dir}/upstream.secret
`})
	configureGitLab(t, s, g)

	// 1. First sign-in: the provider's own page asks for the password.
	b := newBrowser(t)
	resp, page := b.get(s.mmURL + "/oauth/gitlab/login")
	m := upstreamID.FindStringSubmatch(page)
	if !strings.HasPrefix(resp.Request.URL.String(), "http://"+up.addr+"/login/username") || m == nil {
		t.Fatalf("not at the provider's sign-in page: %d %s\n%s\nhops: %v", resp.StatusCode, resp.Request.URL, truncate(page, 800), b.hops)
	}
	resp, page = b.post("http://"+up.addr+"/login/username", url.Values{"id": {m[1]}, "username": {user}, "password": {pw}})
	u, err := b.mmUser(s)
	if err != nil {
		t.Fatalf("no Mattermost session: %v; last page %d %s\n%s\nhops: %v", err, resp.StatusCode, resp.Request.URL, truncate(page, 800), b.hops)
	}
	if u["email"] != email || u["username"] != user || u["first_name"] != "Pat" || u["last_name"] != "Upstream" || u["auth_service"] != "gitlab" {
		t.Errorf("Mattermost user from the provider's claims: %v", u)
	}
	if up.count("login-form") != 1 {
		t.Errorf("the provider showed its form %d times, want 1", up.count("login-form"))
	}

	// 2. Signed out of Mattermost and of mmgate, still signed in at the
	// provider: signing in again shows no page at all.
	b.mmLogout(s)
	_, page = b.get("http://" + g.httpAddr + "/sso/logout")
	csrf := regexp.MustCompile(`name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
	if csrf == nil {
		t.Fatalf("no sign-out form:\n%s", truncate(page, 800))
	}
	if resp, page = b.post("http://"+g.httpAddr+"/sso/logout", url.Values{"csrf": {csrf[1]}}); resp.StatusCode != 200 || !strings.Contains(page, "signed out") {
		t.Fatalf("mmgate sign-out: %d\n%s", resp.StatusCode, truncate(page, 800))
	}
	b.hops = nil
	resp, page = b.get(s.mmURL + "/oauth/gitlab/login")
	u2, err := b.mmUser(s)
	if err != nil || u2["id"] != u["id"] {
		t.Fatalf("silent sign-in: %v %v; ended %d at %s\nhops: %v", u2["id"], err, resp.StatusCode, resp.Request.URL, b.hops)
	}
	if up.count("login-form") != 1 || up.count("session-login") != 1 {
		t.Errorf("the second sign-in should use the provider's session without a form: forms %d, session sign-ins %d",
			up.count("login-form"), up.count("session-login"))
	}
	// A page shown by mmgate would have ended the redirects there.
	if strings.HasPrefix(resp.Request.URL.String(), "http://"+g.httpAddr+"/") {
		t.Errorf("the silent sign-in stopped at mmgate's %s: %v", resp.Request.URL.Path, b.hops)
	}

	// 3. A tampered state on the way back from the provider is refused.
	b3 := newBrowser(t)
	b3.stopAt = func(u *url.URL) bool { return u.Path == "/sso/upstream/callback" }
	resp, page = b3.get(s.mmURL + "/oauth/gitlab/login")
	m = upstreamID.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no provider form: %d %s", resp.StatusCode, resp.Request.URL)
	}
	resp, _ = b3.post("http://"+up.addr+"/login/username", url.Values{"id": {m[1]}, "username": {user}, "password": {pw}})
	back, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || back.Path != "/sso/upstream/callback" {
		t.Fatalf("the provider did not send the browser back to mmgate: %d %q", resp.StatusCode, resp.Header.Get("Location"))
	}
	q := back.Query()
	q.Set("state", q.Get("state")+"x")
	bad := *back
	bad.RawQuery = q.Encode()
	b3.stopAt = nil
	resp, page = b3.get(bad.String())
	if resp.StatusCode != 400 || !strings.Contains(page, "does not belong") {
		t.Errorf("tampered upstream state: %d\n%s", resp.StatusCode, truncate(page, 800))
	}
	if _, err := b3.mmUser(s); err == nil {
		t.Error("Mattermost signed in after a tampered upstream state")
	}
	// The genuine answer, in another browser (no state cookie): refused too.
	other := newBrowser(t)
	if resp, _ = other.get(back.String()); resp.StatusCode != 400 {
		t.Errorf("the provider's answer replayed in another browser: %d, want 400", resp.StatusCode)
	}
}
