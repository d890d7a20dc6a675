package httpapi

import (
	"github.com/mmgate/mmgate/internal/fault"

	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

func TestAdminSetupAndInstallLink(t *testing.T) {
	key := []byte("0123456789abcdef0123456789abcdef")
	var mu sync.Mutex
	used := map[string]bool{}
	runs := 0
	o := AdminOptions{AdminToken: "adm", InstallKey: key,
		CheckAdmin: func(_ context.Context, tok string) (bool, error) { return tok == "mm-admin", nil },
		Used: func(_ context.Context, id string) (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			return used[id], nil
		},
		Setup: func(_ context.Context, tok string, _ []string, report func(string)) (int, int, error) {
			mu.Lock()
			runs++
			mu.Unlock()
			switch tok {
			case "nope":
				return 0, 0, fault.Wrap(fault.Unauthorized, "admin_token_refused", "Mattermost refused the token", errors.New("401"))
			case "down":
				return 0, 0, fault.Wrap(fault.Temporary, "mattermost_unreachable", "Mattermost unreachable", errors.New("dial"))
			case "odd":
				return 0, 0, errors.New("there is no team named \"x\"")
			}
			report("bot @jira: created")
			return 1, 0, nil
		},
		UseOnce: func(_ context.Context, id string) (bool, error) {
			mu.Lock()
			defer mu.Unlock()
			if used[id] {
				return false, nil
			}
			used[id] = true
			return true, nil
		}}
	mux := http.NewServeMux()
	for p, h := range AdminRoutes(o) {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()

	post := func(auth, body string) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/admin/mattermost/setup", strings.NewReader(body))
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if st, body := post("", `{"admin_token":"mm-admin"}`); st != 401 || !strings.Contains(body, `"code":"unauthorized"`) {
		t.Errorf("no admin token: %d %s", st, body)
	}
	if st, _ := post("wrong", `{"admin_token":"mm-admin"}`); st != 401 {
		t.Errorf("wrong admin token: %d", st)
	}
	if st, body := post("adm", `{}`); st != 400 || !strings.Contains(body, "admin_token") {
		t.Errorf("no Mattermost token: %d %s", st, body)
	}
	if st, body := post("adm", `{"admin_token":"mm-admin"}`); st != 200 || !strings.Contains(body, "bot @jira: created") {
		t.Errorf("setup: %d %s", st, body)
	}
	for tok, want := range map[string]struct {
		status int
		code   string
	}{"nope": {403, "admin_token_refused"}, "down": {503, "mattermost_unavailable"}, "odd": {502, "setup_failed"}} {
		if st, body := post("adm", `{"admin_token":"`+tok+`"}`); st != want.status || !strings.Contains(body, `"code":"`+want.code+`"`) {
			t.Errorf("setup failing (%s): %d %s, want %d %s", tok, st, body, want.status, want.code)
		}
	}

	// The install link: a page, a form, once.
	jar, _ := cookiejar.New(nil)
	c := &http.Client{Jar: jar}
	get := func(u string) (int, string) {
		resp, err := c.Get(u)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	submit := func(page, admin string) (int, string) {
		m := regexp.MustCompile(`name="token" value="([^"]+)"><input type="hidden" name="csrf" value="([^"]+)"`).FindStringSubmatch(page)
		if m == nil {
			t.Fatalf("no form:\n%s", page)
		}
		resp, err := c.PostForm(srv.URL+"/setup", url.Values{"token": {m[1]}, "csrf": {m[2]}, "admin_token": {admin}})
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	tok, err := InstallToken(key, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	st, page := get(srv.URL + "/setup?token=" + tok)
	if st != 200 || !strings.Contains(page, `type="password"`) {
		t.Fatalf("install page: %d\n%s", st, page)
	}
	if st, body := submit(page, "not-an-admin"); st != 401 || !strings.Contains(body, "system admin") {
		t.Errorf("a token that is not an admin's: %d\n%s", st, body)
	}
	if st, body := submit(page, "mm-admin"); st != 200 || !strings.Contains(body, "installed") || !strings.Contains(body, "bot @jira: created") {
		t.Errorf("install: %d\n%s", st, body)
	}
	if st, body := submit(page, "mm-admin"); st != 401 || !strings.Contains(body, "already used") {
		t.Errorf("the same link again: %d\n%s", st, body)
	}
	if st, body := get(srv.URL + "/setup?token=" + tok); st != 401 || !strings.Contains(body, "already used") || strings.Contains(body, `type="password"`) {
		t.Errorf("opening a used link: %d, want the page to say so without a form\n%s", st, body)
	}
	expired, _ := InstallToken(key, -time.Minute)
	forged, _ := InstallToken([]byte("another key, another key, another"), time.Minute)
	none := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{Issuer: "mmgate", Audience: jwt.ClaimStrings{"mmgate-setup"},
		ID: "x", ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Minute))})
	unsigned, _ := none.SignedString(jwt.UnsafeAllowNoneSignatureType)
	for name, bad := range map[string]string{"expired": expired, "forged": forged, "alg none": unsigned, "garbage": "x.y.z"} {
		if st, body := get(srv.URL + "/setup?token=" + url.QueryEscape(bad)); st != 401 || !strings.Contains(body, "not valid") {
			t.Errorf("%s link: %d", name, st)
		}
	}
	if runs != 5 {
		t.Errorf("setup ran %d times, want 5 (four by the API, one by the link)", runs)
	}
}
