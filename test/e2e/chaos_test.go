package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// envInt reads a positive integer knob from the environment.
func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		t.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// mattermostctlErr is mattermostctl for goroutines other than the test's.
func (s *suite) mattermostctlErr(cmd string) error {
	_, err := runCmd(4*time.Minute, "bash", filepath.Join(s.peers, "mattermost.sh"), cmd)
	return err
}

// sleepCtx sleeps d or until ctx ends; false when ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-time.After(d):
		return true
	case <-ctx.Done():
		return false
	}
}

func randDur(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rand.Int64N(int64(hi-lo)+1))
}

// 17. Proof that nothing is lost and nothing is posted twice: thousands of
// messages through SMTP, the pipe (`mmgate deliver`) and the postback,
// concurrently, while mmgate is killed with SIGKILL at random moments (and
// restarted) at least ten times and Mattermost is stopped for a while.
// Senders retry the same bytes until they get 250 / 200 / exit 0; every
// acknowledged message must then be posted exactly once to each of its
// recipients (or be quarantined with a reason), and none twice.
//
// MMGATE_CHAOS_MESSAGES (default 5000) and MMGATE_CHAOS_RATE (new messages
// per second over all intakes, default 40) tune it.
func TestChaosNothingLostNothingDuplicated(t *testing.T) {
	s := setup(t)
	total := envInt(t, "MMGATE_CHAOS_MESSAGES", 5000)
	rate := envInt(t, "MMGATE_CHAOS_RATE", 40)
	const (
		minKills    = 10
		maxKills    = 60
		sendFor     = 8 * time.Minute // every message acknowledged by then
		drainFor    = 8 * time.Minute // then delivered by then
		mmDownFor   = 15 * time.Second
		smtpWorkers = 3
		postWorkers = 2
		pipeWorkers = 2
	)
	token := "chaos-" + nonce() + nonce()
	g := newGate(t, s, gateConfig{Extra: fmt.Sprintf("pipe: {socket: \"{gate_dir}/mmgate.sock\"}\n"+
		"postback:\n  mailboxes:\n    chaos: {token: %q, app: jira}\n", token)})
	sock := filepath.Join(g.dir, "mmgate.sock")
	names := []string{"alice", bobName}
	for _, n := range names {
		s.recipient(t, n) // the DMs exist before anything is counted
	}

	// The messages: a third per intake; every one to alice, every fifth to bob too.
	run := nonce()
	since := time.Now()
	intakes := []string{"smtp", "postback", "pipe"}
	queues := map[string]chan *testMail{}
	for _, in := range intakes {
		queues[in] = make(chan *testMail, total)
	}
	mails := make([]*testMail, total)
	for i := range mails {
		in := intakes[i%len(intakes)]
		rcpts := []string{"alice"}
		if i%5 == 0 {
			rcpts = append(rcpts, bobName)
		}
		mails[i] = newTestMail(in, fmt.Sprintf("chaos-%s-%05d@e2e.test", run, i), fmt.Sprintf("chaos %s %05d", run, i), rcpts, 0)
		queues[in] <- mails[i]
	}
	for _, q := range queues {
		close(q)
	}

	ctx, cancel := context.WithTimeout(context.Background(), sendFor)
	var (
		acked, attempts atomic.Int64
		failures        sync.Map // intake → *atomic.Int64
		kills           atomic.Int32
		sendersDone     atomic.Bool
		senders         sync.WaitGroup
		killerDone      = make(chan struct{})
		outageDone      = make(chan struct{})
		mmMu            sync.Mutex
		mmStopped       bool
		outage          time.Duration
	)
	t.Cleanup(func() {
		mmMu.Lock()
		defer mmMu.Unlock()
		if mmStopped {
			s.mattermostctl(t, "start")
		}
	})
	stopAll := func() {
		cancel()
		senders.Wait()
		sendersDone.Store(true)
		<-killerDone
		<-outageDone
	}
	defer stopAll()
	for _, in := range intakes {
		c := &atomic.Int64{}
		failures.Store(in, c)
	}
	tick := time.NewTicker(time.Second / time.Duration(rate))
	defer tick.Stop()

	sender := func(intake string) {
		defer senders.Done()
		var ss smtpSender
		defer ss.close()
		fails, _ := failures.Load(intake)
		for m := range queues[intake] {
			select {
			case <-tick.C:
			case <-ctx.Done():
				return
			}
			for {
				var ok bool
				var what string
				switch intake {
				case "smtp":
					err := ss.send(g, m)
					ok = err == nil
					if err != nil {
						what = err.Error()
					}
				case "postback":
					st, a, err := postbackSend(g, "chaos", token, m.raw)
					ok = postbackAcked(st, a, err)
					what = fmt.Sprintf("HTTP %d %s %v", st, a.Code, err)
				case "pipe":
					code, out := pipeSend(s, sock, m, m.raw)
					ok = code == 0
					what = fmt.Sprintf("exit %d: %s", code, truncate(strings.TrimSpace(out), 200))
				}
				attempts.Add(1)
				if ok {
					m.mu.Lock()
					m.acked, m.ackVia, m.ackAt = true, intake, time.Now()
					m.mu.Unlock()
					m.note("acknowledged")
					acked.Add(1)
					break
				}
				m.note("%s", what)
				fails.(*atomic.Int64).Add(1)
				if !sleepCtx(ctx, randDur(200*time.Millisecond, 700*time.Millisecond)) {
					return
				}
			}
		}
	}
	for in, n := range map[string]int{"smtp": smtpWorkers, "postback": postWorkers, "pipe": pipeWorkers} {
		for i := 0; i < n; i++ {
			senders.Add(1)
			go sender(in)
		}
	}

	// The killer: SIGKILL at a random moment 1–4 s after the last start,
	// then start again, while the senders send (and at least minKills times).
	go func() {
		defer close(killerDone)
		for int(kills.Load()) < maxKills && (!sendersDone.Load() || kills.Load() < minKills) {
			if !sleepCtx(ctx, randDur(time.Second, 4*time.Second)) {
				return
			}
			g.kill()
			k := kills.Add(1)
			t.Logf("chaos: kill %d at %s (%d acknowledged so far)", k, time.Now().Format("15:04:05.000"), acked.Load())
			var err error
			for i := 0; i < 3; i++ {
				if err = g.startErr(); err == nil {
					break
				}
				time.Sleep(time.Second)
			}
			if err != nil {
				t.Errorf("chaos: mmgate does not start again after kill %d: %v", k, err)
				cancel()
				return
			}
		}
	}()

	// The outage: Mattermost stopped once a quarter of the messages are in.
	go func() {
		defer close(outageDone)
		for acked.Load() < int64(total/4) {
			if !sleepCtx(ctx, 200*time.Millisecond) {
				return
			}
		}
		t0 := time.Now()
		mmMu.Lock()
		mmStopped = true
		mmMu.Unlock()
		t.Logf("chaos: stopping Mattermost at %s (%d acknowledged so far)", t0.Format("15:04:05.000"), acked.Load())
		if err := s.mattermostctlErr("stop"); err != nil {
			t.Errorf("chaos: stopping Mattermost: %v", err)
		}
		sleepCtx(ctx, mmDownFor)
		if err := s.mattermostctlErr("start"); err != nil {
			t.Errorf("chaos: starting Mattermost again: %v", err)
			return
		}
		mmMu.Lock()
		mmStopped = false
		outage = time.Since(t0)
		mmMu.Unlock()
		t.Logf("chaos: Mattermost answers again at %s, %s after it was stopped", time.Now().Format("15:04:05.000"), outage.Round(time.Second))
	}()

	senders.Wait()
	sendersDone.Store(true)
	sendEnd := time.Now()
	<-killerDone
	<-outageDone
	cancel()
	t.Logf("chaos: sending ended after %s: %d of %d acknowledged in %d attempts; %d kills",
		sendEnd.Sub(since).Round(time.Second), acked.Load(), total, attempts.Load(), kills.Load())
	failures.Range(func(k, v any) bool {
		t.Logf("chaos: %s: %d failed attempts (retried)", k, v.(*atomic.Int64).Load())
		return true
	})
	if t.Failed() {
		t.FailNow()
	}
	if g.cmd == nil {
		g.start()
	}
	var unacked []string
	for _, m := range mails {
		if !m.acked {
			unacked = append(unacked, fmt.Sprintf("<%s> (%s): %s", m.msgID, m.intake, m.history()))
		}
	}
	if len(unacked) > 0 {
		t.Errorf("%d of %d messages were never acknowledged within %s, e.g.:\n%s", len(unacked), total, sendFor,
			strings.Join(unacked[:min(len(unacked), 10)], "\n"))
	}

	waitDrained(t, g, drainFor)
	settle(g)
	quarantined := quarantinedReasons(g)
	posts := readPosts(t, s, since, names...)
	rep := checkDeliveries(mails, posts, quarantined)
	mmMu.Lock()
	out := outage
	mmMu.Unlock()
	summary := fmt.Sprintf("chaos: sent=%d acknowledged=%d posted=%d quarantined=%d lost=%d duplicated=%d kills=%d mattermost_outage=%ds attempts=%d duration=%s",
		rep.sent, rep.acked, rep.posted, rep.quarantined, rep.lost, rep.duplicated, kills.Load(), int(out.Round(time.Second).Seconds()),
		attempts.Load(), time.Since(since).Round(time.Second))
	reportSummary(summary)
	t.Log(summary)
	rep.fail(t)
	if rep.unackedPosted != 0 {
		t.Logf("%d posts belong to messages that were never acknowledged", rep.unackedPosted)
	}
	if kills.Load() < minKills {
		t.Errorf("mmgate was killed %d times, want at least %d", kills.Load(), minKills)
	}
	if out == 0 {
		t.Errorf("Mattermost was not stopped and started during the run")
	}
}
