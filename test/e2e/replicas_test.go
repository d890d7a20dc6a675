package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// startPostgres starts a throwaway PostgreSQL (test/peers/postgres.sh) on a
// free loopback port and returns its DSN; it is stopped at the end of the
// test.
func startPostgres(t *testing.T, s *suite) string {
	t.Helper()
	needRoot(t, "PostgreSQL")
	// The newest installed, as test/peers/postgres.sh picks it.
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	needPeer(t, len(bins) > 0, "PostgreSQL is not installed (Debian package postgresql)")
	sort.Slice(bins, func(i, j int) bool { return pgMajor(bins[i]) < pgMajor(bins[j]) })
	bin := filepath.Dir(bins[len(bins)-1])
	dir, err := os.MkdirTemp("/tmp", "mmgate-e2e-pg-")
	if err != nil {
		t.Fatal(err)
	}
	// postgres.sh hands dir to the postgres user, who must reach it.
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	port := freePort(t)
	t.Cleanup(func() {
		if out, err := runCmd(60*time.Second, "runuser", "-u", "postgres", "--", filepath.Join(bin, "pg_ctl"),
			"-D", filepath.Join(dir, "data"), "-m", "fast", "-w", "stop"); err != nil && fileExists(filepath.Join(dir, "data", "postmaster.pid")) {
			t.Errorf("stopping PostgreSQL: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("PostgreSQL log, last lines:\n%s", tail(readFile(filepath.Join(dir, "log")), 30))
		}
		_ = os.RemoveAll(dir)
	})
	peerScript(t, s, "postgres.sh", dir, strconv.Itoa(port))
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
}

// startVersitygw starts a real S3-compatible server (versitygw, posix
// backend) on loopback; it returns its endpoint and keys.
func startVersitygw(t *testing.T, s *suite) (endpoint, access, secret string) {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		home, _ := os.UserHomeDir()
		if p := filepath.Join(home, "go", "bin", "versitygw"); fileExists(p) {
			bin, err = p, nil
		}
	}
	needPeer(t, err == nil, "versitygw is not installed (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
	dir := filepath.Join(s.root, "versitygw-"+nonce())
	if err := os.MkdirAll(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	endpoint = freeAddr(t)
	access, secret = "mmgatee2e", "mmgatee2esecret-"+nonce()
	logf, err := os.Create(filepath.Join(dir, "versitygw.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--access", access, "--secret", secret, "--port", endpoint, "--keep-alive", "--quiet", "posix", filepath.Join(dir, "data"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		t.Fatalf("starting versitygw: %v", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); _ = logf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("versitygw log, last lines:\n%s", tail(readFile(logf.Name()), 20))
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", endpoint, time.Second)
		if err == nil {
			_ = c.Close()
			return endpoint, access, secret
		}
		select {
		case <-done:
			t.Fatalf("versitygw exited during start-up:\n%s", readFile(logf.Name()))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("versitygw does not listen on %s after 30s:\n%s", endpoint, readFile(logf.Name()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// logSections splits a gate's log at the harness's start markers: one
// section per `mmgate serve` process, in order.
func logSections(path string) []string {
	parts := strings.Split(readFile(path), "==== e2e: mmgate serve starting at ")
	if len(parts) > 0 && strings.TrimSpace(parts[0]) == "" {
		parts = parts[1:]
	}
	return parts
}

// 19. Two replicas share one PostgreSQL spool and one S3 bucket: messages
// sent to both (some with a 100 KB attachment, stored in S3) are posted
// exactly once, although one replica is killed mid-flow and stays down for
// over 40 s (its running jobs are taken over once its heartbeat is 30 s old),
// and both replicas posted messages.
func TestReplicasShareTheWork(t *testing.T) {
	s := setup(t)
	total := envInt(t, "MMGATE_REPLICAS_MESSAGES", 600)
	rate := envInt(t, "MMGATE_REPLICAS_RATE", 80)
	const downFor = 45 * time.Second
	dsn := startPostgres(t, s)
	ep, ak, sk := startVersitygw(t, s)
	run := nonce()
	token := "replicas-" + nonce() + nonce()
	spoolYAML := fmt.Sprintf("{driver: postgres, dsn: %q, retry_min: 1s, retry_max: 3s, "+
		"blobs: {driver: s3, s3: {endpoint: %q, bucket: %q, access_key: %q, secret_key: %q, insecure: true}}}",
		dsn, ep, "mmgate-e2e-"+run, ak, sk)
	extra := fmt.Sprintf("postback:\n  mailboxes:\n    replicas: {token: %q, app: jira}\n", token)
	a := newGate(t, s, gateConfig{Name: "a", Spool: spoolYAML, Extra: extra})
	b := newGate(t, s, gateConfig{Name: "b", Spool: spoolYAML, Extra: extra})
	gates := []*gate{a, b}
	names := []string{"alice", bobName}
	for _, n := range names {
		s.recipient(t, n)
	}

	since := time.Now()
	intakes := []string{"smtp", "postback"}
	mails := make([]*testMail, total)
	work := make(chan int, total)
	for i := range mails {
		rcpts := []string{"alice"}
		if i%5 == 0 {
			rcpts = append(rcpts, bobName)
		}
		attach := 0
		if i%4 == 0 {
			attach = 100 << 10 // over the 64 KiB kept inline: the raw mail goes to S3
		}
		mails[i] = newTestMail(intakes[i%2], fmt.Sprintf("replicas-%s-%04d@e2e.test", run, i), fmt.Sprintf("replicas %s %04d", run, i), rcpts, attach)
		work <- i
	}
	close(work)

	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	var (
		acked, attempts, failovers atomic.Int64
		wg                         sync.WaitGroup
	)
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var ss smtpSender
			defer ss.close()
			for i := range work {
				select {
				case <-tick.C:
				case <-ctx.Done():
					return
				}
				m := mails[i]
				gi := i / 2 % 2 // alternate the gates, and the intakes within each
				for {
					g := gates[gi]
					var ok bool
					var what string
					switch m.intake {
					case "smtp":
						err := ss.send(g, m)
						ok = err == nil
						if err != nil {
							what = err.Error()
						}
					case "postback":
						st, an, err := postbackSend(g, "replicas", token, m.raw)
						ok = postbackAcked(st, an, err)
						what = fmt.Sprintf("HTTP %d %s %v", st, an.Code, err)
					}
					attempts.Add(1)
					name := []string{"a", "b"}[gi]
					if ok {
						m.mu.Lock()
						m.acked, m.ackVia, m.ackAt = true, "replica "+name, time.Now()
						m.mu.Unlock()
						m.note("acknowledged by replica %s", name)
						acked.Add(1)
						break
					}
					m.note("replica %s: %s", name, what)
					// Like an MTA with two MX hosts: try the other one.
					gi = 1 - gi
					failovers.Add(1)
					if !sleepCtx(ctx, randDur(100*time.Millisecond, 400*time.Millisecond)) {
						return
					}
				}
			}
		}()
	}

	// Mid-flow, replica b dies and stays down for downFor.
	for acked.Load() < int64(total*2/5) && ctx.Err() == nil {
		time.Sleep(50 * time.Millisecond)
	}
	b.kill()
	killedAt := time.Now()
	t.Logf("replicas: killed replica b at %s with %d of %d acknowledged; %s", killedAt.Format("15:04:05.000"), acked.Load(), total, spoolGauge(a))
	sleepCtx(ctx, downFor)
	wg.Wait()
	if d := time.Until(killedAt.Add(downFor)); d > 0 {
		time.Sleep(d)
	}
	t.Logf("replicas: sending ended: %d of %d acknowledged in %d attempts (%d fail-overs); restarting replica b after %s",
		acked.Load(), total, attempts.Load(), failovers.Load(), time.Since(killedAt).Round(time.Second))
	restartAt := time.Now()
	b.start()
	for _, m := range mails {
		if !m.acked {
			t.Errorf("<%s> was never acknowledged: %s", m.msgID, m.history())
		}
	}

	waitDrained(t, a, 4*time.Minute)
	settle(a)
	quarantined := quarantinedReasons(a)
	posts := readPosts(t, s, since, names...)
	rep := checkDeliveries(mails, posts, quarantined)

	// Who posted: each replica's log, per process (b: before and after the kill).
	count := func(sec string) int { return strings.Count(sec, "spool: posted") }
	aSecs, bSecs := logSections(a.logPath), logSections(b.logPath)
	var aPosted, bBefore, bAfter, takeovers int
	for _, sec := range aSecs {
		aPosted += count(sec)
		takeovers += strings.Count(sec, "jobs of a replica that stopped were made available again")
	}
	if len(bSecs) > 0 {
		bBefore = count(bSecs[0])
	}
	for _, sec := range bSecs[min(1, len(bSecs)):] {
		bAfter += count(sec)
		takeovers += strings.Count(sec, "jobs of a replica that stopped were made available again")
	}
	// Whatever b was working on when it died is taken over by a once b's
	// heartbeat is 30 s old: every message acknowledged before the kill is
	// posted before b comes back.
	postedLate := 0 // posts made 25 s or more after the kill: a's takeover, or b's jobs that were not running
	for _, m := range mails {
		if !m.acked || !m.ackAt.Before(killedAt) {
			continue
		}
		for _, rc := range m.rcpts {
			for _, p := range posts[rc][m.msgID] {
				at := time.UnixMilli(p.CreateAt)
				if !at.Before(restartAt) {
					t.Errorf("<%s>, acknowledged before replica b was killed, was posted to %s only at %s, after b restarted (%s): nobody took it over",
						m.msgID, rc, at.Format("15:04:05.000"), restartAt.Format("15:04:05.000"))
				} else if at.After(killedAt.Add(25 * time.Second)) {
					postedLate++
				}
			}
		}
	}
	summary := fmt.Sprintf("replicas: sent=%d acknowledged=%d posted=%d quarantined=%d lost=%d duplicated=%d posted_by_a=%d posted_by_b=%d(before kill)+%d(after restart) posted_25s_after_kill=%d takeover_logs=%d",
		rep.sent, rep.acked, rep.posted, rep.quarantined, rep.lost, rep.duplicated, aPosted, bBefore, bAfter, postedLate, takeovers)
	reportSummary(summary)
	t.Log(summary)
	rep.fail(t)
	if aPosted == 0 || bBefore == 0 {
		t.Errorf("both replicas must have posted: a posted %d, b %d before it was killed", aPosted, bBefore)
	}
}

// pgMajor is the version in /usr/lib/postgresql/VERSION/bin/initdb.
func pgMajor(initdb string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(initdb))))
	return n
}
