package spool_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/spool"
)

// BenchmarkAccept10KB measures durable Accepts of 10 KB bodies from 8
// concurrent callers (the target is ≥ 2,000 msgs/s on 2 cores). No workers
// run: this is the intake path only.
func BenchmarkAccept10KB(b *testing.B) {
	dir := b.TempDir()
	s, err := spool.Open(context.Background(), spool.Options{
		Path:    filepath.Join(dir, "spool.db"),
		BlobDir: filepath.Join(dir, "blobs"),
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	payload := bytes.Repeat([]byte("0123456789abcdef"), 640) // 10 KiB
	env := spool.Envelope{Intake: "smtp", Sender: "a@example.com", Recipients: []string{"b@example.com"}}
	b.SetBytes(int64(len(payload)))
	b.SetParallelism(max(1, 8/runtime.GOMAXPROCS(0))) // 8 goroutines in all
	b.ResetTimer()
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := s.Accept(context.Background(), env, bytes.NewReader(payload)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}
