package mailparse

import (
	"bytes"
	"encoding/base64"
	"io"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"
)

// TestB64ReaderMatchesTheStandardDecoder: folded lines, whatever the read
// sizes and buffer boundaries, decode to the bytes encoded; padding in the
// middle (concatenated encodings) ends a quad; line noise is skipped and
// counted; a lone trailing character is counted as dropped.
func TestB64ReaderMatchesTheStandardDecoder(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, size := range []int{0, 1, 2, 3, 4, 57, 1000, 32*1024 - 1, 32 * 1024, 100_000} {
		data := randomBytes(r, size)
		folded := fold(base64.StdEncoding.EncodeToString(data))
		for name, wrap := range map[string]func(io.Reader) io.Reader{
			"whole": func(r io.Reader) io.Reader { return r }, "one byte": iotest.OneByteReader, "half": iotest.HalfReader,
		} {
			d := newB64Reader(wrap(strings.NewReader(folded)))
			got, err := io.ReadAll(d)
			if err != nil || !bytes.Equal(got, data) || d.noise != 0 || d.dropped != 0 {
				t.Fatalf("%d bytes, %s reads: %d bytes back (equal %v), noise %d, dropped %d, err %v",
					size, name, len(got), bytes.Equal(got, data), d.noise, d.dropped, err)
			}
		}
	}
	for in, want := range map[string]string{
		"QQ==QkI=":         "ABB", // two encodings back to back
		"QU*JD\nRA==":      "ABCD",
		"QUJDRA=":          "ABCD",
		"QUJDR":            "ABC", // a lone last character cannot be decoded
		"QUI\tz ":          "AB3", // whitespace anywhere
		"QUJD\x00\x01RA==": "ABCD",
	} {
		d := newB64Reader(strings.NewReader(in))
		got, _ := io.ReadAll(d)
		if string(got) != want {
			t.Errorf("%q → %q, want %q", in, got, want)
		}
	}
	d := newB64Reader(strings.NewReader("QU*JD\x01RA==X"))
	_, _ = io.ReadAll(d)
	if d.noise != 2 || d.dropped != 1 {
		t.Errorf("noise %d, dropped %d, want 2 and 1", d.noise, d.dropped)
	}
}

func BenchmarkB64Reader(b *testing.B) {
	data := bytes.Repeat([]byte("mmgate relays mail to Mattermost. "), 2000)
	src := fold(base64.StdEncoding.EncodeToString(data))
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		_, _ = io.Copy(io.Discard, newB64Reader(strings.NewReader(src)))
	}
}

// fold breaks base64 into 76-character lines, as MIME does.
func fold(enc string) string {
	var b strings.Builder
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc)
	return b.String()
}

// randomBytes returns n bytes from r.
func randomBytes(r *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.UintN(256))
	}
	return b
}
