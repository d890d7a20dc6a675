package mailparse

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParse: Parse, Render and Split never panic; the output is valid UTF-8
// without NUL; chunks respect the limit and lose no non-whitespace text.
func FuzzParse(f *testing.F) {
	for _, file := range testdataFiles(f) {
		b, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint16(200))
	}
	f.Add([]byte("Subject: x\n\n```\ncode\n```\n"), uint16(17))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=b\n\n--b\n\n--b--"), uint16(5))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte, limit uint16) {
		m, err := Parse(bytes.NewReader(data), Options{SpillDir: dir, SpillThreshold: 64, MaxBodyBytes: 1 << 16})
		if err != nil {
			return
		}
		defer func() {
			if err := m.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		}()
		for _, s := range append([]string{m.Subject, m.Text, m.HTML, m.MessageID}, m.Warnings...) {
			if !utf8.ValidString(s) || strings.IndexByte(s, 0) >= 0 {
				t.Fatalf("invalid field %q", s)
			}
		}
		if strings.ContainsAny(m.Subject, "\r\n") {
			t.Fatalf("subject not single line: %q", m.Subject)
		}
		for _, a := range m.Attachments {
			if a.Filename == "" || strings.ContainsAny(a.Filename, "/\\\x00") {
				t.Fatalf("bad filename %q", a.Filename)
			}
		}
		md := Render(m, RenderOptions{})
		if !utf8.ValidString(md) || strings.IndexByte(md, 0) >= 0 {
			t.Fatalf("invalid output %q", md)
		}
		max := int(limit%2000) + 1
		chunks := Split(md, max)
		for _, c := range chunks {
			if n := utf8.RuneCountInString(c); n > max {
				t.Fatalf("chunk of %d runes > %d", n, max)
			}
		}
		if !isSubsequence(nonSpace(md), nonSpace(strings.Join(chunks, ""))) {
			t.Fatalf("Split lost text (limit %d):\n%q\n%q", max, md, chunks)
		}
	})
}

// isSubsequence reports whether the runes of want appear in got in order
// (Split may add fence lines, never drop text).
func isSubsequence(want, got string) bool {
	gr := []rune(got)
	j := 0
	for _, r := range want {
		for j < len(gr) && gr[j] != r {
			j++
		}
		if j == len(gr) {
			return false
		}
		j++
	}
	return true
}
