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
		IsAdmin: func(_ context.Context, id string) (bool, error) { return admins[id], nil },
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
		{"store down", form("tok-1", "broken", "u-admin", "status"), 503, "cannot check"},
		{"help", form("tok-1", "t1", "u1", ""), 200, "/mmgate subscribe APP"},
		{"status, not admin", form("tok-1", "t1", "u1", "status"), 200, "for system admins"},
		{"status, admin", form("tok-1", "t1", "u-admin", "STATUS"), 200, "| quarantined | 1 |"},
		{"unknown", form("tok-1", "t1", "u1", "frobnicate"), 200, "does not know `frobnicate`"},
	} {
		st, resp := call(t, h, c.f)
		if st != c.status || !strings.Contains(resp.Text, c.want) || resp.ResponseType != "ephemeral" {
			t.Errorf("%s: %d %+v, want %d with %q", c.name, st, resp, c.status, c.want)
		}
	}
	if countsRead != 1 {
		t.Errorf("the queue was read %d times, want only for the admin's status", countsRead)
	}
}
