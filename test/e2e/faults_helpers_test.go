package e2e

// Helpers of the fault tests (chaos, storage failure, replicas): senders
// that behave like real ones (a message counts as acknowledged only on SMTP
// 250 after DATA, HTTP 200 with success, exit 0; anything else is retried
// with the same bytes), a reader of every post of a DM channel (the API's
// since= answer stops at 1,000 posts), spool queries through the CLI, and
// mounts.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// --- messages ----------------------------------------------------------------------------------

// testMail is one message a fault test sends: its bytes are fixed when it
// is built, so that a retry resends exactly the same mail (same Message-ID,
// Date and Subject), as a real sender's queue would.
type testMail struct {
	msgID   string   // Message-ID without the angle brackets
	subject string   // unique too
	rcpts   []string // Mattermost user names: alice, bob
	addrs   []string // their addresses in mailDomain
	raw     []byte
	intake  string // smtp, postback, pipe

	mu       sync.Mutex
	acked    bool
	ackVia   string    // the gate (replicas) or intake that acknowledged it
	ackAt    time.Time // when
	attempts []string  // "15:04:05.000 result" per try
}

func (m *testMail) note(format string, a ...any) {
	m.mu.Lock()
	m.attempts = append(m.attempts, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, a...))
	m.mu.Unlock()
}

func (m *testMail) history() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return strings.Join(m.attempts, "; ")
}

// userAddr is the directory address of a suite user (defaultUsers).
func userAddr(name string) string { return name + "@" + mailDomain }

// newTestMail builds a small plain-text message, or, with attach > 0, a
// multipart one with an attachment of attach bytes.
func newTestMail(intake, msgID, subject string, rcpts []string, attach int) *testMail {
	m := &testMail{msgID: msgID, subject: subject, rcpts: rcpts, intake: intake}
	for _, r := range rcpts {
		m.addrs = append(m.addrs, userAddr(r))
	}
	var b strings.Builder
	b.WriteString(header("Jira <jira@"+mailDomain+">", strings.Join(m.addrs, ", "), subject, msgID))
	if attach <= 0 {
		b.WriteString("Content-Type: text/plain; charset=utf-8\n\n")
		fmt.Fprintf(&b, "%s, sent through %s.\n", subject, intake)
	} else {
		bd := "B-" + nonce()
		fmt.Fprintf(&b, "Content-Type: multipart/mixed; boundary=%q\n\n--%s\nContent-Type: text/plain; charset=utf-8\n\n%s, with an attachment, through %s.\n", bd, bd, subject, intake)
		data := bytes.Repeat([]byte(msgID+" "), attach/(len(msgID)+1)+1)[:attach]
		fmt.Fprintf(&b, "--%s\nContent-Type: application/octet-stream; name=\"data.bin\"\nContent-Transfer-Encoding: base64\nContent-Disposition: attachment; filename=\"data.bin\"\n\n%s--%s--\n", bd, b64(data), bd)
	}
	m.raw = crlf(b.String())
	return m
}

// --- senders -----------------------------------------------------------------------------------

// smtpSender is one long-lived SMTP session (STARTTLS, AUTH PLAIN as the
// jira app), reused for message after message as an MTA's connection
// cache would; any error closes it and the next message reconnects.
type smtpSender struct {
	addr string // the gate the session is with
	c    *smtp.Client
	conn net.Conn
}

func (s *smtpSender) close() {
	if s.c != nil {
		_ = s.c.Close()
	}
	s.c, s.conn, s.addr = nil, nil, ""
}

func (s *smtpSender) connect(g *gate) error {
	conn, err := net.DialTimeout("tcp", g.smtpAddr, 5*time.Second)
	if err != nil {
		return err
	}
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	c, err := smtp.NewClient(conn, smtpHost(g.smtpAddr))
	if err != nil {
		_ = conn.Close()
		return err
	}
	s.c, s.conn, s.addr = c, conn, g.smtpAddr
	if err := c.Hello("fault-client.test"); err != nil {
		s.close()
		return err
	}
	if err := c.StartTLS(&tls.Config{ServerName: smtpHostname, RootCAs: g.s.caPool}); err != nil {
		s.close()
		return fmt.Errorf("STARTTLS: %w", err)
	}
	if err := c.Auth(smtp.PlainAuth("", jiraSMTPUser, jiraSMTPPass, smtpHost(g.smtpAddr))); err != nil {
		s.close()
		return fmt.Errorf("AUTH: %w", err)
	}
	return nil
}

// send returns nil only when the reply to the end of DATA is 250.
func (s *smtpSender) send(g *gate, m *testMail) (err error) {
	if s.c != nil && s.addr != g.smtpAddr {
		s.close()
	}
	if s.c == nil {
		if err := s.connect(g); err != nil {
			return err
		}
	}
	defer func() {
		if err != nil {
			s.close()
		}
	}()
	_ = s.conn.SetDeadline(time.Now().Add(30 * time.Second))
	if err := s.c.Mail("jira@" + mailDomain); err != nil {
		return fmt.Errorf("MAIL: %w", err)
	}
	for _, a := range m.addrs {
		if err := s.c.Rcpt(a); err != nil {
			return fmt.Errorf("RCPT: %w", err)
		}
	}
	w, err := s.c.Data()
	if err != nil {
		return fmt.Errorf("DATA: %w", err)
	}
	if _, err := w.Write(m.raw); err != nil {
		return fmt.Errorf("DATA body: %w", err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("end of DATA: %w", err)
	}
	return nil
}

// smtpReplyCode is the SMTP reply code in err, 0 when err is not a reply.
func smtpReplyCode(err error) int {
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code
	}
	return 0
}

var postbackClient = &http.Client{Timeout: 30 * time.Second}

// postbackSend posts raw to the gate's postback mailbox with mail_room's
// token header; it returns the status and the decoded answer.
func postbackSend(g *gate, mailbox, token string, raw []byte) (int, postbackAnswer, error) {
	req, err := http.NewRequest(http.MethodPost, "http://"+g.httpAddr+"/intake/mailroom/"+mailbox, bytes.NewReader(raw))
	if err != nil {
		return 0, postbackAnswer{}, err
	}
	req.Header.Set("Authorization", `Token token="`+token+`"`)
	req.Header.Set("Content-Type", "message/rfc822")
	resp, err := postbackClient.Do(req)
	if err != nil {
		return 0, postbackAnswer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, postbackAnswer{}, err
	}
	var a postbackAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		return resp.StatusCode, a, fmt.Errorf("HTTP %d with a body that is not JSON: %q", resp.StatusCode, truncate(string(b), 200))
	}
	return resp.StatusCode, a, nil
}

// postbackAcked reports whether a postback answer acknowledges the message.
func postbackAcked(st int, a postbackAnswer, err error) bool {
	return err == nil && st == http.StatusOK && a.Success && a.ID != ""
}

// pipeSend runs `mmgate deliver --socket SOCK --sender jira-svc@tools.test
// -- RCPT…` with raw on standard input and returns its exit code (-1 when
// it could not run) and output.
func pipeSend(s *suite, socket string, m *testMail, raw []byte) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	args := append([]string{"deliver", "--socket", socket, "--sender", "jira-svc@tools.test", "--"}, m.addrs...)
	cmd := exec.CommandContext(ctx, s.bin, args...)
	cmd.Env = cleanEnv()
	cmd.Stdin = bytes.NewReader(raw)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return 0, string(out)
	}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode(), string(out)
	}
	return -1, err.Error() + ": " + string(out)
}

// --- reading posts back ------------------------------------------------------------------------

// postsByMessageID groups posts by their mmgate_message_id prop.
func postsByMessageID(ps []post) map[string][]post {
	out := map[string][]post{}
	for _, p := range ps {
		if id := p.prop("mmgate_message_id"); id != "" {
			out[id] = append(out[id], p)
		}
	}
	return out
}

// deliveryReport is the outcome of checking acknowledged messages against
// the posts read back.
type deliveryReport struct {
	sent, acked, posted, quarantined, lost, duplicated int
	unackedPosted                                      int // posts of messages never acknowledged
	problems                                           []string
}

// checkDeliveries compares every message in mails against the posts of
// each recipient (by user name) and the quarantined Message-IDs (with
// their reasons): an acknowledged message must be posted exactly once to
// each of its recipients, or be quarantined with a reason; no message may
// be posted twice to anyone.
// fail reports the first 30 problems and any loss or duplication.
func (r deliveryReport) fail(t *testing.T) {
	t.Helper()
	for i, p := range r.problems {
		if i == 30 {
			t.Errorf("… and %d more problems", len(r.problems)-30)
			break
		}
		t.Error(p)
	}
	if r.lost != 0 || r.duplicated != 0 {
		t.Errorf("lost=%d duplicated=%d, want 0 and 0", r.lost, r.duplicated)
	}
}

func checkDeliveries(mails []*testMail, posts map[string]map[string][]post, quarantined map[string]string) deliveryReport {
	var r deliveryReport
	r.sent = len(mails)
	for _, m := range mails {
		m.mu.Lock()
		acked := m.acked
		m.mu.Unlock()
		if acked {
			r.acked++
		}
		allOnce, dup := true, false
		for _, rc := range m.rcpts {
			n := len(posts[rc][m.msgID])
			if n != 1 {
				allOnce = false
			}
			if n > 1 {
				dup = true
				var ids []string
				for _, p := range posts[rc][m.msgID] {
					ids = append(ids, fmt.Sprintf("post %s (mmgate_id %s, part %s, at %s)", p.ID, p.prop("mmgate_id"), p.prop("mmgate_part"),
						time.UnixMilli(p.CreateAt).Format("15:04:05.000")))
				}
				r.problems = append(r.problems, fmt.Sprintf("DUPLICATED <%s> (%s): %d posts for %s: %s; sender: %s",
					m.msgID, m.intake, n, rc, strings.Join(ids, ", "), m.history()))
			}
			if n > 0 && !acked {
				r.unackedPosted++
			}
		}
		if dup {
			r.duplicated++
		}
		reason, isQ := quarantined[m.msgID]
		switch {
		case !acked:
		case allOnce:
			r.posted++
		case isQ && strings.TrimSpace(reason) != "":
			r.quarantined++
		case isQ:
			r.lost++
			r.problems = append(r.problems, fmt.Sprintf("QUARANTINED WITHOUT A REASON <%s> (%s)", m.msgID, m.intake))
		case !dup:
			r.lost++
			var counts []string
			for _, rc := range m.rcpts {
				counts = append(counts, fmt.Sprintf("%s: %d", rc, len(posts[rc][m.msgID])))
			}
			r.problems = append(r.problems, fmt.Sprintf("LOST <%s> (%s, acknowledged by %s at %s): posts %s; sender: %s",
				m.msgID, m.intake, m.ackVia, m.ackAt.Format("15:04:05.000"), strings.Join(counts, ", "), m.history()))
		}
	}
	return r
}

// readPosts reads every post since `since` in the DMs of the named
// recipients, grouped by recipient and Message-ID.
func readPosts(t *testing.T, s *suite, since time.Time, names ...string) map[string]map[string][]post {
	t.Helper()
	out := map[string]map[string][]post{}
	for _, n := range names {
		r := s.recipient(t, n)
		ps, err := r.c.postsSince(r.dm, since)
		if err != nil {
			t.Fatalf("reading %s's DM with the bot: %v", n, err)
		}
		out[n] = postsByMessageID(ps)
		t.Logf("%s: %d posts since %s", n, len(ps), since.Format("15:04:05"))
	}
	return out
}

// --- the spool through the CLI -----------------------------------------------------------------

// quarantinedReasons returns the Message-ID → reason of every quarantined
// message (at most 1,000), from `quarantine list` and `quarantine show`.
func quarantinedReasons(g *gate) map[string]string {
	g.t.Helper()
	out := map[string]string{}
	for _, r := range g.list("quarantine", "list", "--limit", "1000") {
		show := g.mustCLI("quarantine", "show", r.ID)
		id := strings.Trim(showField(show, "Message-ID"), "<>")
		out[id] = showField(show, "Reason")
		g.t.Logf("quarantined %s <%s>: %s", r.ID, id, out[id])
	}
	return out
}

// waitDrained waits until `queue list` shows nothing queued or retrying.
func waitDrained(t *testing.T, g *gate, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	lastLog := time.Time{}
	for {
		out, errOut, code := g.cli("queue", "list")
		if code == 0 && strings.TrimSpace(out) == "no messages" {
			t.Logf("spool drained (nothing queued or retrying) after %s", time.Since(start).Round(time.Second))
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the spool still has messages queued or retrying after %s (exit %d):\n%s%s", timeout, code, truncate(out, 3000), truncate(errOut, 1000))
		}
		if time.Since(lastLog) > 20*time.Second {
			lastLog = time.Now()
			t.Logf("waiting for the spool to drain: %s", spoolGauge(g))
		}
		time.Sleep(2 * time.Second)
	}
}

var spoolGaugeRE = regexp.MustCompile(`(?m)^mmgate_spool_messages\{state="([a-z]+)"\} ([0-9.e+]+)$`)

// spoolGauge is the mmgate_spool_messages gauge by state, e.g.
// "queued=12 retrying=0 posted=4000 quarantined=0" ("" when unavailable).
func spoolGauge(g *gate) string {
	resp, err := httpClient.Get("http://" + g.httpAddr + "/metrics")
	if err != nil {
		return "metrics: " + err.Error()
	}
	b, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	var parts []string
	for _, m := range spoolGaugeRE.FindAllStringSubmatch(string(b), -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		parts = append(parts, fmt.Sprintf("%s=%d", m[1], int64(v)))
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

// --- mounts and commands -----------------------------------------------------------------------

// runCmd runs a command with a timeout and returns its combined output.
func runCmd(timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// mountTmpfs mounts a tmpfs of size (e.g. "8m") on dir, unmounted at the
// end of the test (registered before the gate, so after it stops).
func mountTmpfs(t *testing.T, dir, size string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := runCmd(30*time.Second, "mount", "-t", "tmpfs", "-o", "size="+size+",mode=0755", "tmpfs", dir); err != nil {
		needPeer(t, false, fmt.Sprintf("cannot mount a tmpfs for the storage failure test (run as root with CAP_SYS_ADMIN): %v", err))
	}
	t.Cleanup(func() {
		// Stacked mounts (a read-only bind) first, then the tmpfs itself.
		for i := 0; i < 5 && isMountPoint(dir); i++ {
			if _, err := runCmd(30*time.Second, "umount", dir); err != nil {
				t.Errorf("unmounting %s: %v; detaching it lazily", dir, err)
				_, _ = runCmd(30*time.Second, "umount", "-l", dir)
			}
		}
	})
}

// isMountPoint reports whether dir is a mount point (findmnt).
func isMountPoint(dir string) bool {
	_, err := runCmd(10*time.Second, "findmnt", "--mountpoint", filepath.Clean(dir))
	return err == nil
}

// The checker of the fault tests finds what it must (it needs no peer).
func TestCheckDeliveriesFindsLossAndDuplicates(t *testing.T) {
	mk := func(id string, acked bool, rcpts ...string) *testMail {
		return &testMail{msgID: id, rcpts: rcpts, intake: "smtp", acked: acked}
	}
	mails := []*testMail{
		mk("ok", true, "alice", "bob"),
		mk("lost", true, "alice"),
		mk("half", true, "alice", "bob"), // bob never got it
		mk("dup", true, "alice"),
		mk("quarantined", true, "alice"),
		mk("no-reason", true, "alice"),
		mk("refused", false, "alice"),
	}
	one := []post{{ID: "p1"}}
	posts := map[string]map[string][]post{
		"alice": {"ok": one, "half": one, "dup": {{ID: "p2"}, {ID: "p3"}}},
		"bob":   {"ok": one},
	}
	r := checkDeliveries(mails, posts, map[string]string{"quarantined": "auto-reply: …", "no-reason": " "})
	want := deliveryReport{sent: 7, acked: 6, posted: 1, quarantined: 1, lost: 3, duplicated: 1}
	r.problems = nil
	if fmt.Sprint(r) != fmt.Sprint(want) {
		t.Errorf("report %+v, want %+v", r, want)
	}
}

// reportSummary prints a fault test's summary line and, when
// MMGATE_E2E_SUMMARY names a file, appends it there: `go test` shows a
// passing package's output only with -v, and `make test` prints that file at
// the end so that CI's log carries the counts.
func reportSummary(line string) {
	fmt.Println(line)
	if path := os.Getenv("MMGATE_E2E_SUMMARY"); path != "" {
		if f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			_, _ = fmt.Fprintln(f, line)
			_ = f.Close()
		}
	}
}
