package e2e

import (
	"bytes"
	"context"
	"fmt"
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

// deliverOffline puts eml into alice's Maildir while dovecot is stopped:
// dovecot-lda without -d needs no running auth service (it runs as the
// mail user with alice's home).
func (d *dovecot) deliverOffline(t *testing.T, eml []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	home := filepath.Join(d.dir, "home", "alice")
	if err := os.MkdirAll(home, 0o755); err != nil {
		t.Fatal(err)
	}
	_ = exec.Command("chown", "-R", "nobody:nogroup", filepath.Join(d.dir, "home")).Run()
	cmd := exec.CommandContext(ctx, dovecotLDA, "-c", filepath.Join(d.dir, "dovecot.conf"), "-o", "log_path=/dev/stderr")
	cmd.Env = []string{"HOME=" + home, "USER=alice", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Dir = "/"
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}}
	cmd.Stdin = bytes.NewReader(eml)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dovecot-lda (offline): %v\n%s", err, out)
	}
}

// TestIMAPIntoMattermost: mmgate watches a real dovecot mailbox. The backlog
// that was there before mmgate first saw the mailbox is not posted; new mail
// is, once; mail that arrives while dovecot is down is posted once it is
// back, without restarting mmgate; stored mail ends flagged in the mailbox.
func TestIMAPIntoMattermost(t *testing.T) {
	s := setup(t)
	needRoot(t, "dovecot")
	needCmd(t, "dovecot-imapd", "dovecot", dovecotLDA)
	alice := s.recipient(t, "alice")
	rcpt := "alice@" + mailDomain
	mail := func(n, body string) (string, []byte) {
		id := "imap-" + n + "@e2e.test"
		return id, crlf("Return-Path: <jira-svc@tools.test>\n" + header("Jira <jira@"+mailDomain+">", rcpt, "E2E IMAP "+n, id) +
			"Content-Type: text/plain; charset=utf-8\n\n" + body + " (" + n + ")\n")
	}

	// The dovecot must exist before the gate (the gate's config names it),
	// so start it under a placeholder gate directory name.
	g := newGate(t, s, gateConfig{})
	dv := startDovecot(t, g)
	oldID, old := mail(nonce(), "An old mail from the backlog")
	since := time.Now()
	dv.deliver(t, old)

	g.stop()
	// A mailbox name of its own: the gate's directory (and the first-seen
	// mark kept in its spool) is the same when the test runs again.
	g.writeConfig(gateConfig{Extra: fmt.Sprintf(`imap:
  mailboxes:
    ops-%s:
      address: 127.0.0.1:%d
      tls: none
      username: alice
      password: alicepw
      poll_interval: 2s
`, nonce(), dv.port)})
	g.start()

	n := nonce()
	newID, fresh := mail(n, "Read from IMAP by mmgate")
	dv.deliver(t, fresh)
	p := exactlyOnePost(t, g, alice, since, newID)
	if !strings.Contains(p.Message, "Read from IMAP by mmgate ("+n+")") {
		t.Errorf("the post does not hold the body:\n%s", p.Message)
	}
	show := showOf(t, g, p.prop("mmgate_id"), "posted")
	if !strings.Contains(showField(show, "Received"), "via imap") {
		t.Errorf("queue show does not say the message came via imap:\n%s", show)
	}
	noPost(t, g, alice, since, oldID)

	// dovecot stops; mail arrives meanwhile; dovecot returns: mmgate (still
	// running) reconnects and posts it once.
	stopPID(t, "dovecot", dv.pid)
	downID, down := mail(nonce(), "Arrived while the IMAP server was down")
	dv.deliverOffline(t, down)
	dv.pid = peerScript(t, g.s, "dovecot.sh", dv.dir, fmt.Sprint(dv.port))
	exactlyOnePost(t, g, alice, since, downID)
	exactlyOnePost(t, g, alice, since, newID)

	// Stored mail is flagged: a restart of mmgate does not post it again.
	g.stop()
	g.start()
	settle(g)
	for _, id := range []string{newID, downID} {
		exactlyOnePost(t, g, alice, since, id)
	}
	noPost(t, g, alice, since, oldID)
}
