package smtpintake

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/spool"
)

// drainStore measures the intake alone: it reads the body and forgets it.
type drainStore struct{ n, bytes atomic.Int64 }

func (s *drainStore) Accept(_ context.Context, _ spool.Envelope, body io.Reader) (string, error) {
	n, err := io.Copy(io.Discard, body)
	s.bytes.Add(n)
	if err != nil {
		return "", err
	}
	return fmt.Sprint(s.n.Add(1)), nil
}

// BenchmarkSMTPIntake10KB: 8 concurrent clients, each connection sending one
// 10 KB message (connect, EHLO, MAIL, RCPT, DATA, QUIT) over loopback TCP.
func BenchmarkSMTPIntake10KB(b *testing.B) {
	const clients = 8
	store := &drainStore{}
	srv, err := New(store, Options{
		Hostname: "mx.test",
		Domains:  []string{"corp.example"},
		Logger:   slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		b.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	defer func() { _ = srv.Shutdown(context.Background()) }()
	addr := l.Addr().String()

	var body strings.Builder
	body.WriteString("From: Jira <jira@corp.example>\r\nTo: alice@corp.example\r\nSubject: [JIRA] bench\r\n\r\n")
	for body.Len() < 10*1024 {
		body.WriteString("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n")
	}
	msg := []byte(body.String() + ".\r\n")
	b.SetBytes(int64(len(msg)))

	send := func() error {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(30 * time.Second))
		r := bufio.NewReader(c)
		expect := func(code string) error {
			for {
				line, err := r.ReadString('\n')
				if err != nil {
					return err
				}
				if !strings.HasPrefix(line, code) {
					return fmt.Errorf("got %q, want %s", line, code)
				}
				if len(line) > 3 && line[3] == ' ' {
					return nil
				}
			}
		}
		steps := []struct {
			send []byte
			code string
		}{
			{nil, "220"},
			{[]byte("EHLO bench.test\r\n"), "250"},
			{[]byte("MAIL FROM:<jira@corp.example>\r\n"), "250"},
			{[]byte("RCPT TO:<alice@corp.example>\r\n"), "250"},
			{[]byte("DATA\r\n"), "354"},
			{msg, "250"},
			{[]byte("QUIT\r\n"), "221"},
		}
		for _, s := range steps {
			if s.send != nil {
				if _, err := c.Write(s.send); err != nil {
					return err
				}
			}
			if err := expect(s.code); err != nil {
				return err
			}
		}
		return nil
	}

	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < clients; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				if err := send(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	if got := store.n.Load(); got != int64(b.N) {
		b.Fatalf("stored %d, want %d", got, b.N)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msgs/s")
}
