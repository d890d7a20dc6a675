package e2e

// End-to-end tests of the intakes other than SMTP, each fed by the real peer
// an operator would put in front of it: postfix's pipe transport running
// `mmgate deliver`, GitLab's mail_room reading a dovecot mailbox and posting
// to the postback endpoint, and an HTTP client speaking mail_room's JWT
// protocol.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/smtp"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// --- requirements ------------------------------------------------------------------------------

// needPeer skips (or, under MMGATE_E2E=1, fails) when a peer cannot run here.
func needPeer(t *testing.T, ok bool, msg string) {
	t.Helper()
	if ok {
		return
	}
	msg += " (bash test/peers/install.sh installs the peers; `make e2e` runs it)"
	if os.Getenv("MMGATE_E2E") == "1" {
		t.Fatal(msg)
	}
	t.Skip(msg)
}

// needRoot: postfix and dovecot run their processes as other users.
func needRoot(t *testing.T, peer string) {
	t.Helper()
	needPeer(t, os.Geteuid() == 0, "the throwaway "+peer+" must be started as root (it runs processes as postfix/nobody)")
}

// needCmd requires executables (names on PATH or absolute paths).
func needCmd(t *testing.T, pkg string, names ...string) {
	t.Helper()
	for _, n := range names {
		_, err := exec.LookPath(n)
		needPeer(t, err == nil, fmt.Sprintf("%s is not installed (Debian package %s)", n, pkg))
	}
}

// peerDir makes a fresh directory for a throwaway peer in the gate's
// directory. The suite's directories become traversable (not readable) by
// others, so that the unprivileged users the peers run as (postfix's pipe
// user, dovecot's mail user) reach their files, mmgate's binary and socket.
func peerDir(t *testing.T, g *gate, name string) string {
	t.Helper()
	for _, d := range []string{g.s.root, g.dir} {
		if err := os.Chmod(d, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	d := filepath.Join(g.dir, name)
	if err := os.RemoveAll(d); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(d, 0o755); err != nil {
		t.Fatal(err)
	}
	return d
}

// peerScript runs test/peers/SCRIPT ARGS and returns the PID it prints on its
// last line of output; any failure fails the test.
func peerScript(t *testing.T, s *suite, script string, args ...string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", append([]string{filepath.Join(s.peers, script)}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		t.Fatalf("test/peers/%s %s: %v\nstdout:\n%s\nstderr:\n%s", script, strings.Join(args, " "), err, out.String(), errb.String())
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(lines[len(lines)-1]))
	if err != nil || pid <= 0 {
		t.Fatalf("test/peers/%s printed no PID on its last line:\nstdout:\n%s\nstderr:\n%s", script, out.String(), errb.String())
	}
	return pid
}

// pidAlive: pid is a running process (not a zombie).
func pidAlive(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
		return false
	}
	return true
}

// waitGone waits up to d for pid to end.
func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for pidAlive(pid) {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
	return true
}

// stopPID sends SIGTERM to pid (a peer the test started), then SIGKILL
// after 15 s.
func stopPID(t *testing.T, what string, pid int) {
	t.Helper()
	if !pidAlive(pid) {
		return
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	if !waitGone(pid, 15*time.Second) {
		t.Errorf("%s (pid %d) did not stop within 15s of SIGTERM; killing it", what, pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
		waitGone(pid, 5*time.Second)
	}
}

func freePort(t *testing.T) int {
	t.Helper()
	_, p, _ := net.SplitHostPort(freeAddr(t))
	n, _ := strconv.Atoi(p)
	return n
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

// logLines returns the lines of the file at path that contain every needle.
func logLines(path string, needles ...string) []string {
	var out []string
	for _, l := range strings.Split(readFile(path), "\n") {
		all := true
		for _, n := range needles {
			all = all && strings.Contains(l, n)
		}
		if all {
			out = append(out, l)
		}
	}
	return out
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// exactlyOnePost waits for the post of msgID in r's DM, lets a duplicate
// show up if there were to be one, and returns the single post.
func exactlyOnePost(t *testing.T, g *gate, r *recipient, since time.Time, msgID string) post {
	t.Helper()
	r.waitPosts(t, g, since, msgID, 1)
	settle(g)
	ps, err := r.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 {
		t.Fatalf("%s has %d posts of <%s>, want exactly 1", r.name, len(ps), msgID)
	}
	checkPostCommon(t, g.s, ps[0], msgID)
	return ps[0]
}

// noPost asserts, after letting mmgate work, that r has no post of msgID.
func noPost(t *testing.T, g *gate, r *recipient, since time.Time, msgID string) {
	t.Helper()
	settle(g)
	ps, err := r.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 0 {
		t.Fatalf("%s has %d post(s) of <%s>, want none", r.name, len(ps), msgID)
	}
}

// spoolCount is the number of messages `queue list --all` shows.
func spoolCount(g *gate) int {
	g.t.Helper()
	return len(g.list("queue", "list", "--all"))
}

// showOf waits until `queue show id` reports the state want and returns it.
func showOf(t *testing.T, g *gate, id, want string) string {
	t.Helper()
	var out string
	eventually(t, waitFor, fmt.Sprintf("state %s of %s in `queue show`", want, id), func() (bool, string) {
		out = g.mustCLI("queue", "show", id)
		return showField(out, "State") == want, out
	})
	return out
}

// --- postfix with a pipe transport -------------------------------------------------------------

// postfixPipe is a throwaway postfix (test/peers/postfix-pipe.sh) that hands
// the mail domain to `mmgate deliver` through a master.cf pipe service.
type postfixPipe struct {
	t    *testing.T
	dir  string
	addr string
	pid  int
}

func startPostfixPipe(t *testing.T, g *gate, socket, pipeUser string) *postfixPipe {
	t.Helper()
	dir := peerDir(t, g, "postfix")
	port := freePort(t)
	p := &postfixPipe{t: t, dir: dir, addr: fmt.Sprintf("127.0.0.1:%d", port)}
	t.Cleanup(p.stop)
	p.pid = peerScript(t, g.s, "postfix-pipe.sh", dir, strconv.Itoa(port), g.s.bin, socket, mailDomain, pipeUser)
	return p
}

func (p *postfixPipe) etc() string     { return filepath.Join(p.dir, "etc") }
func (p *postfixPipe) maillog() string { return filepath.Join(p.dir, "maillog") }

// pidFile reads the PID a peer script left in DIR/pid (0 if none).
func pidFile(dir string) int {
	n, _ := strconv.Atoi(strings.TrimSpace(readFile(filepath.Join(dir, "pid"))))
	return n
}

func (p *postfixPipe) stop() {
	if p.pid == 0 {
		// The script may have failed after starting postfix.
		if p.pid = pidFile(p.dir); p.pid == 0 {
			return
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "postfix", "-c", p.etc(), "stop").CombinedOutput(); err != nil {
		p.t.Logf("postfix -c %s stop: %v\n%s", p.etc(), err, out)
	}
	if !waitGone(p.pid, 20*time.Second) {
		stopPID(p.t, "postfix", p.pid)
	}
	if p.t.Failed() {
		p.t.Logf("postfix maillog (%s), last lines:\n%s", p.maillog(), tail(readFile(p.maillog()), 60))
	}
	p.pid = 0
}

// send submits msg over SMTP (no TLS: loopback) and returns postfix's queue id.
func (p *postfixPipe) send(from, to string, msg []byte) string {
	p.t.Helper()
	qid, err := func() (string, error) {
		c, err := smtp.Dial(p.addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		if err := c.Hello("e2e-client.test"); err != nil {
			return "", err
		}
		if err := c.Mail(from); err != nil {
			return "", fmt.Errorf("MAIL FROM: %w", err)
		}
		if err := c.Rcpt(to); err != nil {
			return "", fmt.Errorf("RCPT TO: %w", err)
		}
		// DATA by hand, to read the final reply with the queue id.
		id, err := c.Text.Cmd("DATA")
		if err != nil {
			return "", err
		}
		c.Text.StartResponse(id)
		_, _, err = c.Text.ReadResponse(354)
		c.Text.EndResponse(id)
		if err != nil {
			return "", fmt.Errorf("DATA: %w", err)
		}
		w := c.Text.DotWriter()
		if _, err := w.Write(msg); err != nil {
			return "", err
		}
		if err := w.Close(); err != nil {
			return "", err
		}
		_, reply, err := c.Text.ReadResponse(250)
		if err != nil {
			return "", fmt.Errorf("end of DATA: %w", err)
		}
		_, qid, ok := strings.Cut(reply, "queued as ")
		if qid = strings.TrimSpace(qid); !ok || qid == "" {
			return "", fmt.Errorf("no queue id in the reply %q", reply)
		}
		_ = c.Quit()
		return qid, nil
	}()
	if err != nil {
		p.t.Fatalf("sending to postfix at %s: %v\nmaillog:\n%s", p.addr, err, tail(readFile(p.maillog()), 30))
	}
	return qid
}

// waitLog waits for a maillog line holding every needle and returns it.
func (p *postfixPipe) waitLog(what string, needles ...string) string {
	p.t.Helper()
	var line string
	eventually(p.t, waitFor, what+" in postfix's maillog", func() (bool, string) {
		ls := logLines(p.maillog(), needles...)
		if len(ls) == 0 {
			return false, "maillog:\n" + tail(readFile(p.maillog()), 20)
		}
		line = ls[len(ls)-1]
		return true, ""
	})
	return line
}

// postqueue runs postqueue -c ETC ARGS.
func (p *postfixPipe) postqueue(args ...string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "postqueue", append([]string{"-c", p.etc()}, args...)...).CombinedOutput()
	if err != nil {
		p.t.Fatalf("postqueue -c %s %s: %v\n%s", p.etc(), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// 14. postfix's pipe transport runs `mmgate deliver`: the mail is posted once;
// while mmgate is down, deliver exits 75, postfix defers the mail and, once
// flushed with mmgate back, it is posted exactly once.
func TestPipeThroughRealPostfix(t *testing.T) {
	s := setup(t)
	needRoot(t, "postfix")
	needCmd(t, "postfix", "postfix", "postqueue")
	const pipeUser, pipeGroup = "nobody", "nogroup"
	u, err := user.Lookup(pipeUser)
	needPeer(t, err == nil, "no user "+pipeUser+" for postfix's pipe transport")
	grp, err := user.LookupGroup(pipeGroup)
	needPeer(t, err == nil, "no group "+pipeGroup+" for mmgate's socket")
	needPeer(t, u.Gid == grp.Gid, pipeUser+"'s primary group is not "+pipeGroup)

	// The socket is writable by its group only: postfix's pipe user is in it.
	g := newGate(t, s, gateConfig{Extra: `pipe: {socket: "{gate_dir}/mmgate.sock", socket_mode: "0660", socket_group: ` + pipeGroup + "}\n"})
	sock := filepath.Join(g.dir, "mmgate.sock")
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatalf("mmgate serve did not create pipe.socket: %v", err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Errorf("pipe.socket %s has mode %s, want a socket with 0660", sock, fi.Mode())
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && strconv.Itoa(int(st.Gid)) != grp.Gid {
		t.Errorf("pipe.socket %s has gid %d, want %s (%s)", sock, st.Gid, grp.Gid, pipeGroup)
	}
	pf := startPostfixPipe(t, g, sock, pipeUser)
	alice := s.recipient(t, "alice")
	rcpt := "alice@" + mailDomain

	// 1. Through postfix while mmgate runs.
	n := nonce()
	msgID := "pipe-" + n + "@e2e.test"
	eml := header("Jira Service <jira-svc@tools.test>", rcpt, "E2E pipe "+n, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nThrough postfix's pipe transport (" + n + ").\n"
	since := time.Now()
	qid := pf.send("jira-svc@tools.test", rcpt, crlf(eml))
	p := exactlyOnePost(t, g, alice, since, msgID)
	if !strings.Contains(p.Message, "Through postfix's pipe transport ("+n+")") {
		t.Errorf("the post does not hold the body:\n%s", p.Message)
	}
	pf.waitLog("the delivery of "+qid, qid+": to=<"+rcpt+">", "relay=mmgate", "status=sent")
	show := showOf(t, g, p.prop("mmgate_id"), "posted")
	if !strings.Contains(showField(show, "Received"), "via pipe") {
		t.Errorf("queue show does not say the message came via pipe:\n%s", show)
	}
	if got := showField(show, "Sender"); got != "jira-svc@tools.test" {
		t.Errorf("Sender %q, want postfix's envelope sender jira-svc@tools.test:\n%s", got, show)
	}
	if got := showField(show, "Recipients"); got != rcpt {
		t.Errorf("Recipients %q, want postfix's envelope recipient %s:\n%s", got, rcpt, show)
	}
	if got := showField(show, "App"); got != "jira" {
		t.Errorf("App %q, want jira (by the sender pattern):\n%s", got, show)
	}

	// 2. mmgate down: deliver exits 75 (EX_TEMPFAIL) and postfix defers.
	g.stop()
	n2 := nonce()
	msgID2 := "pipe-down-" + n2 + "@e2e.test"
	eml2 := header("Jira Service <jira-svc@tools.test>", rcpt, "E2E pipe deferred "+n2, msgID2) +
		"Content-Type: text/plain; charset=utf-8\n\nDeferred by postfix while mmgate was down (" + n2 + ").\n"
	if code, out := pipeSend(s, sock, &testMail{addrs: []string{rcpt}}, crlf(eml2)); code != 75 {
		t.Errorf("mmgate deliver with mmgate down: exit status %d, want 75 (EX_TEMPFAIL)\n%s", code, out)
	}
	since2 := time.Now()
	qid2 := pf.send("jira-svc@tools.test", rcpt, crlf(eml2))
	line := pf.waitLog("the deferral of "+qid2, qid2+": to=<"+rcpt+">", "relay=mmgate", "status=deferred")
	if !strings.Contains(line, "cannot reach mmgate") {
		t.Errorf("postfix's deferral does not carry deliver's explanation:\n%s", line)
	}
	if q := pf.postqueue("-p"); !strings.Contains(q, qid2) || !strings.Contains(q, rcpt) {
		t.Fatalf("postqueue -p does not list the deferred %s for %s:\n%s", qid2, rcpt, q)
	}

	// 3. mmgate back, queue flushed: posted exactly once.
	g.start()
	pf.postqueue("-f")
	p2 := exactlyOnePost(t, g, alice, since2, msgID2)
	pf.waitLog("the delivery of "+qid2+" after the flush", qid2+": to=<"+rcpt+">", "relay=mmgate", "status=sent")
	eventually(t, waitFor, "an empty postfix queue", func() (bool, string) {
		q := pf.postqueue("-p")
		return strings.Contains(q, "Mail queue is empty"), q
	})
	if p2.prop("mmgate_id") == p.prop("mmgate_id") {
		t.Errorf("both messages were stored as %s", p.prop("mmgate_id"))
	}
	if ps, err := alice.postsOf(since, msgID); err != nil || len(ps) != 1 {
		t.Errorf("after the flush alice has %d posts of the first message (err %v), want still 1", len(ps), err)
	}
}

// --- dovecot and mail_room ---------------------------------------------------------------------

const dovecotLDA = "/usr/lib/dovecot/dovecot-lda"

// dovecot is a throwaway IMAP server (test/peers/dovecot.sh), user alice.
type dovecot struct {
	dir  string
	port int
	pid  int
}

func startDovecot(t *testing.T, g *gate) *dovecot {
	t.Helper()
	d := &dovecot{dir: peerDir(t, g, "dovecot"), port: freePort(t)}
	t.Cleanup(func() {
		if d.pid == 0 {
			d.pid = pidFile(d.dir) // the script may have failed after starting dovecot
		}
		if d.pid != 0 {
			stopPID(t, "dovecot", d.pid)
		}
		if t.Failed() {
			t.Logf("dovecot log (%s), last lines:\n%s", d.dir, tail(readFile(filepath.Join(d.dir, "dovecot.log")), 30))
		}
	})
	d.pid = peerScript(t, g.s, "dovecot.sh", d.dir, strconv.Itoa(d.port))
	c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", d.port), 5*time.Second)
	if err != nil {
		t.Fatalf("dovecot does not listen on 127.0.0.1:%d: %v\n%s", d.port, err, readFile(filepath.Join(d.dir, "fg.log")))
	}
	_ = c.Close()
	return d
}

// deliver puts eml, unseen, into alice's INBOX.
func (d *dovecot) deliver(t *testing.T, eml []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, dovecotLDA, "-c", filepath.Join(d.dir, "dovecot.conf"), "-d", "alice")
	cmd.Stdin = bytes.NewReader(eml)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dovecot-lda: %v\n%s\ndovecot log:\n%s", err, out, tail(readFile(filepath.Join(d.dir, "dovecot.log")), 20))
	}
}

// mailroom is a running gitlab-mail_room watching alice's INBOX.
type mailroom struct {
	t    *testing.T
	name string
	log  string // mail_room's structured log
	out  string // its standard output and error
	cmd  *exec.Cmd
	done chan struct{}
}

// startMailroom runs `mail_room -c CONFIG` with a postback delivery to url
// authenticated by token, and waits until it idles on the INBOX.
func startMailroom(t *testing.T, g *gate, name string, d *dovecot, url, token string) *mailroom {
	t.Helper()
	dir := filepath.Join(g.dir, "mailroom-"+name)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	m := &mailroom{t: t, name: name, log: filepath.Join(dir, "mail_room.log"), out: filepath.Join(dir, "out.log")}
	// gitlab-mail_room 0.0.9: symbol keys; ssl false is plain IMAP on loopback;
	// a short idle_timeout re-checks the INBOX even if an IDLE wake-up is missed.
	// No content_type, as GitLab configures it: Faraday then labels the raw
	// mail application/x-www-form-urlencoded.
	cfg := fmt.Sprintf(`---
:mailboxes:
  -
    :email: "alice"
    :password: "alicepw"
    :host: "127.0.0.1"
    :port: %d
    :ssl: false
    :start_tls: false
    :name: "INBOX"
    :idle_timeout: 5
    :delivery_method: postback
    :delivery_url: %q
    :delivery_token: %q
    :logger:
      :log_path: %q
`, d.port, url, token, m.log)
	cfgPath := filepath.Join(dir, "mail_room.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	of, err := os.Create(m.out)
	if err != nil {
		t.Fatal(err)
	}
	m.cmd = exec.Command("mail_room", "-c", cfgPath)
	m.cmd.Stdout, m.cmd.Stderr = of, of
	m.cmd.Dir = dir
	if err := m.cmd.Start(); err != nil {
		_ = of.Close()
		t.Fatalf("starting mail_room: %v", err)
	}
	m.done = make(chan struct{})
	go func() {
		_ = m.cmd.Wait()
		_ = of.Close()
		close(m.done)
	}()
	t.Cleanup(m.stop)
	eventually(t, waitFor, "mail_room "+name+" idling on alice's INBOX", func() (bool, string) {
		select {
		case <-m.done:
			t.Fatalf("mail_room %s exited during start-up: %v\noutput:\n%s\nlog:\n%s", name, m.cmd.ProcessState, tail(readFile(m.out), 30), tail(readFile(m.log), 30))
		default:
		}
		return strings.Contains(readFile(m.log), `"action":"Idling"`), "log:\n" + tail(readFile(m.log), 10) + "\noutput:\n" + tail(readFile(m.out), 10)
	})
	return m
}

func (m *mailroom) stop() {
	if m.cmd == nil {
		return
	}
	select {
	case <-m.done:
	default:
		_ = m.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-m.done:
		case <-time.After(15 * time.Second):
			m.t.Errorf("mail_room %s did not stop within 15s of SIGTERM; killing it", m.name)
			_ = m.cmd.Process.Kill()
			<-m.done
		}
	}
	if m.t.Failed() {
		m.t.Logf("mail_room %s log, last lines:\n%s\noutput:\n%s", m.name, tail(readFile(m.log), 30), tail(readFile(m.out), 30))
	}
	m.cmd = nil
}

// 15. GitLab's mail_room reads a mail from dovecot and posts it to the
// postback endpoint with its token: posted once to the To: recipient. A
// mail_room with a wrong token gets 401 and nothing is stored or posted.
func TestPostbackFromRealMailroom(t *testing.T) {
	s := setup(t)
	needRoot(t, "dovecot")
	needCmd(t, "dovecot-imapd", "dovecot", dovecotLDA)
	needCmd(t, "ruby-mail-room", "mail_room")
	faraday := exec.Command("ruby", "-e", `require "faraday"`).Run()
	needPeer(t, faraday == nil, "mail_room's postback needs the ruby library faraday (Debian package ruby-faraday)")

	token := "mailroom-" + nonce() + nonce()
	g := newGate(t, s, gateConfig{Extra: fmt.Sprintf("postback:\n  mailboxes:\n    incoming: {token: %q, app: jira}\n", token)})
	dv := startDovecot(t, g)
	alice := s.recipient(t, "alice")
	url := "http://" + g.httpAddr + "/intake/mailroom/incoming"
	rcpt := "alice@" + mailDomain

	// 1. The right token.
	good := startMailroom(t, g, "good", dv, url, token)
	n := nonce()
	msgID := "mailroom-" + n + "@e2e.test"
	eml := header("Jira <jira@"+mailDomain+">", rcpt, "E2E mail_room "+n, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nRead from IMAP by mailroom (" + n + ").\n"
	since := time.Now()
	dv.deliver(t, crlf(eml))
	p := exactlyOnePost(t, g, alice, since, msgID)
	if !strings.Contains(p.Message, "Read from IMAP by mailroom ("+n+")") {
		t.Errorf("the post does not hold the body:\n%s", p.Message)
	}
	id := p.prop("mmgate_id")
	show := showOf(t, g, id, "posted")
	if !strings.Contains(showField(show, "Received"), "via postback") {
		t.Errorf("queue show does not say the message came via postback:\n%s", show)
	}
	if got := showField(show, "App"); got != "jira" {
		t.Errorf("App %q, want jira (postback.mailboxes.incoming.app):\n%s", got, show)
	}
	if !strings.Contains(show, rcpt) {
		t.Errorf("queue show does not name the header recipient %s:\n%s", rcpt, show)
	}
	if len(logLines(g.logPath, "postback: stored", id)) == 0 {
		t.Errorf("mmgate's log has no \"postback: stored\" line for %s", id)
	}
	good.stop()

	// 2. A wrong token: 401, nothing stored, nothing posted.
	before := spoolCount(g)
	failedBefore := len(logLines(g.logPath, "postback: authentication failed"))
	bad := startMailroom(t, g, "bad", dv, url, "wrong-"+nonce())
	n2 := nonce()
	msgID2 := "mailroom-bad-" + n2 + "@e2e.test"
	eml2 := header("Jira <jira@"+mailDomain+">", rcpt, "E2E mail_room wrong token "+n2, msgID2) +
		"Content-Type: text/plain; charset=utf-8\n\nMust not be posted (" + n2 + ").\n"
	since2 := time.Now()
	dv.deliver(t, crlf(eml2))
	eventually(t, waitFor, "mmgate logging the wrong token", func() (bool, string) {
		ls := logLines(g.logPath, "postback: authentication failed", "mailbox=incoming", "code=bad_token")
		return len(ls) > failedBefore, tail(readFile(g.logPath), 10)
	})
	eventually(t, waitFor, "mail_room pushing the message (it ignores the 401)", func() (bool, string) {
		return strings.Contains(readFile(bad.log), "message pushed"), tail(readFile(bad.log), 10)
	})
	noPost(t, g, alice, since2, msgID2)
	if after := spoolCount(g); after != before {
		t.Errorf("the spool holds %d messages after the refused postback, want %d (nothing stored)", after, before)
	}
	if strings.Contains(readFile(g.logPath), token) {
		t.Errorf("mmgate's log contains the postback token")
	}
}

// --- a JWT client ------------------------------------------------------------------------------

// mailroomJWT signs claims as GitLab's mail_room does: HS256 with the
// secret file's 32 bytes.
func mailroomJWT(key []byte, iat time.Time, nonce string) string {
	enc := base64.RawURLEncoding
	h, _ := json.Marshal(map[string]string{"alg": "HS256", "typ": "JWT"})
	c, _ := json.Marshal(map[string]any{"iss": "gitlab-mailroom", "iat": iat.Unix(), "nonce": nonce})
	signing := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(signing))
	return signing + "." + enc.EncodeToString(mac.Sum(nil))
}

type postbackAnswer struct {
	Success bool   `json:"success"`
	ID      string `json:"id"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

// postJWT posts eml to url with jwt in mail_room's header.
func postJWT(t *testing.T, url, jwt string, eml []byte) (int, postbackAnswer) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(eml))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "message/rfc822")
	req.Header.Set("Gitlab-Mailroom-Api-Request", jwt)
	resp, err := httpClient.Do(req)
	if err != nil {
		t.Fatalf("POST %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var a postbackAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		t.Fatalf("POST %s: HTTP %d with a body that is not JSON: %q", url, resp.StatusCode, b)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("POST %s: Content-Type %q, want application/json", url, ct)
	}
	return resp.StatusCode, a
}

// 16. An HTTP client with mail_room's JWT: 200 and one post; a stale JWT and
// a replayed one get 401 and nothing is stored; the same mail posted again
// with a fresh JWT is stored but not posted twice (duplicate by Message-ID).
func TestPostbackJWTClient(t *testing.T) {
	s := setup(t)
	key := make([]byte, 32)
	if _, err := rand.Read(key); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(s.root, "mailroom-"+nonce()+".secret")
	if err := os.WriteFile(secret, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// No app: the mail is routed by its Return-Path (jira-svc@… → jira).
	g := newGate(t, s, gateConfig{Extra: fmt.Sprintf("postback:\n  mailboxes:\n    gitlab: {jwt_secret_file: %q}\n", secret)})
	alice := s.recipient(t, "alice")
	url := "http://" + g.httpAddr + "/intake/mailroom/gitlab"
	rcpt := "alice@" + mailDomain

	// 1. A valid JWT.
	n := nonce()
	msgID := "jwt-" + n + "@e2e.test"
	eml := crlf("Return-Path: <jira-svc@tools.test>\n" + header("Jira <jira@"+mailDomain+">", rcpt, "E2E JWT "+n, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nPosted with a mail_room JWT (" + n + ").\n")
	since := time.Now()
	first := mailroomJWT(key, time.Now(), "n1-"+nonce())
	st, a := postJWT(t, url, first, eml)
	if st != http.StatusOK || !a.Success || a.ID == "" {
		t.Fatalf("valid JWT: HTTP %d %+v, want 200 {success: true, id}", st, a)
	}
	id1 := a.ID
	p := exactlyOnePost(t, g, alice, since, msgID)
	if p.prop("mmgate_id") != id1 {
		t.Errorf("post mmgate_id %q, want the id %q the postback answered", p.prop("mmgate_id"), id1)
	}
	show := showOf(t, g, id1, "posted")
	if !strings.Contains(showField(show, "Received"), "via postback") {
		t.Errorf("queue show does not say the message came via postback:\n%s", show)
	}
	if got := showField(show, "App"); got != "jira" {
		t.Errorf("App %q, want jira (by the Return-Path jira-svc@tools.test):\n%s", got, show)
	}

	// 2. A stale JWT (issued 6 minutes ago) and a replayed one: 401, nothing stored.
	before := spoolCount(g)
	n2 := nonce()
	msgID2 := "jwt-stale-" + n2 + "@e2e.test"
	eml2 := crlf("Return-Path: <jira-svc@tools.test>\n" + header("Jira <jira@"+mailDomain+">", rcpt, "E2E JWT stale "+n2, msgID2) +
		"Content-Type: text/plain; charset=utf-8\n\nMust not be posted (" + n2 + ").\n")
	since2 := time.Now()
	st, a = postJWT(t, url, mailroomJWT(key, time.Now().Add(-6*time.Minute), "n2-"+nonce()), eml2)
	if st != http.StatusUnauthorized || a.Success || a.Code != "jwt_stale" {
		t.Errorf("stale JWT: HTTP %d %+v, want 401 with code jwt_stale", st, a)
	}
	st, a = postJWT(t, url, first, eml2)
	if st != http.StatusUnauthorized || a.Success || a.Code != "jwt_replayed" {
		t.Errorf("replayed JWT: HTTP %d %+v, want 401 with code jwt_replayed", st, a)
	}
	st, a = postJWT(t, url, mailroomJWT(make([]byte, 32), time.Now(), "n3-"+nonce()), eml2)
	if st != http.StatusUnauthorized || a.Success || a.Code != "jwt_bad_signature" {
		t.Errorf("JWT signed with another key: HTTP %d %+v, want 401 with code jwt_bad_signature", st, a)
	}
	noPost(t, g, alice, since2, msgID2)
	if after := spoolCount(g); after != before {
		t.Errorf("the spool holds %d messages after the refused postbacks, want %d (nothing stored)", after, before)
	}

	// 3. The first mail again with a fresh JWT: stored, but not posted again.
	st, a = postJWT(t, url, mailroomJWT(key, time.Now(), "n4-"+nonce()), eml)
	if st != http.StatusOK || !a.Success || a.ID == "" {
		t.Fatalf("the same mail with a fresh JWT: HTTP %d %+v, want 200 {success: true, id}", st, a)
	}
	if a.ID == id1 {
		t.Errorf("the second postback got the first one's id %s, want a message of its own", id1)
	}
	show2 := showOf(t, g, a.ID, "posted")
	if !strings.Contains(strings.ToLower(show2), "duplicate") {
		t.Errorf("queue show of the second copy does not mention the duplicate:\n%s", show2)
	}
	settle(g)
	ps, err := alice.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 {
		t.Fatalf("alice has %d posts of <%s> after it was posted back twice, want exactly 1", len(ps), msgID)
	}
	if ps[0].prop("mmgate_id") != id1 {
		t.Errorf("the remaining post is from %s, want the first message %s", ps[0].prop("mmgate_id"), id1)
	}
}
