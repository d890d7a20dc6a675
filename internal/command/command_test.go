package command

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
)

func call(t *testing.T, h http.Handler, form url.Values) (int, Response) {
	t.Helper()
	r := httptest.NewRequest(http.MethodPost, "/mattermost/command", strings.NewReader(form.Encode()))
	r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	var resp Response
	_ = json.Unmarshal(w.Body.Bytes(), &resp)
	return w.Code, resp
}

func TestCommand(t *testing.T) {
	admins := map[string]bool{"u-admin": true}
	var accounts recorder
	countsRead := 0
	h := Handler(Options{
		Token: func(_ context.Context, team string) (string, error) {
			if team == "t1" {
				return "tok-1", nil
			}
			if team == "broken" {
				return "", errors.New("db down")
			}
			return "", nil
		},
		Counts: func(context.Context) (map[string]int, error) {
			countsRead++
			return map[string]int{"queued": 2, "quarantined": 1, "posted": 40}, nil
		},
		IsAdmin:  func(_ context.Context, id string) (bool, error) { return admins[id], nil },
		Accounts: &accounts,
	})
	form := func(token, team, user, text string) url.Values {
		return url.Values{"token": {token}, "team_id": {team}, "user_id": {user}, "text": {text}, "command": {"/mmgate"}}
	}
	for _, c := range []struct {
		name   string
		f      url.Values
		status int
		want   string
	}{
		{"wrong token", form("nope", "t1", "u-admin", "status"), 401, "not the one mmgate installed"},
		{"another team's token", form("tok-1", "t2", "u-admin", "status"), 401, "not the one"},
		{"no token stored", form("", "t2", "u-admin", "status"), 401, "not the one"},
		{"store down", form("tok-1", "broken", "u-admin", "status"), 200, "cannot check"},
		{"help", form("tok-1", "t1", "u1", ""), 200, "/mmgate subscribe [APP]"},
		{"status, not admin", form("tok-1", "t1", "u1", "status"), 200, "for system admins"},
		{"status, admin", form("tok-1", "t1", "u-admin", "STATUS"), 200, "| quarantined | 1 |"},
		{"unknown", form("tok-1", "t1", "u1", "frobnicate"), 200, "does not know `frobnicate`"},
		{"link", form("tok-1", "t1", "u1", "link"), 200, "link u1"},
		{"unlink", form("tok-1", "t1", "u1", "Unlink"), 200, "unlink u1"},
		{"subscribe", form("tok-1", "t1", "u1", "subscribe backup"), 200, "subscribe u1 backup"},
		{"subscribe, no app", form("tok-1", "t1", "u1", "subscribe"), 200, "subscribe u1 "},
		{"unsubscribe", form("tok-1", "t1", "u2", "unsubscribe  backup"), 200, "unsubscribe u2 backup"},
		{"link, wrong token", form("nope", "t1", "u1", "link"), 401, "not the one"},
	} {
		st, resp := call(t, h, c.f)
		if st != c.status || !strings.Contains(resp.Text, c.want) || resp.ResponseType != "ephemeral" {
			t.Errorf("%s: %d %+v, want %d with %q", c.name, st, resp, c.status, c.want)
		}
	}
	if want := "link u1,unlink u1,subscribe u1 backup,subscribe u1 ,unsubscribe u2 backup"; strings.Join(accounts, ",") != want {
		t.Errorf("accounts calls %q, want %q (none with a wrong token)", accounts, want)
	}
	if countsRead != 1 {
		t.Errorf("the queue was read %d times, want only for the admin's status", countsRead)
	}
}

type recorder []string

func (r *recorder) add(s string) string                       { *r = append(*r, s); return s }
func (r *recorder) Link(_ context.Context, u string) string   { return r.add("link " + u) }
func (r *recorder) Unlink(_ context.Context, u string) string { return r.add("unlink " + u) }
func (r *recorder) Subscribe(_ context.Context, u, a string) string {
	return r.add("subscribe " + u + " " + a)
}
func (r *recorder) Unsubscribe(_ context.Context, u, a string) string {
	return r.add("unsubscribe " + u + " " + a)
}

func TestAccountsOff(t *testing.T) {
	h := Handler(Options{Token: func(context.Context, string) (string, error) { return "tok", nil }})
	_, resp := call(t, h, url.Values{"token": {"tok"}, "team_id": {"t"}, "user_id": {"u"}, "text": {"link"}})
	if !strings.Contains(resp.Text, "not set up in this mmgate") {
		t.Fatalf("%+v", resp)
	}
}
