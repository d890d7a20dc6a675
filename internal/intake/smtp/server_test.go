package smtpintake

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/smtp"
	"net/textproto"
	"runtime"
	"strings"
	"testing"
	"time"

	gosmtp "github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/metrics"
	"github.com/mmgate/mmgate/internal/spool"
)

const simpleMsg = "From: Jira <jira@corp.example>\r\nTo: alice@corp.example\r\nSubject: [JIRA] ABC-1\r\n\r\nHello.\r\n"

func onlyMessage(t *testing.T, ts *testServer) storedMsg {
	t.Helper()
	msgs := ts.store.stored()
	if len(msgs) != 1 {
		t.Fatalf("stored %d messages, want 1", len(msgs))
	}
	return msgs[0]
}

func TestStartTLSAuthPlainStoresMessage(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	c := testSession(t, ts).Ehlo()
	if !c.HasCap("STARTTLS") {
		t.Fatalf("STARTTLS not advertised: %q", c.caps)
	}
	if c.HasCap("AUTH") {
		t.Fatalf("AUTH advertised before TLS: %q", c.caps)
	}
	for _, capName := range []string{"8BITMIME", "SMTPUTF8", "PIPELINING", "SIZE 52428800"} {
		if !c.HasCap(capName) {
			t.Errorf("%s not advertised: %q", capName, c.caps)
		}
	}
	c.StartTLS().Ehlo()
	if !c.HasCap("AUTH PLAIN LOGIN") {
		t.Fatalf("AUTH PLAIN LOGIN not advertised after TLS: %q", c.caps)
	}
	if c.HasCap("STARTTLS") {
		t.Fatalf("STARTTLS advertised again inside TLS: %q", c.caps)
	}
	local := c.conn.LocalAddr().String()
	c.Auth(jiraUser, jiraPass).Mail("jira@corp.example").Rcpt("Alice@Corp.Example").Rcpt("bob@corp.example").
		Data(simpleMsg).Quit()

	m := onlyMessage(t, ts)
	e := m.env
	if e.Intake != "smtp" || e.Sender != "jira@corp.example" || e.AuthIdentity != jiraUser || e.App != "jira" ||
		e.Helo != "client.test" || e.RemoteAddr != local {
		t.Errorf("envelope = %+v (client at %s)", e, local)
	}
	if strings.Join(e.Recipients, ",") != "Alice@corp.example,bob@corp.example" {
		t.Errorf("recipients = %q", e.Recipients)
	}
	hdr, rest := splitReceived(t, m.body)
	if string(rest) != simpleMsg {
		t.Errorf("stored body differs:\n%q\nwant\n%q", rest, simpleMsg)
	}
	for _, want := range []string{"from client.test ([127.0.0.1])", "by mx.test (mmgate) with ESMTPSA", "(using TLSv1.", "\r\n\t"} {
		if !strings.Contains(hdr, want) {
			t.Errorf("Received header %q lacks %q", hdr, want)
		}
	}
	if strings.Contains(hdr, " for <") {
		t.Errorf("Received header names a recipient of a multi-recipient message: %q", hdr)
	}
}

func TestAuthLogin(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

	t.Run("challenges", func(t *testing.T) {
		c := testSession(t, ts).Ehlo().StartTLS().Ehlo()
		c.Expect(334, "", "AUTH LOGIN")
		if r := c.Cmd("%s", b64(jiraUser)); r.code != 334 || r.msg != b64("Password:") {
			t.Fatalf("after username: %d %q", r.code, r.msg)
		}
		c.Expect(235, "2.0.0", "%s", b64(jiraPass))
		c.Mail("a@corp.example").Rcpt("b@corp.example").Data(simpleMsg)
	})
	t.Run("initial response", func(t *testing.T) {
		c := testSession(t, ts).Ehlo().StartTLS().Ehlo()
		if r := c.Cmd("AUTH LOGIN %s", b64(jiraUser)); r.code != 334 || r.msg != b64("Password:") {
			t.Fatalf("AUTH LOGIN <user>: %d %q", r.code, r.msg)
		}
		c.Expect(235, "2.0.0", "%s", b64(jiraPass))
	})
	t.Run("username prompt", func(t *testing.T) {
		c := testSession(t, ts).Ehlo().StartTLS().Ehlo()
		if r := c.Cmd("AUTH LOGIN"); r.code != 334 || r.msg != b64("Username:") {
			t.Fatalf("AUTH LOGIN: %d %q", r.code, r.msg)
		}
		c.Cmd("%s", b64(jiraUser))
		c.Expect(535, "5.7.8", "%s", b64("wrong"))
	})
	t.Run("not during a transaction", func(t *testing.T) {
		c := testSession(t, ts).Ehlo().StartTLS().Ehlo().Mail("a@corp.example")
		c.Expect(503, "5.5.1", "AUTH LOGIN %s", b64(jiraUser))
	})
	for _, m := range ts.store.stored() {
		if m.env.AuthIdentity != jiraUser || m.env.App != "jira" {
			t.Errorf("envelope %+v", m.env)
		}
	}
	if n := len(ts.store.stored()); n != 1 {
		t.Errorf("stored %d, want 1", n)
	}
}

func TestAuthPolicy(t *testing.T) {
	loop4 := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 1}
	loop6 := &net.TCPAddr{IP: net.IPv6loopback, Port: 1}
	remote := &net.TCPAddr{IP: net.IPv4(192, 0, 2, 7), Port: 1}
	mapped := &net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1"), Port: 1}
	cases := []struct {
		tls      bool
		addr     net.Addr
		insecure bool
		want     bool
	}{
		{true, remote, false, true},
		{true, loop4, false, true},
		{false, remote, false, false},
		{false, remote, true, false}, // AllowInsecureAuth never applies to remote clients
		{false, loop4, false, false},
		{false, loop4, true, true},
		{false, loop6, true, true},
		{false, mapped, true, true},
		{false, nil, true, false},
		{false, fakeAddr("pipe"), true, false},
	}
	for _, tc := range cases {
		if got := authPermitted(tc.tls, tc.addr, tc.insecure); got != tc.want {
			t.Errorf("authPermitted(tls=%v, %v, insecure=%v) = %v, want %v", tc.tls, tc.addr, tc.insecure, got, tc.want)
		}
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "fake" }
func (a fakeAddr) String() string  { return string(a) }

func TestAuthRefusedWithoutTLS(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	c := testSession(t, ts).Ehlo()
	if c.HasCap("AUTH") {
		t.Fatalf("AUTH advertised without TLS: %q", c.caps)
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + jiraUser + "\x00" + jiraPass))
	c.Expect(538, "5.7.11", "AUTH PLAIN %s", ir)
	c.Expect(538, "5.7.11", "AUTH LOGIN")
	// Still a working session: an unauthenticated message is allowed without RequireAuth.
	c.Mail("x@corp.example").Rcpt("y@corp.example").Data(simpleMsg)
	if m := onlyMessage(t, ts); m.env.AuthIdentity != "" || m.env.App != "" {
		t.Errorf("unauthenticated envelope has identity: %+v", m.env)
	}
}

func TestInsecureAuthOnLoopback(t *testing.T) {
	opts := baseOptions(t)
	opts.TLSConfig = nil
	opts.AllowInsecureAuth = true
	ts := startServer(t, nil, opts)
	c := testSession(t, ts).Ehlo()
	if !c.HasCap("AUTH PLAIN LOGIN") || c.HasCap("STARTTLS") {
		t.Fatalf("caps on loopback without TLS: %q", c.caps)
	}
	c.Auth("relay", "relay-pw").Mail("n@corp.example").Rcpt("y@corp.example").Data(simpleMsg)
	m := onlyMessage(t, ts)
	if m.env.AuthIdentity != "relay" || m.env.App != "" {
		t.Errorf("envelope %+v", m.env)
	}
	hdr, _ := splitReceived(t, m.body)
	if !strings.Contains(hdr, "with ESMTPA\r\n") || strings.Contains(hdr, "using") {
		t.Errorf("Received %q", hdr)
	}
	if !strings.Contains(hdr, "for <y@corp.example>;") {
		t.Errorf("Received of a single-recipient message lacks for: %q", hdr)
	}
}

func TestBadPassword(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	before535 := counterValue(metrics.SMTPReplies.WithLabelValues("535"))
	before421 := counterValue(metrics.SMTPReplies.WithLabelValues("421"))
	c := testSession(t, ts).Ehlo().StartTLS().Ehlo()
	bad := base64.StdEncoding.EncodeToString([]byte("\x00" + jiraUser + "\x00wrong"))
	c.Expect(535, "5.7.8", "AUTH PLAIN %s", bad)
	// Malformed PLAIN and unknown users are failures too.
	c.Expect(535, "5.7.8", "AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("jira\x00"+jiraPass)))
	c.Expect(421, "4.7.0", "AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("\x00nobody\x00"+jiraPass)))
	if _, err := c.tp.ReadLine(); !errors.Is(err, io.EOF) {
		t.Fatalf("connection still open after 3 failed AUTH: %v", err)
	}
	if d := counterValue(metrics.SMTPReplies.WithLabelValues("535")) - before535; d != 2 {
		t.Errorf("535 counted %v times, want 2", d)
	}
	if d := counterValue(metrics.SMTPReplies.WithLabelValues("421")) - before421; d != 1 {
		t.Errorf("421 counted %v times, want 1", d)
	}

	// Proxy authorisation (authzid differing from the user) is refused.
	c2 := testSession(t, ts).Ehlo().StartTLS().Ehlo()
	c2.Expect(535, "5.7.8", "AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("relay\x00"+jiraUser+"\x00"+jiraPass)))
	// Usernames are case-insensitive, passwords are not.
	c2.Expect(535, "5.7.8", "AUTH PLAIN %s", base64.StdEncoding.EncodeToString([]byte("\x00JIRA\x00S3CRET-JIRA")))
	c2.Auth("JIRA", jiraPass).Mail("a@corp.example").Rcpt("b@corp.example").Data(simpleMsg)
	if m := onlyMessage(t, ts); m.env.AuthIdentity != jiraUser {
		t.Errorf("AuthIdentity %q, want the configured %q", m.env.AuthIdentity, jiraUser)
	}
}

func TestRequireAuth(t *testing.T) {
	opts := baseOptions(t)
	opts.RequireAuth = true
	ts := startServer(t, nil, opts)
	c := testSession(t, ts).Ehlo()
	c.Expect(530, "5.7.0", "MAIL FROM:<a@corp.example>")
	c.StartTLS().Ehlo().Expect(530, "5.7.0", "MAIL FROM:<a@corp.example>")
	c.Auth(jiraUser, jiraPass).Mail("a@corp.example").Rcpt("b@corp.example").Data(simpleMsg)
	onlyMessage(t, ts)
}

func TestRecipients(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	before550 := counterValue(metrics.SMTPReplies.WithLabelValues("550"))
	c := testSession(t, ts).Ehlo().Mail("a@corp.example")
	for _, to := range []string{"x@evil.example", "x@corp.example.evil", "x@notcorp.example", "x@apps.example", "x@[192.0.2.1]"} {
		c.Expect(550, "5.7.1", "RCPT TO:<%s>", to)
	}
	if d := counterValue(metrics.SMTPReplies.WithLabelValues("550")) - before550; d != 5 {
		t.Errorf("550 counted %v times, want 5", d)
	}
	for _, to := range []string{"x@corp..example", "x@-corp.example", "x@corp_example!", "x@corp.example\x01", "x@[300.1.1.1]"} {
		c.Expect(501, "5.1.3", "RCPT TO:<%s>", to)
	}
	c.Rcpt("one@CORP.example").Rcpt("two@jira.apps.example").Rcpt("three@a.b.APPS.example").
		Rcpt("One@corp.example") // duplicate (case-insensitive) is accepted once
	c.Data(simpleMsg)
	m := onlyMessage(t, ts)
	if got := strings.Join(m.env.Recipients, ","); got != "one@corp.example,two@jira.apps.example,three@a.b.apps.example" {
		t.Errorf("recipients %q", got)
	}
}

func TestMaxRecipients(t *testing.T) {
	opts := baseOptions(t)
	opts.MaxRecipients = 3
	ts := startServer(t, nil, opts)
	c := testSession(t, ts).Ehlo().Mail("a@corp.example").Rcpt("r1@corp.example").Rcpt("r2@corp.example").Rcpt("r3@corp.example")
	c.Expect(452, "4.5.3", "RCPT TO:<r4@corp.example>")
	c.Data(simpleMsg)
	if m := onlyMessage(t, ts); len(m.env.Recipients) != 3 {
		t.Errorf("recipients %q", m.env.Recipients)
	}
	// The limit is per transaction.
	c.Mail("a@corp.example").Rcpt("r4@corp.example").Data(simpleMsg)
}

func TestSizeLimits(t *testing.T) {
	opts := baseOptions(t)
	opts.MaxMessageBytes = 2000
	ts := startServer(t, nil, opts)
	before := counterValue(metrics.SMTPReplies.WithLabelValues("552"))
	c := testSession(t, ts).Ehlo()
	if !c.HasCap("SIZE 2000") {
		t.Errorf("SIZE 2000 not advertised: %q", c.caps)
	}
	c.Expect(552, "5.3.4", "MAIL FROM:<a@corp.example> SIZE=2001")
	c.Expect(250, "2.0.0", "MAIL FROM:<a@corp.example> SIZE=1999").Rcpt("b@corp.example")

	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 70)+"\r\n", 100)
	r := c.DataRaw(dotStuff(big))
	c.want(r, 552, "5.3.4", "DATA too large")
	if n := len(ts.store.stored()); n != 0 {
		t.Fatalf("stored %d messages after 552", n)
	}
	if d := counterValue(metrics.SMTPReplies.WithLabelValues("552")) - before; d != 1 {
		t.Errorf("552 after DATA counted %v times, want 1", d)
	}
	// The session goes on normally.
	c.Expect(250, "2.0.0", "NOOP").Mail("a@corp.example").Rcpt("b@corp.example").Data(simpleMsg)
	onlyMessage(t, ts)

	// BDAT (CHUNKING) respects the limit too.
	c.Mail("a@corp.example").Rcpt("b@corp.example")
	if _, err := c.conn.Write([]byte("BDAT 3000 LAST\r\n" + strings.Repeat("y", 3000))); err != nil {
		t.Fatal(err)
	}
	c.want(c.read(), 552, "5.3.4", "BDAT too large")
	if n := len(ts.store.stored()); n != 1 {
		t.Fatalf("stored %d messages after BDAT 552", n)
	}
}

func TestStoreFailure(t *testing.T) {
	cases := []struct {
		err      error
		code     int
		enhanced string
	}{
		{fault.Wrap(fault.Temporary, "spool_unavailable", "disk full", errors.New("ENOSPC")), 451, "4.3.0"},
		{errors.New("plain error"), 451, "4.3.0"},
		{fault.Wrap(fault.Permanent, "rejected", "no", nil), 554, "5.0.0"},
		{fault.Wrap(fault.TooLarge, "too_large", "big", nil), 552, "5.3.4"},
	}
	for _, tc := range cases {
		t.Run(tc.err.Error(), func(t *testing.T) {
			store := &fakeStore{fail: tc.err}
			ts := startServer(t, store, baseOptions(t))
			c := testSession(t, ts).Ehlo().Mail("a@corp.example").Rcpt("b@corp.example")
			r := c.DataRaw(dotStuff(simpleMsg))
			c.want(r, tc.code, tc.enhanced, "DATA with failing store")
			if strings.Contains(r.msg, "ENOSPC") {
				t.Errorf("reply leaks the cause: %q", r.msg)
			}
			if store.calls != 1 || len(store.stored()) != 0 {
				t.Errorf("calls=%d stored=%d", store.calls, len(store.stored()))
			}
		})
	}
}

// lyingStore claims success without reading the body, or after a read error.
type lyingStore struct{ read bool }

func (s *lyingStore) Accept(_ context.Context, _ spool.Envelope, body io.Reader) (string, error) {
	if s.read {
		_, _ = io.Copy(io.Discard, body)
	}
	return "lie", nil
}

func TestNeverAcknowledgeWithoutCompleteRead(t *testing.T) {
	opts := baseOptions(t)
	opts.MaxMessageBytes = 500
	srv, err := New(&lyingStore{}, opts)
	if err != nil {
		t.Fatal(err)
	}
	ts := serveExisting(t, srv)
	c := testSession(t, ts).Ehlo().Mail("a@corp.example").Rcpt("b@corp.example")
	c.want(c.DataRaw(dotStuff(simpleMsg)), 451, "4.3.0", "store that did not read")

	srv2, err := New(&lyingStore{read: true}, opts)
	if err != nil {
		t.Fatal(err)
	}
	ts2 := serveExisting(t, srv2)
	c2 := testSession(t, ts2).Ehlo().Mail("a@corp.example").Rcpt("b@corp.example")
	c2.want(c2.DataRaw(dotStuff(strings.Repeat("z", 600))), 552, "5.3.4", "store that ignored the read error")
	c2.Mail("a@corp.example").Rcpt("b@corp.example")
	c2.want(c2.DataRaw(dotStuff(simpleMsg)), 250, "2.0.0", "honest read")
}

func serveExisting(t *testing.T, srv *Server) *testServer {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Shutdown(context.Background()) })
	return &testServer{srv: srv, addr: l.Addr().String(), store: &fakeStore{}}
}

func TestMessageBytes(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	longLine := "X-Long: " + strings.Repeat("abcdefghij", 10*1024) // ~100 KB, unfolded
	cases := []struct {
		name string
		raw  string // bytes after DATA, including the end marker
		want string // stored bytes after the Received header
	}{
		{"long header line", longLine + "\r\nSubject: x\r\n\r\nbody\r\n.\r\n", longLine + "\r\nSubject: x\r\n\r\nbody\r\n"},
		{"bare LF", "Subject: lf\nFrom: a@b\n\nline 1\nline 2\r\n.\r\n", "Subject: lf\r\nFrom: a@b\r\n\r\nline 1\r\nline 2\r\n"},
		{"bare LF dot lines are content", "Subject: s\n\na\n.\nb\r\n.\r\n", "Subject: s\r\n\r\na\r\n.\r\nb\r\n"},
		{"8-bit headers without SMTPUTF8", "Subject: Grüße \xe9t\xe9\r\nFrom: Zoë <z@corp.example>\r\n\r\nÄ\r\n.\r\n",
			"Subject: Grüße \xe9t\xe9\r\nFrom: Zoë <z@corp.example>\r\n\r\nÄ\r\n"},
		{"dot-stuffing undone", "Subject: d\r\n\r\n..leading dot\r\n...\r\n.\r\n", "Subject: d\r\n\r\n.leading dot\r\n..\r\n"},
		{"lone CR kept", "Subject: cr\r\n\r\na\rb\r\n.\r\n", "Subject: cr\r\n\r\na\rb\r\n"},
		{"binary NUL", "Subject: n\r\n\r\na\x00b\xff\r\n.\r\n", "Subject: n\r\n\r\na\x00b\xff\r\n"},
	}
	c := testSession(t, ts).Ehlo()
	for i, tc := range cases {
		c.Mail("a@corp.example").Rcpt("b@corp.example")
		r := c.DataRaw([]byte(tc.raw))
		c.want(r, 250, "2.0.0", tc.name)
		msgs := ts.store.stored()
		if len(msgs) != i+1 {
			t.Fatalf("%s: stored %d", tc.name, len(msgs))
		}
		_, rest := splitReceived(t, msgs[i].body)
		if string(rest) != tc.want {
			t.Errorf("%s: stored %.200q\nwant %.200q", tc.name, rest, tc.want)
		}
	}
}

func TestSMTPUTF8AndNullSender(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	c := testSession(t, ts).Ehlo()
	c.Expect(250, "2.0.0", "MAIL FROM:<> BODY=8BITMIME").Rcpt("b@corp.example").Data(simpleMsg)
	c.Expect(250, "2.0.0", "MAIL FROM:<jürgen@corp.example> SMTPUTF8").Rcpt("zoë@corp.example").Data(simpleMsg)
	c.Expect(501, "5.1.7", "MAIL FROM:<a@bad..example>")
	msgs := ts.store.stored()
	if len(msgs) != 2 {
		t.Fatalf("stored %d", len(msgs))
	}
	if msgs[0].env.Sender != "" {
		t.Errorf("null sender stored as %q", msgs[0].env.Sender)
	}
	if msgs[1].env.Sender != "jürgen@corp.example" || msgs[1].env.Recipients[0] != "zoë@corp.example" {
		t.Errorf("envelope %+v", msgs[1].env)
	}
	hdr, _ := splitReceived(t, msgs[1].body)
	if !strings.Contains(hdr, "with UTF8SMTP;") {
		t.Errorf("Received %q", hdr)
	}
}

func TestBDAT(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	c := testSession(t, ts).Ehlo().Mail("a@corp.example").Rcpt("b@corp.example")
	part1, part2 := simpleMsg[:20], simpleMsg[20:]
	raw := fmt.Sprintf("BDAT %d\r\n%sBDAT %d LAST\r\n%s", len(part1), part1, len(part2), part2)
	if _, err := c.conn.Write([]byte(raw)); err != nil {
		t.Fatal(err)
	}
	c.want(c.read(), 250, "2.0.0", "BDAT")
	c.want(c.read(), 250, "2.0.0", "BDAT LAST")
	_, rest := splitReceived(t, onlyMessage(t, ts).body)
	if string(rest) != simpleMsg {
		t.Errorf("stored %q", rest)
	}
}

func TestSessionFlow(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	c := testSession(t, ts)
	c.Expect(502, "5.5.1", "MAIL FROM:<a@corp.example>") // before EHLO
	c.Ehlo()
	c.Expect(502, "5.5.1", "RCPT TO:<b@corp.example>") // before MAIL
	c.Mail("a@corp.example").Rcpt("b@corp.example").Expect(250, "2.0.0", "RSET")
	c.Expect(502, "5.5.1", "DATA") // RSET dropped the transaction
	// A nested MAIL is refused; the transaction goes on.
	c.Mail("a@corp.example").Rcpt("b@corp.example").Expect(503, "5.5.1", "MAIL FROM:<c@corp.example>")
	c.Data(simpleMsg)
	c.Mail("a2@corp.example").Rcpt("b2@corp.example").Data(simpleMsg)
	c.Expect(250, "2.0.0", "NOOP").Quit()
	msgs := ts.store.stored()
	if len(msgs) != 2 || msgs[1].env.Sender != "a2@corp.example" || msgs[1].env.Recipients[0] != "b2@corp.example" {
		t.Fatalf("stored %+v", msgs)
	}
}

func TestNetSMTPClient(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	cl, err := smtp.Dial(ts.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	if err := cl.Hello("tool.test"); err != nil {
		t.Fatal(err)
	}
	if err := cl.StartTLS(testCerts(t).client); err != nil {
		t.Fatal(err)
	}
	if err := cl.Auth(smtp.PlainAuth("", jiraUser, jiraPass, "127.0.0.1")); err != nil {
		t.Fatal(err)
	}
	if err := cl.Mail("jira@corp.example"); err != nil {
		t.Fatal(err)
	}
	if err := cl.Rcpt("alice@corp.example"); err != nil {
		t.Fatal(err)
	}
	var terr *textproto.Error
	if err := cl.Rcpt("mallory@evil.example"); !errors.As(err, &terr) || terr.Code != 550 || !strings.HasPrefix(terr.Msg, "5.7.1") {
		t.Fatalf("foreign RCPT: %v", err)
	}
	w, err := cl.Data()
	if err != nil {
		t.Fatal(err)
	}
	// net/smtp converts LF to CRLF and dot-stuffs.
	if _, err := io.WriteString(w, "Subject: via net/smtp\n\n.dot\nbody\n"); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := cl.Quit(); err != nil {
		t.Fatal(err)
	}
	m := onlyMessage(t, ts)
	_, rest := splitReceived(t, m.body)
	if string(rest) != "Subject: via net/smtp\r\n\r\n.dot\r\nbody\r\n" {
		t.Errorf("stored %q", rest)
	}
	if m.env.App != "jira" || m.env.Helo != "tool.test" || len(m.env.Recipients) != 1 {
		t.Errorf("envelope %+v", m.env)
	}
}

func TestShutdownWaitsForTransaction(t *testing.T) {
	store := &fakeStore{block: make(chan struct{}), inside: make(chan struct{}, 1)}
	ts := startServer(t, store, baseOptions(t))
	idle := testSession(t, ts).Ehlo()
	busy := testSession(t, ts).Ehlo().Mail("a@corp.example").Rcpt("b@corp.example")
	busy.Expect(354, "", "DATA")
	if _, err := busy.conn.Write(dotStuff(simpleMsg)); err != nil {
		t.Fatal(err)
	}
	<-store.inside // the store is now holding the message

	shut := make(chan error, 1)
	go func() { shut <- ts.srv.Shutdown(context.Background()) }()
	// The idle session is closed; the busy one is not.
	if _, err := idle.tp.ReadLine(); err == nil {
		t.Fatal("idle session still open during Shutdown")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while a message was being stored", err)
	default:
	}
	close(store.block)
	busy.want(busy.read(), 250, "2.0.0", "DATA during shutdown")
	// After its reply the session is idle, so Shutdown closes it.
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-ts.done; err != nil {
		t.Fatalf("Serve after Shutdown: %v", err)
	}
	onlyMessage(t, ts)
	if _, err := net.DialTimeout("tcp", ts.addr, time.Second); err == nil {
		t.Error("listener still accepting after Shutdown")
	}
}

func TestShutdownDeadlineClosesEverything(t *testing.T) {
	store := &fakeStore{block: make(chan struct{}), inside: make(chan struct{}, 1)}
	defer close(store.block)
	ts := startServer(t, store, baseOptions(t))
	busy := testSession(t, ts).Ehlo().Mail("a@corp.example").Rcpt("b@corp.example")
	busy.Expect(354, "", "DATA")
	if _, err := busy.conn.Write(dotStuff(simpleMsg)); err != nil {
		t.Fatal(err)
	}
	<-store.inside
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ts.srv.Shutdown(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Shutdown = %v, want context.Canceled", err)
	}
	// The store's context was cancelled, so it failed: never a 250.
	code, msg, err := busy.tp.ReadResponse(0)
	if err == nil && code == 250 {
		t.Fatalf("250 after forced shutdown: %s", msg)
	}
	if len(store.stored()) != 0 {
		t.Fatal("stored after forced shutdown")
	}
}

func TestNewValidation(t *testing.T) {
	_, err := New(nil, Options{
		Credentials: []Credential{{Username: "a", Password: "x"}, {Username: "A", Password: "y"}, {Username: "", Password: "z"}},
		Domains:     []string{"ok.example", "bad domain", "*.*.example"},
		RequireAuth: true,
	})
	if err == nil {
		t.Fatal("New accepted an invalid configuration")
	}
	for _, want := range []string{"store is nil", "listed twice", "empty username", `"bad domain"`, `"*.*.example"`, "AUTH can never be offered"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q:\n%v", want, err)
		}
	}
	if _, err := New(&fakeStore{}, Options{}); err == nil || !strings.Contains(err.Error(), "no recipient domains") {
		t.Errorf("New without domains: %v", err)
	}
	if _, err := New(&fakeStore{}, Options{Domains: []string{"x.example"}, RequireAuth: true}); err == nil {
		t.Error("RequireAuth without credentials accepted")
	}
	s, err := New(&fakeStore{}, Options{Domains: []string{"x.example"}})
	if err != nil {
		t.Fatal(err)
	}
	if s.opts.Addr != DefaultAddr || s.opts.MaxMessageBytes != DefaultMaxMessageBytes || s.opts.MaxRecipients != DefaultMaxRecipients ||
		s.opts.MaxLineLength != DefaultMaxLineLength || s.opts.ReadTimeout != DefaultReadTimeout || s.opts.Hostname == "" {
		t.Errorf("defaults not applied: %+v", s.opts)
	}
	if s.Addr() != nil {
		t.Error("Addr before Serve")
	}
}

func TestLineTooLong(t *testing.T) {
	opts := baseOptions(t)
	opts.MaxLineLength = 1000
	ts := startServer(t, nil, opts)
	c := testSession(t, ts).Ehlo().Mail("a@corp.example").Rcpt("b@corp.example")
	r := c.DataRaw([]byte("Subject: " + strings.Repeat("q", 2000) + "\r\n\r\nx\r\n.\r\n"))
	if r.code/100 != 5 {
		t.Fatalf("over-long line: %d %s", r.code, r.msg)
	}
	if len(ts.store.stored()) != 0 {
		t.Fatal("stored a message with an over-long line")
	}
}

func TestCommandPipelining(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	c := testSession(t, ts).Ehlo()
	var b bytes.Buffer
	b.WriteString("MAIL FROM:<a@corp.example>\r\nRCPT TO:<b@corp.example>\r\nRCPT TO:<c@evil.example>\r\nDATA\r\n")
	if _, err := c.conn.Write(b.Bytes()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []int{250, 250, 550, 354} {
		if r := c.read(); r.code != want {
			t.Fatalf("pipelined reply %d %q, want %d", r.code, r.msg, want)
		}
	}
	if _, err := c.conn.Write(dotStuff(simpleMsg)); err != nil {
		t.Fatal(err)
	}
	c.want(c.read(), 250, "2.0.0", "pipelined DATA")
}

func TestDrainingRefusesNewTransactions(t *testing.T) {
	srv, err := New(&fakeStore{}, Options{Domains: []string{"corp.example"}})
	if err != nil {
		t.Fatal(err)
	}
	ss := &session{s: srv, log: srv.log}
	if err := ss.Mail("a@corp.example", &gosmtp.MailOptions{}); err != nil {
		t.Fatalf("Mail before draining: %v", err)
	}
	srv.draining.Store(true)
	var se *gosmtp.SMTPError
	if err := ss.Mail("a@corp.example", &gosmtp.MailOptions{}); !errors.As(err, &se) || se.Code != 421 {
		t.Fatalf("Mail while draining: %v", err)
	}
}

// counterValue reads a counter (prometheus/testutil would need a module that
// go.mod does not list).
func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}

// A client that goes away in the middle of a message must not get it stored,
// even when go-smtp's BDAT handling takes a chunk cut short by EOF as complete.
func TestClientGoneMidMessage(t *testing.T) {
	ts := startServer(t, nil, baseOptions(t))
	for _, raw := range []string{
		"DATA\r\nSubject: cut\r\n\r\nhalf a mess",
		"BDAT 100 LAST\r\nSubject: cut\r\n\r\nonly a few bytes",
		"BDAT 10\r\n0123456789BDAT 100 LAST\r\nshort",
	} {
		c := testSession(t, ts).Ehlo().Mail("a@corp.example").Rcpt("b@corp.example")
		if _, err := c.conn.Write([]byte(raw)); err != nil {
			t.Fatal(err)
		}
		if err := c.conn.(*net.TCPConn).CloseWrite(); err != nil {
			t.Fatal(err)
		}
		out, _ := io.ReadAll(c.tp.R)
		if strings.Contains(string(out), "queued") {
			t.Errorf("%.20q: server acknowledged a truncated message:\n%s", raw, out)
		}
	}
	if n := len(ts.store.stored()); n != 0 {
		t.Fatalf("stored %d truncated messages", n)
	}
}

// lineGen yields n bytes of 80-byte CRLF lines.
type lineGen struct{ left int }

func (g *lineGen) Read(p []byte) (int, error) {
	if g.left <= 0 {
		return 0, io.EOF
	}
	n := 0
	for n < len(p) && g.left > 0 {
		var c byte = 'x'
		switch g.left % 80 {
		case 2:
			c = '\r'
		case 1:
			c = '\n'
		}
		p[n] = c
		n++
		g.left--
	}
	return n, nil
}

// A 25 MB message is streamed to the store, not buffered.
func TestLargeMessageStreams(t *testing.T) {
	const size = 25 << 20
	store := &drainStore{}
	srv, err := New(store, baseOptions(t))
	if err != nil {
		t.Fatal(err)
	}
	ts := serveExisting(t, srv)
	c := testSession(t, ts).Ehlo().Mail("a@corp.example").Rcpt("b@corp.example")
	c.Expect(354, "", "DATA")
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	if _, err := io.CopyBuffer(c.conn, io.MultiReader(strings.NewReader("Subject: big\r\n\r\n"), &lineGen{left: size}, strings.NewReader(".\r\n")), make([]byte, 64<<10)); err != nil {
		t.Fatal(err)
	}
	c.want(c.read(), 250, "2.0.0", "25 MB DATA")
	runtime.ReadMemStats(&after)
	if store.n.Load() != 1 || store.bytes.Load() < size {
		t.Fatalf("store got %d messages, %d bytes", store.n.Load(), store.bytes.Load())
	}
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d KB for a %d MB message", alloc>>10, size>>20)
	if alloc > 8<<20 {
		t.Errorf("a %d MB message allocated %d MB", size>>20, alloc>>20)
	}
}

// Commands pipelined behind the third failed AUTH are never executed: nothing
// is stored and go-smtp is never left with a nil session (no panic logged).
func TestPipelinedAfterAuthLockout(t *testing.T) {
	logs := &panicHandler{}
	opts := baseOptions(t)
	opts.TLSConfig = nil
	opts.AllowInsecureAuth = true
	opts.Logger = slog.New(logs)
	ts := startServer(t, nil, opts)
	c := testSession(t, ts).Ehlo()
	bad := base64.StdEncoding.EncodeToString([]byte("\x00jira\x00nope"))
	good := base64.StdEncoding.EncodeToString([]byte("\x00" + jiraUser + "\x00" + jiraPass))
	script := strings.Repeat("AUTH PLAIN "+bad+"\r\n", 3) + "AUTH PLAIN " + good + "\r\nMAIL FROM:<a@corp.example>\r\n" +
		"RCPT TO:<b@corp.example>\r\nDATA\r\n" + simpleMsg + ".\r\nMAIL FROM:<a@corp.example>\r\n"
	if _, err := c.conn.Write([]byte(script)); err != nil {
		t.Fatal(err)
	}
	out, _ := io.ReadAll(c.tp.R)
	if !strings.Contains(string(out), "421 4.7.0") || strings.Contains(string(out), "235") || strings.Contains(string(out), "queued") {
		t.Errorf("replies:\n%s", out)
	}
	// Let the server finish the buffered commands before looking at the logs.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := ts.srv.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if len(ts.store.stored()) != 0 {
		t.Error("stored a message pipelined after the AUTH lockout")
	}
	logs.mu.Lock()
	defer logs.mu.Unlock()
	for _, m := range logs.msgs {
		if strings.Contains(m, "panic") {
			t.Errorf("panic logged: %.300s", m)
		}
	}
}
