package mailparse

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"
)

// A spill buffer gives back exactly what was written, whatever the sizes of
// the writes, through open (Read and WriteTo) and head, in memory and past
// the threshold in a file.
func TestSpillBufKeepsTheBytes(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		total     int
		threshold int64
	}{{0, 1 << 20}, {1, 1 << 20}, {4 << 10, 1 << 20}, {65536, 1 << 20}, {300 << 10, 1 << 20}, {300 << 10, 100 << 10}} {
		want := randomBytes(rng, tc.total)
		sb := &spillBuf{dir: t.TempDir(), threshold: tc.threshold}
		for rest := want; len(rest) > 0; {
			n := min(len(rest), 1+rng.IntN(40<<10))
			if k, err := sb.Write(rest[:n]); err != nil || k != n {
				t.Fatalf("Write(%d) = %d, %v", n, k, err)
			}
			rest = rest[n:]
		}
		if err := sb.finish(); err != nil {
			t.Fatal(err)
		}
		if sb.size != int64(tc.total) || (sb.path != "") != (int64(tc.total) > tc.threshold) {
			t.Errorf("%d bytes: size %d, file %q", tc.total, sb.size, sb.path)
		}
		rc, err := sb.open()
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(rc) // Read
		_ = rc.Close()
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%d bytes: read back %d bytes, %v", tc.total, len(got), err)
		}
		rc, _ = sb.open()
		var buf bytes.Buffer
		if _, err := io.Copy(&buf, rc); err != nil || !bytes.Equal(buf.Bytes(), want) { // WriteTo
			t.Errorf("%d bytes: copied back %d bytes, %v", tc.total, buf.Len(), err)
		}
		_ = rc.Close()
		for _, n := range []int64{0, 1, 4 << 10, 70 << 10, int64(tc.total), int64(tc.total) + 1} {
			h, err := sb.head(n)
			if err != nil || !bytes.Equal(h, want[:min(n, int64(tc.total))]) {
				t.Errorf("%d bytes: head(%d) = %d bytes, %v", tc.total, n, len(h), err)
			}
		}
		if err := sb.remove(); err != nil {
			t.Fatal(err)
		}
	}
}
