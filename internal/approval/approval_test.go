package approval

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/sqldb"
)

// fakeMM stands in for Mattermost in these unit tests (the real one is in
// test/e2e/approvals_test.go): it keeps posts and users in memory.
type fakeMM struct {
	mu    sync.Mutex
	users map[string]*mattermost.User
	posts map[string]*mattermost.Post
	// outsiders are users in no channel; everyone else is in every one.
	outsiders map[string]bool
	n         int
}

var errNotFound = &mattermost.APIError{Status: http.StatusNotFound}

func newFakeMM() *fakeMM {
	return &fakeMM{users: map[string]*mattermost.User{
		"bot": {ID: "bot", Username: "approvals-bot"}, "u-bob": {ID: "u-bob", Username: "bob", Email: "bob@corp.test"},
		"u-alice": {ID: "u-alice", Username: "alice", Email: "alice@corp.test"}, "u-carol": {ID: "u-carol", Username: "carol"},
	}, posts: map[string]*mattermost.Post{}}
}

func (f *fakeMM) Me(context.Context) (*mattermost.User, error) { return f.users["bot"], nil }
func (f *fakeMM) User(_ context.Context, id string) (*mattermost.User, error) {
	if u, ok := f.users[id]; ok {
		return u, nil
	}
	return nil, errNotFound
}
func (f *fakeMM) UserByEmail(_ context.Context, e string) (*mattermost.User, error) {
	for _, u := range f.users {
		if u.Email == e {
			return u, nil
		}
	}
	return nil, errNotFound
}
func (f *fakeMM) UserByUsername(_ context.Context, n string) (*mattermost.User, error) {
	for _, u := range f.users {
		if u.Username == n {
			return u, nil
		}
	}
	return nil, errNotFound
}
func (f *fakeMM) DirectChannel(_ context.Context, a, b string) (*mattermost.Channel, error) {
	return &mattermost.Channel{ID: "dm-" + b}, nil
}
func (f *fakeMM) ChannelByName(context.Context, string, string) (*mattermost.Channel, error) {
	return &mattermost.Channel{ID: "ch"}, nil
}
func (f *fakeMM) CreatePost(_ context.Context, p *mattermost.Post) (*mattermost.Post, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.n++
	cp := *p
	cp.ID, cp.UserID = "p"+string(rune('a'+f.n)), "bot"
	f.posts[cp.ID] = &cp
	return &cp, nil
}
func (f *fakeMM) GetPost(_ context.Context, id string) (*mattermost.Post, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.posts[id]; ok {
		return p, nil
	}
	return nil, errNotFound
}
func (f *fakeMM) PatchPost(_ context.Context, id, msg string, props map[string]any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.posts[id]; ok {
		p.Message, p.Props = msg, props
	}
	return nil
}
func (f *fakeMM) OpenDialog(context.Context, string, string, map[string]any) error { return nil }
func (f *fakeMM) DeletePost(_ context.Context, id string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.posts, id)
	return nil
}
func (f *fakeMM) IsChannelMember(_ context.Context, _, userID string) (bool, error) {
	return !f.outsiders[userID], nil
}

func newService(t testing.TB) (*Service, *fakeMM) {
	t.Helper()
	db, err := sqldb.OpenSQLite(filepath.Join(t.TempDir(), "approvals.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := OpenStore(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	mm := newFakeMM()
	s, err := New(Options{Store: st, MM: mm, SigningKey: []byte("0123456789abcdef0123456789abcdef"), PublicURL: "http://mmgate.test",
		Clients: []Client{{Name: "deploy", Key: "deploy-key-0123456789"}}})
	if err != nil {
		t.Fatal(err)
	}
	return s, mm
}

func post(h http.HandlerFunc, body []byte) (int, map[string]any) {
	w := httptest.NewRecorder()
	h(w, httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body)))
	var out map[string]any
	_ = json.Unmarshal(w.Body.Bytes(), &out)
	return w.Code, out
}

func TestClickTokensAreBoundAndChecked(t *testing.T) {
	s, mm := newService(t)
	ctx := context.Background()
	a, err := s.Create(ctx, "deploy", Request{Requester: "alice", What: "deploy", Reviewers: Reviewers{Users: []string{"bob"}}})
	if err != nil {
		t.Fatal(err)
	}
	other, _ := s.Create(ctx, "deploy", Request{Requester: "alice", What: "other", Reviewers: Reviewers{Users: []string{"bob"}}})
	good := s.sign(a.ID, "approve", "", time.Now().Add(time.Hour))
	click := func(user, postID, token string) string {
		b, _ := json.Marshal(map[string]any{"user_id": user, "post_id": postID, "context": map[string]any{"token": token}})
		code, out := post(s.HandleAction, b)
		if code != 200 {
			t.Fatalf("Mattermost needs 200, got %d", code)
		}
		txt, _ := out["ephemeral_text"].(string)
		return txt
	}
	otherTok := s.sign(other.ID, "approve", "", time.Now().Add(time.Hour))
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, buttonClaims{Action: "approve", RegisteredClaims: jwt.RegisteredClaims{
		Subject: a.ID, Audience: jwt.ClaimStrings{tokenAudience}, ExpiresAt: jwt.NewNumericDate(time.Now().Add(time.Hour))}}).
		SignedString(jwt.UnsafeAllowNoneSignatureType)
	for name, c := range map[string]struct{ user, post, token, want string }{
		"altered token":        {"u-bob", a.Posts[0].PostID, good[:len(good)-2] + "xx", "not valid"},
		"alg none":             {"u-bob", a.Posts[0].PostID, none, "not valid"},
		"expired token":        {"u-bob", a.Posts[0].PostID, s.sign(a.ID, "approve", "", time.Now().Add(-time.Minute)), "not valid"},
		"another request's":    {"u-bob", a.Posts[0].PostID, otherTok, "not one of the request's"},
		"not a reviewer":       {"u-carol", a.Posts[0].PostID, good, "not a reviewer"},
		"the requester":        {"u-alice", a.Posts[0].PostID, good, "you asked for this"},
		"unknown user":         {"u-nobody", a.Posts[0].PostID, good, "unknown user"},
		"post not the request": {"u-bob", other.Posts[0].PostID, good, "not one of the request's"},
	} {
		if got := click(c.user, c.post, c.token); !strings.Contains(got, c.want) {
			t.Errorf("%s: %q, want %q", name, got, c.want)
		}
	}
	// A post Mattermost says is someone else's.
	mm.posts[a.Posts[0].PostID].UserID = "u-carol"
	if got := click("u-bob", a.Posts[0].PostID, good); !strings.Contains(got, "does not belong") {
		t.Errorf("a post that is not the bot's: %q", got)
	}
	mm.posts[a.Posts[0].PostID].UserID = "bot"
	if got, _ := s.o.Store.Get(ctx, a.ID); got.State != Pending || len(got.Decisions) != 0 {
		t.Fatalf("refused clicks changed the request: %+v", got)
	}
	click("u-bob", a.Posts[0].PostID, good)
	if got, _ := s.o.Store.Get(ctx, a.ID); got.State != Approved {
		t.Errorf("bob's click: %+v", got)
	}
	if got := click("u-bob", a.Posts[0].PostID, good); !strings.Contains(got, "already approved") {
		t.Errorf("replayed click: %q", got)
	}
	// The dialog's state names its person.
	st := s.sign(other.ID, "deny", "u-bob", time.Now().Add(time.Minute))
	b, _ := json.Marshal(map[string]any{"state": st, "user_id": "u-carol", "submission": map[string]string{"reason": "x"}})
	if _, out := post(s.HandleDialog, b); out["error"] == nil {
		t.Errorf("carol submitting bob's dialog: %v", out)
	}
	b, _ = json.Marshal(map[string]any{"state": st, "user_id": "u-bob", "submission": map[string]string{"reason": " "}})
	if _, out := post(s.HandleDialog, b); out["errors"] == nil {
		t.Errorf("a denial without a reason: %v", out)
	}
	b, _ = json.Marshal(map[string]any{"state": st, "user_id": "u-bob", "submission": map[string]string{"reason": "no"}})
	if _, out := post(s.HandleDialog, b); len(out) != 0 {
		t.Errorf("bob's denial: %v", out)
	}
	if got, _ := s.o.Store.Get(ctx, other.ID); got.State != Denied || got.Decisions[0].Reason != "no" {
		t.Errorf("after the denial: %+v", got)
	}
}

func TestCreateRefusesBadRequests(t *testing.T) {
	s, _ := newService(t)
	for name, r := range map[string]Request{
		"no requester":       {What: "x", Reviewers: Reviewers{Users: []string{"bob"}}},
		"no reviewers":       {Requester: "alice", What: "x"},
		"unknown reviewer":   {Requester: "alice", What: "x", Reviewers: Reviewers{Users: []string{"nobody"}}},
		"self review":        {Requester: "alice", What: "x", Reviewers: Reviewers{Users: []string{"alice"}}},
		"groups, no channel": {Requester: "alice", What: "x", Reviewers: Reviewers{Groups: []string{"cn=x"}}},
		"bad expiry":         {Requester: "alice", What: "x", Reviewers: Reviewers{Users: []string{"bob"}}, ExpiresIn: "1000h"},
		"bad callback":       {Requester: "alice", What: "x", Reviewers: Reviewers{Users: []string{"bob"}}, CallbackURL: "ftp://x"},
	} {
		var inv InvalidError
		if _, err := s.Create(context.Background(), "deploy", r); !errors.As(err, &inv) {
			t.Errorf("%s: %v, want InvalidError", name, err)
		}
	}
}

// FuzzCallbacks sends arbitrary bodies to the click and dialog endpoints:
// they always answer 200 with JSON, never panic, and never decide.
func FuzzCallbacks(f *testing.F) {
	s, _ := newService(f)
	a, err := s.Create(context.Background(), "deploy", Request{Requester: "alice", What: "x", Reviewers: Reviewers{Users: []string{"bob"}}})
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(`{"user_id":"u-bob","post_id":"` + a.Posts[0].PostID + `","context":{"token":"x.y.z"}}`))
	f.Add([]byte(`{"state":"x","user_id":"u-bob","submission":{"reason":"r"}}`))
	f.Add([]byte(`{"context":{"token":null}}`))
	f.Add([]byte(`[1,2,3]`))
	f.Fuzz(func(t *testing.T, body []byte) {
		for _, h := range []http.HandlerFunc{s.HandleAction, s.HandleDialog} {
			w := httptest.NewRecorder()
			h(w, httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body)))
			if w.Code != 200 || !json.Valid(w.Body.Bytes()) {
				t.Errorf("%q: %d %q", body, w.Code, w.Body.String())
			}
		}
		if got, _ := s.o.Store.Get(context.Background(), a.ID); got.State != Pending {
			t.Fatalf("%q decided the request", body)
		}
	})
}

// A Deny dialog's state (which the reviewer's client receives) never works
// as a button, so a reviewer cannot use it to answer in someone else's name.
func TestDialogStateIsNoButton(t *testing.T) {
	s, mm := newService(t)
	mm.users["u-dave"] = &mattermost.User{ID: "u-dave", Username: "dave"}
	ctx := context.Background()
	a, err := s.Create(ctx, "deploy", Request{Requester: "alice", What: "x", Reviewers: Reviewers{Users: []string{"bob", "dave"}}})
	if err != nil {
		t.Fatal(err)
	}
	state := s.sign(a.ID, "deny", "u-bob", time.Now().Add(time.Minute))
	b, _ := json.Marshal(map[string]any{"user_id": "u-dave", "post_id": a.Posts[1].PostID, "trigger_id": "t", "context": map[string]any{"token": state}})
	if _, out := post(s.HandleAction, b); !strings.Contains(out["ephemeral_text"].(string), "not valid") {
		t.Errorf("a dialog state used as a button: %v", out)
	}
	button := s.sign(a.ID, "deny", "", time.Now().Add(time.Hour))
	b, _ = json.Marshal(map[string]any{"state": button, "user_id": "u-dave", "submission": map[string]string{"reason": "forged"}})
	if _, out := post(s.HandleDialog, b); out["error"] == nil {
		t.Errorf("a button token used as a dialog state: %v", out)
	}
	// bob's dialog state submitted as dave, a reviewer who has not answered:
	// only the state's own person may send it.
	b, _ = json.Marshal(map[string]any{"state": state, "user_id": "u-dave", "submission": map[string]string{"reason": "forged"}})
	if _, out := post(s.HandleDialog, b); !strings.Contains(fmt.Sprint(out["error"]), "not valid") {
		t.Errorf("bob's dialog state sent as dave: %v", out)
	}
	if got, _ := s.o.Store.Get(ctx, a.ID); got.State != Pending || len(got.Decisions) != 0 {
		t.Errorf("forgeries decided: %+v", got)
	}
}

func TestCallbacks(t *testing.T) {
	s, _ := newService(t)
	ctx := context.Background()
	var mu sync.Mutex
	var got []string
	fail := 2
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path == "/redirect" {
			http.Redirect(w, r, "/elsewhere", http.StatusTemporaryRedirect)
			return
		}
		if r.URL.Path == "/elsewhere" {
			t.Error("a redirect was followed")
		}
		if fail > 0 {
			fail--
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		got = append(got, r.Header.Get("X-Mmgate-Approval"))
	}))
	defer srv.Close()
	clock := time.Now()
	s.o.Now = func() time.Time { return clock }
	approve := func(cb string) *Approval {
		a, err := s.Create(ctx, "deploy", Request{Requester: "alice", What: "x", Reviewers: Reviewers{Users: []string{"bob"}}, CallbackURL: cb})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.decide(ctx, a.ID, &mattermost.User{ID: "u-bob", Username: "bob"}, "approve", ""); err != nil {
			t.Fatal(err)
		}
		return a
	}
	a := approve(srv.URL + "/cb?token=secret")
	for i := 0; i < 6; i++ { // two failures, then success; later ticks send nothing
		s.tick(ctx)
		clock = clock.Add(11 * time.Minute)
	}
	mu.Lock()
	if len(got) != 1 || got[0] != a.ID {
		t.Errorf("callbacks received: %v, want exactly one for %s", got, a.ID)
	}
	mu.Unlock()
	final, _ := s.o.Store.Get(ctx, a.ID)
	if final.Callback.Attempts != 3 || final.Callback.DoneAt == nil {
		t.Errorf("callback record: %+v", final.Callback)
	}
	audit, _ := s.o.Store.Audit(ctx, a.ID, 100)
	for _, e := range audit {
		if strings.Contains(e.Detail, "secret") {
			t.Errorf("the audit log holds the callback's query: %+v", e)
		}
	}
	r := approve(srv.URL + "/redirect")
	s.tick(ctx)
	if f, _ := s.o.Store.Get(ctx, r.ID); f.Callback.DoneAt != nil || !strings.Contains(f.Callback.LastError, "HTTP 307") {
		t.Errorf("a redirecting callback: %+v", f.Callback)
	}
	// A client removed from the configuration: nothing is signed with an
	// empty key.
	gone := approve(srv.URL + "/cb")
	s.o.Clients = nil
	s.tick(ctx)
	if f, _ := s.o.Store.Get(ctx, gone.ID); !strings.Contains(f.Callback.LastError, "no longer configured") || f.callbackAt != 0 {
		t.Errorf("callback of a removed client: %+v", f.Callback)
	}
	mu.Lock()
	if len(got) != 1 {
		t.Errorf("callbacks after: %v", got)
	}
	mu.Unlock()
}

// A client authenticates with its key, or a short-lived HS256 JWT signed
// with it; anything else is refused.
func TestAPIAuthentication(t *testing.T) {
	s, _ := newService(t)
	now := time.Now()
	sign := func(iss string, key string, exp time.Time, m jwt.SigningMethod) string {
		tok, _ := jwt.NewWithClaims(m, jwt.RegisteredClaims{Issuer: iss, ExpiresAt: jwt.NewNumericDate(exp)}).SignedString([]byte(key))
		return tok
	}
	none, _ := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.RegisteredClaims{Issuer: "deploy",
		ExpiresAt: jwt.NewNumericDate(now.Add(time.Minute))}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	for name, c := range map[string]struct {
		auth string
		ok   bool
	}{
		"key":                 {"Bearer deploy-key-0123456789", true},
		"jwt":                 {"Bearer " + sign("deploy", "deploy-key-0123456789", now.Add(time.Minute), jwt.SigningMethodHS256), true},
		"wrong key":           {"Bearer deploy-key-0123456780", false},
		"jwt, wrong key":      {"Bearer " + sign("deploy", "another-key-0123456789", now.Add(time.Minute), jwt.SigningMethodHS256), false},
		"jwt, unknown iss":    {"Bearer " + sign("nobody", "deploy-key-0123456789", now.Add(time.Minute), jwt.SigningMethodHS256), false},
		"jwt, expired":        {"Bearer " + sign("deploy", "deploy-key-0123456789", now.Add(-time.Minute), jwt.SigningMethodHS256), false},
		"jwt, too long-lived": {"Bearer " + sign("deploy", "deploy-key-0123456789", now.Add(time.Hour), jwt.SigningMethodHS256), false},
		"jwt, alg none":       {"Bearer " + none, false},
		"none":                {"", false},
	} {
		r := httptest.NewRequest(http.MethodPost, "/api/v1/approvals", nil)
		if c.auth != "" {
			r.Header.Set("Authorization", c.auth)
		}
		client, err := s.authenticate(r)
		if (err == nil) != c.ok || (c.ok && client != "deploy") {
			t.Errorf("%s: client %q, err %v", name, client, err)
		}
	}
}

// Reviewers given as a channel only: its members may decide, others not.
func TestChannelMembersDecide(t *testing.T) {
	s, mm := newService(t)
	mm.outsiders = map[string]bool{"u-carol": true}
	ctx := context.Background()
	a, err := s.Create(ctx, "deploy", Request{Requester: "alice", What: "x", Reviewers: Reviewers{Channel: "team/ops"}})
	if err != nil {
		t.Fatal(err)
	}
	tok := s.sign(a.ID, "approve", "", time.Now().Add(time.Hour))
	click := func(user string) string {
		b, _ := json.Marshal(map[string]any{"user_id": user, "post_id": a.Posts[0].PostID, "context": map[string]any{"token": tok}})
		_, out := post(s.HandleAction, b)
		txt, _ := out["ephemeral_text"].(string)
		return txt
	}
	if got := click("u-carol"); !strings.Contains(got, "not a reviewer") {
		t.Errorf("carol, not in the channel: %q", got)
	}
	if got, _ := s.o.Store.Get(ctx, a.ID); got.State != Pending {
		t.Fatalf("an outsider decided: %+v", got)
	}
	click("u-bob")
	if got, _ := s.o.Store.Get(ctx, a.ID); got.State != Approved {
		t.Errorf("bob, a member: %+v", got)
	}
}
