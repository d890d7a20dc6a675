package spool

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/mmgate/mmgate/internal/fault"
)

func testOpts(t *testing.T, h Handler) Options {
	dir := t.TempDir()
	return Options{
		Path:         filepath.Join(dir, "spool.db"),
		BlobDir:      filepath.Join(dir, "blobs"),
		Handler:      h,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		PollInterval: 10 * time.Millisecond,
		RetryMin:     20 * time.Millisecond,
		RetryMax:     100 * time.Millisecond,
	}
}

func mustOpen(t *testing.T, o Options) *Spool {
	t.Helper()
	s, err := Open(context.Background(), o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func stateOf(t *testing.T, s *Spool, id string) State {
	t.Helper()
	m, _, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	return m.State
}

// files lists the regular files under dir.
func files(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestIDs(t *testing.T) {
	now := time.Now()
	seen := map[string]bool{}
	prev := ""
	for i := 0; i < 2000; i++ {
		id := newID(now.Add(time.Duration(i) * time.Millisecond))
		if len(id) != idLen || !validID(id) {
			t.Fatalf("id %q: bad shape", id)
		}
		if seen[id] {
			t.Fatalf("duplicate id %q", id)
		}
		seen[id] = true
		if id <= prev {
			t.Fatalf("ids not time-sortable: %q after %q", id, prev)
		}
		prev = id
	}
	for _, bad := range []string{"", "short", "../../../../etc/passwd.xx", strings.Repeat("A", idLen), strings.Repeat("u", idLen), prev + "0"} {
		if validID(bad) {
			t.Errorf("validID(%q) = true", bad)
		}
	}
}

func FuzzValidID(f *testing.F) {
	f.Add(newID(time.Now()))
	f.Add("../x")
	f.Fuzz(func(t *testing.T, s string) {
		if validID(s) && (strings.ContainsAny(s, "./\\\x00") || len(s) != idLen) {
			t.Fatalf("validID accepted %q", s)
		}
	})
}

// FuzzBlobPut checks that whatever bytes come in are stored unchanged, and
// that the limit is enforced exactly.
func FuzzBlobPut(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\nhello"), int64(0))
	f.Add(bytes.Repeat([]byte{0}, 100), int64(99))
	f.Add([]byte{}, int64(1))
	dir := f.TempDir()
	d, err := openDirStore(dir)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, limit int64) {
		if limit < 0 {
			limit = -limit
		}
		id := newID(time.Now())
		n, err := d.Put(context.Background(), id, bytes.NewReader(data), limit)
		if limit > 0 && int64(len(data)) > limit {
			if !errors.Is(err, errBlobTooLarge) {
				t.Fatalf("len %d limit %d: err %v, want too large", len(data), limit, err)
			}
			if _, err := d.Open(id); err == nil {
				t.Fatal("too-large blob was kept")
			}
			return
		}
		if err != nil || n != int64(len(data)) {
			t.Fatalf("Put: n=%d err=%v", n, err)
		}
		if err := d.Sync([]string{id}); err != nil {
			t.Fatal(err)
		}
		rc, err := d.Open(id)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, data) {
			t.Fatal("blob content differs")
		}
		if err := d.Delete(id); err != nil {
			t.Fatal(err)
		}
	})
}

func TestBackoffBounds(t *testing.T) {
	s := &Spool{opts: Options{RetryMin: time.Second, RetryMax: 30 * time.Second}.withDefaults()}
	for attempt := 1; attempt <= 20; attempt++ {
		for range 50 {
			d := s.backoff(attempt)
			if d < time.Second || d > 30*time.Second {
				t.Fatalf("backoff(%d) = %v outside [1s, 30s]", attempt, d)
			}
		}
	}
	// It grows: the 6th retry waits clearly longer than the first.
	if s.backoff(1) >= s.backoff(6) {
		t.Errorf("backoff does not grow: %v vs %v", s.backoff(1), s.backoff(6))
	}
	if d := s.backoff(20); d < 24*time.Second {
		t.Errorf("backoff(20) = %v, want near the 30s cap", d)
	}
}

// TestAcceptBrokenBlobDir: a blob directory that cannot be written makes
// Accept fail temporarily and leaves no record. (Tests run as root, where
// chmod does not stop writes, so the directory is replaced by a file.)
func TestAcceptBrokenBlobDir(t *testing.T) {
	o := testOpts(t, nil)
	s := mustOpen(t, o)
	if err := os.RemoveAll(o.BlobDir); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(o.BlobDir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Bodies above inlineMax go to the blob store.
	big := strings.Repeat("x", inlineMax+1)
	_, err := s.Accept(context.Background(), Envelope{Intake: "smtp"}, strings.NewReader(big))
	if !fault.Is(err, fault.Temporary) || fault.CodeOf(err) != "spool_unavailable" {
		t.Fatalf("Accept = %v (kind %s, code %s), want temporary spool_unavailable", err, fault.KindOf(err), fault.CodeOf(err))
	}
	if c, _ := s.Counts(context.Background()); c[StateQueued] != 0 {
		t.Errorf("a record was stored: %v", c)
	}
	if err := s.Writable(context.Background()); !fault.Is(err, fault.Temporary) {
		t.Errorf("Writable = %v, want a temporary error", err)
	}
}

// TestAcceptDatabaseFailure: when the commit fails, Accept fails temporarily
// and the blob is removed.
func TestAcceptDatabaseFailure(t *testing.T) {
	o := testOpts(t, nil)
	s := mustOpen(t, o)
	if err := s.db.Close(); err != nil {
		t.Fatal(err)
	}
	for _, size := range []int{100, inlineMax + 1} { // inline and blob file
		_, err := s.Accept(context.Background(), Envelope{Intake: "smtp"}, strings.NewReader(strings.Repeat("y", size)))
		if !fault.Is(err, fault.Temporary) || fault.CodeOf(err) != "spool_unavailable" {
			t.Fatalf("Accept(%d bytes) = %v, want temporary spool_unavailable", size, err)
		}
	}
	if left := files(t, o.BlobDir); len(left) != 0 {
		t.Errorf("blob files left behind: %v", left)
	}
	if err := s.Writable(context.Background()); !fault.Is(err, fault.Temporary) {
		t.Errorf("Writable = %v, want a temporary error", err)
	}
}

// TestBodyTiers: bodies up to inlineMax live in the database, larger ones in
// blob files; both read back whole, purge and delete alike.
func TestBodyTiers(t *testing.T) {
	o := testOpts(t, nil)
	s := mustOpen(t, o)
	ctx := context.Background()
	bodies := map[string][]byte{}
	for _, size := range []int{0, 1, inlineMax - 1, inlineMax, inlineMax + 1, 3*inlineMax + 17} {
		b := bytes.Repeat([]byte{byte('a' + size%26)}, size)
		id, err := s.Accept(ctx, Envelope{Intake: "pipe"}, bytes.NewReader(b))
		if err != nil {
			t.Fatalf("Accept(%d bytes): %v", size, err)
		}
		bodies[id] = b
		_, statErr := os.Stat(s.blobs.(*dirStore).path(id))
		if inFile := statErr == nil; inFile != (size >= inlineMax) {
			t.Errorf("%d bytes: blob file present = %v", size, inFile)
		}
	}
	for id, want := range bodies {
		rc, err := s.OpenBody(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, want) {
			t.Errorf("%s: read %d bytes, want %d", id, len(got), len(want))
		}
		m, _, _ := s.Get(ctx, id)
		if m.Size != int64(len(want)) {
			t.Errorf("%s: Size %d, want %d", id, m.Size, len(want))
		}
		if _, err := s.db.Exec(`UPDATE messages SET state = 'posted' WHERE id = ?`, id); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.PurgePosted(ctx, 0)
	if err != nil || n != len(bodies) {
		t.Fatalf("PurgePosted = %d, %v; want %d", n, err, len(bodies))
	}
	var inline int
	_ = s.db.QueryRow(`SELECT count(*) FROM bodies`).Scan(&inline)
	if left := files(t, o.BlobDir); len(left) != 0 || inline != 0 {
		t.Errorf("after purge: files %v, inline bodies %d", left, inline)
	}
	for id := range bodies {
		if _, err := s.OpenBody(ctx, id); !fault.Is(err, fault.NotFound) {
			t.Errorf("OpenBody after purge = %v", err)
		}
	}
}

func TestAcceptBodyErrors(t *testing.T) {
	o := testOpts(t, nil)
	o.BodyLimit = 10
	s := mustOpen(t, o)
	_, err := s.Accept(context.Background(), Envelope{}, strings.NewReader(strings.Repeat("x", 11)))
	if !fault.Is(err, fault.TooLarge) {
		t.Fatalf("over limit: %v, want TooLarge", err)
	}
	// A fault from the body reader (e.g. the intake's own limit) keeps its kind.
	limitErr := fault.New(fault.TooLarge, "smtp_too_large", "too big")
	_, err = s.Accept(context.Background(), Envelope{}, io.MultiReader(strings.NewReader("abc"), &failReader{limitErr}))
	if !errors.Is(err, limitErr) {
		t.Fatalf("reader fault: %v, want it passed through", err)
	}
	_, err = s.Accept(context.Background(), Envelope{}, &failReader{errors.New("reset by peer")})
	if !fault.Is(err, fault.Temporary) || fault.CodeOf(err) != "body_read_failed" {
		t.Fatalf("reader error: %v, want temporary body_read_failed", err)
	}
	// A stream that breaks with io.ErrUnexpectedEOF (an HTTP body whose
	// client hung up) is not a short message: nothing is stored.
	_, err = s.Accept(context.Background(), Envelope{}, io.MultiReader(strings.NewReader("From: x\r\n"), &failReader{io.ErrUnexpectedEOF}))
	if fault.CodeOf(err) != "body_read_failed" {
		t.Fatalf("a broken stream: %v, want body_read_failed", err)
	}
	o2 := testOpts(t, nil)
	o2.BodyLimit = inlineMax + 10
	s2 := mustOpen(t, o2)
	// A read error after the inline part, while streaming to a blob file.
	_, err = s2.Accept(context.Background(), Envelope{}, io.MultiReader(strings.NewReader(strings.Repeat("z", inlineMax+5)), &failReader{errors.New("reset")}))
	if fault.CodeOf(err) != "body_read_failed" {
		t.Fatalf("reader error after %d bytes: %v, want body_read_failed", inlineMax+5, err)
	}
	if left := files(t, o2.BlobDir); len(left) != 0 {
		t.Errorf("blob files left behind: %v", left)
	}
	// Over the limit in the blob-file tier.
	if _, err := s2.Accept(context.Background(), Envelope{}, strings.NewReader(strings.Repeat("q", inlineMax+11))); !fault.Is(err, fault.TooLarge) {
		t.Fatalf("over a large limit: %v, want TooLarge", err)
	}
	if _, err := s2.Accept(context.Background(), Envelope{}, strings.NewReader(strings.Repeat("q", inlineMax+10))); err != nil {
		t.Fatalf("at a large limit: %v", err)
	}
	if c, _ := s.Counts(context.Background()); c[StateQueued] != 0 {
		t.Errorf("failed Accepts left records: %v", c)
	}
	if left := files(t, o.BlobDir); len(left) != 0 {
		t.Errorf("blob files left behind: %v", left)
	}
}

type failReader struct{ err error }

func (r *failReader) Read([]byte) (int, error) { return 0, r.err }

// TestRepairJoblessMessage: a queued message whose River job vanished gets a
// new one at Start and is delivered.
func TestRepairJoblessMessage(t *testing.T) {
	var calls atomic.Int32
	o := testOpts(t, nil)
	intake := mustOpen(t, o)
	id, err := intake.Accept(context.Background(), Envelope{Intake: "pipe"}, strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := intake.db.Exec(`DELETE FROM river_job`); err != nil {
		t.Fatal(err)
	}
	o.Handler = HandlerFunc(func(context.Context, Message) Outcome {
		calls.Add(1)
		return Outcome{Kind: OutcomePosted}
	})
	s := mustOpen(t, o) // the worker process repairs at Open
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "repaired message to be posted", func() bool { return stateOf(t, s, id) == StatePosted })
	if calls.Load() != 1 {
		t.Errorf("handler called %d times, want 1", calls.Load())
	}
	_, evs, _ := s.Get(context.Background(), id)
	if !slices.ContainsFunc(evs, func(e Event) bool { return e.Kind == "repaired" }) {
		t.Errorf("no repaired event: %+v", evs)
	}
}

// TestSecondWorkerProcessRefused: only one process may run workers on a spool.
func TestSecondWorkerProcessRefused(t *testing.T) {
	h := HandlerFunc(func(context.Context, Message) Outcome { return Outcome{Kind: OutcomePosted} })
	o := testOpts(t, h)
	a := mustOpen(t, o)
	if err := a.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if b, err := Open(context.Background(), o); !fault.Is(err, fault.Temporary) {
		if b != nil {
			_ = b.Close()
		}
		t.Fatalf("second worker Open = %v, want refused", err)
	}
	// A process without a Handler (CLI) may open it meanwhile.
	mustOpen(t, Options{Path: o.Path, BlobDir: o.BlobDir, Logger: o.Logger})
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	b := mustOpen(t, o)
	if err := b.Start(context.Background()); err != nil {
		t.Fatalf("Start after the first closed: %v", err)
	}
}

// TestStaleJobSkipsHandler: a job that is not the message's current job
// completes without calling the handler.
func TestStaleJobSkipsHandler(t *testing.T) {
	var mu sync.Mutex
	calls := map[string]int{}
	o := testOpts(t, HandlerFunc(func(_ context.Context, m Message) Outcome {
		mu.Lock()
		calls[m.ID]++
		mu.Unlock()
		return Outcome{Kind: OutcomePosted}
	}))
	s := mustOpen(t, o)
	id, err := s.Accept(context.Background(), Envelope{}, strings.NewReader("x"))
	if err != nil {
		t.Fatal(err)
	}
	// A second job for the same message, as a duplicate insert would make.
	err = s.withTx(context.Background(), func(tx txn) error {
		_, err := s.insertJob(context.Background(), tx, id, time.Time{})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "posted", func() bool { return stateOf(t, s, id) == StatePosted })
	waitFor(t, "both jobs finished", func() bool {
		var n int
		_ = s.db.QueryRow(`SELECT count(*) FROM river_job WHERE state = 'completed'`).Scan(&n)
		return n == 2
	})
	mu.Lock()
	defer mu.Unlock()
	if calls[id] != 1 {
		t.Errorf("handler called %d times, want 1", calls[id])
	}
}

// An outcome whose posts name a message that is gone (an overlapping
// attempt's, after the message was quarantined and deleted) writes nothing
// and is not an error to retry.
func TestOutcomeOfAGoneMessage(t *testing.T) {
	s := mustOpen(t, testOpts(t, HandlerFunc(func(context.Context, Message) Outcome { return Outcome{Kind: OutcomePosted} })))
	gone := newID(time.Now())
	job := &river.Job[deliverArgs]{JobRow: &rivertype.JobRow{ID: 7}, Args: deliverArgs{MessageID: gone}}
	out := Outcome{Kind: OutcomePosted, Posts: []Post{{Dest: "dm:alice", Part: "body/0", PostID: "p1"}}}
	if err := s.applyOutcome(context.Background(), job, msgRow{Message: Message{ID: gone, Attempt: 1}}, out); err != nil {
		t.Fatalf("applyOutcome for a gone message: %v, want nil", err)
	}
	if es, err := s.LedgerList(context.Background(), gone); err != nil || len(es) != 0 {
		t.Errorf("ledger of a gone message: %v, %v", es, err)
	}
}

// TestCrashRecovery kills a process (SIGKILL) while its handler is running,
// then reopens the spool: the message is delivered, nothing is lost.
func TestCrashRecovery(t *testing.T) {
	if os.Getenv("SPOOL_CRASH_CHILD") != "" {
		t.Skip("helper process")
	}
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v")
	cmd.Env = append(os.Environ(), "SPOOL_CRASH_CHILD="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The child prints "HANDLING <id>" once its handler is blocked.
	idCh := make(chan string, 1)
	go func() {
		buf := make([]byte, 0, 4096)
		tmp := make([]byte, 512)
		for {
			n, err := stdout.Read(tmp)
			buf = append(buf, tmp[:n]...)
			if i := bytes.Index(buf, []byte("HANDLING ")); i >= 0 && len(buf) >= i+9+idLen {
				idCh <- string(buf[i+9 : i+9+idLen])
				_, _ = io.Copy(io.Discard, stdout)
				return
			}
			if err != nil {
				close(idCh)
				return
			}
		}
	}()
	var id string
	select {
	case id = <-idCh:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("child never started handling")
	}
	if id == "" {
		_ = cmd.Wait()
		t.Fatal("child exited without handling")
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	var calls atomic.Int32
	o := crashOpts(dir, HandlerFunc(func(_ context.Context, m Message) Outcome {
		if m.ID == id {
			calls.Add(1)
		}
		return Outcome{Kind: OutcomePosted}
	}))
	s := mustOpen(t, o)
	m, _, err := s.Get(context.Background(), id)
	if err != nil {
		t.Fatalf("message lost after crash: %v", err)
	}
	if m.State != StateQueued || m.Attempt != 1 {
		t.Errorf("after crash: state %s attempt %d, want queued 1", m.State, m.Attempt)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "posted after restart", func() bool { return stateOf(t, s, id) == StatePosted })
	if calls.Load() != 1 {
		t.Errorf("handler called %d times after restart, want 1", calls.Load())
	}
	m, _, _ = s.Get(context.Background(), id)
	if m.Attempt != 2 {
		t.Errorf("Attempt %d, want 2", m.Attempt)
	}
	rc, err := s.OpenBody(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	got, _ := io.ReadAll(rc)
	rc.Close()
	if string(got) != crashBody {
		t.Errorf("body after crash = %q", got)
	}
}

const crashBody = "Subject: crash\r\n\r\nsurvive me\r\n"

func crashOpts(dir string, h Handler) Options {
	return Options{
		Path:         filepath.Join(dir, "spool.db"),
		BlobDir:      filepath.Join(dir, "blobs"),
		Handler:      h,
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
		PollInterval: 10 * time.Millisecond,
	}
}

// TestCrashChild is the process TestCrashRecovery kills.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv("SPOOL_CRASH_CHILD")
	if dir == "" {
		t.Skip("only run by TestCrashRecovery")
	}
	s, err := Open(context.Background(), crashOpts(dir, HandlerFunc(func(_ context.Context, m Message) Outcome {
		_, _ = os.Stdout.WriteString("HANDLING " + m.ID + "\n")
		select {} // block until killed
	})))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Accept(context.Background(), Envelope{Intake: "smtp"}, strings.NewReader(crashBody)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Minute)
	t.Fatal("not killed")
}
