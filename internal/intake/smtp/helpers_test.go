package smtpintake

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/textproto"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/spool"
)

// ---- fake store ----

type storedMsg struct {
	id   string
	env  spool.Envelope
	body []byte
}

// fakeStore reads the whole body like the real spool and records a message only
// when it returns nil.
type fakeStore struct {
	mu     sync.Mutex
	msgs   []storedMsg
	calls  int
	fail   error         // returned after reading the body, if set
	block  chan struct{} // if set, Accept waits for it to be closed before returning
	inside chan struct{} // if set, receives once Accept has read the body
}

func (f *fakeStore) Accept(ctx context.Context, env spool.Envelope, body io.Reader) (string, error) {
	f.mu.Lock()
	f.calls++
	fail, block, inside := f.fail, f.block, f.inside
	f.mu.Unlock()
	data, err := io.ReadAll(body)
	if err != nil {
		return "", fault.Wrap(fault.Temporary, "read_body", "reading body", err)
	}
	if inside != nil {
		inside <- struct{}{}
	}
	if block != nil {
		select {
		case <-block:
		case <-ctx.Done():
			return "", fault.Wrap(fault.Temporary, "canceled", "canceled", ctx.Err())
		}
	}
	if fail != nil {
		return "", fail
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	id := fmt.Sprintf("msg%04d", len(f.msgs)+1)
	f.msgs = append(f.msgs, storedMsg{id: id, env: env, body: data})
	return id, nil
}

func (f *fakeStore) stored() []storedMsg {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]storedMsg(nil), f.msgs...)
}

// ---- certificates ----

type testPKI struct {
	server *tls.Config
	client *tls.Config
}

var (
	pkiOnce sync.Once
	pki     testPKI
	pkiErr  error
)

// testCerts generates (once per test binary) a self-signed ECDSA certificate
// for "mx.test" and 127.0.0.1.
func testCerts(t testing.TB) testPKI {
	t.Helper()
	pkiOnce.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			pkiErr = err
			return
		}
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{CommonName: "mx.test"},
			DNSNames:              []string{"mx.test", "localhost"},
			IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
			NotBefore:             time.Now().Add(-time.Hour),
			NotAfter:              time.Now().Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
			ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			pkiErr = err
			return
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			pkiErr = err
			return
		}
		pool := x509.NewCertPool()
		pool.AddCert(cert)
		pki = testPKI{
			server: &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
				MinVersion: tls.VersionTLS12},
			client: &tls.Config{RootCAs: pool, ServerName: "mx.test", MinVersion: tls.VersionTLS12},
		}
	})
	if pkiErr != nil {
		t.Fatalf("test certificate: %v", pkiErr)
	}
	return pki
}

// ---- server ----

const (
	jiraUser = "jira"
	jiraPass = "s3cret-jira"
)

// baseOptions is a typical configuration: TLS, one app login, one relay login.
func baseOptions(t testing.TB) Options {
	return Options{
		Hostname:  "mx.test",
		TLSConfig: testCerts(t).server,
		Credentials: []Credential{
			{Username: jiraUser, Password: jiraPass, App: "jira"},
			{Username: "relay", Password: "relay-pw"},
		},
		Domains: []string{"corp.example", "*.apps.example"},
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
}

type testServer struct {
	srv   *Server
	addr  string
	store *fakeStore
	done  chan error // Serve's result
}

func startServer(t testing.TB, store *fakeStore, opts Options) *testServer {
	t.Helper()
	if store == nil {
		store = &fakeStore{}
	}
	srv, err := New(store, opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{srv: srv, addr: l.Addr().String(), store: store, done: make(chan error, 1)}
	go func() { ts.done <- srv.Serve(l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	return ts
}

// ---- step-by-step client ----

type smtpReply struct {
	code int
	msg  string // lines joined by "\n", enhanced code included
}

// session is a raw textproto SMTP client whose steps assert exact reply codes:
// testSession(t, ts).Ehlo().StartTLS().Ehlo().Auth(user, pw).Mail(from)...
type clientSession struct {
	t    testing.TB
	ts   *testServer
	conn net.Conn
	tp   *textproto.Conn
	caps []string // lines of the last EHLO reply
}

func testSession(t testing.TB, ts *testServer) *clientSession {
	t.Helper()
	conn, err := net.DialTimeout("tcp", ts.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	c := &clientSession{t: t, ts: ts, conn: conn, tp: textproto.NewConn(conn)}
	t.Cleanup(func() { _ = c.tp.Close() })
	r := c.read()
	if r.code != 220 {
		t.Fatalf("greeting: %d %s", r.code, r.msg)
	}
	return c
}

func (c *clientSession) read() smtpReply {
	c.t.Helper()
	code, msg, err := c.tp.ReadResponse(0)
	if err != nil {
		var perr textproto.ProtocolError
		if !errors.As(err, &perr) {
			c.t.Fatalf("reading reply: %v", err)
		}
	}
	return smtpReply{code, msg}
}

// Cmd sends one command line and returns the reply.
func (c *clientSession) Cmd(format string, args ...any) smtpReply {
	c.t.Helper()
	if err := c.tp.PrintfLine(format, args...); err != nil {
		c.t.Fatalf("send %q: %v", format, err)
	}
	return c.read()
}

// Expect sends a command and asserts the reply code and enhanced code (may be "").
func (c *clientSession) Expect(code int, enhanced string, format string, args ...any) *clientSession {
	c.t.Helper()
	r := c.Cmd(format, args...)
	c.want(r, code, enhanced, fmt.Sprintf(format, args...))
	return c
}

func (c *clientSession) want(r smtpReply, code int, enhanced, what string) {
	c.t.Helper()
	if r.code != code || (enhanced != "" && !strings.HasPrefix(r.msg, enhanced+" ")) {
		c.t.Fatalf("%s: got %d %q, want %d %s", what, r.code, r.msg, code, enhanced)
	}
}

func (c *clientSession) Ehlo() *clientSession {
	c.t.Helper()
	r := c.Cmd("EHLO client.test")
	c.want(r, 250, "", "EHLO")
	c.caps = strings.Split(r.msg, "\n")
	return c
}

// HasCap reports whether the last EHLO advertised a capability starting with name.
func (c *clientSession) HasCap(name string) bool {
	for _, l := range c.caps[1:] {
		if l == name || strings.HasPrefix(l, name+" ") {
			return true
		}
	}
	return false
}

func (c *clientSession) StartTLS() *clientSession {
	c.t.Helper()
	c.Expect(220, "2.0.0", "STARTTLS")
	tc := tls.Client(c.conn, testCerts(c.t).client)
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.conn = tc
	c.tp = textproto.NewConn(tc)
	return c
}

func (c *clientSession) Auth(user, pass string) *clientSession {
	c.t.Helper()
	ir := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	return c.Expect(235, "2.0.0", "AUTH PLAIN %s", ir)
}

func (c *clientSession) Mail(from string) *clientSession {
	c.t.Helper()
	return c.Expect(250, "2.0.0", "MAIL FROM:<%s>", from)
}

func (c *clientSession) Rcpt(to string) *clientSession {
	c.t.Helper()
	return c.Expect(250, "2.0.0", "RCPT TO:<%s>", to)
}

// DataRaw sends DATA, then raw bytes exactly as given (they must include the
// end-of-data marker), and returns the final reply.
func (c *clientSession) DataRaw(raw []byte) smtpReply {
	c.t.Helper()
	c.Expect(354, "", "DATA")
	if _, err := c.conn.Write(raw); err != nil {
		c.t.Fatalf("write data: %v", err)
	}
	return c.read()
}

// Data sends a CRLF message with dot-stuffing and the end marker and asserts 250.
func (c *clientSession) Data(msg string) *clientSession {
	c.t.Helper()
	r := c.DataRaw(dotStuff(msg))
	c.want(r, 250, "2.0.0", "DATA")
	if !strings.Contains(r.msg, "queued as ") {
		c.t.Fatalf("DATA reply %q lacks the spool id", r.msg)
	}
	return c
}

func (c *clientSession) Quit() {
	c.t.Helper()
	c.Expect(221, "2.0.0", "QUIT")
}

// dotStuff returns msg (CRLF lines) dot-stuffed and terminated.
func dotStuff(msg string) []byte {
	var b bytes.Buffer
	for _, line := range strings.SplitAfter(msg, "\r\n") {
		if strings.HasPrefix(line, ".") {
			b.WriteByte('.')
		}
		b.WriteString(line)
	}
	if !strings.HasSuffix(msg, "\r\n") && msg != "" {
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	return b.Bytes()
}

// splitReceived separates the Received header this server added from the rest.
func splitReceived(t testing.TB, body []byte) (hdr string, rest []byte) {
	t.Helper()
	if !bytes.HasPrefix(body, []byte("Received: from ")) {
		t.Fatalf("stored message does not start with a Received header: %.80q", body)
	}
	// The header ends at the first CRLF not followed by a tab (folding).
	for i := 0; i+1 < len(body); i++ {
		if body[i] == '\r' && body[i+1] == '\n' && (i+2 >= len(body) || body[i+2] != '\t') {
			return string(body[:i+2]), body[i+2:]
		}
	}
	t.Fatalf("unterminated Received header")
	return "", nil
}
