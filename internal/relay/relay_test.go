package relay

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/config"
	"github.com/mmgate/mmgate/internal/directory"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/route"
	"github.com/mmgate/mmgate/internal/spool"
)

// fakeSpool keeps the ledger and history in memory.
type fakeSpool struct {
	mu     sync.Mutex
	raw    map[string][]byte
	ledger map[string]spool.LedgerEntry
	events []string
}

func newFakeSpool() *fakeSpool {
	return &fakeSpool{raw: map[string][]byte{}, ledger: map[string]spool.LedgerEntry{}}
}

func (s *fakeSpool) OpenBody(_ context.Context, id string) (io.ReadCloser, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.raw[id]
	if !ok {
		return nil, fmt.Errorf("no body %s", id)
	}
	return io.NopCloser(bytes.NewReader(b)), nil
}
func (s *fakeSpool) AddEvent(_ context.Context, id, kind, detail string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, kind+": "+detail)
	return nil
}
func (s *fakeSpool) SetInfo(context.Context, string, string, string, string) error { return nil }
func (s *fakeSpool) LedgerGet(_ context.Context, m, d, p string) (spool.LedgerEntry, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.ledger[m+"|"+d+"|"+p]
	return e, ok, nil
}
func (s *fakeSpool) LedgerIntent(_ context.Context, m, d, p, ch string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := m + "|" + d + "|" + p
	e, ok := s.ledger[k]
	if !ok {
		e = spool.LedgerEntry{MessageID: m, Dest: d, Part: p, ChannelID: ch, IntentAt: time.Now()}
	}
	s.ledger[k] = e
	return nil
}
func (s *fakeSpool) LedgerDone(_ context.Context, m, d, p, post string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := m + "|" + d + "|" + p
	e := s.ledger[k]
	e.PostID, e.DoneAt = post, time.Now()
	s.ledger[k] = e
	return nil
}

// fakeMM is a Mattermost with injectable failures. The real client is tested
// against a real Mattermost in internal/mattermost and test/e2e.
type fakeMM struct {
	mu    sync.Mutex
	users map[string]string // username → id
	posts []mattermost.Post
	files map[string]string // id → name
	// failCreateAfterStore makes the next CreatePost store the post and then
	// fail as if the answer was lost.
	failCreateAfterStore bool
	failWith             error
}

func newFakeMM() *fakeMM {
	return &fakeMM{users: map[string]string{"alice": "uid-alice", "bob": "uid-bob"}, files: map[string]string{}}
}

func (f *fakeMM) Me(context.Context) (*mattermost.User, error) {
	return &mattermost.User{ID: "uid-bot", Username: "jira", IsBot: true}, nil
}
func (f *fakeMM) UserByEmail(_ context.Context, e string) (*mattermost.User, error) {
	return nil, &mattermost.APIError{Op: "get user by email", Status: 404, ID: "app.user.missing_account.const"}
}
func (f *fakeMM) UserByUsername(_ context.Context, u string) (*mattermost.User, error) {
	if id, ok := f.users[u]; ok {
		return &mattermost.User{ID: id, Username: u}, nil
	}
	return nil, &mattermost.APIError{Op: "get user", Status: 404, ID: "app.user.missing_account.const"}
}
func (f *fakeMM) DirectChannel(_ context.Context, a, b string) (*mattermost.Channel, error) {
	return &mattermost.Channel{ID: "dm-" + b, Type: "D"}, nil
}
func (f *fakeMM) ChannelByName(_ context.Context, team, ch string) (*mattermost.Channel, error) {
	return &mattermost.Channel{ID: "ch-" + team + "-" + ch}, nil
}
func (f *fakeMM) UploadFiles(_ context.Context, ch string, ups []mattermost.Upload) ([]mattermost.FileInfo, error) {
	if len(ups) > 10 {
		return nil, fmt.Errorf("too many files: %d", len(ups))
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []mattermost.FileInfo
	for _, u := range ups {
		rc, err := u.Open()
		if err != nil {
			return nil, err
		}
		n, _ := io.Copy(io.Discard, rc)
		_ = rc.Close()
		id := fmt.Sprintf("file%d", len(f.files))
		f.files[id] = u.Name
		out = append(out, mattermost.FileInfo{ID: id, Name: u.Name, Size: n})
	}
	return out, nil
}
func (f *fakeMM) CreatePost(_ context.Context, p *mattermost.Post) (*mattermost.Post, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.failWith != nil {
		return nil, f.failWith
	}
	if r := []rune(p.Message); len(r) > 16383 {
		return nil, &mattermost.APIError{Op: "create post", Status: 400, ID: "model.post.is_valid.message_length.app_error"}
	}
	cp := *p
	cp.ID = fmt.Sprintf("post%d", len(f.posts))
	cp.CreateAt = time.Now().UnixMilli()
	f.posts = append(f.posts, cp)
	if f.failCreateAfterStore {
		f.failCreateAfterStore = false
		return nil, fmt.Errorf("read tcp: connection reset by peer")
	}
	return &cp, nil
}
func (f *fakeMM) ChannelPostsSince(_ context.Context, ch string, since time.Time) ([]mattermost.Post, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []mattermost.Post
	for _, p := range f.posts {
		if p.ChannelID == ch && p.CreateAt >= since.UnixMilli() {
			out = append(out, p)
		}
	}
	return out, nil
}
func (f *fakeMM) MaxPostRunes(context.Context) (int, error) { return 16383, nil }

type staticDir map[string]string // email → username

func (d staticDir) Lookup(_ context.Context, e string) (directory.Person, error) {
	u, ok := d[strings.ToLower(e)]
	if !ok {
		return directory.Person{}, directory.ErrNotFound
	}
	return directory.Person{Email: e, Username: u, Source: "test"}, nil
}

type harness struct {
	sp  *fakeSpool
	mm  *fakeMM
	dir staticDir
	r   *Relay
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	c := config.Default()
	c.Apps = map[string]config.App{"jira": {}}
	rt, err := route.New(c)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{sp: newFakeSpool(), mm: newFakeMM(), dir: staticDir{"alice@corp.test": "alice", "bob@corp.test": "bob"}}
	h.r = New(Options{Spool: h.sp, Router: rt, Directory: h.dir, SpillDir: t.TempDir(),
		Apps: map[string]*App{"jira": {Name: "jira", Client: h.mm, DirectMessages: true}}})
	return h
}

func (h *harness) handle(id, sender string, rcpts []string, raw string) spool.Outcome {
	h.sp.mu.Lock()
	h.sp.raw[id] = []byte(raw)
	h.sp.mu.Unlock()
	return h.r.Handle(context.Background(), spool.Message{ID: id, ReceivedAt: time.Now(),
		Envelope: spool.Envelope{Intake: "smtp", Sender: sender, Recipients: rcpts}})
}

func mkMail(subject, body string) string {
	return "From: Jira <jira-svc@tools.test>\r\nTo: alice@corp.test\r\nSubject: " + subject +
		"\r\nMessage-ID: <" + subject + "@tools.test>\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"
}

func TestPostsOnceToEachRecipient(t *testing.T) {
	h := newHarness(t)
	out := h.handle("m1", "jira-svc@tools.test", []string{"alice@corp.test", "BOB@corp.test", "alice@corp.test"}, mkMail("hello", "body text"))
	if out.Kind != spool.OutcomePosted {
		t.Fatalf("outcome %+v, events %v", out, h.sp.events)
	}
	if len(h.mm.posts) != 2 {
		t.Fatalf("want 2 posts (alice, bob once each), got %d", len(h.mm.posts))
	}
	for _, p := range h.mm.posts {
		if !strings.HasPrefix(p.Message, "**hello**") || p.Props[PropMessageID] != "hello@tools.test" {
			t.Errorf("post %q props %v", p.Message, p.Props)
		}
	}
	// Handling the same message again posts nothing new.
	if out := h.handle("m1", "jira-svc@tools.test", []string{"alice@corp.test", "bob@corp.test"}, mkMail("hello", "body text")); out.Kind != spool.OutcomePosted {
		t.Fatalf("second handle: %+v", out)
	}
	if len(h.mm.posts) != 2 {
		t.Fatalf("a second attempt posted again: %d posts", len(h.mm.posts))
	}
}

func TestLostAnswerIsReconciledNotReposted(t *testing.T) {
	h := newHarness(t)
	h.mm.failCreateAfterStore = true
	out := h.handle("m2", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("lost", "x"))
	if out.Kind != spool.OutcomeRetry {
		t.Fatalf("want retry after a lost answer, got %+v", out)
	}
	out = h.handle("m2", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("lost", "x"))
	if out.Kind != spool.OutcomePosted {
		t.Fatalf("want posted, got %+v", out)
	}
	if len(h.mm.posts) != 1 {
		t.Fatalf("the post was duplicated: %d posts", len(h.mm.posts))
	}
	if !strings.Contains(strings.Join(h.sp.events, "\n"), "reconciled") {
		t.Errorf("no reconciled event: %v", h.sp.events)
	}
}

func TestTwelveAttachmentsMakeTwoPostsInOneThread(t *testing.T) {
	h := newHarness(t)
	var b strings.Builder
	b.WriteString("From: jira-svc@tools.test\r\nTo: alice@corp.test\r\nSubject: files\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n")
	for i := 0; i < 12; i++ {
		fmt.Fprintf(&b, "--XX\r\nContent-Type: text/plain; name=\"f%02d.txt\"\r\nContent-Disposition: attachment; filename=\"f%02d.txt\"\r\n\r\ncontent %d\r\n", i, i, i)
	}
	b.WriteString("--XX--\r\n")
	if out := h.handle("m3", "jira-svc@tools.test", []string{"alice@corp.test"}, b.String()); out.Kind != spool.OutcomePosted {
		t.Fatalf("%+v %v", out, h.sp.events)
	}
	if len(h.mm.posts) != 2 {
		t.Fatalf("want 2 posts, got %d", len(h.mm.posts))
	}
	root, reply := h.mm.posts[0], h.mm.posts[1]
	if len(root.FileIDs) != 10 || len(reply.FileIDs) != 2 || reply.RootID != root.ID || root.RootID != "" {
		t.Fatalf("root files %d, reply files %d, reply root %q (root %q)", len(root.FileIDs), len(reply.FileIDs), reply.RootID, root.ID)
	}
	names := map[string]bool{}
	for _, n := range h.mm.files {
		names[n] = true
	}
	for i := 0; i < 12; i++ {
		if !names[fmt.Sprintf("f%02d.txt", i)] {
			t.Errorf("f%02d.txt not uploaded", i)
		}
	}
}

func TestLongBodyContinuesInThreadWithFullCopy(t *testing.T) {
	h := newHarness(t)
	body := "START " + strings.Repeat("lorem ipsum dolor sit amet ", 1500) + " MIDDLE " + strings.Repeat("consectetur adipiscing ", 1000) + " END"
	if out := h.handle("m4", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("long", body)); out.Kind != spool.OutcomePosted {
		t.Fatalf("%+v", out)
	}
	if len(h.mm.posts) < 3 {
		t.Fatalf("want the body in ≥3 posts, got %d", len(h.mm.posts))
	}
	var all strings.Builder
	for i, p := range h.mm.posts {
		if n := len([]rune(p.Message)); n > 16383 {
			t.Errorf("post %d has %d runes", i, n)
		}
		if i > 0 && p.RootID != h.mm.posts[0].ID {
			t.Errorf("post %d not in the thread", i)
		}
		all.WriteString(p.Message)
	}
	for _, m := range []string{"START", "MIDDLE", "END"} {
		if !strings.Contains(all.String(), m) {
			t.Errorf("%s missing from the posts", m)
		}
	}
	found := false
	for _, n := range h.mm.files {
		found = found || n == "message.md"
	}
	if !found {
		t.Error("full body not attached as message.md")
	}
}

func TestUnknownSourceIsQuarantined(t *testing.T) {
	h := newHarness(t)
	out := h.handle("m5", "someone@elsewhere.test", []string{"alice@corp.test"}, mkMail("who", "x"))
	if out.Kind != spool.OutcomeQuarantine || !strings.HasPrefix(out.Reason, "unknown source") || out.Code != "unknown_source" {
		t.Fatalf("%+v", out)
	}
	if len(h.mm.posts) != 0 {
		t.Fatal("posted from an unknown source")
	}
}

func TestUnresolvedRecipientQuarantinesAfterPostingOthers(t *testing.T) {
	h := newHarness(t)
	rcpts := []string{"alice@corp.test", "carol@corp.test"}
	out := h.handle("m6", "jira-svc@tools.test", rcpts, mkMail("partial", "x"))
	if out.Kind != spool.OutcomeQuarantine || !strings.Contains(out.Reason, "carol@corp.test") {
		t.Fatalf("%+v", out)
	}
	if len(h.mm.posts) != 1 {
		t.Fatalf("alice should have her post: %d", len(h.mm.posts))
	}
	// The operator adds carol and releases: only carol's post is new.
	h.dir["carol@corp.test"] = "carol"
	h.mm.users["carol"] = "uid-carol"
	if out := h.handle("m6", "jira-svc@tools.test", rcpts, mkMail("partial", "x")); out.Kind != spool.OutcomePosted {
		t.Fatalf("%+v", out)
	}
	if len(h.mm.posts) != 2 || h.mm.posts[1].ChannelID != "dm-uid-carol" {
		t.Fatalf("want exactly one new post to carol, posts: %d", len(h.mm.posts))
	}
}

func TestMattermostErrorsDecideRetryOrQuarantine(t *testing.T) {
	h := newHarness(t)
	h.mm.failWith = &mattermost.APIError{Op: "create post", Status: 429, RetryAfter: 7 * time.Second}
	out := h.handle("m7", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("busy", "x"))
	if out.Kind != spool.OutcomeRetry || out.RetryAfter != 7*time.Second {
		t.Fatalf("429: %+v", out)
	}
	h.mm.failWith = &mattermost.APIError{Op: "create post", Status: 500}
	if out := h.handle("m7", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("busy", "x")); out.Kind != spool.OutcomeRetry {
		t.Fatalf("500: %+v", out)
	}
	h.mm.failWith = &mattermost.APIError{Op: "create post", Status: 403, ID: "api.context.permissions.app_error", Message: "no"}
	out = h.handle("m7", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("busy", "x"))
	if out.Kind != spool.OutcomeQuarantine || !strings.Contains(out.Reason, "api.context.permissions.app_error") {
		t.Fatalf("403: %+v", out)
	}
}
