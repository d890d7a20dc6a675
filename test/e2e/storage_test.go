package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// storageProbe is one message sent once through one intake while storage
// fails, and what came back.
type storageProbe struct {
	m      *testMail
	phase  string
	acked  bool
	answer string // "250", "SMTP 451 …", "HTTP 503 spool_unavailable", "exit 75"
}

// 18. A spool that cannot be written acknowledges nothing: with data_dir on
// a small tmpfs, first made read-only, then full, every intake refuses with
// a temporary error (SMTP 4xx, postback 503 spool_unavailable, deliver exit
// 75), /readyz answers 503, and a refused message is never stored nor
// posted. When storage comes back, mmgate recovers without a restart.
//
// A read-only remount of a file system with files open for writing is
// refused by the kernel (EBUSY; mmgate keeps its SQLite database and WAL
// open), so "read-only" is a read-only bind mount stacked on data_dir: every
// file opened or created from then on is read-only (EROFS), as after an
// operator's or the kernel's remount, while mmgate's already open database
// stays writable. Messages over 64 KiB (stored as blob files) must then be
// refused; small ones go inline into the open database, so they may be
// stored, and if acknowledged they must be posted exactly once. On the full
// tmpfs the same holds for the WAL: SQLite may reuse WAL space it already
// has, and must refuse once it needs more.
func TestStorageFailureAcknowledgesNothing(t *testing.T) {
	s := setup(t)
	run := nonce()
	dataDir := filepath.Join(s.root, "storage-"+run)
	mountTmpfs(t, dataDir, "8m")
	token := "storage-" + nonce() + nonce()
	g := newGate(t, s, gateConfig{DataDir: dataDir, Extra: fmt.Sprintf("pipe: {socket: \"{gate_dir}/mmgate.sock\"}\n"+
		"postback:\n  mailboxes:\n    storage: {token: %q, app: jira}\n", token)})
	sock := filepath.Join(g.dir, "mmgate.sock")
	alice := s.recipient(t, "alice")
	pid := g.cmd.Process.Pid
	since := time.Now()

	var probes []*storageProbe
	seq := 0
	// sendOnce sends a new message through intake, once, and records the outcome.
	sendOnce := func(phase, intake string, size int) *storageProbe {
		t.Helper()
		seq++
		m := newTestMail(intake, fmt.Sprintf("storage-%s-%03d@e2e.test", run, seq), fmt.Sprintf("storage %s %03d %s", run, seq, phase), []string{"alice"}, size)
		p := &storageProbe{m: m, phase: phase}
		switch intake {
		case "smtp":
			var ss smtpSender
			err := ss.send(g, m)
			ss.close()
			p.acked = err == nil
			p.answer = "250"
			if err != nil {
				p.answer = err.Error()
				if c := smtpReplyCode(err); c != 0 {
					p.answer = fmt.Sprintf("SMTP %d: %s", c, err)
				}
			}
		case "postback":
			st, a, err := postbackSend(g, "storage", token, m.raw)
			p.acked = postbackAcked(st, a, err)
			p.answer = fmt.Sprintf("HTTP %d %s", st, a.Code)
			if err != nil {
				p.answer += " " + err.Error()
			}
		case "pipe":
			code, out := pipeSend(s, sock, m, m.raw)
			p.acked = code == 0
			p.answer = fmt.Sprintf("exit %d %s", code, truncate(strings.TrimSpace(out), 200))
		}
		m.acked = p.acked
		probes = append(probes, p)
		t.Logf("%s: %s %d bytes via %s: acknowledged=%v (%s)", phase, m.msgID, len(m.raw), intake, p.acked, p.answer)
		return p
	}
	// mustRefuse checks that a probe got the intake's temporary refusal.
	mustRefuse := func(p *storageProbe) {
		t.Helper()
		switch {
		case p.acked:
			t.Errorf("%s: %s (%d bytes via %s) was ACKNOWLEDGED while storage was failing", p.phase, p.m.msgID, len(p.m.raw), p.m.intake)
		case p.m.intake == "smtp" && !strings.HasPrefix(p.answer, "SMTP 4"):
			t.Errorf("%s: SMTP answered %q, want a 4xx reply (451 4.3.0)", p.phase, p.answer)
		case p.m.intake == "postback" && p.answer != "HTTP 503 spool_unavailable":
			t.Errorf("%s: postback answered %q, want HTTP 503 with code spool_unavailable", p.phase, p.answer)
		case p.m.intake == "pipe" && !strings.HasPrefix(p.answer, "exit 75 "):
			t.Errorf("%s: mmgate deliver: %q, want exit 75 (EX_TEMPFAIL)", p.phase, p.answer)
		}
	}
	readyz := func() (int, map[string]string) {
		t.Helper()
		code, body := getReadyz(t, g)
		var rz struct {
			Checks map[string]string `json:"checks"`
		}
		_ = json.Unmarshal([]byte(body), &rz)
		return code, rz.Checks
	}
	waitReady := func(want int, why string) {
		t.Helper()
		eventually(t, 20*time.Second, fmt.Sprintf("/readyz %d (%s)", want, why), func() (bool, string) {
			code, checks := readyz()
			ok := code == want
			if want != http.StatusOK {
				ok = ok && checks["spool"] != "" && checks["spool"] != "ok"
			}
			return ok, fmt.Sprintf("HTTP %d, checks %v", code, checks)
		})
	}
	intakes := []string{"smtp", "postback", "pipe"}
	const big, small = 100 << 10, 0 // ~100 KB attachment (blob path); plain text of ~400 bytes (inline)
	alive := func(when string) {
		t.Helper()
		if g.cmd == nil || g.cmd.Process.Pid != pid || syscall.Kill(pid, 0) != nil {
			t.Fatalf("%s: mmgate (pid %d) is no longer running: storage failures must not stop it", when, pid)
		}
	}

	// 0. Healthy.
	waitReady(http.StatusOK, "healthy storage")
	for _, in := range intakes {
		if p := sendOnce("healthy", in, small); !p.acked {
			t.Fatalf("healthy storage: %s refused: %s", in, p.answer)
		}
	}
	exactlyOnePost(t, g, alice, since, probes[0].m.msgID)

	// (a) Read-only.
	if _, err := runCmd(30*time.Second, "mount", "--bind", dataDir, dataDir); err != nil {
		t.Fatalf("stacking a bind mount on data_dir: %v", err)
	}
	if _, err := runCmd(30*time.Second, "mount", "-o", "remount,bind,ro", dataDir); err != nil {
		t.Fatalf("making data_dir read-only: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dataDir, "probe"), []byte("x"), 0o644); err == nil || !errors.Is(err, syscall.EROFS) {
		t.Fatalf("data_dir is not read-only after the remount: writing a file: %v", err)
	}
	waitReady(http.StatusServiceUnavailable, "read-only data_dir")
	for _, in := range intakes {
		mustRefuse(sendOnce("read-only", in, big))
	}
	for _, in := range intakes {
		sendOnce("read-only", in, small) // inline: into the open database; either answer is right
	}
	alive("read-only")
	if _, err := runCmd(30*time.Second, "umount", dataDir); err != nil {
		t.Fatalf("removing the read-only bind mount: %v", err)
	}
	waitReady(http.StatusOK, "data_dir writable again")
	for _, in := range intakes {
		if p := sendOnce("writable-again", in, big); !p.acked {
			t.Errorf("data_dir writable again: %s refused a message: %s", in, p.answer)
		}
	}

	// (b) Full.
	filler := filepath.Join(dataDir, "filler")
	fillUp(t, filler)
	waitReady(http.StatusServiceUnavailable, "full data_dir")
	for _, in := range intakes {
		mustRefuse(sendOnce("full", in, big))
	}
	// Small messages until each intake has been refused, or the WAL's
	// free space would hold more than 300 of them (it cannot).
	refusedSmall := map[string]bool{}
	for i := 0; i < 100 && len(refusedSmall) < len(intakes); i++ {
		for _, in := range intakes {
			if p := sendOnce("full", in, small); !p.acked {
				mustRefuse(p)
				refusedSmall[in] = true
			}
		}
	}
	for _, in := range intakes {
		if !refusedSmall[in] {
			t.Errorf("full data_dir: %s acknowledged every small message (100), want refusals once the WAL cannot grow", in)
		}
	}
	alive("full")
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	waitReady(http.StatusOK, "space freed")
	for _, in := range intakes {
		for _, size := range []int{big, small} {
			if p := sendOnce("recovered", in, size); !p.acked {
				t.Errorf("after freeing space: %s refused a %d-byte message: %s", in, len(p.m.raw), p.answer)
			}
		}
	}
	alive("recovered")

	// Every acknowledged message is posted exactly once; no refused one is
	// stored or posted.
	waitDrained(t, g, 3*time.Minute)
	settle(g)
	stored := g.list("queue", "list", "--all", "--limit", "1000")
	ps, err := alice.c.postsSince(alice.dm, since)
	if err != nil {
		t.Fatal(err)
	}
	byID := postsByMessageID(ps)
	var nAcked, nRefused, postedOnce, lost, duplicated int
	for _, p := range probes {
		n := len(byID[p.m.msgID])
		// `queue list` cuts subjects at 40 characters: match the run and
		// sequence number at their start ("storage RUN SEQ "), which are unique.
		_, inSpool := findRow(stored, strings.Join(strings.Fields(p.m.subject)[:3], " ")+" ")
		if p.acked {
			nAcked++
			switch {
			case n == 1:
				postedOnce++
			case n == 0:
				lost++
			default:
				duplicated++
			}
			if n != 1 {
				t.Errorf("%s: %s was acknowledged (%s) and has %d posts, want exactly 1", p.phase, p.m.msgID, p.answer, n)
			}
			continue
		}
		nRefused++
		if n != 0 {
			t.Errorf("%s: %s was refused (%s) but has %d post(s)", p.phase, p.m.msgID, p.answer, n)
		}
		if inSpool {
			t.Errorf("%s: %s was refused (%s) but is in the spool", p.phase, p.m.msgID, p.answer)
		}
	}
	summary := fmt.Sprintf("storage: sent=%d acknowledged=%d refused=%d posted_once=%d lost=%d duplicated=%d", len(probes), nAcked, nRefused, postedOnce, lost, duplicated)
	if t.Failed() {
		summary += " FAILED (see above)"
	}
	reportSummary(summary)
	t.Log(summary)
}

// fillUp writes zeros into path until the file system is full (ENOSPC).
func fillUp(t *testing.T, path string) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatalf("creating the filler: %v", err)
	}
	defer f.Close()
	buf := make([]byte, 64<<10)
	var total int64
	for chunk := len(buf); chunk > 0; {
		n, err := f.Write(buf[:chunk])
		total += int64(n)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("filling %s: %v", path, err)
			}
			chunk /= 2
		}
	}
	var st syscall.Statfs_t
	if err := syscall.Statfs(filepath.Dir(path), &st); err != nil {
		t.Fatal(err)
	}
	t.Logf("filled %s with %d bytes: %d bytes free", path, total, st.Bavail*uint64(st.Bsize))
}
