package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// mmProxy stands between mmgate and the real Mattermost. It forwards
// everything, except that the first post carrying marker is created in
// Mattermost but its answer is lost (the connection is closed), and later
// posts carrying marker are refused with 503 for blockFor: a lost response
// followed by an outage, the case pending_post_id (remembered for 30 s)
// does not cover and the relay's ledger must.
type mmProxy struct {
	target   *url.URL
	rp       *httputil.ReverseProxy
	srv      *http.Server
	url      string
	marker   string
	blockFor time.Duration

	mu      sync.Mutex
	dropped time.Time // when the answer of the marked post was dropped
	postID  string    // the post Mattermost created then
	refused int
}

func startMMProxy(t *testing.T, s *suite, marker string, blockFor time.Duration) *mmProxy {
	t.Helper()
	target, err := url.Parse(s.mmURL)
	if err != nil {
		t.Fatal(err)
	}
	p := &mmProxy{target: target, rp: httputil.NewSingleHostReverseProxy(target), marker: marker, blockFor: blockFor}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.url = "http://" + l.Addr().String()
	p.srv = &http.Server{Handler: p, ReadHeaderTimeout: 10 * time.Second}
	go func() { _ = p.srv.Serve(l) }()
	t.Cleanup(func() { _ = p.srv.Close() })
	return p
}

func (p *mmProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == "/api/v4/posts" {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		r.Body, r.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		if bytes.Contains(body, []byte(p.marker)) {
			p.mu.Lock()
			dropped := p.dropped
			p.mu.Unlock()
			if dropped.IsZero() {
				p.createAndDrop(w, r, body)
				return
			}
			if time.Since(dropped) < p.blockFor {
				p.mu.Lock()
				p.refused++
				p.mu.Unlock()
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(http.StatusServiceUnavailable)
				_, _ = io.WriteString(w, `{"id":"e2e.proxy.outage","message":"Mattermost is unavailable (e2e proxy)","status_code":503}`)
				return
			}
		}
	}
	p.rp.ServeHTTP(w, r)
}

// createAndDrop forwards the post to Mattermost, then closes the client's
// connection without an answer.
func (p *mmProxy) createAndDrop(w http.ResponseWriter, r *http.Request, body []byte) {
	req, err := http.NewRequest(r.Method, p.target.String()+r.URL.RequestURI(), bytes.NewReader(body))
	if err == nil {
		req.Header = r.Header.Clone()
		var resp *http.Response
		if resp, err = http.DefaultTransport.RoundTrip(req); err == nil {
			b, _ := io.ReadAll(resp.Body)
			_ = resp.Body.Close()
			var created struct {
				ID string `json:"id"`
			}
			_ = json.Unmarshal(b, &created)
			p.mu.Lock()
			p.dropped, p.postID = time.Now(), created.ID
			p.mu.Unlock()
		}
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadGateway)
		return
	}
	if hj, ok := w.(http.Hijacker); ok {
		if c, _, err := hj.Hijack(); err == nil {
			_ = c.Close()
			return
		}
	}
	panic(http.ErrAbortHandler)
}

// flood posts n short messages as c into channel, 4 at a time.
func flood(t *testing.T, c *mmClient, channel string, n int, tag string) {
	t.Helper()
	var wg sync.WaitGroup
	var failed atomic.Int64
	next := atomic.Int64{}
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(n) {
					return
				}
				if _, err := c.do("POST", "/posts", map[string]string{"channel_id": channel, "message": fmt.Sprintf("%s %d", tag, i)}, nil); err != nil {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Fatalf("flooding the channel: %d of %d posts failed", f, n)
	}
}

// 20. A post whose answer was lost, in a busy channel: Mattermost creates
// the post but mmgate never hears back, then Mattermost refuses posts for
// 40 s (longer than the 30 s it remembers pending_post_id). The retry must
// find the post it made in the channel and not post again, although more
// than 1,000 other posts were made in the channel around it (the
// `since=` listing Mattermost answers stops at 1,000 posts).
func TestLostPostAnswerInBusyChannel(t *testing.T) {
	s := setup(t)
	run := nonce()
	msgID := "busy-" + run + "@e2e.test"
	const blockFor = 40 * time.Second
	busy := envInt(t, "MMGATE_BUSY_POSTS", 1100) // posts before and after it
	proxy := startMMProxy(t, s, msgID, blockFor)
	g := newGate(t, s, gateConfig{MattermostURL: proxy.url})
	alice := s.recipient(t, "alice")

	// The channel is busy: 1,100 posts just before the message and 1,100
	// while Mattermost refuses it, whichever 1,000 the listing returns.
	since := time.Now()
	flood(t, alice.c, alice.dm, busy, "busy channel "+run+" before")
	eml := header("jira@"+mailDomain, "alice@"+mailDomain, "E2E busy channel "+run, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nPosted once in a busy channel (" + run + ").\n"
	g.mustSend(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain}, crlf(eml))
	eventually(t, waitFor, "the proxy dropping the answer of the post", func() (bool, string) {
		proxy.mu.Lock()
		defer proxy.mu.Unlock()
		return !proxy.dropped.IsZero(), g.stateHint()
	})
	proxy.mu.Lock()
	first := proxy.postID
	proxy.mu.Unlock()
	t.Logf("Mattermost created post %s; its answer was dropped; posts refused for %s", first, blockFor)
	flood(t, alice.c, alice.dm, busy, "busy channel "+run+" after")

	var id string
	eventually(t, blockFor+waitFor+30*time.Second, "the message posted", func() (bool, string) {
		r, ok := findRow(g.list("queue", "list", "--all"), run)
		if !ok {
			return false, "not listed"
		}
		id = r.ID
		out := g.mustCLI("queue", "show", id)
		return showField(out, "State") == "posted", out
	})
	settle(g)
	ps, err := alice.c.postsSince(alice.dm, since)
	if err != nil {
		t.Fatal(err)
	}
	got := postsByMessageID(ps)[msgID]
	proxy.mu.Lock()
	refused := proxy.refused
	proxy.mu.Unlock()
	show := g.mustCLI("queue", "show", id)
	var ids []string
	for _, p := range got {
		ids = append(ids, p.ID)
	}
	t.Logf("%d posts in the channel since the start; %d retries refused by the proxy; posts of the message: %s", len(ps), refused, strings.Join(ids, ", "))
	if len(got) != 1 {
		t.Errorf("alice has %d posts of <%s> (%s), want exactly 1 (the first, %s)\nqueue show:\n%s", len(got), msgID, strings.Join(ids, ", "), first, show)
	} else if got[0].ID != first {
		t.Errorf("the post of the message is %s, want the one created first, %s", got[0].ID, first)
	}
	// The retry found the post without posting again ("reconciled"), or,
	// had it posted again, Mattermost would have made a second post after
	// its 30 s memory of pending_post_id (counted above).
	if !strings.Contains(show, "reconciled") {
		t.Errorf("the history does not show the lost post recognised (\"reconciled\"):\n%s", show)
	}
}
