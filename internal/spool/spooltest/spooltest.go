// Package spooltest is the conformance suite every spool backend must pass:
// the behaviour of Accept, delivery outcomes, retries, quarantine, operator
// actions, the ledger and retention, tested through the public API only.
//
// It owns no storage: the caller's NewStorage names fresh storage for each
// test. It must never depend on a backend's internals.
package spooltest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/spool"
)

// NewStorage returns Options naming fresh, empty storage (Path and BlobDir
// for the SQLite backend). The suite sets the other fields and may open
// several Spools on the same storage at once, as separate processes would.
type NewStorage func(t *testing.T) spool.Options

// Run runs the conformance suite.
func Run(t *testing.T, newStorage NewStorage) {
	tests := []struct {
		name string
		fn   func(t *testing.T, newStorage NewStorage)
	}{
		{"AcceptIsDeliveredOnce", testAcceptDelivered},
		{"RetryAfterIsHonoured", testRetryAfter},
		{"BackoffRetriesUntilPosted", testBackoffRetries},
		{"QuarantineReleaseDelete", testQuarantineRelease},
		{"DeleteOnlyQuarantined", testDelete},
		{"RetryConflictsOnFinalStates", testRetryConflict},
		{"MaxRetryAgeGivesUp", testMaxRetryAge},
		{"HandlerPanicIsRetried", testPanic},
		{"InvalidOutcomeIsRetried", testInvalidOutcome},
		{"Ledger", testLedger},
		{"BodyLimit", testBodyLimit},
		{"SecondInstanceAdministers", testTwoInstances},
		{"ConcurrentAcceptsExactlyOnce", testConcurrent},
		{"ListCountsInfoEvents", testListCounts},
		{"PurgePosted", testPurge},
		{"Writable", testWritable},
		{"StopWaitsForRunningHandler", testStopWaits},
		{"RetryQueued", testRetryQueued},
		{"IntakeState", testIntakeState},
		{"DeliveryClaims", testClaims},
		{"LargeBodiesInTheBlobStore", testLargeBodies},
		{"HandlerEventsInHistory", testHandlerEvents},
		{"HandlerReadsItsBody", testHandlerBody},
		{"OutcomeRecordsPosts", testOutcomePosts},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStorage) })
	}
}

const waitFor = 20 * time.Second

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// fast returns options with short timings for tests.
func fast(base spool.Options, h spool.Handler) spool.Options {
	o := base
	o.Handler = h
	o.Logger = quietLogger()
	o.PollInterval = 10 * time.Millisecond
	o.RetryMin = 20 * time.Millisecond
	o.RetryMax = 100 * time.Millisecond
	o.JobTimeout = 30 * time.Second
	return o
}

func open(t *testing.T, opts spool.Options) *spool.Spool {
	t.Helper()
	s, err := spool.Open(context.Background(), opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

func start(t *testing.T, s *spool.Spool) {
	t.Helper()
	if err := s.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
}

// recorder is a Handler that counts calls per message and answers with decide.
type recorder struct {
	mu     sync.Mutex
	calls  map[string]int
	seen   map[string][]spool.Message
	decide func(msg spool.Message, call int) spool.Outcome
}

func newRecorder(decide func(msg spool.Message, call int) spool.Outcome) *recorder {
	return &recorder{calls: map[string]int{}, seen: map[string][]spool.Message{}, decide: decide}
}

func (r *recorder) Handle(_ context.Context, msg spool.Message) spool.Outcome {
	r.mu.Lock()
	r.calls[msg.ID]++
	n := r.calls[msg.ID]
	r.seen[msg.ID] = append(r.seen[msg.ID], msg)
	r.mu.Unlock()
	if r.decide == nil {
		return spool.Outcome{Kind: spool.OutcomePosted}
	}
	return r.decide(msg, n)
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.calls[id]
}

func (r *recorder) messages(id string) []spool.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.seen[id])
}

func posted() spool.Outcome { return spool.Outcome{Kind: spool.OutcomePosted} }

var testEnv = spool.Envelope{
	Intake:     "smtp",
	Sender:     "jira@example.com",
	Recipients: []string{"alice@example.com", "bob@example.com"},
	App:        "jira",
	RemoteAddr: "192.0.2.1:4242",
	Helo:       "jira.example.com",
}

func body(n int) []byte {
	var b bytes.Buffer
	b.WriteString("Subject: test\r\nFrom: jira@example.com\r\n\r\n")
	for b.Len() < n {
		b.WriteString("The quick brown fox jumps over the lazy dog.\r\n")
	}
	return b.Bytes()[:max(n, 0)]
}

func accept(t *testing.T, s *spool.Spool, b []byte) string {
	t.Helper()
	id, err := s.Accept(context.Background(), testEnv, bytes.NewReader(b))
	if err != nil {
		t.Fatalf("Accept: %v", err)
	}
	if id == "" {
		t.Fatal("Accept returned an empty id")
	}
	return id
}

// waitState polls until the message is in state (or fails the test).
func waitState(t *testing.T, s *spool.Spool, id string, want spool.State) spool.Message {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	var last spool.Message
	for time.Now().Before(deadline) {
		m, _, err := s.Get(context.Background(), id)
		if err != nil {
			t.Fatalf("Get(%s): %v", id, err)
		}
		if m.State == want {
			return m
		}
		last = m
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("message %s: state %q (attempt %d, last error %q), want %q", id, last.State, last.Attempt, last.LastError, want)
	return last
}

// waitCalls polls until the handler was called n times for id.
func waitCalls(t *testing.T, r *recorder, id string, n int) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for time.Now().Before(deadline) {
		if r.count(id) >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("handler called %d times for %s, want %d", r.count(id), id, n)
}

func eventKinds(evs []spool.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Kind
	}
	return out
}

func findEvent(evs []spool.Event, kind string) (spool.Event, bool) {
	for _, e := range evs {
		if e.Kind == kind {
			return e, true
		}
	}
	return spool.Event{}, false
}

func wantKind(t *testing.T, err error, k fault.Kind) {
	t.Helper()
	if err == nil {
		t.Fatalf("got nil error, want a %s error", k)
	}
	if got := fault.KindOf(err); got != k {
		t.Fatalf("error %v: kind %s, want %s", err, got, k)
	}
}

func readBody(t *testing.T, s *spool.Spool, id string) []byte {
	t.Helper()
	rc, err := s.OpenBody(context.Background(), id)
	if err != nil {
		t.Fatalf("OpenBody(%s): %v", id, err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("reading body: %v", err)
	}
	return b
}

func testAcceptDelivered(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(nil)
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	b := body(10 << 10)
	before := time.Now().Add(-time.Millisecond)
	id := accept(t, s, b)

	m := waitState(t, s, id, spool.StatePosted)
	if got := rec.count(id); got != 1 {
		t.Fatalf("handler called %d times, want 1", got)
	}
	seen := rec.messages(id)[0]
	if seen.ID != id || seen.Attempt != 1 || seen.Size != int64(len(b)) || seen.State != spool.StateQueued {
		t.Errorf("handler saw id %q attempt %d size %d state %q; want %q 1 %d queued", seen.ID, seen.Attempt, seen.Size, seen.State, id, len(b))
	}
	if seen.Envelope.Sender != testEnv.Sender || !slices.Equal(seen.Envelope.Recipients, testEnv.Recipients) ||
		seen.Envelope.App != "jira" || seen.Envelope.Helo != testEnv.Helo || seen.Envelope.Intake != "smtp" {
		t.Errorf("handler saw envelope %+v, want %+v", seen.Envelope, testEnv)
	}
	if m.App != "jira" {
		t.Errorf("App = %q, want the envelope's app", m.App)
	}
	if m.ReceivedAt.Before(before) || m.ReceivedAt.After(time.Now()) {
		t.Errorf("ReceivedAt %v not between %v and now", m.ReceivedAt, before)
	}
	if m.Attempt != 1 || m.BodyPurged {
		t.Errorf("Attempt %d BodyPurged %v, want 1 false", m.Attempt, m.BodyPurged)
	}
	if got := readBody(t, s, id); !bytes.Equal(got, b) {
		t.Errorf("OpenBody returned %d bytes differing from the %d accepted", len(got), len(b))
	}
	_, evs, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := eventKinds(evs), []string{"received", "attempt", "posted"}; !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
	counts, err := s.Counts(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if counts[spool.StatePosted] != 1 || counts[spool.StateQueued] != 0 {
		t.Errorf("counts %v, want 1 posted", counts)
	}
	if _, _, err := s.Get(context.Background(), "0000000000000000000000zz"); !fault.Is(err, fault.NotFound) {
		t.Errorf("Get(unknown) = %v, want NotFound", err)
	}
	if _, err := s.OpenBody(context.Background(), "../../etc/passwd"); !fault.Is(err, fault.NotFound) {
		t.Errorf("OpenBody(bad id) = %v, want NotFound", err)
	}
}

func testRetryAfter(t *testing.T, newStorage NewStorage) {
	const retryAfter = time.Hour
	rec := newRecorder(func(_ spool.Message, call int) spool.Outcome {
		if call == 1 {
			return spool.Outcome{Kind: spool.OutcomeRetry, Reason: "429 too many requests", RetryAfter: retryAfter}
		}
		return posted()
	})
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	before := time.Now().Truncate(time.Millisecond)
	id := accept(t, s, body(100))
	m := waitState(t, s, id, spool.StateRetrying)
	if min := before.Add(retryAfter); m.NextTry.Before(min) {
		t.Errorf("NextTry %v is before now+RetryAfter %v", m.NextTry, min)
	}
	if m.LastError != "429 too many requests" || m.Attempt != 1 {
		t.Errorf("LastError %q Attempt %d", m.LastError, m.Attempt)
	}
	_, evs, _ := s.Get(context.Background(), id)
	if e, ok := findEvent(evs, "retry"); !ok || !strings.Contains(e.Detail, "429") {
		t.Errorf("no retry event with the error in %v", evs)
	}
	// An operator's Retry makes it due now.
	if err := s.Retry(context.Background(), id); err != nil {
		t.Fatalf("Retry: %v", err)
	}
	m = waitState(t, s, id, spool.StatePosted)
	if m.Attempt != 2 || rec.count(id) != 2 {
		t.Errorf("Attempt %d, handler calls %d; want 2 and 2", m.Attempt, rec.count(id))
	}
	_, evs, _ = s.Get(context.Background(), id)
	if _, ok := findEvent(evs, "retry-now"); !ok {
		t.Errorf("no retry-now event in %v", eventKinds(evs))
	}
}

func testBackoffRetries(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(func(_ spool.Message, call int) spool.Outcome {
		if call < 3 {
			return spool.Outcome{Kind: spool.OutcomeRetry, Reason: fmt.Sprintf("mattermost down (%d)", call)}
		}
		return posted()
	})
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	id := accept(t, s, body(100))
	m := waitState(t, s, id, spool.StatePosted)
	if m.Attempt != 3 || rec.count(id) != 3 {
		t.Fatalf("Attempt %d, handler calls %d; want 3", m.Attempt, rec.count(id))
	}
	seen := rec.messages(id)
	for i, sm := range seen {
		if sm.Attempt != i+1 {
			t.Errorf("call %d saw Attempt %d", i+1, sm.Attempt)
		}
	}
	if seen[1].State != spool.StateRetrying || seen[1].LastError != "mattermost down (1)" {
		t.Errorf("second call saw state %q last error %q", seen[1].State, seen[1].LastError)
	}
	_, evs, _ := s.Get(context.Background(), id)
	want := []string{"received", "attempt", "retry", "attempt", "retry", "attempt", "posted"}
	if got := eventKinds(evs); !slices.Equal(got, want) {
		t.Errorf("events %v, want %v", got, want)
	}
}

func testQuarantineRelease(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(func(_ spool.Message, call int) spool.Outcome {
		if call == 1 {
			return spool.Outcome{Kind: spool.OutcomeQuarantine, Reason: "no route for recipient"}
		}
		return posted()
	})
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	id := accept(t, s, body(100))
	m := waitState(t, s, id, spool.StateQuarantined)
	if m.Reason != "no route for recipient" {
		t.Errorf("Reason %q", m.Reason)
	}
	if got := rec.count(id); got != 1 {
		t.Fatalf("handler called %d times, want 1", got)
	}
	wantKind(t, s.Retry(context.Background(), id), fault.Conflict)

	if err := s.Release(context.Background(), id, "route fixed by admin"); err != nil {
		t.Fatalf("Release: %v", err)
	}
	m = waitState(t, s, id, spool.StatePosted)
	if m.Reason != "" || m.Attempt != 2 || rec.count(id) != 2 {
		t.Errorf("after release: Reason %q Attempt %d calls %d", m.Reason, m.Attempt, rec.count(id))
	}
	_, evs, _ := s.Get(context.Background(), id)
	if e, ok := findEvent(evs, "released"); !ok || e.Detail != "route fixed by admin" {
		t.Errorf("no released event with the note in %v", evs)
	}
	wantKind(t, s.Release(context.Background(), id, ""), fault.Conflict)
	wantKind(t, s.Release(context.Background(), "0000000000000000000000zz", ""), fault.NotFound)
}

func testDelete(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(func(msg spool.Message, _ int) spool.Outcome {
		if msg.Size == 100 {
			return spool.Outcome{Kind: spool.OutcomeQuarantine, Reason: "virus"}
		}
		return posted()
	})
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	qid := accept(t, s, body(100))
	pid := accept(t, s, body(200))
	waitState(t, s, qid, spool.StateQuarantined)
	waitState(t, s, pid, spool.StatePosted)
	if err := s.LedgerIntent(context.Background(), qid, "dm:alice", "body/0", "ch1"); err != nil {
		t.Fatal(err)
	}

	wantKind(t, s.Delete(context.Background(), pid), fault.Conflict)
	if err := s.Delete(context.Background(), qid); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	if _, _, err := s.Get(context.Background(), qid); !fault.Is(err, fault.NotFound) {
		t.Errorf("Get after Delete = %v, want NotFound", err)
	}
	if _, err := s.OpenBody(context.Background(), qid); !fault.Is(err, fault.NotFound) {
		t.Errorf("OpenBody after Delete = %v, want NotFound", err)
	}
	if es, err := s.LedgerList(context.Background(), qid); err != nil || len(es) != 0 {
		t.Errorf("ledger after Delete: %v %v", es, err)
	}
	wantKind(t, s.Delete(context.Background(), qid), fault.NotFound)
	// The posted one is untouched.
	if _, _, err := s.Get(context.Background(), pid); err != nil {
		t.Errorf("Get(posted) after deleting another: %v", err)
	}
}

func testRetryConflict(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(nil)
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	id := accept(t, s, body(100))
	waitState(t, s, id, spool.StatePosted)
	wantKind(t, s.Retry(context.Background(), id), fault.Conflict)
	wantKind(t, s.Release(context.Background(), id, "x"), fault.Conflict)
	wantKind(t, s.Retry(context.Background(), "0000000000000000000000zz"), fault.NotFound)
	if got := rec.count(id); got != 1 {
		t.Errorf("handler called %d times, want 1", got)
	}
}

func testMaxRetryAge(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(func(spool.Message, int) spool.Outcome {
		return spool.Outcome{Kind: spool.OutcomeRetry, Reason: "connection refused"}
	})
	o := fast(newStorage(t), rec)
	o.MaxRetryAge = time.Nanosecond
	s := open(t, o)
	start(t, s)
	id := accept(t, s, body(100))
	m := waitState(t, s, id, spool.StateQuarantined)
	if !strings.HasPrefix(m.Reason, "gave up after ") || !strings.HasSuffix(m.Reason, ": connection refused") {
		t.Errorf("Reason %q, want gave up after …: connection refused", m.Reason)
	}
	if got := rec.count(id); got != 1 {
		t.Errorf("handler called %d times, want 1", got)
	}
}

func testPanic(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(func(_ spool.Message, call int) spool.Outcome {
		if call == 1 {
			panic("boom in relay")
		}
		return posted()
	})
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	id := accept(t, s, body(100))
	m := waitState(t, s, id, spool.StatePosted)
	if m.Attempt != 2 {
		t.Errorf("Attempt %d, want 2", m.Attempt)
	}
	if seen := rec.messages(id); len(seen) != 2 || !strings.Contains(seen[1].LastError, "boom in relay") {
		t.Errorf("second call should see the panic as LastError, saw %+v", seen)
	}
	_, evs, _ := s.Get(context.Background(), id)
	if e, ok := findEvent(evs, "retry"); !ok || !strings.Contains(e.Detail, "panic: boom in relay") {
		t.Errorf("no retry event with the panic in %v", evs)
	}
}

func testInvalidOutcome(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(func(_ spool.Message, call int) spool.Outcome {
		if call == 1 {
			return spool.Outcome{}
		}
		return posted()
	})
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	id := accept(t, s, body(100))
	if m := waitState(t, s, id, spool.StatePosted); m.Attempt != 2 {
		t.Errorf("Attempt %d, want 2", m.Attempt)
	}
}

func testLedger(t *testing.T, newStorage NewStorage) {
	s := open(t, fast(newStorage(t), nil))
	ctx := context.Background()
	id := accept(t, s, body(100))
	other := accept(t, s, body(100))

	if _, ok, err := s.LedgerGet(ctx, id, "dm:alice", "body/0"); err != nil || ok {
		t.Fatalf("LedgerGet on empty ledger: ok=%v err=%v", ok, err)
	}
	if err := s.LedgerIntent(ctx, id, "dm:alice", "body/0", "chan-a"); err != nil {
		t.Fatal(err)
	}
	e1, ok, err := s.LedgerGet(ctx, id, "dm:alice", "body/0")
	if err != nil || !ok {
		t.Fatalf("LedgerGet after intent: ok=%v err=%v", ok, err)
	}
	if e1.ChannelID != "chan-a" || e1.PostID != "" || e1.IntentAt.IsZero() || !e1.DoneAt.IsZero() {
		t.Errorf("entry after intent: %+v", e1)
	}
	time.Sleep(2 * time.Millisecond) // distinct timestamps (not a timing assertion)
	if err := s.LedgerIntent(ctx, id, "dm:alice", "body/0", "chan-b"); err != nil {
		t.Fatal(err)
	}
	e2, _, _ := s.LedgerGet(ctx, id, "dm:alice", "body/0")
	if !e2.IntentAt.Equal(e1.IntentAt) {
		t.Errorf("second intent changed IntentAt %v → %v", e1.IntentAt, e2.IntentAt)
	}
	if e2.ChannelID != "chan-b" {
		t.Errorf("ChannelID %q, want the newer chan-b", e2.ChannelID)
	}
	if err := s.LedgerDone(ctx, id, "dm:alice", "body/0", "post1"); err != nil {
		t.Fatal(err)
	}
	e3, _, _ := s.LedgerGet(ctx, id, "dm:alice", "body/0")
	if e3.PostID != "post1" || e3.DoneAt.IsZero() || !e3.IntentAt.Equal(e1.IntentAt) || e3.MessageID != id {
		t.Errorf("entry after done: %+v", e3)
	}
	if err := s.LedgerDone(ctx, id, "dm:alice", "body/0", "post1"); err != nil {
		t.Errorf("repeating the same done: %v", err)
	}
	wantKind(t, s.LedgerDone(ctx, id, "dm:alice", "body/0", "post2"), fault.Conflict)
	if e, _, _ := s.LedgerGet(ctx, id, "dm:alice", "body/0"); e.PostID != "post1" {
		t.Errorf("conflicting done replaced the post id: %+v", e)
	}
	// Done without a prior intent is recorded too.
	if err := s.LedgerDone(ctx, id, "channel:team/town-square", "files/1", "post3"); err != nil {
		t.Fatal(err)
	}
	if err := s.LedgerIntent(ctx, other, "dm:bob", "body/0", "chan-c"); err != nil {
		t.Fatal(err)
	}
	list, err := s.LedgerList(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Dest != "dm:alice" || list[1].Part != "files/1" || list[1].PostID != "post3" {
		t.Errorf("LedgerList = %+v", list)
	}
	wantKind(t, s.LedgerIntent(ctx, "0000000000000000000000zz", "dm:x", "body/0", ""), fault.NotFound)
	wantKind(t, s.LedgerDone(ctx, "0000000000000000000000zz", "dm:x", "body/0", "p"), fault.NotFound)
	wantKind(t, s.LedgerIntent(ctx, id, "", "body/0", ""), fault.Invalid)
}

func testBodyLimit(t *testing.T, newStorage NewStorage) {
	o := fast(newStorage(t), nil)
	o.BodyLimit = 1000
	s := open(t, o)
	_, err := s.Accept(context.Background(), testEnv, bytes.NewReader(body(1001)))
	wantKind(t, err, fault.TooLarge)
	if id := accept(t, s, body(1000)); len(readBody(t, s, id)) != 1000 {
		t.Error("body at the limit not kept whole")
	}
	msgs, err := s.List(context.Background(), spool.ListFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].Size != 1000 {
		t.Errorf("List after one rejected and one accepted message: %+v", msgs)
	}
	// A failing body reader stores nothing.
	_, err = s.Accept(context.Background(), testEnv, io.MultiReader(bytes.NewReader(body(50)), errReader{}))
	if err == nil {
		t.Fatal("Accept with a failing reader succeeded")
	}
	if msgs, _ := s.List(context.Background(), spool.ListFilter{}); len(msgs) != 1 {
		t.Errorf("failed Accept left a record: %d messages", len(msgs))
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("connection reset") }

func testTwoInstances(t *testing.T, newStorage NewStorage) {
	storage := newStorage(t)
	rec := newRecorder(func(msg spool.Message, call int) spool.Outcome {
		if msg.Size == 100 && call == 1 {
			return spool.Outcome{Kind: spool.OutcomeQuarantine, Reason: "needs approval"}
		}
		return posted()
	})
	server := open(t, fast(storage, rec))
	start(t, server)
	cli := open(t, fast(storage, nil))
	start(t, cli) // no Handler: only maintenance

	id := accept(t, server, body(100))
	waitState(t, cli, id, spool.StateQuarantined)
	if err := cli.Release(context.Background(), id, "approved via CLI"); err != nil {
		t.Fatalf("CLI Release: %v", err)
	}
	waitState(t, server, id, spool.StatePosted)
	if got := rec.count(id); got != 2 {
		t.Errorf("handler called %d times, want 2", got)
	}
	// A message accepted by the second instance (a pipe intake) is delivered by the first.
	id2 := accept(t, cli, body(300))
	waitState(t, cli, id2, spool.StatePosted)
	if got := rec.count(id2); got != 1 {
		t.Errorf("handler called %d times for the CLI's message, want 1", got)
	}
}

func testConcurrent(t *testing.T, newStorage NewStorage) {
	const goroutines, each = 8, 200
	rec := newRecorder(nil)
	o := fast(newStorage(t), rec)
	o.Workers = 8
	s := open(t, o)
	start(t, s)
	ids := make([][]string, goroutines)
	bodies := make([][]byte, goroutines)
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		bodies[g] = body(2000 + g)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				id, err := s.Accept(context.Background(), testEnv, bytes.NewReader(bodies[g]))
				if err != nil {
					errs <- err
					return
				}
				ids[g] = append(ids[g], id)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("Accept: %v", err)
	}
	seen := map[string]bool{}
	for g := range goroutines {
		for _, id := range ids[g] {
			if seen[id] {
				t.Fatalf("duplicate id %s", id)
			}
			seen[id] = true
		}
	}
	if len(seen) != goroutines*each {
		t.Fatalf("%d distinct ids, want %d", len(seen), goroutines*each)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := s.Counts(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if c[spool.StatePosted] == goroutines*each {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counts %v, want %d posted", c, goroutines*each)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for g := range goroutines {
		for i, id := range ids[g] {
			if n := rec.count(id); n != 1 {
				t.Errorf("message %s handled %d times, want exactly 1", id, n)
			}
			if i%50 == 0 && !bytes.Equal(readBody(t, s, id), bodies[g]) {
				t.Errorf("message %s: body differs", id)
			}
		}
	}
}

func testListCounts(t *testing.T, newStorage NewStorage) {
	s := open(t, fast(newStorage(t), nil))
	ctx := context.Background()
	var ids []string
	for range 5 {
		ids = append(ids, accept(t, s, body(100)))
		time.Sleep(2 * time.Millisecond) // distinct millisecond timestamps in the ids
	}
	if err := s.SetInfo(ctx, ids[1], "splunk", "Alert: disk full", "<a@b>"); err != nil {
		t.Fatal(err)
	}
	if err := s.SetInfo(ctx, ids[3], "splunk", "", ""); err != nil {
		t.Fatal(err)
	}
	wantKind(t, s.SetInfo(ctx, "0000000000000000000000zz", "x", "", ""), fault.NotFound)

	all, err := s.List(ctx, spool.ListFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 5 {
		t.Fatalf("List returned %d, want 5", len(all))
	}
	for i, m := range all {
		if m.ID != ids[4-i] {
			t.Fatalf("List order: position %d is %s, want %s (newest first)", i, m.ID, ids[4-i])
		}
	}
	splunk, _ := s.List(ctx, spool.ListFilter{App: "splunk"})
	if len(splunk) != 2 || splunk[0].ID != ids[3] || splunk[1].Subject != "Alert: disk full" || splunk[1].MessageID != "<a@b>" {
		t.Errorf("List(app=splunk) = %+v", splunk)
	}
	page1, _ := s.List(ctx, spool.ListFilter{Limit: 2})
	page2, _ := s.List(ctx, spool.ListFilter{Limit: 2, Before: page1[len(page1)-1].ID})
	if len(page1) != 2 || len(page2) != 2 || page2[0].ID != ids[2] || page2[1].ID != ids[1] {
		t.Errorf("pagination: %v then %v", msgIDs(page1), msgIDs(page2))
	}
	if q, _ := s.List(ctx, spool.ListFilter{States: []spool.State{spool.StatePosted, spool.StateQuarantined}}); len(q) != 0 {
		t.Errorf("List(posted|quarantined) = %d messages, want 0", len(q))
	}
	if q, _ := s.List(ctx, spool.ListFilter{States: []spool.State{spool.StateQueued}}); len(q) != 5 {
		t.Errorf("List(queued) = %d messages, want 5", len(q))
	}
	c, err := s.Counts(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if c[spool.StateQueued] != 5 || c[spool.StatePosted] != 0 || len(c) != 4 {
		t.Errorf("Counts = %v", c)
	}
	if err := s.AddEvent(ctx, ids[0], "decision", "route: dm alice"); err != nil {
		t.Fatal(err)
	}
	wantKind(t, s.AddEvent(ctx, "0000000000000000000000zz", "decision", ""), fault.NotFound)
	_, evs, _ := s.Get(ctx, ids[0])
	if got := eventKinds(evs); !slices.Equal(got, []string{"received", "decision"}) || evs[1].Detail != "route: dm alice" {
		t.Errorf("events %+v", evs)
	}
}

func msgIDs(ms []spool.Message) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.ID
	}
	return out
}

func testPurge(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(func(msg spool.Message, _ int) spool.Outcome {
		if msg.Size == 100 {
			return spool.Outcome{Kind: spool.OutcomeQuarantine, Reason: "x"}
		}
		return posted()
	})
	o := fast(newStorage(t), rec)
	o.Retention = -1
	s := open(t, o)
	start(t, s)
	ctx := context.Background()
	p := accept(t, s, body(200))
	q := accept(t, s, body(100))
	waitState(t, s, p, spool.StatePosted)
	waitState(t, s, q, spool.StateQuarantined)
	if n, err := s.PurgePosted(ctx, time.Hour); err != nil || n != 0 {
		t.Fatalf("PurgePosted(1h) = %d, %v; want 0 (message is fresh)", n, err)
	}
	n, err := s.PurgePosted(ctx, 0)
	if err != nil || n != 1 {
		t.Fatalf("PurgePosted(0) = %d, %v; want 1", n, err)
	}
	if _, err := s.OpenBody(ctx, p); !fault.Is(err, fault.NotFound) {
		t.Errorf("OpenBody(purged) = %v, want NotFound", err)
	}
	m, evs, _ := s.Get(ctx, p)
	if !m.BodyPurged || m.State != spool.StatePosted {
		t.Errorf("after purge: %+v", m)
	}
	if _, ok := findEvent(evs, "purged"); !ok {
		t.Errorf("no purged event in %v", eventKinds(evs))
	}
	if len(readBody(t, s, q)) != 100 {
		t.Error("quarantined message's body was purged")
	}
	if n, err := s.PurgePosted(ctx, 0); err != nil || n != 0 {
		t.Errorf("second PurgePosted = %d, %v; want 0", n, err)
	}
}

func testWritable(t *testing.T, newStorage NewStorage) {
	s := open(t, fast(newStorage(t), nil))
	if err := s.Writable(context.Background()); err != nil {
		t.Fatalf("Writable: %v", err)
	}
}

func testStopWaits(t *testing.T, newStorage NewStorage) {
	entered := make(chan string, 1)
	release := make(chan struct{})
	rec := newRecorder(func(msg spool.Message, _ int) spool.Outcome {
		entered <- msg.ID
		<-release
		return posted()
	})
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	id := accept(t, s, body(100))
	select {
	case <-entered:
	case <-time.After(waitFor):
		t.Fatal("handler not called")
	}
	stopped := make(chan error, 1)
	go func() { stopped <- s.Stop(context.Background()) }()
	select {
	case err := <-stopped:
		t.Fatalf("Stop returned (%v) while a handler was running", err)
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if err := <-stopped; err != nil {
		t.Fatalf("Stop: %v", err)
	}
	m, _, err := s.Get(context.Background(), id)
	if err != nil || m.State != spool.StatePosted {
		t.Fatalf("after Stop: state %q err %v, want posted", m.State, err)
	}
}

func testRetryQueued(t *testing.T, newStorage NewStorage) {
	storage := newStorage(t)
	admin := open(t, fast(storage, nil))
	id := accept(t, admin, body(100))
	if err := admin.Retry(context.Background(), id); err != nil {
		t.Fatalf("Retry(queued): %v", err)
	}
	rec := newRecorder(nil)
	server := open(t, fast(storage, rec))
	start(t, server)
	waitState(t, server, id, spool.StatePosted)
	if got := rec.count(id); got != 1 {
		t.Errorf("handler called %d times, want 1", got)
	}
}

func testIntakeState(t *testing.T, newStorage NewStorage) {
	base := newStorage(t)
	s := open(t, fast(base, nil))
	ctx := context.Background()
	if _, ok, err := s.StateGet(ctx, "imap/ops/first_seen"); err != nil || ok {
		t.Fatalf("StateGet of a missing key: ok=%v err=%v", ok, err)
	}
	for _, v := range []string{"2026-11-29T10:00:00Z", "2026-11-30T10:00:00Z"} {
		if err := s.StateSet(ctx, "imap/ops/first_seen", v); err != nil {
			t.Fatal(err)
		}
	}
	// Another process on the same storage sees the last value.
	s2 := open(t, fast(base, nil))
	v, ok, err := s2.StateGet(ctx, "imap/ops/first_seen")
	if err != nil || !ok || v != "2026-11-30T10:00:00Z" {
		t.Fatalf("StateGet from a second instance: %q ok=%v err=%v", v, ok, err)
	}
}

func testClaims(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(func(msg spool.Message, _ int) spool.Outcome {
		if msg.Size == 100 {
			return spool.Outcome{Kind: spool.OutcomeQuarantine, Reason: "held for the test"}
		}
		return posted()
	})
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	ctx := context.Background()
	a := accept(t, s, body(100))
	b := accept(t, s, body(200))
	waitState(t, s, a, spool.StateQuarantined)
	waitState(t, s, b, spool.StatePosted)
	claims := func(dest, id string) spool.Claim {
		t.Helper()
		c, err := s.ClaimDelivery(ctx, "mail-1", dest, id, spool.Intent{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	claim := func(dest, id string) string { t.Helper(); return claims(dest, id).Holder }
	if got := claim("dm:alice", a); got != a {
		t.Fatalf("first claim: holder %s, want %s", got, a)
	}
	if got := claim("dm:alice", a); got != a {
		t.Fatalf("repeated claim by the holder: holder %s, want %s", got, a)
	}
	if got := claim("dm:alice", b); got != a {
		t.Fatalf("second message claiming the same mail and destination: holder %s, want the first, %s", got, a)
	}
	if got := claim("dm:bob", b); got != b {
		t.Fatalf("another destination: holder %s, want %s", got, b)
	}
	// The holder's claim reads its ledger entries for that destination
	// (only those); another message's claim reads none.
	if c := claims("dm:erin", a); len(c.Ledger) != 0 {
		t.Fatalf("claim before any ledger entry: %+v", c.Ledger)
	}
	for _, w := range []struct{ dest, part, post string }{{"dm:erin", "body/0", "p1"}, {"dm:erin", "files/1", ""}, {"dm:zoe", "body/0", "p3"}} {
		if err := s.LedgerIntent(ctx, a, w.dest, w.part, "ch"); err != nil {
			t.Fatal(err)
		}
		if w.post != "" {
			if err := s.LedgerDone(ctx, a, w.dest, w.part, w.post); err != nil {
				t.Fatal(err)
			}
		}
	}
	if c := claims("dm:erin", a); len(c.Ledger) != 2 {
		t.Fatalf("holder's claim read %+v, want its 2 entries for dm:erin", c.Ledger)
	} else {
		got := map[string]spool.LedgerEntry{}
		for _, e := range c.Ledger {
			got[e.Part] = e
		}
		if e := got["body/0"]; e.PostID != "p1" || e.MessageID != a || e.Dest != "dm:erin" || e.ChannelID != "ch" || e.IntentAt.IsZero() || e.DoneAt.IsZero() {
			t.Errorf("body/0 read with the claim: %+v", e)
		}
		if e := got["files/1"]; e.PostID != "" || e.IntentAt.IsZero() || !e.DoneAt.IsZero() {
			t.Errorf("files/1 (intent only) read with the claim: %+v", e)
		}
	}
	if err := s.LedgerIntent(ctx, b, "dm:erin", "body/0", "ch"); err != nil {
		t.Fatal(err)
	}
	if c := claims("dm:erin", b); c.Holder != a || len(c.Ledger) != 0 {
		t.Fatalf("a claim another message holds read %+v", c.Ledger)
	}
	// A claim with a first intent records it for its holder only, and
	// reads the ledger as it was before.
	c, err := s.ClaimDelivery(ctx, "mail-1", "dm:fred", a, spool.Intent{Part: "body/0", ChannelID: "ch-fred"})
	if err != nil || c.Holder != a || len(c.Ledger) != 0 {
		t.Fatalf("first claim with an intent: %+v, %v; want held by %s, an empty ledger read", c, err, a)
	}
	if e, ok, err := s.LedgerGet(ctx, a, "dm:fred", "body/0"); err != nil || !ok || e.IntentAt.IsZero() || e.ChannelID != "ch-fred" || e.PostID != "" {
		t.Fatalf("intent recorded with the claim: %+v %v %v", e, ok, err)
	}
	first, _, _ := s.LedgerGet(ctx, a, "dm:fred", "body/0")
	c, err = s.ClaimDelivery(ctx, "mail-1", "dm:fred", a, spool.Intent{Part: "body/0", ChannelID: "ch-fred2"})
	if err != nil || len(c.Ledger) != 1 || c.Ledger[0].IntentAt.IsZero() || c.Ledger[0].PostID != "" || c.Ledger[0].ChannelID != "ch-fred" {
		t.Fatalf("second claim with an intent: %+v, %v; want the earlier intent read", c, err)
	}
	if e, _, err := s.LedgerGet(ctx, a, "dm:fred", "body/0"); err != nil || !e.IntentAt.Equal(first.IntentAt) || e.ChannelID != "ch-fred2" {
		t.Fatalf("after a second intent: %+v, %v; want the first time kept, the new channel", e, err)
	}
	if c, err := s.ClaimDelivery(ctx, "mail-1", "dm:fred", b, spool.Intent{Part: "body/0", ChannelID: "ch-b"}); err != nil || c.Holder != a {
		t.Fatalf("another message's claim with an intent: %+v, %v", c, err)
	}
	if _, ok, err := s.LedgerGet(ctx, b, "dm:fred", "body/0"); err != nil || ok {
		t.Fatalf("an intent recorded for a message that does not hold the claim: %v %v", ok, err)
	}
	// A quarantined holder without a post there has not delivered; a posted one has.
	if c := claims("dm:alice", b); c.Delivered || c.HolderState != spool.StateQuarantined {
		t.Fatalf("claim held by the quarantined %s: %+v, want not delivered", a, c)
	}
	if c := claims("dm:bob", a); c.Holder != b || !c.Delivered || c.HolderState != spool.StatePosted {
		t.Fatalf("claim held by the posted %s: %+v, want delivered", b, c)
	}
	// Deleting the holder (an operator's quarantine delete) frees its claims.
	if _, err := s.ClaimDelivery(ctx, "mail-1", "dm:carol", a, spool.Intent{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, a); err != nil {
		t.Fatal(err)
	}
	if got := claim("dm:alice", b); got != b {
		t.Fatalf("after the holder was deleted: holder %s, want %s", got, b)
	}
}

// testLargeBodies sends bodies past the inline size through the blob store:
// kept whole, refused over the limit with nothing left, removed by Delete
// and by the retention purge.
func testLargeBodies(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(func(msg spool.Message, _ int) spool.Outcome {
		if msg.Size == 3<<20 {
			return spool.Outcome{Kind: spool.OutcomeQuarantine, Reason: "held"}
		}
		return posted()
	})
	o := fast(newStorage(t), rec)
	o.BodyLimit = 8 << 20
	s := open(t, o)
	start(t, s)
	ctx := context.Background()
	sizes := []int{64<<10 + 1, 1 << 20, 3 << 20}
	ids := make([]string, len(sizes))
	for i, n := range sizes {
		b := body(n)
		ids[i] = accept(t, s, b)
		if got := readBody(t, s, ids[i]); !bytes.Equal(got, b) {
			t.Fatalf("body of %d bytes read back as %d differing bytes", n, len(got))
		}
	}
	// Over the limit: refused, nothing kept (the list still has three).
	_, err := s.Accept(ctx, testEnv, bytes.NewReader(body(9<<20)))
	wantKind(t, err, fault.TooLarge)
	// A body that fails mid-way past the inline size stores nothing.
	_, err = s.Accept(ctx, testEnv, io.MultiReader(bytes.NewReader(body(200<<10)), errReader{}))
	if err == nil {
		t.Fatal("Accept with a failing reader succeeded")
	}
	if msgs, _ := s.List(ctx, spool.ListFilter{}); len(msgs) != 3 {
		t.Fatalf("%d messages after two refused Accepts, want 3", len(msgs))
	}
	waitState(t, s, ids[0], spool.StatePosted)
	waitState(t, s, ids[1], spool.StatePosted)
	waitState(t, s, ids[2], spool.StateQuarantined)
	if err := s.Delete(ctx, ids[2]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenBody(ctx, ids[2]); !fault.Is(err, fault.NotFound) {
		t.Errorf("OpenBody after Delete: %v, want NotFound", err)
	}
	n, err := s.PurgePosted(ctx, 0)
	if err != nil || n != 2 {
		t.Fatalf("PurgePosted = %d, %v; want 2", n, err)
	}
	for _, id := range ids[:2] {
		if _, err := s.OpenBody(ctx, id); !fault.Is(err, fault.NotFound) {
			t.Errorf("OpenBody after purge: %v, want NotFound", err)
		}
	}
}

// testHandlerBody: Body gives a Handler the raw mail of the message it was
// handed (read with the claim), inline and in the blob store alike, and
// reads any other Message's from the database.
func testHandlerBody(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(nil)
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	ctx := context.Background()
	small, large := body(1<<10), body(200<<10)
	for _, b := range [][]byte{small, large} {
		id := accept(t, s, b)
		waitState(t, s, id, spool.StatePosted)
		seen := rec.messages(id)[0]
		stored, _, err := s.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for name, m := range map[string]spool.Message{"handed to the Handler": seen, "from Get": stored} {
			rc, err := s.Body(ctx, m)
			if err != nil {
				t.Fatalf("Body(%d bytes, %s): %v", len(b), name, err)
			}
			got, err := io.ReadAll(rc)
			_ = rc.Close()
			if err != nil || !bytes.Equal(got, b) {
				t.Errorf("Body(%d bytes, %s) = %d bytes, %v; want the accepted bytes", len(b), name, len(got), err)
			}
		}
	}
}

// testOutcomePosts: the posts an outcome carries are recorded in the ledger
// with it, on a retry as on a final outcome, and a part's first post is kept.
func testOutcomePosts(t *testing.T, newStorage NewStorage) {
	ctx := context.Background()
	var sp *spool.Spool
	rec := newRecorder(func(msg spool.Message, call int) spool.Outcome {
		if call == 1 {
			if err := sp.LedgerIntent(ctx, msg.ID, "dm:a", "body/0", "ch-a"); err != nil {
				return spool.Outcome{Kind: spool.OutcomeQuarantine, Reason: err.Error()}
			}
			return spool.Outcome{Kind: spool.OutcomeRetry, Reason: "b is down", Posts: []spool.Post{{Dest: "dm:a", Part: "body/0", PostID: "p1"}}}
		}
		return spool.Outcome{Kind: spool.OutcomePosted, Posts: []spool.Post{
			{Dest: "dm:a", Part: "body/0", PostID: "p2"}, {Dest: "dm:b", Part: "body/0", PostID: "p3"}, {Dest: "dm:b", Part: "body/0", PostID: "p4"}}}
	})
	sp = open(t, fast(newStorage(t), rec))
	start(t, sp)
	id := accept(t, sp, body(100))
	waitState(t, sp, id, spool.StatePosted)
	es, err := sp.LedgerList(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]spool.LedgerEntry{}
	for _, e := range es {
		got[e.Dest+" "+e.Part] = e
	}
	a, b := got["dm:a body/0"], got["dm:b body/0"]
	if len(es) != 2 || a.PostID != "p1" || a.ChannelID != "ch-a" || a.IntentAt.IsZero() || a.DoneAt.IsZero() || b.PostID != "p3" || b.DoneAt.IsZero() {
		t.Errorf("ledger %+v; want dm:a's first post p1 (with its intent) and dm:b's p3", es)
	}
}

// testHandlerEvents: the history lines a Handler returns are written with its
// outcome, in order, before the outcome's own line, on every kind of outcome.
func testHandlerEvents(t *testing.T, newStorage NewStorage) {
	rec := newRecorder(func(msg spool.Message, call int) spool.Outcome {
		evs := []spool.Event{{At: time.Now(), Kind: "decision", Detail: fmt.Sprintf("call %d", call)},
			{Kind: "recipient", Detail: "alice"}}
		if call == 1 {
			return spool.Outcome{Kind: spool.OutcomeRetry, Reason: "busy", Events: evs,
				Info: &spool.Info{App: "jira", Subject: "first subject"}}
		}
		return spool.Outcome{Kind: spool.OutcomePosted, Events: evs, Info: &spool.Info{Subject: "second subject", MessageID: "<x@y>"}}
	})
	s := open(t, fast(newStorage(t), rec))
	start(t, s)
	id := accept(t, s, body(100))
	waitState(t, s, id, spool.StatePosted)
	_, evs, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"received", "attempt", "decision", "recipient", "retry", "attempt", "decision", "recipient", "posted"}
	if got := eventKinds(evs); !slices.Equal(got, want) {
		t.Fatalf("history %v, want %v", got, want)
	}
	if evs[2].Detail != "call 1" || evs[6].Detail != "call 2" {
		t.Errorf("handler events out of order: %+v", evs)
	}
	// Each attempt's line says which attempt it was, at the time it started.
	if evs[1].Detail != "attempt 1" || evs[5].Detail != "attempt 2" {
		t.Errorf("attempt lines %q, %q; want \"attempt 1\", \"attempt 2\"", evs[1].Detail, evs[5].Detail)
	}
	if evs[1].At.Before(evs[0].At) || evs[5].At.Before(evs[4].At) || evs[5].At.After(evs[8].At) {
		t.Errorf("attempt lines out of time order: %+v", evs)
	}
	// The outcome's Info is recorded with it; empty fields keep what was there.
	m, _, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	if m.App != "jira" || m.Subject != "second subject" || m.MessageID != "<x@y>" {
		t.Errorf("info after two outcomes: app %q subject %q message-id %q", m.App, m.Subject, m.MessageID)
	}
}
