package main

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/intake/pipe"
	"github.com/mmgate/mmgate/internal/spool"
)

// withStdin runs fn with os.Stdin reading content.
func withStdin(t *testing.T, content string, fn func()) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "stdin")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(content); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	old := os.Stdin
	os.Stdin = f
	defer func() { os.Stdin = old; _ = f.Close() }()
	fn()
}

// TestDeliverExitCodes checks the sysexits contract postfix relies on.
func TestDeliverExitCodes(t *testing.T) {
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	sp, err := spool.Open(context.Background(), spool.Options{Path: filepath.Join(dir, "spool.db"), BlobDir: filepath.Join(dir, "blobs"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = sp.Close() }()
	sock := filepath.Join(dir, "mmgate.sock")
	l, err := pipe.Listen(sock, 0o600, "")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: pipe.Handler(sp, 4096, log)}
	go func() { _ = srv.Serve(l) }()
	defer func() { _ = srv.Close() }()

	mail := "From: cron@corp.test\r\nSubject: x\r\n\r\nhello\r\n"
	cases := []struct {
		name  string
		args  []string
		stdin string
		want  int
	}{
		{"stored", []string{"deliver", "--socket", sock, "--sender", "", "--", "alice@corp.test"}, mail, fault.ExitOK},
		{"empty message", []string{"deliver", "--socket", sock}, "", fault.ExitDataErr},
		{"too large", []string{"deliver", "--socket", sock}, mail + strings.Repeat("x", 5000), fault.ExitDataErr},
		{"instance down", []string{"deliver", "--socket", filepath.Join(dir, "down.sock")}, mail, fault.ExitTempFail},
		{"configuration unreadable", []string{"deliver", "-c", filepath.Join(dir, "missing.yaml")}, mail, fault.ExitTempFail},
		{"unknown flag in master.cf", []string{"deliver", "--socket", sock, "--sendr", "x"}, mail, fault.ExitTempFail},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var code int
			withStdin(t, tc.stdin, func() { code = run(tc.args) })
			if code != tc.want {
				t.Fatalf("exit %d, want %d", code, tc.want)
			}
		})
	}
	msgs, err := sp.List(context.Background(), spool.ListFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].Envelope.Sender != "" || msgs[0].Envelope.NoEnvelope || len(msgs[0].Envelope.Recipients) != 1 {
		t.Fatalf("stored %+v, want one message with the null sender and alice", msgs)
	}
}
