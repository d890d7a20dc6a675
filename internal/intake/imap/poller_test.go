package imapintake

import (
	"bytes"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/spool"
)

// allFlagged reports whether every message in ms carries \Seen and
// $MmgateStored.
func allFlagged(ms []msgInfo) bool {
	for _, m := range ms {
		if !m.has(imap.FlagSeen) || !m.has(StoredKeyword) {
			return false
		}
	}
	return true
}

// assertOnce fails unless every subject was stored exactly once and nothing
// else was stored.
func assertOnce(t *testing.T, store *fakeStore, subjects ...string) {
	t.Helper()
	got := store.countBySubject()
	want := make(map[string]int, len(subjects))
	for _, s := range subjects {
		want[s] = 1
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("stored (subject: times) = %v, want each of %d subjects once", got, len(subjects))
	}
}

func numbered(prefix string, n int) []string {
	s := make([]string, n)
	for i := range s {
		s[i] = fmt.Sprintf("%s-%03d", prefix, i+1)
	}
	return s
}

// 1. New mail delivered while the poller IDLEs is stored (the refresh is 10
// minutes away, so only the server's EXISTS can have woken it), then flagged;
// later cycles do not store it again.
func TestIdleStoresNewMailThenFlags(t *testing.T) {
	d := startDovecot(t)
	store, state := newFakeStore(), newFakeState()
	mb := baseMailbox(d)
	mb.Recipients = []string{"alice@corp.example"}
	r := startPoller(t, store, state, mb)
	r.waitIdle()

	orig := testMsg("idle-1")
	d.deliver(orig)
	waitFor(t, "idle-1 stored", func() bool { return len(store.stored()) == 1 })
	got := store.stored()[0]
	if !bytes.Contains(got.body, orig) {
		t.Fatalf("stored body does not contain the delivered message:\n%q\nwant it to contain\n%q", got.body, orig)
	}
	wantEnv := spool.Envelope{
		Intake: "imap", Mailbox: "ops", NoEnvelope: true, App: "jira",
		Recipients: []string{"alice@corp.example"}, RemoteAddr: d.addr,
	}
	if !reflect.DeepEqual(got.env, wantEnv) {
		t.Fatalf("envelope = %+v, want %+v", got.env, wantEnv)
	}
	waitFor(t, "idle-1 flagged \\Seen and $MmgateStored", func() bool {
		ms := d.mustInspect("INBOX")
		return len(ms) == 1 && allFlagged(ms)
	})

	// More mail, one at a time: each wakes the poller for a new cycle, which
	// must not take idle-1 again.
	for _, s := range []string{"idle-2", "idle-3"} {
		d.deliver(testMsg(s))
		waitFor(t, s+" stored", func() bool { return store.countBySubject()[s] == 1 })
		r.waitIdle()
	}
	waitFor(t, "all flagged", func() bool {
		ms := d.mustInspect("INBOX")
		return len(ms) == 3 && allFlagged(ms)
	})
	assertOnce(t, store, "idle-1", "idle-2", "idle-3")
	if n := store.callsFor("idle-1"); n != 1 {
		t.Fatalf("idle-1 was fetched into the store %d times", n)
	}
	// Three deliveries wake it a few times; more would mean it spins.
	if n := r.cycles.Load(); n > 12 {
		t.Fatalf("%d cycles for three deliveries with a 10-minute refresh", n)
	}
	r.assertRunning()
}

// The IDLE refresh restarts IDLE and searches again; nothing is stored twice.
func TestIdleRefreshDoesNotStoreTwice(t *testing.T) {
	d := startDovecot(t)
	d.deliver(testMsg("before"))
	store := newFakeStore()
	mb := baseMailbox(d)
	mb.Since = "all"
	mb.PollInterval = 100 * time.Millisecond
	r := startPoller(t, store, newFakeState(), mb)
	waitFor(t, "before stored", func() bool { return len(store.stored()) == 1 })
	r.waitIdle()
	d.deliver(testMsg("after"))
	waitFor(t, "after stored", func() bool { return len(store.stored()) == 2 })
	r.waitCycles(10)
	r.waitIdle()
	assertOnce(t, store, "before", "after")
	if e := store.stored()[0].env; e.Recipients == nil || len(e.Recipients) != 0 {
		t.Fatalf("Recipients = %#v, want an empty, non-nil slice", e.Recipients)
	}
	r.assertRunning()
}

// 2. Move mode: stored mail ends up in MoveTo (created when missing) and
// leaves INBOX.
func TestMoveMode(t *testing.T) {
	d := startDovecot(t)
	for _, s := range []string{"move-1", "move-2"} {
		d.deliver(testMsg(s))
	}
	store := newFakeStore()
	mb := baseMailbox(d)
	mb.Since = "all"
	mb.MoveTo = "Processed"
	r := startPoller(t, store, newFakeState(), mb)
	waitFor(t, "the first two stored", func() bool { return len(store.stored()) == 2 })
	r.waitIdle()
	d.deliver(testMsg("move-3"))
	waitFor(t, "move-3 stored", func() bool { return len(store.stored()) == 3 })
	waitFor(t, "INBOX empty and Processed holding all three", func() bool {
		in, out := d.mustInspect("INBOX"), d.mustInspect("Processed")
		return len(in) == 0 && len(out) == 3
	})
	var subjects []string
	for _, m := range d.mustInspect("Processed") {
		subjects = append(subjects, m.Subject)
		if m.has(StoredKeyword) {
			t.Errorf("moved message %q carries %s; move mode does not flag", m.Subject, StoredKeyword)
		}
	}
	if got := strings.Join(subjects, ","); got != "move-1,move-2,move-3" {
		t.Fatalf("Processed holds %s", got)
	}
	r.waitIdle()
	assertOnce(t, store, "move-1", "move-2", "move-3")
	r.assertRunning()
}

// 3. A backlog present when the mailbox is first seen is not replayed by
// default; mail arriving afterwards is, also mail arriving while mmgate was
// stopped.
func TestBacklogNotReplayedByDefault(t *testing.T) {
	d := startDovecot(t)
	backlog := numbered("old", 50)
	for _, s := range backlog {
		d.deliver(testMsg(s))
	}
	store, state := newFakeStore(), newFakeState()
	r := startPoller(t, store, state, baseMailbox(d))
	r.waitCycles(1)
	if n := len(store.stored()); n != 0 {
		t.Fatalf("%d backlog messages stored on the first run with since unset", n)
	}
	if v, ok := state.get("imap/ops/first_seen"); !ok {
		t.Fatal("imap/ops/first_seen not recorded")
	} else if _, err := time.Parse(time.RFC3339, v); err != nil {
		t.Fatalf("imap/ops/first_seen = %q: %v", v, err)
	}
	if v, ok := state.get("imap/ops/first_seen_uid"); !ok || !strings.HasSuffix(v, " 51 INBOX") {
		t.Fatalf("imap/ops/first_seen_uid = %q, %v; want UIDVALIDITY 51 INBOX", v, ok)
	}

	d.deliver(testMsg("new-1"))
	waitFor(t, "new-1 stored", func() bool { return len(store.stored()) == 1 })
	r.waitIdle()
	assertOnce(t, store, "new-1")
	r.stop()

	// mmgate is stopped; mail keeps arriving; the next start takes it and
	// still not the backlog.
	d.deliver(testMsg("while-stopped"))
	first, _ := state.get("imap/ops/first_seen")
	r2 := startPoller(t, store, state, baseMailbox(d))
	waitFor(t, "while-stopped stored", func() bool { return len(store.stored()) == 2 })
	r2.waitIdle() // the cycle that stored it, which saw the backlog too, is done
	assertOnce(t, store, "new-1", "while-stopped")
	if again, _ := state.get("imap/ops/first_seen"); again != first {
		t.Fatalf("first_seen changed from %s to %s", first, again)
	}
	for _, m := range d.mustInspect("INBOX") {
		if strings.HasPrefix(m.Subject, "old-") && (m.has(StoredKeyword) || m.has(imap.FlagSeen)) {
			t.Fatalf("backlog message %s was flagged: %v", m.Subject, m.Flags)
		}
	}
}

// 3b. since "all" takes the backlog, oldest first.
func TestBacklogWithSinceAll(t *testing.T) {
	d := startDovecot(t)
	backlog := numbered("old", 50)
	for _, s := range backlog {
		d.deliver(testMsg(s))
	}
	store := newFakeStore()
	mb := baseMailbox(d)
	mb.Since = "all"
	r := startPoller(t, store, newFakeState(), mb)
	waitFor(t, "the backlog stored", func() bool { return len(store.stored()) == 50 })
	waitFor(t, "the backlog flagged", func() bool { return allFlagged(d.mustInspect("INBOX")) })
	r.waitIdle()
	assertOnce(t, store, backlog...)
	for i, m := range store.stored() {
		if m.subject() != backlog[i] {
			t.Fatalf("message %d stored is %s, want %s (oldest UID first)", i, m.subject(), backlog[i])
		}
	}
}

// 3c. since as a date: a future day takes nothing, today takes today's mail.
func TestSinceDate(t *testing.T) {
	d := startDovecot(t)
	for _, s := range []string{"d-1", "d-2"} {
		d.deliver(testMsg(s))
	}
	store := newFakeStore()
	mb := baseMailbox(d)
	mb.Since = time.Now().AddDate(0, 0, 2).Format(time.DateOnly)
	r := startPoller(t, store, newFakeState(), mb)
	r.waitCycles(1)
	if n := len(store.stored()); n != 0 {
		t.Fatalf("since %s stored %d messages", mb.Since, n)
	}
	r.stop()

	mb.Since = time.Now().Format(time.DateOnly)
	startPoller(t, store, newFakeState(), mb)
	waitFor(t, "today's mail stored", func() bool { return len(store.stored()) == 2 })
	assertOnce(t, store, "d-1", "d-2")
}

// 3d. When the folder's UIDVALIDITY is not the recorded one, first_seen (a
// time) decides.
func TestFirstSeenTimeWhenUIDValidityChanged(t *testing.T) {
	d := startDovecot(t)
	d.deliver(testMsg("t-1"))
	store := newFakeStore()

	state := newFakeState()
	state.m["imap/ops/first_seen_uid"] = "1 1 INBOX" // another UIDVALIDITY
	state.m["imap/ops/first_seen"] = time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	r := startPoller(t, store, state, baseMailbox(d))
	r.waitCycles(1)
	if n := len(store.stored()); n != 0 {
		t.Fatalf("mail older than first_seen stored: %d", n)
	}
	r.stop()

	state = newFakeState()
	state.m["imap/ops/first_seen_uid"] = "1 1 INBOX"
	state.m["imap/ops/first_seen"] = time.Now().Add(-time.Hour).UTC().Format(time.RFC3339)
	startPoller(t, store, state, baseMailbox(d))
	waitFor(t, "t-1 stored", func() bool { return len(store.stored()) == 1 })
}

// 4. While the store fails, nothing is flagged and the message is retried;
// once the store works it is stored and flagged.
func TestStoreFailureRetriedNotFlagged(t *testing.T) {
	d := startDovecot(t)
	d.deliver(testMsg("fail-1"))
	store := newFakeStore()
	store.setFail(func([]byte) error {
		return fault.New(fault.Temporary, "spool_unavailable", "could not store the message")
	})
	mb := baseMailbox(d)
	mb.Since = "all"
	r := startPoller(t, store, newFakeState(), mb)
	waitFor(t, "the store to be tried twice", func() bool { return store.callsFor("fail-1") >= 2 })
	ms := d.mustInspect("INBOX")
	if len(ms) != 1 || ms[0].has(StoredKeyword) || ms[0].has(imap.FlagSeen) {
		t.Fatalf("after failed stores the message is %+v; want it unflagged", ms)
	}
	store.setFail(nil)
	waitFor(t, "fail-1 stored", func() bool { return len(store.stored()) == 1 })
	waitFor(t, "fail-1 flagged", func() bool { return allFlagged(d.mustInspect("INBOX")) })
	r.waitIdle()
	assertOnce(t, store, "fail-1")
	r.assertRunning()
}

// 4b. A message the store refuses for good (too large) is left unflagged and
// does not block the others.
func TestStorePermanentRefusalSkipsMessage(t *testing.T) {
	d := startDovecot(t)
	for _, s := range []string{"ok-1", "huge", "ok-2"} {
		d.deliver(testMsg(s))
	}
	store := newFakeStore()
	store.setFail(func(b []byte) error {
		if subjectOf(b) == "huge" {
			return fault.New(fault.TooLarge, "message_too_large", "message too large")
		}
		return nil
	})
	mb := baseMailbox(d)
	mb.Since = "all"
	mb.PollInterval = 100 * time.Millisecond
	r := startPoller(t, store, newFakeState(), mb)
	waitFor(t, "ok-1 and ok-2 stored", func() bool { return len(store.stored()) == 2 })
	r.waitCycles(5)
	assertOnce(t, store, "ok-1", "ok-2")
	if n := store.callsFor("huge"); n != 1 {
		t.Fatalf("the refused message was offered to the store %d times, want 1", n)
	}
	waitFor(t, "ok-1 and ok-2 flagged", func() bool {
		n := 0
		for _, m := range d.mustInspect("INBOX") {
			switch {
			case m.Subject == "huge" && (m.has(StoredKeyword) || m.has(imap.FlagSeen)):
				t.Fatalf("refused message flagged: %v", m.Flags)
			case m.Subject != "huge" && m.has(StoredKeyword):
				n++
			}
		}
		return n == 2
	})
}

// 5. dovecot restarts while the poller runs; mail delivered while it is down
// is stored exactly once after it comes back.
func TestDovecotRestart(t *testing.T) {
	d := startDovecot(t)
	store := newFakeStore()
	mb := baseMailbox(d)
	r := startPoller(t, store, newFakeState(), mb)
	r.waitIdle()
	d.deliver(testMsg("r-before"))
	waitFor(t, "r-before stored", func() bool { return len(store.stored()) == 1 })

	d.stop()
	d.deliverOffline(testMsg("r-down-1"))
	d.deliverOffline(testMsg("r-down-2"))
	d.start()
	waitFor(t, "mail delivered during the outage stored", func() bool { return len(store.stored()) == 3 })
	r.waitIdle()
	d.deliver(testMsg("r-after"))
	waitFor(t, "r-after stored", func() bool { return len(store.stored()) == 4 })
	waitFor(t, "all four flagged", func() bool {
		ms := d.mustInspect("INBOX")
		return len(ms) == 4 && allFlagged(ms)
	})
	r.waitIdle()
	assertOnce(t, store, "r-before", "r-down-1", "r-down-2", "r-after")
	if !strings.Contains(r.logw.String(), "mailbox unavailable") {
		t.Fatal("the poller never lost its connection: the restart was not exercised")
	}
	r.assertRunning()
}

// 5b. dovecot is stopped in the middle of a backlog, while the store holds a
// message whose flag has not been set yet: every message is still stored
// exactly once (that one is flagged after reconnecting, not stored again).
func TestDovecotRestartDuringBacklog(t *testing.T) {
	d := startDovecot(t)
	backlog := numbered("b", 40)
	for _, s := range backlog {
		d.deliver(testMsg(s))
	}
	store := newFakeStore()
	reached, release := make(chan struct{}), make(chan struct{})
	store.onStore = func(n int) {
		if n == 5 { // inside Accept of the fifth message, before it returns
			close(reached)
			<-release
		}
	}
	mb := baseMailbox(d)
	mb.Since = "all"
	r := startPoller(t, store, newFakeState(), mb)
	select {
	case <-reached:
	case <-time.After(waitLimit):
		t.Fatal("timed out waiting for 5 stored messages")
	}
	d.stop()
	close(release) // Accept returns nil; flagging fails: the server is gone
	d.deliverOffline(testMsg("b-down"))
	d.start()
	all := append(backlog, "b-down")
	waitFor(t, "everything stored", func() bool { return len(store.stored()) >= len(all) })
	waitFor(t, "everything flagged", func() bool {
		ms := d.mustInspect("INBOX")
		return len(ms) == len(all) && allFlagged(ms)
	})
	r.waitIdle()
	assertOnce(t, store, all...)
	if n := store.callsFor("b-005"); n != 1 {
		t.Fatalf("b-005 (stored, then the connection broke) was offered to the store %d times", n)
	}
	if !strings.Contains(r.logw.String(), "mailbox unavailable") {
		t.Fatal("the poller never lost its connection: the restart was not exercised")
	}
	r.assertRunning()
}

// 6. Polling (no IDLE) stores new mail, a large message byte for byte, and
// never twice.
func TestPollingMode(t *testing.T) {
	d := startDovecot(t)
	store := newFakeStore()
	mb := baseMailbox(d)
	mb.DisableIDLE = true
	mb.PollInterval = 200 * time.Millisecond
	r := startPoller(t, store, newFakeState(), mb)
	r.waitCycles(1)
	d.deliver(testMsg("poll-1"))
	waitFor(t, "poll-1 stored", func() bool { return len(store.stored()) == 1 })

	// About 4 MB, so the body is streamed through many reads.
	var big bytes.Buffer
	big.Write(testMsg("poll-big"))
	for i := 0; big.Len() < 4<<20; i++ {
		fmt.Fprintf(&big, "line %07d %s\r\n", i, strings.Repeat("abcdefghij", 7))
	}
	d.deliver(big.Bytes())
	waitFor(t, "poll-big stored", func() bool { return len(store.stored()) == 2 })
	if got := store.stored()[1].body; !bytes.Contains(got, big.Bytes()) {
		t.Fatalf("the large message was not stored intact: %d bytes stored, %d delivered", len(got), big.Len())
	}
	r.waitCycles(5)
	assertOnce(t, store, "poll-1", "poll-big")
	waitFor(t, "both flagged", func() bool {
		ms := d.mustInspect("INBOX")
		return len(ms) == 2 && allFlagged(ms)
	})
	if r.idles.Load() != 0 {
		t.Fatalf("IDLE used although DisableIDLE is set")
	}
	r.assertRunning()
}

// A wrong password is a connection error: logged and retried, Run keeps
// running and returns nil when stopped.
func TestLoginFailureRetried(t *testing.T) {
	d := startDovecot(t)
	mb := baseMailbox(d)
	mb.Password = "wrong"
	r := startPoller(t, newFakeStore(), newFakeState(), mb)
	waitFor(t, "a failed login logged", func() bool {
		return strings.Contains(r.logw.String(), "mailbox unavailable")
	})
	r.assertRunning()
	if r.cycles.Load() != 0 {
		t.Fatal("a cycle ran without a login")
	}
}
