package pipe

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/spool"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// serve starts a socket server over a real spool (or store) and returns the socket path.
func serve(t *testing.T, store interface {
	Accept(context.Context, spool.Envelope, io.Reader) (string, error)
}, maxBytes int64) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "mmgate.sock")
	l, err := Listen(sock, 0o660, "")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: Handler(store, maxBytes, quiet())}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return sock
}

func openSpool(t *testing.T) *spool.Spool {
	t.Helper()
	dir := t.TempDir()
	sp, err := spool.Open(context.Background(), spool.Options{Path: filepath.Join(dir, "spool.db"),
		BlobDir: filepath.Join(dir, "blobs"), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	return sp
}

const mail = "From: cron@corp.test\r\nTo: alice@corp.test\r\nSubject: nightly\r\n\r\nok\r\n"

func TestDeliverStoresWithTheEnvelopeGiven(t *testing.T) {
	sp := openSpool(t)
	sock := serve(t, sp, 1<<20)
	ctx := context.Background()

	id, err := Deliver(ctx, sock, Params{App: "cron", Sender: "", HasSender: true, Recipients: []string{"alice@corp.test", "bob@corp.test"}}, strings.NewReader(mail))
	if err != nil {
		t.Fatal(err)
	}
	m, _, err := sp.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	e := m.Envelope
	if e.Intake != "pipe" || e.App != "cron" || e.Sender != "" || e.NoEnvelope || strings.Join(e.Recipients, ",") != "alice@corp.test,bob@corp.test" {
		t.Fatalf("envelope %+v", e)
	}
	rc, err := sp.OpenBody(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(rc)
	_ = rc.Close()
	if string(b) != mail {
		t.Fatalf("stored %q", b)
	}
	// Without --sender the envelope is unknown, not the null sender.
	id, err = Deliver(ctx, sock, Params{}, strings.NewReader(mail))
	if err != nil {
		t.Fatal(err)
	}
	m, _, _ = sp.Get(ctx, id)
	if !m.Envelope.NoEnvelope || len(m.Envelope.Recipients) != 0 {
		t.Fatalf("envelope without --sender: %+v", m.Envelope)
	}
}

func TestDeliverErrorsHaveKinds(t *testing.T) {
	sp := openSpool(t)
	sock := serve(t, sp, 1000)
	ctx := context.Background()
	tests := []struct {
		name string
		sock string
		body io.Reader
		kind fault.Kind
		code string
	}{
		{"empty message", sock, strings.NewReader(""), fault.Invalid, "empty_message"},
		{"too large", sock, strings.NewReader(mail + strings.Repeat("x", 2000)), fault.TooLarge, "message_too_large"},
		{"no instance", filepath.Join(t.TempDir(), "none.sock"), strings.NewReader(mail), fault.Temporary, "instance_unreachable"},
		{"unreadable input", sock, io.MultiReader(strings.NewReader("From: x\r\n"), errReader{}), fault.Temporary, "input_read_failed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Deliver(ctx, tc.sock, Params{}, tc.body)
			if err == nil || fault.KindOf(err) != tc.kind || fault.CodeOf(err) != tc.code {
				t.Fatalf("err %v (kind %v, code %s), want %v %s", err, fault.KindOf(err), fault.CodeOf(err), tc.kind, tc.code)
			}
		})
	}
	n, _ := sp.Counts(ctx)
	if n[spool.StateQueued] != 0 {
		t.Fatalf("refused deliveries stored %d messages", n[spool.StateQueued])
	}
	// Storage failing in the instance is temporary: postfix keeps the mail.
	sock2 := serve(t, failingStore{}, 1<<20)
	if _, err := Deliver(ctx, sock2, Params{}, strings.NewReader(mail)); fault.KindOf(err) != fault.Temporary || fault.CodeOf(err) != "spool_unavailable" {
		t.Fatalf("storage failure: %v", err)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("input/output error") }

type failingStore struct{}

func (failingStore) Accept(_ context.Context, _ spool.Envelope, body io.Reader) (string, error) {
	_, _ = io.Copy(io.Discard, body)
	return "", fault.New(fault.Temporary, "spool_unavailable", "could not store the message")
}

func TestListenPermissionsAndStaleSocket(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "mmgate.sock")
	l, err := Listen(sock, 0o660, "")
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o660 || fi.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket mode %v, want a socket with 0660", fi.Mode())
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			_ = c.Close()
		}
	}()
	if _, err := Listen(sock, 0o660, ""); err == nil || !strings.Contains(err.Error(), "another mmgate") {
		t.Fatalf("second instance on a live socket: %v", err)
	}
	_ = l.Close()
	// net.UnixListener removes its file on Close; leave a stale one as a crash would.
	stale := filepath.Join(dir, "stale.sock")
	l2, err := Listen(stale, 0o600, "")
	if err != nil {
		t.Fatal(err)
	}
	l2.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	_ = l2.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("the stale socket should still exist: %v", err)
	}
	l3, err := Listen(stale, 0o600, "")
	if err != nil {
		t.Fatalf("a stale socket must be replaced: %v", err)
	}
	_ = l3.Close()
	// A regular file in the way is not removed.
	plain := filepath.Join(dir, "file")
	if err := os.WriteFile(plain, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Listen(plain, 0o600, ""); err == nil {
		t.Fatal("listening over a regular file succeeded")
	}
}
