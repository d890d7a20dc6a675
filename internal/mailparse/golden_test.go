package mailparse

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

var update = flag.Bool("update", false, "rewrite golden files")

type goldenAttachment struct {
	Filename    string `json:"filename"`
	ContentType string `json:"content_type"`
	ContentID   string `json:"content_id,omitempty"`
	Inline      bool   `json:"inline,omitempty"`
	Size        int64  `json:"size"`
	SHA256      string `json:"sha256"`
}

type goldenMessage struct {
	Subject            string             `json:"subject"`
	From               []Address          `json:"from"`
	To                 []Address          `json:"to,omitempty"`
	Cc                 []Address          `json:"cc,omitempty"`
	Date               string             `json:"date,omitempty"`
	MessageID          string             `json:"message_id"`
	MessageIDGenerated bool               `json:"message_id_generated,omitempty"`
	InReplyTo          []string           `json:"in_reply_to,omitempty"`
	HasText            bool               `json:"has_text"`
	HasHTML            bool               `json:"has_html"`
	Attachments        []goldenAttachment `json:"attachments,omitempty"`
	Warnings           []string           `json:"warnings,omitempty"`
}

func summarize(t *testing.T, m *Message) goldenMessage {
	t.Helper()
	g := goldenMessage{
		Subject: m.Subject, From: m.From, To: m.To, Cc: m.Cc,
		MessageID: m.MessageID, MessageIDGenerated: m.MessageIDGenerated, InReplyTo: m.InReplyTo,
		HasText: m.Text != "", HasHTML: m.HTML != "", Warnings: m.Warnings,
	}
	if len(g.To) > 5 {
		g.To = g.To[:5]
	}
	if !m.Date.IsZero() {
		g.Date = m.Date.UTC().Format(time.RFC3339)
	}
	for _, a := range m.Attachments {
		rc, err := a.Open()
		if err != nil {
			t.Fatalf("open %s: %v", a.Filename, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		_ = rc.Close()
		if err != nil {
			t.Fatalf("read %s: %v", a.Filename, err)
		}
		if n != a.Size {
			t.Errorf("%s: Size %d but Open gives %d bytes", a.Filename, a.Size, n)
		}
		g.Attachments = append(g.Attachments, goldenAttachment{
			Filename: a.Filename, ContentType: a.ContentType, ContentID: a.ContentID,
			Inline: a.Inline, Size: a.Size, SHA256: hex.EncodeToString(h.Sum(nil))[:16],
		})
	}
	return g
}

func testdataFiles(t testing.TB) []string {
	files, err := filepath.Glob(filepath.Join("testdata", "*.eml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no testdata: %v", err)
	}
	return files
}

func parseFile(t *testing.T, path string, opts Options) *Message {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := Parse(f, opts)
	if err != nil {
		t.Fatalf("Parse(%s): %v", path, err)
	}
	t.Cleanup(func() {
		if err := m.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return m
}

func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs from the golden file (run go test -update and review)\n--- got:\n%s\n--- want:\n%s", path, got, want)
	}
}

// TestGolden parses every testdata/*.eml and compares Render's output and the
// parsed fields with X.golden.md and X.golden.json. It also checks that a tiny
// spill threshold (every part goes to a file) gives exactly the same result.
func TestGolden(t *testing.T) {
	for _, file := range testdataFiles(t) {
		name := strings.TrimSuffix(filepath.Base(file), ".eml")
		t.Run(name, func(t *testing.T) {
			m := parseFile(t, file, Options{SpillDir: t.TempDir()})
			md := Render(m, RenderOptions{})
			checkOutput(t, md)
			g := summarize(t, m)
			js, err := json.MarshalIndent(g, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			js = append(js, '\n')
			checkGolden(t, filepath.Join("testdata", name+".golden.md"), []byte(md+"\n"))
			checkGolden(t, filepath.Join("testdata", name+".golden.json"), js)

			dir := t.TempDir()
			small := parseFile(t, file, Options{SpillDir: dir, SpillThreshold: 8})
			if md2 := Render(small, RenderOptions{}); md2 != md {
				t.Errorf("spilled parse renders differently:\n%s\n---\n%s", md2, md)
			}
			js2, _ := json.MarshalIndent(summarize(t, small), "", "  ")
			if string(js2)+"\n" != string(js) {
				t.Errorf("spilled parse gives different fields:\n%s\n---\n%s", js2, js)
			}
			if len(small.Attachments) > 0 {
				ents, _ := os.ReadDir(dir)
				if len(ents) == 0 {
					t.Errorf("threshold 8: no spill file written")
				}
			}
			if err := small.Close(); err != nil {
				t.Fatal(err)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Errorf("Close left %d spill files", len(ents))
			}
		})
	}
}

// checkOutput asserts the invariants of every rendering.
func checkOutput(t testing.TB, md string) {
	t.Helper()
	if !utf8.ValidString(md) {
		t.Errorf("output is not valid UTF-8")
	}
	if strings.IndexByte(md, 0) >= 0 {
		t.Errorf("output contains NUL")
	}
}

// Parses running at once (their read buffers and decoders come from shared
// pools) give what each gives alone, attachments' bytes included.
func TestConcurrentParsesDoNotShareBuffers(t *testing.T) {
	files := testdataFiles(t)
	type result struct {
		md    string
		files [][]byte
	}
	parseOne := func(t *testing.T, file string) result {
		m := parseFile(t, file, Options{SpillDir: t.TempDir()})
		defer m.Close()
		r := result{md: Render(m, RenderOptions{})}
		for _, a := range m.Attachments {
			rc, err := a.Open()
			if err != nil {
				t.Error(err)
				return r
			}
			b, err := io.ReadAll(rc)
			_ = rc.Close()
			if err != nil {
				t.Error(err)
			}
			r.files = append(r.files, b)
		}
		return r
	}
	want := make([]result, len(files))
	for i, f := range files {
		want[i] = parseOne(t, f)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for k := range files {
				i := (k + g*7) % len(files)
				got := parseOne(t, files[i])
				if got.md != want[i].md || len(got.files) != len(want[i].files) {
					t.Errorf("%s: a concurrent parse differs", files[i])
					continue
				}
				for j := range got.files {
					if !bytes.Equal(got.files[j], want[i].files[j]) {
						t.Errorf("%s: attachment %d differs in a concurrent parse", files[i], j)
					}
				}
			}
		}(g)
	}
	wg.Wait()
}
