package mailparse

import (
	"crypto/sha256"
	"encoding/base64"
	"io"
	"math/rand/v2"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// bigMessage streams a message with a text body and an attachment of size
// pseudo-random bytes, base64 encoded, without ever holding it in memory. The
// returned function gives the SHA-256 of the attachment once it was read.
func bigMessage(size int) (io.Reader, func() [32]byte) {
	head := "From: Backup <backup@example.com>\r\nTo: it@example.com\r\nSubject: dump\r\n" +
		"Message-ID: <big@example.com>\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"BIG\"\r\n\r\n" +
		"--BIG\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe dump is attached.\r\n" +
		"--BIG\r\nContent-Type: application/octet-stream; name=\"dump.bin\"\r\n" +
		"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"dump.bin\"\r\n\r\n"
	tail := "\r\n--BIG--\r\n"
	pr, pw := io.Pipe()
	sumc := make(chan [32]byte, 1)
	go func() {
		rng := rand.New(rand.NewPCG(1, 2))
		h := sha256.New()
		_, _ = io.WriteString(pw, head)
		enc := base64.StdEncoding
		var block [57]byte
		line := make([]byte, 0, 80*64)
		for i := 0; i < size; i += 57 {
			n := min(57, size-i)
			for j := 0; j < n; j++ {
				block[j] = byte(rng.Uint32())
			}
			h.Write(block[:n])
			line = enc.AppendEncode(line, block[:n])
			line = append(line, '\r', '\n')
			if len(line) > 79*63 || i+57 >= size {
				if _, err := pw.Write(line); err != nil {
					return
				}
				line = line[:0]
			}
		}
		_, _ = io.WriteString(pw, tail)
		_ = pw.Close()
		sumc <- [32]byte(h.Sum(nil))
	}()
	return pr, func() [32]byte { return <-sumc }
}

// peakHeap samples HeapInuse while fn runs and returns the peak growth in bytes.
func peakHeap(fn func()) uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	base := ms.HeapInuse
	var peak atomic.Uint64
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		var s runtime.MemStats
		for {
			runtime.ReadMemStats(&s)
			if s.HeapInuse > peak.Load() {
				peak.Store(s.HeapInuse)
			}
			select {
			case <-done:
				return
			case <-time.After(2 * time.Millisecond):
			}
		}
	}()
	fn()
	close(done)
	<-stopped
	runtime.ReadMemStats(&ms)
	if ms.HeapInuse > peak.Load() {
		peak.Store(ms.HeapInuse)
	}
	if peak.Load() < base {
		return 0
	}
	return peak.Load() - base
}

// TestParseLargeAttachmentMemory parses a message with a 25 MB attachment and
// asserts that the heap never grows by more than 16 MB (the budget is 64 MB of
// RSS): the attachment is streamed to a spill file, never held in memory.
func TestParseLargeAttachmentMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("large message")
	}
	const size = 25 << 20
	r, sum := bigMessage(size)
	var m *Message
	var err error
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	growth := peakHeap(func() {
		m, err = Parse(r, Options{SpillDir: t.TempDir()})
	})
	runtime.ReadMemStats(&after)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if len(m.Attachments) != 1 || m.Attachments[0].Size != size {
		t.Fatalf("attachments: %+v", m.Attachments)
	}
	rc, err := m.Attachments[0].Open()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if [32]byte(h.Sum(nil)) != sum() {
		t.Errorf("attachment content differs")
	}
	if !strings.Contains(m.Text, "dump is attached") {
		t.Errorf("text body: %q", m.Text)
	}
	t.Logf("peak heap growth %.1f MB, allocated %.1f MB", float64(growth)/(1<<20),
		float64(after.TotalAlloc-before.TotalAlloc)/(1<<20))
	if growth > 16<<20 {
		t.Errorf("peak heap growth %d MB: the attachment is held in memory", growth>>20)
	}
}

// BenchmarkParse25MBAttachment reports the peak heap growth of parsing a
// message with a 25 MB base64 attachment ("peak-MB", generator excluded).
func BenchmarkParse25MBAttachment(b *testing.B) {
	const size = 25 << 20
	dir := b.TempDir()
	var worst uint64
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		r, _ := bigMessage(size)
		b.StartTimer()
		var m *Message
		g := peakHeap(func() {
			var err error
			m, err = Parse(r, Options{SpillDir: dir})
			if err != nil {
				b.Fatal(err)
			}
		})
		_ = m.Close()
		if g > worst {
			worst = g
		}
	}
	b.SetBytes(size)
	b.ReportMetric(float64(worst)/(1<<20), "peak-MB")
}
