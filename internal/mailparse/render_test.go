package mailparse

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestEscapeLine(t *testing.T) {
	cases := []struct{ in, want string }{
		{"# heading", `\# heading`},
		{"* item", `\* item`},
		{"- item", `\- item`},
		{"+ item", `\+ item`},
		{"1. first", `1\. first`},
		{"12) twelfth", `12\) twelfth`},
		{"> quote", `\> quote`},
		{"---", `\---`},
		{"===", `\===`},
		{"    code", "\u00a0\u00a0\u00a0\u00a0code"},
		{"\tcode", "\u00a0\u00a0\u00a0\u00a0code"},
		{"**bold** _it_ ~~s~~ `c`", "\\*\\*bold\\*\\* \\_it\\_ \\~\\~s\\~\\~ \\`c\\`"},
		{"![x](http://t.example/p.gif)", `!\[x\](<http://t.example/p.gif>)`},
		{"<b>x</b> &copy; a & b", `\<b>x\</b> \&copy; a & b`},
		{"a | b", `a | b`},
		{"| a | b |", `\| a | b |`},
		{"# not a heading", `\# not a heading`},
		{"> not a quote", `\> not a quote`},
		{"~/path ~~struck~~", `~/path \~\~struck\~\~`},
		{`back\slash`, `back\\slash`},
		{"see https://example.com/a_b_(c)?q=x.", `see <https://example.com/a_b_(c)?q=x>.`},
		{"*https://example.com/x*", `\*<https://example.com/x>\*`},
		{"mail first_last@example.com now", `mail <first_last@example.com> now`},
		{"(https://example.com/x)", `(<https://example.com/x>)`},
		{"plain words stay", "plain words stay"},
	}
	for _, c := range cases {
		if got := escapeLine(c.in); got != c.want {
			t.Errorf("escapeLine(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestNeutralizeMentions(t *testing.T) {
	z := "\u200b"
	cases := []struct{ in, want string }{
		{"@channel", "@" + z + "channel"},
		{"hi @all and @here", "hi @" + z + "all and @" + z + "here"},
		{"(@alice)", "(@" + z + "alice)"},
		{"**@bob.smith**", "**@" + z + "bob.smith**"},
		{"bob@example.com", "bob@example.com"},
		{"<bob@example.com>", "<bob@example.com>"},
		{"<https://x.example/@alice>", "<https://x.example/@alice>"},
		{"[@alice](https://x.example/@alice)", "[@" + z + "alice](https://x.example/@alice)"},
		{"see https://medium.com/@alice/post", "see https://medium.com/@alice/post"},
		{"a @ b", "a @ b"},
		{"@", "@"},
		{"x\n@here", "x\n@" + z + "here"},
	}
	for _, c := range cases {
		if got := neutralizeMentions(c.in); got != c.want {
			t.Errorf("neutralizeMentions(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestTextToMarkdownPreformatted(t *testing.T) {
	in := "Report\n\nName     Size   Used\nroot     50G    41G\nsrv      3.6T   3.1T\n\nDone ``` here"
	got := textToMarkdown(in)
	want := "Report\n\n```\nName     Size   Used\nroot     50G    41G\nsrv      3.6T   3.1T\n```\n\nDone \\`\\`\\` here"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
	// A fence inside preformatted text gets a longer fence.
	pre := "a    b    c\n```x    y\nd    e    f"
	got = textToMarkdown(pre)
	if !strings.HasPrefix(got, "````\n") || !strings.HasSuffix(got, "\n````") {
		t.Errorf("fence not longer than content backticks: %q", got)
	}
	trace := "Exception in thread \"main\" java.lang.NullPointerException\n\tat com.example.App.run(App.java:42)\n\tat com.example.App.main(App.java:7)"
	if got := textToMarkdown(trace); !strings.HasPrefix(got, "```\n") {
		t.Errorf("stack trace not fenced: %q", got)
	}
	prose := "Hello team,\nthe deploy went fine.\nThanks"
	if got := textToMarkdown(prose); strings.Contains(got, "```") {
		t.Errorf("prose fenced: %q", got)
	}
}

// TestPlainTextInjection renders the text part of markdown-injection.eml on
// its own: nothing in it may become Markdown syntax.
func TestPlainTextInjection(t *testing.T) {
	m := parseFile(t, filepath.Join("testdata", "markdown-injection.eml"), Options{SpillDir: t.TempDir()})
	if m.Text == "" || m.HTML == "" {
		t.Fatal("fixture should have text and HTML")
	}
	textOnly := &Message{Subject: m.Subject, From: m.From, Text: m.Text}
	md := Body(textOnly, RenderOptions{})
	for _, bad := range []string{"\n# ", "\n* ", "\n- ", "\n1. ", "\n> ", "\n    ", "![", "**not", "\n---", "\n==="} {
		if strings.Contains("\n"+md, bad) {
			t.Errorf("unescaped %q in:\n%s", bad, md)
		}
	}
	if regexp.MustCompile(`(^|[^\\])<b>`).MatchString(md) {
		t.Errorf("unescaped HTML tag in:\n%s", md)
	}
	if regexp.MustCompile(`(^|[^\\])\]\(`).MatchString(md) {
		t.Errorf("an unescaped ] before ( could form a link in:\n%s", md)
	}
	if !strings.Contains(md, "<https://example.com/path_with_underscores_(x)?q=a*b&c=d>") {
		t.Errorf("URL mangled:\n%s", md)
	}
	if !strings.Contains(md, "```\n| a | b |\n|---|---|\n```") {
		t.Errorf("ASCII table not fenced:\n%s", md)
	}
	checkGolden(t, filepath.Join("testdata", "markdown-injection.text.golden.md"), []byte(md+"\n"))

	// The HTML path: no script, no active links, no remote image markup.
	full := Body(m, RenderOptions{})
	for _, bad := range []string{"alert", "javascript", "vbscript", "data:", "file:", "injected", "evil", "secret preheader",
		"open.gif", "noalt.png", "password", "Log in", "![", "<img", "<script"} {
		if strings.Contains(strings.ToLower(full), strings.ToLower(bad)) {
			t.Errorf("HTML rendering contains %q:\n%s", bad, full)
		}
	}
	if !strings.Contains(full, "[Spring sale banner](https://cdn.example.com/banner.png)") {
		t.Errorf("remote image with alt should become a link:\n%s", full)
	}
}

func TestMentionsEverywhere(t *testing.T) {
	m := parseFile(t, filepath.Join("testdata", "mentions.eml"), Options{SpillDir: t.TempDir()})
	check := func(name, md string) {
		for _, w := range []string{"@channel", "@all", "@here", "@alice", "@bob"} {
			for i := strings.Index(md, w); i >= 0; i = next(md, w, i) {
				if i > 0 && isWordByte(md[i-1]) {
					continue
				}
				// Inside a URL is fine.
				lineStart := strings.LastIndexAny(md[:i], " \n(") + 1
				if strings.Contains(md[lineStart:i], "://") {
					continue
				}
				t.Errorf("%s: live mention %q at %d:\n%s", name, w, i, md)
			}
		}
	}
	check("html", Render(m, RenderOptions{}))
	check("text", Render(&Message{Subject: m.Subject, From: m.From, Text: m.Text}, RenderOptions{}))
	if !strings.Contains(Render(m, RenderOptions{}), "bob@example.com") {
		t.Error("e-mail address altered")
	}
}

func next(s, w string, i int) int {
	j := strings.Index(s[i+1:], w)
	if j < 0 {
		return -1
	}
	return i + 1 + j
}

func TestImageRef(t *testing.T) {
	m := parseFile(t, filepath.Join("testdata", "outlook-html.eml"), Options{SpillDir: t.TempDir()})
	var got []*Attachment
	md := Body(m, RenderOptions{ImageRef: func(a *Attachment) string {
		got = append(got, a)
		return "![logo](/files/" + a.Filename + ")"
	}})
	if len(got) != 1 || got[0].ContentID != "image001.png@01DA7456.3F1B2C30" || !got[0].Inline {
		t.Fatalf("ImageRef calls: %+v", got)
	}
	if !strings.Contains(md, "![logo](/files/image001.png)") {
		t.Errorf("ImageRef output missing:\n%s", md)
	}
}

func TestRenderLayout(t *testing.T) {
	m := &Message{From: []Address{{Name: "Ann *B*", Email: "ann@example.com"}}, Text: "hi"}
	got := Render(m, RenderOptions{})
	want := "**(no subject)**\nFrom: Ann \\*B\\* \\<<ann@example.com>\\>\n\nhi"
	if got != want {
		t.Errorf("got %q want %q", got, want)
	}
	empty := Render(&Message{Subject: "s"}, RenderOptions{})
	if !strings.HasSuffix(empty, "*(empty message)*") || !strings.Contains(empty, "(unknown sender)") {
		t.Errorf("empty message rendering: %q", empty)
	}
}

func TestSplitShort(t *testing.T) {
	if got := Split("  hello  ", 10); len(got) != 1 || got[0] != "hello" {
		t.Errorf("got %q", got)
	}
	if got := Split(" \n ", 10); got != nil {
		t.Errorf("whitespace: got %q", got)
	}
	if got := Split("abc", 0); len(got) != 1 {
		t.Errorf("no limit: got %q", got)
	}
}

func TestSplitBoundaries(t *testing.T) {
	md := "para one is here\n\npara two is here\nline three"
	got := Split(md, 20)
	want := []string{"para one is here", "para two is here", "line three"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("got %q want %q", got, want)
	}
	words := "alpha beta gamma delta epsilon"
	got = Split(words, 12)
	for _, c := range got {
		if utf8.RuneCountInString(c) > 12 || strings.HasPrefix(c, " ") {
			t.Errorf("bad chunk %q in %q", c, got)
		}
	}
	if strings.Join(got, " ") != words {
		t.Errorf("words lost: %q", got)
	}
	// No space at all: a hard cut, still within the limit.
	got = Split(strings.Repeat("x", 25), 10)
	if len(got) != 3 || got[0] != strings.Repeat("x", 10) {
		t.Errorf("hard cut: %q", got)
	}
}

func TestSplitMultibyte(t *testing.T) {
	md := strings.Repeat("日本語のテキスト🚀 ", 500)
	for _, c := range Split(md, 100) {
		if n := utf8.RuneCountInString(c); n > 100 {
			t.Errorf("chunk has %d runes", n)
		}
		if !utf8.ValidString(c) {
			t.Errorf("invalid UTF-8 chunk")
		}
	}
}

func TestSplitCodeFence(t *testing.T) {
	var b strings.Builder
	b.WriteString("Intro\n\n```\n")
	for i := 0; i < 40; i++ {
		b.WriteString("line of code number " + strings.Repeat("x", i%7) + "\n")
	}
	b.WriteString("```\n\nOutro")
	chunks := Split(b.String(), 200)
	if len(chunks) < 3 {
		t.Fatalf("expected several chunks, got %d", len(chunks))
	}
	for i, c := range chunks {
		if utf8.RuneCountInString(c) > 200 {
			t.Errorf("chunk %d too long", i)
		}
		// Every chunk has balanced fences.
		open := ""
		for _, l := range strings.Split(c, "\n") {
			if open != "" {
				if isFenceClose(l, open) {
					open = ""
				}
			} else if f := fenceOpen(l); f != "" {
				open = f
			}
		}
		if open != "" {
			t.Errorf("chunk %d leaves a fence open:\n%s", i, c)
		}
	}
	joined := strings.Join(chunks, "\n")
	if strings.Count(joined, "line of code") != 40 {
		t.Errorf("code lines lost")
	}
}

func TestSplit40000(t *testing.T) {
	var b strings.Builder
	for b.Len() < 40000 {
		b.WriteString("Paragraph with some words and ümläuts, number ")
		b.WriteString(strings.Repeat("z", b.Len()%13))
		b.WriteString(".\nSecond line.\n\n")
	}
	md := b.String()
	chunks := Split(md, 16383)
	if len(chunks) < 3 {
		t.Errorf("got %d chunks", len(chunks))
	}
	for _, c := range chunks {
		if n := utf8.RuneCountInString(c); n > 16383 {
			t.Errorf("chunk of %d runes", n)
		}
		if n := utf8.RuneCountInString(c); n < 16383/2 && c != chunks[len(chunks)-1] {
			t.Errorf("chunk of only %d runes", n)
		}
	}
	if nonSpace(strings.Join(chunks, "")) != nonSpace(md) {
		t.Errorf("text lost")
	}
}

func nonSpace(s string) string {
	return strings.Join(strings.Fields(s), "")
}

func TestSanitizeFilename(t *testing.T) {
	cases := []struct{ in, ct, want string }{
		{"../../etc/passwd", "text/plain", "passwd"},
		{`C:\fakepath\report.pdf`, "application/pdf", "report.pdf"},
		{"a\x00b\x07c.txt", "text/plain", "abc.txt"},
		{"", "image/png", "attachment-3.png"},
		{"", "application/ms-tnef", "winmail.dat"},
		{"", "text/calendar", "invite.ics"},
		{"", "application/x-unknown", "attachment-3.bin"},
		{"evil\u202egnp.exe", "", "evilgnp.exe"},
		{"..", "text/plain", "attachment-3.txt"},
		{"a<b>:c?.txt", "", "a_b__c_.txt"},
	}
	for _, c := range cases {
		if got := sanitizeFilename(c.in, c.ct, 3); got != c.want {
			t.Errorf("sanitizeFilename(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	long := strings.Repeat("é", 300) + ".pdf"
	if got := sanitizeFilename(long, "", 1); len(got) > 200 || !strings.HasSuffix(got, ".pdf") || !utf8.ValidString(got) {
		t.Errorf("long name: %d bytes %q", len(got), got[len(got)-10:])
	}
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}
