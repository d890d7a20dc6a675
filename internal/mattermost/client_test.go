package mattermost

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/metrics"
)

const testToken = "tok-s3cr3t-value"

// newTest starts a fake Mattermost and a client for it.
func newTest(t *testing.T, h http.HandlerFunc, opts ...func(*Options)) (*Client, *httptest.Server) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	var o Options
	for _, f := range opts {
		f(&o)
	}
	return New(srv.URL, testToken, o), srv
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func counterValue(t *testing.T, op, status string) float64 {
	t.Helper()
	var m dto.Metric
	if err := metrics.MattermostRequests.WithLabelValues(op, status).Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func TestServerErrorThenSuccess(t *testing.T) {
	var calls atomic.Int32
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v4/users/me" || r.Method != http.MethodGet {
			t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		}
		if got := r.Header.Get("Authorization"); got != "Bearer "+testToken {
			t.Errorf("Authorization = %q", got)
		}
		if r.Header.Get("Cookie") != "" {
			t.Errorf("cookie sent: %q", r.Header.Get("Cookie"))
		}
		if ua := r.Header.Get("User-Agent"); ua != "mmgate" {
			t.Errorf("User-Agent = %q", ua)
		}
		if calls.Add(1) == 1 {
			w.Header().Set("X-Request-Id", "hdr-req")
			writeJSON(w, 500, map[string]any{"id": "app.user.get.app_error", "message": "db down", "status_code": 500})
			return
		}
		writeJSON(w, 200, map[string]any{"id": "u1", "username": "e2ebot", "is_bot": true, "first_name": "E"})
	})
	before500, before200 := counterValue(t, "me", "500"), counterValue(t, "me", "200")

	_, err := c.Me(context.Background())
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("want APIError, got %T %v", err, err)
	}
	if ae.Status != 500 || ae.ID != "app.user.get.app_error" || ae.Message != "db down" || ae.RequestID != "hdr-req" {
		t.Errorf("APIError = %+v", ae)
	}
	if !Retryable(err) || fault.KindOf(err) != fault.Temporary || fault.CodeOf(err) != "mattermost_unavailable" {
		t.Errorf("500: Retryable=%v kind=%v code=%v", Retryable(err), fault.KindOf(err), fault.CodeOf(err))
	}

	u, err := c.Me(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if u.ID != "u1" || u.Username != "e2ebot" || !u.IsBot || u.FirstName != "E" {
		t.Errorf("user = %+v", u)
	}
	if d := counterValue(t, "me", "500") - before500; d != 1 {
		t.Errorf("500 counter moved by %v", d)
	}
	if d := counterValue(t, "me", "200") - before200; d != 1 {
		t.Errorf("200 counter moved by %v", d)
	}
}

func TestRateLimitedPlainText(t *testing.T) {
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Retry-After", "2")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusTooManyRequests)
		io.WriteString(w, "limit exceeded\n")
	})
	_, err := c.CreatePost(context.Background(), &Post{ChannelID: "c1", Message: "hi"})
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("want APIError, got %v", err)
	}
	want := APIError{Op: "create post", Status: 429, Message: "limit exceeded", RetryAfter: 2 * time.Second}
	if *ae != want {
		t.Errorf("APIError = %+v, want %+v", *ae, want)
	}
	if !Retryable(err) || RetryAfterOf(err) != 2*time.Second {
		t.Errorf("Retryable=%v RetryAfterOf=%v", Retryable(err), RetryAfterOf(err))
	}
	if fault.CodeOf(err) != "mattermost_rate_limited" || fault.KindOf(err) != fault.Temporary {
		t.Errorf("fault = %v %v", fault.KindOf(err), fault.CodeOf(err))
	}
	if got := ae.Error(); got != "mattermost: create post: 429: limit exceeded" {
		t.Errorf("Error() = %q", got)
	}
}

func TestForbiddenAppError(t *testing.T) {
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, 403, map[string]any{
			"id":             "api.post.create_post.permissions.app_error",
			"message":        "You do not have the appropriate permissions.",
			"detailed_error": "",
			"request_id":     "req123",
			"status_code":    403,
		})
	})
	_, err := c.CreatePost(context.Background(), &Post{ChannelID: "c1", Message: "hi"})
	var ae *APIError
	if !errors.As(err, &ae) {
		t.Fatalf("want APIError, got %v", err)
	}
	if ae.ID != "api.post.create_post.permissions.app_error" || ae.RequestID != "req123" || ae.Status != 403 {
		t.Errorf("APIError = %+v", ae)
	}
	if Retryable(err) || RetryAfterOf(err) != 0 {
		t.Error("403 must not be retryable")
	}
	if fault.KindOf(err) != fault.Permanent {
		t.Errorf("kind = %v", fault.KindOf(err))
	}
	want := "mattermost: create post: 403 api.post.create_post.permissions.app_error: You do not have the appropriate permissions."
	if ae.Error() != want {
		t.Errorf("Error() = %q", ae.Error())
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("wrapped error %q lost the detail", err.Error())
	}
}

func TestStatusKinds(t *testing.T) {
	cases := []struct {
		status    int
		kind      fault.Kind
		retryable bool
	}{
		{400, fault.Invalid, false},
		{401, fault.Unauthorized, false},
		{404, fault.NotFound, false},
		{408, fault.Temporary, true},
		{413, fault.TooLarge, false},
		{501, fault.Permanent, false},
		{502, fault.Temporary, true},
		{503, fault.Temporary, true},
	}
	for _, tc := range cases {
		c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "text/html")
			w.WriteHeader(tc.status)
			io.WriteString(w, "<html><body>proxy says no</body></html>")
		})
		err := c.Ping(context.Background())
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != tc.status {
			t.Fatalf("%d: err = %v", tc.status, err)
		}
		if ae.Message != http.StatusText(tc.status) {
			t.Errorf("%d: HTML body leaked into message %q", tc.status, ae.Message)
		}
		if fault.KindOf(err) != tc.kind || Retryable(err) != tc.retryable {
			t.Errorf("%d: kind=%v retryable=%v", tc.status, fault.KindOf(err), Retryable(err))
		}
	}
}

func TestConnectionRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	c := New("http://"+addr, testToken, Options{})
	before := counterValue(t, "ping", "error")
	err = c.Ping(context.Background())
	if err == nil {
		t.Fatal("no error")
	}
	if !Retryable(err) || fault.KindOf(err) != fault.Temporary || fault.CodeOf(err) != "mattermost_unreachable" {
		t.Errorf("refused: Retryable=%v kind=%v code=%v err=%v", Retryable(err), fault.KindOf(err), fault.CodeOf(err), err)
	}
	var ae *APIError
	if errors.As(err, &ae) {
		t.Error("a refused connection is no APIError")
	}
	if counterValue(t, "ping", "error")-before != 1 {
		t.Error("error not counted")
	}
}

// slowBody answers headers and half a JSON object, then stalls.
func slowBody(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(200)
	io.WriteString(w, `{"id":"u1","user`)
	w.(http.Flusher).Flush()
	select {
	case <-r.Context().Done():
	case <-time.After(10 * time.Second):
	}
}

func TestSlowBodyBeyondDeadline(t *testing.T) {
	c, _ := newTest(t, slowBody)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Me(ctx)
	if err == nil {
		t.Fatal("no error")
	}
	if !Retryable(err) {
		t.Errorf("deadline while reading the body must be retryable: %v", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("cause lost: %v", err)
	}

	// The client's own per-call timeout behaves the same.
	c2, _ := newTest(t, slowBody, func(o *Options) { o.RequestTimeout = 200 * time.Millisecond })
	_, err = c2.Me(context.Background())
	if !Retryable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("RequestTimeout: Retryable=%v err=%v", Retryable(err), err)
	}
}

func TestCanceledNotRetryable(t *testing.T) {
	started := make(chan struct{})
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		close(started)
		<-r.Context().Done()
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-started; cancel() }()
	_, err := c.Me(ctx)
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v", err)
	}
	if Retryable(err) {
		t.Error("a canceled parent context is not retryable")
	}
}

func TestDecodeErrors(t *testing.T) {
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/api/v4/users/me":
			w.Header().Set("Content-Type", "text/html")
			io.WriteString(w, "<html>login page</html>")
		case "/api/v4/posts/big":
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"id":"big","message":"`)
			io.WriteString(w, strings.Repeat("a", maxJSONBody))
			io.WriteString(w, `"}`)
		case "/api/v4/posts":
			writeJSON(w, 201, map[string]any{"message": "no id"})
		}
	})
	_, err := c.Me(context.Background())
	var de *DecodeError
	if !errors.As(err, &de) || de.Status != 200 {
		t.Fatalf("html 200: err = %v", err)
	}
	if Retryable(err) || fault.KindOf(err) != fault.Permanent {
		t.Errorf("decode error: Retryable=%v kind=%v", Retryable(err), fault.KindOf(err))
	}
	_, err = c.GetPost(context.Background(), "big")
	if !errors.As(err, &de) || !strings.Contains(err.Error(), "larger than") {
		t.Errorf("oversized body: err = %v", err)
	}
	_, err = c.CreatePost(context.Background(), &Post{ChannelID: "c", Message: "m"})
	if !errors.As(err, &de) {
		t.Errorf("post without id: err = %v", err)
	}
}

func TestPathEscaping(t *testing.T) {
	var got []string
	var mu sync.Mutex
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.URL.EscapedPath())
		mu.Unlock()
		writeJSON(w, 200, map[string]any{"id": "x"})
	})
	ctx := context.Background()
	if _, err := c.UserByEmail(ctx, "a+b/c@example.com"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.UserByUsername(ctx, "al ice"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.ChannelByName(ctx, "my team", "chan/x"); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"/api/v4/users/email/a+b%2Fc@example.com",
		"/api/v4/users/username/al%20ice",
		"/api/v4/teams/name/my%20team/channels/name/chan%2Fx",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("paths = %q, want %q", got, want)
	}
}

func TestBaseURL(t *testing.T) {
	for _, base := range []string{"http://HOST", "http://HOST/", "http://HOST/api/v4", "http://HOST/api/v4/"} {
		var path string
		c, srv := newTest(t, func(w http.ResponseWriter, r *http.Request) {
			path = r.URL.Path
			writeJSON(w, 200, map[string]string{"status": "OK"})
		})
		c = New(strings.Replace(base, "HOST", strings.TrimPrefix(srv.URL, "http://"), 1), testToken, Options{})
		if err := c.Ping(context.Background()); err != nil {
			t.Fatalf("%s: %v", base, err)
		}
		if path != "/api/v4/system/ping" {
			t.Errorf("%s: path %q", base, path)
		}
	}
	for _, bad := range []string{"", "mm.example.com", "ftp://x", "http://u:p@x", "http://x/?a=b"} {
		err := New(bad, testToken, Options{}).Ping(context.Background())
		if fault.KindOf(err) != fault.Invalid || Retryable(err) {
			t.Errorf("%q: err = %v", bad, err)
		}
	}
	// No token yet (setup has not run): temporary, so messages wait.
	c := New("http://x", "", Options{})
	if err := c.Ping(context.Background()); fault.KindOf(err) != fault.Temporary || fault.CodeOf(err) != "mattermost_no_token" {
		t.Errorf("empty token: %v", err)
	}
}

func TestNeverSendsCookies(t *testing.T) {
	c, srv := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Cookie") != "" {
			t.Errorf("cookie sent: %q", r.Header.Get("Cookie"))
		}
		writeJSON(w, 200, map[string]string{"status": "OK"})
	})
	jar, _ := cookiejar.New(nil)
	u, _ := url.Parse(srv.URL)
	jar.SetCookies(u, []*http.Cookie{{Name: "MMAUTHTOKEN", Value: "stale"}})
	c = New(srv.URL, testToken, Options{HTTPClient: &http.Client{Jar: jar}})
	if err := c.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestCreatePost(t *testing.T) {
	var body map[string]any
	status := 201
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v4/posts" {
			t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		}
		if ct := r.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		body = nil
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			t.Error(err)
		}
		writeJSON(w, status, map[string]any{
			"id": "p1", "channel_id": body["channel_id"], "message": body["message"],
			"user_id": "bot", "create_at": 1700000000000, "file_ids": body["file_ids"],
			"props":    map[string]any{"from_bot": "true", "k": "v"},
			"metadata": map[string]any{"files": []map[string]any{{"id": "f1", "name": "a.txt", "size": 3}}},
		})
	})
	in := &Post{ID: "must-not-be-sent", UserID: "nor-this", CreateAt: 5, ChannelID: "c1", RootID: "r1",
		Message: "héllo", FileIDs: []string{"f1"}, Props: map[string]any{"k": "v"}, PendingPostID: "pp"}
	for _, status = range []int{201, 200} {
		p, err := c.CreatePost(context.Background(), in)
		if err != nil {
			t.Fatalf("status %d: %v", status, err)
		}
		if p.ID != "p1" || p.UserID != "bot" || p.Message != "héllo" || p.CreateAt != 1700000000000 ||
			p.Props["k"] != "v" || p.Metadata == nil || len(p.Metadata.Files) != 1 || p.Metadata.Files[0].Name != "a.txt" {
			t.Errorf("post = %+v", p)
		}
	}
	for _, k := range []string{"id", "user_id", "create_at", "metadata"} {
		if _, ok := body[k]; ok {
			t.Errorf("sent %q", k)
		}
	}
	for k, v := range map[string]any{"channel_id": "c1", "root_id": "r1", "message": "héllo", "pending_post_id": "pp"} {
		if body[k] != v {
			t.Errorf("%s = %v, want %v", k, body[k], v)
		}
	}

	var ids []string
	for i := range 11 {
		ids = append(ids, fmt.Sprintf("f%d", i))
	}
	_, err := c.CreatePost(context.Background(), &Post{ChannelID: "c1", FileIDs: ids})
	if fault.CodeOf(err) != "mattermost_too_many_files" || Retryable(err) {
		t.Errorf("11 file ids: %v", err)
	}
	if _, err := c.CreatePost(context.Background(), nil); fault.KindOf(err) != fault.Invalid {
		t.Errorf("nil post: %v", err)
	}
}

func TestListsInCreateOrder(t *testing.T) {
	var since string
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		list := map[string]any{
			"order": []string{"c", "b", "a", "old"},
			"posts": map[string]any{
				"a":   map[string]any{"id": "a", "create_at": 1000, "message": "first"},
				"b":   map[string]any{"id": "b", "create_at": 2000, "message": "second", "root_id": "a"},
				"c":   map[string]any{"id": "c", "create_at": 3000, "message": "third", "delete_at": 5},
				"old": map[string]any{"id": "old", "create_at": 10, "message": "edited later"},
			},
		}
		switch r.URL.Path {
		case "/api/v4/channels/ch1/posts":
			since = r.URL.Query().Get("since")
			if r.URL.Query().Get("skipFetchThreads") != "true" {
				t.Error("skipFetchThreads not set")
			}
		case "/api/v4/posts/a/thread":
		default:
			t.Errorf("unexpected %s", r.URL)
		}
		writeJSON(w, 200, list)
	})
	posts, err := c.ChannelPostsSince(context.Background(), "ch1", time.UnixMilli(1000))
	if err != nil {
		t.Fatal(err)
	}
	if since != "999" {
		t.Errorf("since = %q", since)
	}
	var got []string
	for _, p := range posts {
		got = append(got, p.ID)
	}
	if strings.Join(got, ",") != "a,b,c" {
		t.Errorf("since: %v", got)
	}
	if posts[2].DeleteAt == 0 || posts[1].RootID != "a" {
		t.Errorf("fields lost: %+v", posts)
	}
	thread, err := c.PostThread(context.Background(), "a")
	if err != nil {
		t.Fatal(err)
	}
	got = got[:0]
	for _, p := range thread {
		got = append(got, p.ID)
	}
	if strings.Join(got, ",") != "old,a,b,c" {
		t.Errorf("thread: %v", got)
	}
}

// Past the server's 1,000-post cap on since=, the channel is read page by
// page back to since: a post the capped answer left out is found.
func TestChannelPostsSinceBeyondTheCap(t *testing.T) {
	const n = 1500 // posts p0000 (oldest, create_at 10000) … p1499
	id := func(i int) string { return fmt.Sprintf("p%04d", i) }
	post := func(i int) map[string]any { return map[string]any{"id": id(i), "create_at": 10000 + i} }
	var pages []string
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		if r.URL.Path != "/api/v4/channels/ch1/posts" {
			t.Errorf("unexpected %s", r.URL)
		}
		order, posts := []string{}, map[string]any{}
		switch {
		case q.Get("since") != "":
			// The capped answer: the oldest 1,000, and a deleted post.
			for i := 0; i < 1000; i++ {
				order, posts[id(i)] = append(order, id(i)), post(i)
			}
			posts["gone"] = map[string]any{"id": "gone", "create_at": 10001, "delete_at": 5}
		default:
			pages = append(pages, q.Get("before"))
			if q.Get("per_page") != "200" {
				t.Errorf("per_page %q", q.Get("per_page"))
			}
			from := n - 1
			if b := q.Get("before"); b != "" {
				fmt.Sscanf(b, "p%04d", &from)
				from--
			}
			for i := from; i >= 0 && len(order) < 200; i-- {
				order, posts[id(i)] = append(order, id(i)), post(i)
			}
		}
		writeJSON(w, 200, map[string]any{"order": order, "posts": posts})
	})
	got, err := c.ChannelPostsSince(context.Background(), "ch1", time.UnixMilli(10000+500))
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n-500 || got[0].ID != id(500) || got[len(got)-1].ID != id(n-1) {
		t.Fatalf("got %d posts (%s … %s), want %d (%s … %s)", len(got), got[0].ID, got[len(got)-1].ID, n-500, id(500), id(n-1))
	}
	// 1,500 … 500 is six pages of 200, the last one reaching before since.
	if len(pages) != 6 || pages[0] != "" || pages[1] != id(1300) {
		t.Errorf("pages read before %q, want 6 from the newest", pages)
	}
	got, err = c.ChannelPostsSince(context.Background(), "ch1", time.UnixMilli(10000))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, p := range got {
		found = found || p.ID == "gone"
	}
	if len(got) != n+1 || !found {
		t.Errorf("from the start: %d posts (deleted one found: %v), want %d with the deleted one of the since= answer", len(got), found, n+1)
	}
}

func TestMaxPostRunes(t *testing.T) {
	var calls atomic.Int32
	value := `{"MaxPostSize":"65535","Version":"11.4.0"}`
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.URL.Path != "/api/v4/config/client" || r.URL.Query().Get("format") != "old" {
			t.Errorf("unexpected %s", r.URL)
		}
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, value)
	})
	for range 2 {
		n, err := c.MaxPostRunes(context.Background())
		if err != nil || n != 65535 {
			t.Fatalf("n=%d err=%v", n, err)
		}
	}
	if calls.Load() != 1 {
		t.Errorf("not cached: %d calls", calls.Load())
	}

	value = `{"Version":"11.4.0"}`
	c2, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, value) })
	if n, err := c2.MaxPostRunes(context.Background()); err != nil || n != DefaultMaxPostRunes {
		t.Errorf("missing: n=%d err=%v", n, err)
	}
	c3, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(503) })
	if n, err := c3.MaxPostRunes(context.Background()); err == nil || n != DefaultMaxPostRunes {
		t.Errorf("failing: n=%d err=%v", n, err)
	}
}

func TestDirectChannel(t *testing.T) {
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		var ids []string
		if err := json.NewDecoder(r.Body).Decode(&ids); err != nil || len(ids) != 2 || ids[0] != "bot" || ids[1] != "alice" {
			t.Errorf("body %v %v", ids, err)
		}
		writeJSON(w, 201, map[string]any{"id": "dm", "type": "D", "name": "alice__bot", "team_id": ""})
	})
	ch, err := c.DirectChannel(context.Background(), "bot", "alice")
	if err != nil || ch.ID != "dm" || ch.Type != "D" || ch.Name != "alice__bot" {
		t.Fatalf("ch=%+v err=%v", ch, err)
	}
}

func TestTokenNeverLogged(t *testing.T) {
	var buf bytes.Buffer
	logger := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	var calls atomic.Int32
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(500)
			return
		}
		writeJSON(w, 200, map[string]string{"status": "OK"})
	}, func(o *Options) { o.Logger = logger })
	_ = c.Ping(context.Background())
	_ = c.Ping(context.Background())
	_ = New("http://127.0.0.1:1", testToken, Options{Logger: logger}).Ping(context.Background())
	if buf.Len() == 0 {
		t.Fatal("nothing logged at debug level")
	}
	if strings.Contains(buf.String(), testToken) || strings.Contains(fmt.Sprint(c), testToken) {
		t.Errorf("token leaked: %s", buf.String())
	}
}

func TestRetryableGeneric(t *testing.T) {
	cases := []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("boom"), false},
		{context.Canceled, false},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), true},
		{io.ErrUnexpectedEOF, true},
		{fmt.Errorf("read: %w", io.EOF), true},
		{&net.OpError{Op: "read", Err: errors.New("connection reset by peer")}, true},
		{&net.DNSError{Err: "no such host", Name: "mm"}, true},
		{&APIError{Status: 429}, true},
		{&APIError{Status: 400}, false},
		{&DecodeError{Op: "x", Status: 200, Err: io.ErrUnexpectedEOF}, false},
	}
	for _, tc := range cases {
		if got := Retryable(tc.err); got != tc.want {
			t.Errorf("Retryable(%v) = %v", tc.err, got)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := map[string]time.Duration{
		"":     0,
		"2":    2 * time.Second,
		" 10 ": 10 * time.Second,
		"0":    0,
		"-5":   0,
		"1.5":  0,
		"abc":  0,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
		now.Add(-time.Hour).Format(http.TimeFormat):       0,
		"99999999999999999999":                            0,
		"9999999":                                         maxRetryAfter,
	}
	for in, want := range cases {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
	h := http.Header{"X-Ratelimit-Reset": {"3"}}
	if e := parseAPIError("op", 429, h, []byte("limit exceeded"), now); e.RetryAfter != 3*time.Second {
		t.Errorf("X-RateLimit-Reset fallback: %v", e.RetryAfter)
	}
}

func TestPendingPostID(t *testing.T) {
	a := PendingPostID("msg1", "chan1", "0")
	if a != PendingPostID("msg1", "chan1", "0") {
		t.Error("not deterministic")
	}
	for _, other := range []string{PendingPostID("msg1", "chan1", "1"), PendingPostID("msg1chan1", "0"), PendingPostID("msg1", "chan10")} {
		if other == a {
			t.Errorf("collision: %s", a)
		}
	}
	if !strings.HasPrefix(a, "mmgate:") || len(a) != len("mmgate:")+32 {
		t.Errorf("format: %q", a)
	}
}

// --- uploads ---

// patternReader yields n deterministic bytes; after gateAt bytes it waits for
// gate to close (or fails after a while), which proves the bytes already
// produced have left the client before the rest is read.
type patternReader struct {
	n, off  int64
	gateAt  int64
	gate    <-chan struct{}
	closed  *atomic.Bool
	timeout time.Duration
}

func (p *patternReader) Read(b []byte) (int, error) {
	if p.off >= p.n {
		return 0, io.EOF
	}
	if p.gate != nil && p.off >= p.gateAt {
		select {
		case <-p.gate:
			p.gate = nil
		case <-time.After(p.timeout):
			return 0, errors.New("client buffered the upload: the server never saw the first bytes")
		}
	}
	limit := p.n - p.off
	if p.gate != nil {
		limit = min(limit, p.gateAt-p.off)
	}
	k := int64(len(b))
	if k > limit {
		k = limit
	}
	for i := range k {
		b[i] = byte((p.off + i) * 7 % 251)
	}
	p.off += k
	return int(k), nil
}

func (p *patternReader) Close() error { p.closed.Store(true); return nil }

func patternSum(n int64) [32]byte {
	h := sha256.New()
	io.Copy(h, &patternReader{n: n, closed: new(atomic.Bool)})
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}

func TestUploadStreamsInOrder(t *testing.T) {
	const big = 5 << 20
	const gateAt = 1 << 20
	gate := make(chan struct{})
	var gateOnce sync.Once
	type got struct {
		name string
		size int64
		sum  [32]byte
	}
	var parts []got
	var fields []string
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost || r.URL.Path != "/api/v4/files" {
			t.Errorf("unexpected %s %s", r.Method, r.URL.Path)
		}
		if r.ContentLength != -1 {
			t.Errorf("ContentLength = %d: the body was not streamed", r.ContentLength)
		}
		mr, err := r.MultipartReader()
		if err != nil {
			t.Error(err)
			return
		}
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Error(err)
				return
			}
			fields = append(fields, p.FormName())
			if p.FormName() == "channel_id" {
				v, _ := io.ReadAll(p)
				if string(v) != "ch1" {
					t.Errorf("channel_id = %q", v)
				}
				continue
			}
			h := sha256.New()
			var n int64
			buf := make([]byte, 32<<10)
			for {
				k, err := p.Read(buf)
				h.Write(buf[:k])
				n += int64(k)
				if n >= gateAt/2 {
					gateOnce.Do(func() { close(gate) })
				}
				if err == io.EOF {
					break
				}
				if err != nil {
					t.Error(err)
					return
				}
			}
			var s [32]byte
			copy(s[:], h.Sum(nil))
			parts = append(parts, got{p.FileName(), n, s})
		}
		writeJSON(w, 201, map[string]any{"file_infos": []map[string]any{
			{"id": "f1", "name": "big.bin", "size": big, "mime_type": "application/octet-stream"},
			{"id": "f2", "name": "small.txt", "size": 3, "mime_type": "text/plain"},
		}})
	})
	var opens atomic.Int32
	closedBig, closedSmall := new(atomic.Bool), new(atomic.Bool)
	files := []Upload{
		{Name: "big.bin", Size: big, Open: func() (io.ReadCloser, error) {
			opens.Add(1)
			return &patternReader{n: big, gateAt: gateAt, gate: gate, closed: closedBig, timeout: 10 * time.Second}, nil
		}},
		{Name: "small.txt", Size: 3, Open: func() (io.ReadCloser, error) {
			opens.Add(1)
			return &patternReader{n: 3, closed: closedSmall}, nil
		}},
	}
	infos, err := c.UploadFiles(context.Background(), "ch1", files)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || infos[0].ID != "f1" || infos[1].ID != "f2" || infos[1].MimeType != "text/plain" {
		t.Errorf("infos = %+v", infos)
	}
	if strings.Join(fields, ",") != "channel_id,files,files" {
		t.Errorf("form order = %v", fields)
	}
	if len(parts) != 2 || parts[0].name != "big.bin" || parts[0].size != big || parts[0].sum != patternSum(big) ||
		parts[1].name != "small.txt" || parts[1].size != 3 || parts[1].sum != patternSum(3) {
		t.Errorf("content not intact: %+v", parts)
	}
	if opens.Load() != 2 || !closedBig.Load() || !closedSmall.Load() {
		t.Errorf("opens=%d closed=%v,%v", opens.Load(), closedBig.Load(), closedSmall.Load())
	}
}

func TestUploadLimitsAndSourceErrors(t *testing.T) {
	var calls atomic.Int32
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		io.Copy(io.Discard, r.Body)
		writeJSON(w, 201, map[string]any{"file_infos": []map[string]any{{"id": "f"}}})
	})
	opened := false
	var files []Upload
	for i := range 11 {
		files = append(files, Upload{Name: fmt.Sprintf("f%d", i), Open: func() (io.ReadCloser, error) {
			opened = true
			return io.NopCloser(strings.NewReader("x")), nil
		}})
	}
	_, err := c.UploadFiles(context.Background(), "ch", files)
	if fault.CodeOf(err) != "mattermost_too_many_files" || Retryable(err) || opened || calls.Load() != 0 {
		t.Errorf("11 files: err=%v opened=%v calls=%d", err, opened, calls.Load())
	}

	// The source fails mid-way: its error is reported, not the aborted request.
	srcErr := errors.New("blob store: checksum mismatch")
	_, err = c.UploadFiles(context.Background(), "ch", []Upload{{Name: "a", Open: func() (io.ReadCloser, error) {
		return io.NopCloser(io.MultiReader(strings.NewReader("partial"), iotestErrReader{srcErr})), nil
	}}})
	if !errors.Is(err, srcErr) {
		t.Errorf("source error lost: %v", err)
	}

	// Fewer bytes than announced.
	_, err = c.UploadFiles(context.Background(), "ch", []Upload{{Name: "a", Size: 10, Open: func() (io.ReadCloser, error) {
		return io.NopCloser(strings.NewReader("short")), nil
	}}})
	if err == nil || !strings.Contains(err.Error(), "expected 10") {
		t.Errorf("size mismatch: %v", err)
	}

	// Open fails.
	_, err = c.UploadFiles(context.Background(), "ch", []Upload{{Name: "a", Open: func() (io.ReadCloser, error) {
		return nil, srcErr
	}}})
	if !errors.Is(err, srcErr) {
		t.Errorf("open error lost: %v", err)
	}

	// A server answer with a different number of infos is a decode error.
	_, err = c.UploadFiles(context.Background(), "ch", []Upload{
		{Name: "a", Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("1")), nil }},
		{Name: "b", Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("2")), nil }},
	})
	var de *DecodeError
	if !errors.As(err, &de) {
		t.Errorf("info count mismatch: %v", err)
	}
	if infos, err := c.UploadFiles(context.Background(), "ch", nil); infos != nil || err != nil {
		t.Errorf("empty upload: %v %v", infos, err)
	}
}

type iotestErrReader struct{ err error }

func (r iotestErrReader) Read([]byte) (int, error) { return 0, r.err }

func TestUploadServerRejectsEarly(t *testing.T) {
	c, _ := newTest(t, func(w http.ResponseWriter, r *http.Request) {
		// Answer without reading the body, as a server does for a too large file.
		writeJSON(w, 413, map[string]any{"id": "api.file.upload_file.too_large_detailed.app_error", "message": "too large"})
	})
	closed := new(atomic.Bool)
	_, err := c.UploadFiles(context.Background(), "ch", []Upload{{Name: "x", Open: func() (io.ReadCloser, error) {
		return &patternReader{n: 20 << 20, closed: closed}, nil
	}}})
	if err == nil {
		t.Fatal("no error")
	}
	var ae *APIError
	if errors.As(err, &ae) {
		if ae.Status != 413 || fault.KindOf(err) != fault.TooLarge || Retryable(err) {
			t.Errorf("413: %+v kind=%v", ae, fault.KindOf(err))
		}
	} else if !Retryable(err) {
		// The server may reset the connection before the client reads the
		// answer; then it is a transport error.
		t.Errorf("err = %v", err)
	}
	if !closed.Load() {
		t.Error("source not closed")
	}
}
