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
	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/route"
	"github.com/mmgate/mmgate/internal/spool"
)

// fakeSpool keeps the ledger and history in memory.
type fakeSpool struct {
	mu     sync.Mutex
	raw    map[string][]byte
	ledger map[string]spool.LedgerEntry
	claims map[string]string
	events []string
	// attempts counts each message's attempts, as the spool's claim does.
	attempts map[string]int
	// panicOnDone makes LedgerDone panic for this destination.
	panicOnDone string
}

func newFakeSpool() *fakeSpool {
	return &fakeSpool{raw: map[string][]byte{}, ledger: map[string]spool.LedgerEntry{}, claims: map[string]string{}, attempts: map[string]int{}}
}

func (s *fakeSpool) ClaimDelivery(_ context.Context, key, dest, id string, first spool.Intent) (c spool.Claim, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	// As the spool: the holder's first intent is recorded with the claim,
	// after the ledger is read.
	defer func() {
		if c.Holder == id && first.Part != "" {
			k := id + "|" + dest + "|" + first.Part
			if e, ok := s.ledger[k]; !ok || e.IntentAt.IsZero() {
				e.MessageID, e.Dest, e.Part, e.ChannelID, e.IntentAt = id, dest, first.Part, first.ChannelID, time.Now()
				s.ledger[k] = e
			}
		}
	}()
	if owner, ok := s.claims[key+"|"+dest]; ok {
		c := spool.Claim{Holder: owner, HolderState: spool.StateRetrying}
		if owner == id {
			c.Ledger = s.ledgerOf(id, dest)
		}
		if owner != id {
			for _, e := range s.ledger {
				if e.MessageID == owner && e.Dest == dest && e.PostID != "" {
					c.Delivered, c.HolderState = true, spool.StatePosted
				}
			}
		}
		return c, nil
	}
	s.claims[key+"|"+dest] = id
	return spool.Claim{Holder: id, Ledger: s.ledgerOf(id, dest)}, nil
}

// ledgerOf is what the spool's claim reads with it: id's entries for dest.
func (s *fakeSpool) ledgerOf(id, dest string) []spool.LedgerEntry {
	var es []spool.LedgerEntry
	for _, e := range s.ledger {
		if e.MessageID == id && e.Dest == dest {
			es = append(es, e)
		}
	}
	return es
}

func (s *fakeSpool) Body(_ context.Context, msg spool.Message) (io.ReadCloser, error) {
	id := msg.ID
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
	if d == s.panicOnDone {
		panic("recording a post to " + d)
	}
	k := m + "|" + d + "|" + p
	e := s.ledger[k]
	if e.PostID != "" && e.PostID != post {
		return fault.New(fault.Conflict, "ledger_conflict", "another post")
	}
	e.MessageID, e.Dest, e.Part, e.PostID, e.DoneAt = m, d, p, post, time.Now()
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
	// lostAnswerAt does the same for the post with this number (1-based,
	// counting every post made).
	lostAnswerAt int
	failWith     error
}

func newFakeMM() *fakeMM {
	return &fakeMM{users: map[string]string{"alice": "uid-alice", "bob": "uid-bob"}, files: map[string]string{}}
}

func (f *fakeMM) Me(context.Context) (*mattermost.User, error) {
	return &mattermost.User{ID: "uid-bot", Username: "jira", IsBot: true}, nil
}
func (f *fakeMM) User(_ context.Context, id string) (*mattermost.User, error) {
	for u, uid := range f.users {
		if uid == id {
			return &mattermost.User{ID: id, Username: u}, nil
		}
	}
	return nil, &mattermost.APIError{Op: "get user", Status: 404, ID: "app.user.missing_account.const"}
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
	if f.failCreateAfterStore || len(f.posts) == f.lostAnswerAt {
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
	h.r = New(Options{Spool: h.sp, Router: rt, Directory: h.dir, SpillDir: t.TempDir(), Domains: []string{"corp.test"},
		Apps: map[string]*App{"jira": {Name: "jira", Client: h.mm, DirectMessages: true}}})
	return h
}

func (h *harness) handle(id, sender string, rcpts []string, raw string) spool.Outcome {
	h.sp.mu.Lock()
	h.sp.raw[id] = []byte(raw)
	h.sp.attempts[id]++
	attempt := h.sp.attempts[id]
	h.sp.mu.Unlock()
	return h.record(id, h.r.Handle(context.Background(), spool.Message{ID: id, ReceivedAt: time.Now(), Attempt: attempt,
		Envelope: spool.Envelope{Intake: "smtp", Sender: sender, Recipients: rcpts}}))
}

// record keeps the history lines the outcome carries, as the spool would.
// It also records the outcome's posts in the ledger, keeping a part's
// first post as the spool does.
func (h *harness) record(id string, out spool.Outcome) spool.Outcome {
	h.sp.mu.Lock()
	defer h.sp.mu.Unlock()
	for _, e := range out.Events {
		h.sp.events = append(h.sp.events, e.Kind+": "+e.Detail)
	}
	for _, p := range out.Posts {
		k := id + "|" + p.Dest + "|" + p.Part
		if e := h.sp.ledger[k]; e.PostID == "" {
			e.MessageID, e.Dest, e.Part, e.PostID, e.DoneAt = id, p.Dest, p.Part, p.PostID, time.Now()
			h.sp.ledger[k] = e
		}
	}
	return out
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

// A lost answer for a destination's second post (its intent written by the
// relay, not by the claim) is reconciled too, with and without a
// Message-ID (with one, the delivery claim reads the ledger for the first
// part only).
func TestLostAnswerOfALaterPartIsReconciled(t *testing.T) {
	for _, withID := range []bool{false, true} {
		h := newHarness(t)
		h.mm.lostAnswerAt = 2
		var b strings.Builder
		b.WriteString("From: jira-svc@tools.test\r\nTo: alice@corp.test\r\nSubject: files\r\n")
		if withID {
			b.WriteString("Message-ID: <files@tools.test>\r\n")
		}
		b.WriteString("MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n--XX\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n")
		for i := 0; i < 12; i++ {
			fmt.Fprintf(&b, "--XX\r\nContent-Type: text/plain; name=\"f%02d.txt\"\r\nContent-Disposition: attachment; filename=\"f%02d.txt\"\r\n\r\ncontent %d\r\n", i, i, i)
		}
		b.WriteString("--XX--\r\n")
		if out := h.handle("l1", "jira-svc@tools.test", []string{"alice@corp.test"}, b.String()); out.Kind != spool.OutcomeRetry {
			t.Fatalf("Message-ID %v: want a retry after the lost answer, got %+v", withID, out)
		}
		if out := h.handle("l1", "jira-svc@tools.test", []string{"alice@corp.test"}, b.String()); out.Kind != spool.OutcomePosted {
			t.Fatalf("Message-ID %v: second attempt %+v", withID, out)
		}
		if len(h.mm.posts) != 2 || !strings.Contains(strings.Join(h.sp.events, "\n"), "files/1 was already posted") {
			t.Errorf("Message-ID %v: %d posts (want 2), events %v", withID, len(h.mm.posts), h.sp.events)
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

func (h *harness) handleEnv(id string, env spool.Envelope, raw string) spool.Outcome {
	h.sp.mu.Lock()
	h.sp.raw[id] = []byte(raw)
	h.sp.attempts[id]++
	attempt := h.sp.attempts[id]
	h.sp.mu.Unlock()
	return h.record(id, h.r.Handle(context.Background(), spool.Message{ID: id, ReceivedAt: time.Now(), Attempt: attempt, Envelope: env}))
}

// The same mail stored twice (two intakes, a resend after a lost 250) is
// posted once; the second copy ends posted with the duplicate code.
func TestSameMailTwiceIsPostedOnce(t *testing.T) {
	h := newHarness(t)
	raw := mkMail("twice", "x")
	if out := h.handle("a1", "jira-svc@tools.test", []string{"alice@corp.test"}, raw); out.Kind != spool.OutcomePosted || out.Code != "" {
		t.Fatalf("first copy: %+v", out)
	}
	// The second copy arrived through IMAP: more headers, no envelope.
	polled := "Return-Path: <jira-svc@tools.test>\r\nDelivered-To: alice@corp.test\r\n" + raw
	out := h.handleEnv("a2", spool.Envelope{Intake: "imap", NoEnvelope: true}, polled)
	if out.Kind != spool.OutcomePosted || out.Code != spool.CodeDuplicate || !strings.Contains(out.Reason, "a1") {
		t.Fatalf("second copy: %+v, events %v", out, h.sp.events)
	}
	if len(h.mm.posts) != 1 {
		t.Fatalf("%d posts, want 1", len(h.mm.posts))
	}
}

// postfix's pipe transport with one recipient per delivery stores one copy
// per recipient, all with the same Message-ID: each recipient gets it.
func TestSameMailToOtherRecipientsIsPosted(t *testing.T) {
	h := newHarness(t)
	raw := mkMail("split", "x")
	for i, rc := range []string{"alice@corp.test", "bob@corp.test"} {
		out := h.handle(fmt.Sprintf("s%d", i), "jira-svc@tools.test", []string{rc}, raw)
		if out.Kind != spool.OutcomePosted || out.Code != "" {
			t.Fatalf("copy for %s: %+v", rc, out)
		}
	}
	if len(h.mm.posts) != 2 {
		t.Fatalf("%d posts, want one per recipient", len(h.mm.posts))
	}
	// Another mail that reuses the Message-ID with another subject is not a copy.
	other := strings.Replace(raw, "Subject: split", "Subject: split again", 1)
	if out := h.handle("s3", "jira-svc@tools.test", []string{"alice@corp.test"}, other); out.Code == spool.CodeDuplicate {
		t.Fatalf("a different mail with a reused Message-ID was taken for a copy: %+v", out)
	}
	if len(h.mm.posts) != 3 {
		t.Fatalf("%d posts, want 3", len(h.mm.posts))
	}
}

// Mail without an envelope (postback, IMAP) goes to the header's people in
// the served domains; the sender comes from Return-Path; addresses with no
// user (a list, the gateway's own mailbox) are skipped, not quarantined.
func TestNoEnvelopeUsesHeaderRecipientsAndReturnPath(t *testing.T) {
	h := newHarness(t)
	raw := "Return-Path: <jira-svc@tools.test>\r\nFrom: Jira <jira@tools.test>\r\nTo: alice@corp.test, mmgate-inbox@corp.test\r\n" +
		"Cc: bob@corp.test, someone@elsewhere.test\r\nSubject: hdr\r\nMessage-ID: <hdr@tools.test>\r\n\r\nbody\r\n"
	out := h.handleEnv("n1", spool.Envelope{Intake: "postback", Mailbox: "incoming", NoEnvelope: true}, raw)
	if out.Kind != spool.OutcomePosted {
		t.Fatalf("%+v, events %v", out, h.sp.events)
	}
	got := map[string]bool{}
	for _, p := range h.mm.posts {
		got[p.ChannelID] = true
	}
	if len(h.mm.posts) != 2 || !got["dm-uid-alice"] || !got["dm-uid-bob"] {
		t.Fatalf("posts to %v, want alice and bob once each", got)
	}
	ev := strings.Join(h.sp.events, "\n")
	for _, want := range []string{"Return-Path", "mmgate-inbox@corp.test", "skipped"} {
		if !strings.Contains(ev, want) {
			t.Errorf("history lacks %q:\n%s", want, ev)
		}
	}
	if strings.Contains(ev, "someone@elsewhere.test") {
		t.Errorf("an address outside the served domains was considered:\n%s", ev)
	}
	// Delivered-To wins over To/Cc: it is the mailbox the mail was delivered to.
	raw2 := "Delivered-To: bob@corp.test\r\n" + strings.Replace(raw, "Message-ID: <hdr@", "Message-ID: <hdr2@", 1)
	if out := h.handleEnv("n2", spool.Envelope{Intake: "imap", NoEnvelope: true}, raw2); out.Kind != spool.OutcomePosted {
		t.Fatalf("%+v", out)
	}
	if len(h.mm.posts) != 3 || h.mm.posts[2].ChannelID != "dm-uid-bob" {
		t.Fatalf("want one new post, to bob: %d posts", len(h.mm.posts))
	}
}

func TestBouncesAndAutoRepliesAreQuarantinedUnlessTheAppPostsThem(t *testing.T) {
	h := newHarness(t)
	bounce := "From: MAILER-DAEMON@mx.corp.test\r\nTo: jira-svc@tools.test\r\nSubject: Undelivered Mail Returned to Sender\r\n" +
		"Message-ID: <b1@mx>\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n" +
		"--B\r\nContent-Type: text/plain\r\n\r\nI'm sorry.\r\n--B\r\nContent-Type: message/delivery-status\r\n\r\nStatus: 5.1.1\r\n--B--\r\n"
	out := h.handle("b1", "", []string{"alice@corp.test"}, bounce)
	if out.Kind != spool.OutcomeQuarantine || out.Code != "bounce" || !strings.HasPrefix(out.Reason, "bounce:") {
		t.Fatalf("bounce: %+v", out)
	}
	ooo := "From: Bob <bob@corp.test>\r\nTo: alice@corp.test\r\nSubject: Automatic reply: build\r\nAuto-Submitted: auto-replied\r\n" +
		"Message-ID: <o1@corp>\r\n\r\nI am away.\r\n"
	out = h.handle("o1", "jira-svc@tools.test", []string{"alice@corp.test"}, ooo)
	if out.Kind != spool.OutcomeQuarantine || out.Code != "auto_reply" || !strings.HasPrefix(out.Reason, "auto-reply:") {
		t.Fatalf("auto-reply: %+v", out)
	}
	if len(h.mm.posts) != 0 {
		t.Fatalf("%d posts, want none", len(h.mm.posts))
	}
	// A tool notification marked auto-generated and bulk is ordinary traffic.
	note := strings.Replace(mkMail("nightly", "ok"), "\r\n\r\n", "\r\nAuto-Submitted: auto-generated\r\nPrecedence: bulk\r\n\r\n", 1)
	if out := h.handle("g1", "jira-svc@tools.test", []string{"alice@corp.test"}, note); out.Kind != spool.OutcomePosted {
		t.Fatalf("auto-generated notification: %+v", out)
	}
	// An app configured to post auto-replies posts them.
	h.r.o.Apps["jira"].PostAutoReplies = true
	if out := h.handle("o2", "jira-svc@tools.test", []string{"alice@corp.test"}, strings.Replace(ooo, "<o1@", "<o2@", 1)); out.Kind != spool.OutcomePosted {
		t.Fatalf("auto-reply with auto_replies: post: %+v", out)
	}
	if len(h.mm.posts) != 2 {
		t.Fatalf("%d posts, want 2", len(h.mm.posts))
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, fmt.Errorf("disk read error") }

type bodySpool struct {
	*fakeSpool
	open func() (io.ReadCloser, error)
}

func (s bodySpool) Body(context.Context, spool.Message) (io.ReadCloser, error) { return s.open() }

func TestUnreadableBodyRetriesMissingBodyQuarantines(t *testing.T) {
	h := newHarness(t)
	h.r.SetSpool(bodySpool{h.sp, func() (io.ReadCloser, error) { return io.NopCloser(failingReader{}), nil }})
	if out := h.handle("r1", "jira-svc@tools.test", []string{"alice@corp.test"}, ""); out.Kind != spool.OutcomeRetry {
		t.Fatalf("a read error is not the mail's fault, want retry: %+v", out)
	}
	h.r.SetSpool(bodySpool{h.sp, func() (io.ReadCloser, error) {
		return nil, fault.New(fault.NotFound, "body_missing", "raw message r2 is missing")
	}})
	if out := h.handle("r2", "jira-svc@tools.test", []string{"alice@corp.test"}, ""); out.Kind != spool.OutcomeQuarantine || out.Code != "body_missing" {
		t.Fatalf("missing raw mail: want quarantine body_missing, got %+v", out)
	}
}

// The attempt records each post before its next intent and hands the last
// one to the outcome, which the spool records with it.
func TestLastPostGoesWithTheOutcome(t *testing.T) {
	h := newHarness(t)
	h.sp.raw["p1"] = []byte(mkMail("two", "to two people"))
	out := h.r.Handle(context.Background(), spool.Message{ID: "p1", ReceivedAt: time.Now(), Attempt: 1,
		Envelope: spool.Envelope{Intake: "smtp", Sender: "jira-svc@tools.test", Recipients: []string{"alice@corp.test", "bob@corp.test"}}})
	if out.Kind != spool.OutcomePosted || len(h.mm.posts) != 2 {
		t.Fatalf("outcome %+v, %d posts", out, len(h.mm.posts))
	}
	if len(out.Posts) != 1 || out.Posts[0].PostID != h.mm.posts[1].ID || out.Posts[0].Part != "body/0" {
		t.Fatalf("outcome's posts %+v, want only the last post, %s", out.Posts, h.mm.posts[1].ID)
	}
	h.sp.mu.Lock()
	defer h.sp.mu.Unlock()
	var recorded, pending int
	for _, e := range h.sp.ledger {
		switch {
		case e.PostID == h.mm.posts[0].ID && !e.IntentAt.IsZero():
			recorded++
		case e.Dest == out.Posts[0].Dest && e.PostID == "" && !e.IntentAt.IsZero():
			pending++
		}
	}
	if recorded != 1 || pending != 1 {
		t.Errorf("ledger %+v: want the first post recorded and the last one's intent only", h.sp.ledger)
	}
}

// Attempts can overlap (a rescued stuck job, an operator's Retry during a
// delivery): one that started as attempt 1 still finds what the other posted.
func TestOverlappingFirstAttemptDoesNotRepost(t *testing.T) {
	h := newHarness(t)
	if out := h.handle("o1", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("overlap", "x")); out.Kind != spool.OutcomePosted {
		t.Fatalf("outcome %+v", out)
	}
	out := h.r.Handle(context.Background(), spool.Message{ID: "o1", ReceivedAt: time.Now(), Attempt: 1,
		Envelope: spool.Envelope{Intake: "smtp", Sender: "jira-svc@tools.test", Recipients: []string{"alice@corp.test"}}})
	if out.Kind != spool.OutcomePosted || len(h.mm.posts) != 1 {
		t.Fatalf("an overlapping first attempt: outcome %+v, %d posts, want 1", out, len(h.mm.posts))
	}
}

// A panic after a post still hands the post to the outcome, so the ledger
// gets it without a reconciliation.
func TestPanicKeepsTheAttemptsPosts(t *testing.T) {
	h := newHarness(t)
	h.sp.panicOnDone = "dm:alice" // recording alice's post, before bob's claim
	out := h.handle("q1", "jira-svc@tools.test", []string{"alice@corp.test", "bob@corp.test"}, mkMail("panics", "x"))
	if out.Kind != spool.OutcomeRetry || !strings.Contains(out.Reason, "panic") {
		t.Fatalf("outcome %+v, want a retry saying panic", out)
	}
	if len(h.mm.posts) != 1 || len(out.Posts) != 1 || out.Posts[0].PostID != h.mm.posts[0].ID {
		t.Fatalf("posts %d, outcome's posts %+v: want alice's post handed over", len(h.mm.posts), out.Posts)
	}
}
