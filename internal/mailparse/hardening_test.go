package mailparse

import (
	"strings"
	"testing"
)

func TestDecodeUTF7(t *testing.T) {
	cases := map[string]string{
		"Hi Mom -+Jjo--!":     "Hi Mom -☺-!",
		"A+ImIDkQ.":           "A≢Α.",
		"+AGEAYgBj-":          "abc",
		"1 +- 1":              "1 + 1",
		"+2D3cAA-":            "\U0001F400",
		"open +AGE":           "open a", // unterminated shift
		"bad \xff byte":       "bad \uFFFD byte",
		"Gr+APwA3w-e, 5 +IKw": "Grüße, 5 €",
	}
	for in, want := range cases {
		if got := decodeUTF7([]byte(in)); got != want {
			t.Errorf("decodeUTF7(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestRawHeaderFallback(t *testing.T) {
	var warns []string
	w := func(f string, a ...any) { warns = append(warns, f) }
	latin := []byte("Caf\xe9 \xa4")
	if got := decodeRawHeader(latin, "subject", nil, w); got != "Café ¤" {
		t.Errorf("default windows-1252: %q", got)
	}
	if got := decodeRawHeader(latin, "subject", []string{"utf-16", "x-nope", "iso-8859-15"}, w); got != "Café €" {
		t.Errorf("iso-8859-15 fallback: %q", got)
	}
	if got := decodeRawHeader([]byte("\x83e\x83X\x83g"), "subject", []string{"utf-8", "Shift_JIS"}, w); got != "テスト" {
		t.Errorf("shift_jis fallback: %q", got)
	}
	if got := decodeRawHeader([]byte("\x1b$B%F%9%H\x1b(B ok"), "subject", nil, w); got != "テスト ok" {
		t.Errorf("raw iso-2022-jp: %q", got)
	}
	if got := decodeRawHeader([]byte("plain ü"), "subject", []string{"koi8-r"}, w); got != "plain ü" {
		t.Errorf("valid UTF-8 must stay: %q", got)
	}
	if got := decodeCharset([]byte("\x1b$B%F%9%H\x1b(B"), "", "part 1", w); got != "テスト" {
		t.Errorf("unlabelled iso-2022-jp body: %q", got)
	}
	if len(warns) != 3 {
		t.Errorf("warnings: %q", warns)
	}
}

func TestBidiAndInvisible(t *testing.T) {
	if got := cleanString("a\u202eb\u2066c\u2069d\u200de"); got != "abcd\u200de" {
		t.Errorf("cleanString: %q", got)
	}
	raw := "Subject: =?UTF-8?B?" + "4oCuZXhlLnBkZuKArCDigIsgb2s=" + "?=\r\n\r\nbody\r\n"
	m := mustParse(t, raw, Options{})
	if m.Subject != "exe.pdf ok" {
		t.Errorf("subject %q", m.Subject)
	}
}

func TestBaseHref(t *testing.T) {
	s := &htmlSanitizer{}
	md, _ := htmlToMarkdown(`<head><base href="https://sn.example.com/app/x.do"></head><a href="nav.do?id=1">a</a> <a href="/abs">b</a> <a href="//cdn.example.com/p">c</a> <a href="javascript:x">d</a>`, nil)
	_ = s
	for _, want := range []string{"[a](https://sn.example.com/app/nav.do?id=1)", "[b](https://sn.example.com/abs)", "[c](https://cdn.example.com/p)"} {
		if !strings.Contains(md, want) {
			t.Errorf("missing %q in %q", want, md)
		}
	}
	if strings.Contains(md, "javascript") {
		t.Errorf("unsafe link kept: %q", md)
	}
	// Without a base, relative links lose their URL but keep their text.
	md, _ = htmlToMarkdown(`<a href="rel/x">text</a>`, nil)
	if md != "text" {
		t.Errorf("relative without base: %q", md)
	}
}

func TestBodySegments(t *testing.T) {
	// multipart/mixed with a text part and a separate HTML part: both shown.
	raw := "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nPLAINPART\r\n" +
		"--b\r\nContent-Type: text/html\r\n\r\n<p>HTMLPART</p>\r\n--b--\r\n"
	md := Render(mustParse(t, raw, Options{}), RenderOptions{})
	if !strings.Contains(md, "PLAINPART") || !strings.Contains(md, "HTMLPART") {
		t.Errorf("mixed text and html: %s", md)
	}
	// multipart/alternative: only the HTML; text after the alternative shown.
	raw = "Content-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n" +
		"--a\r\nContent-Type: text/plain\r\n\r\nALTPLAIN\r\n--a\r\nContent-Type: text/html\r\n\r\n<p>ALTHTML</p>\r\n--a--\r\n" +
		"--m\r\nContent-Type: text/plain\r\n\r\nTRAILER\r\n--m--\r\n"
	md = Render(mustParse(t, raw, Options{}), RenderOptions{})
	if strings.Contains(md, "ALTPLAIN") || !strings.Contains(md, "ALTHTML") || !strings.Contains(md, "TRAILER") ||
		strings.Index(md, "ALTHTML") > strings.Index(md, "TRAILER") {
		t.Errorf("alternative then text: %s", md)
	}
	// An HTML alternative holding only an image loses to the text.
	raw = "Content-Type: multipart/alternative; boundary=a\r\n\r\n--a\r\nContent-Type: text/plain\r\n\r\nTEXTWINS\r\n" +
		"--a\r\nContent-Type: text/html\r\n\r\n<img src=\"https://x.example.com/a.png\" alt=\"\">\r\n--a--\r\n"
	if md = Render(mustParse(t, raw, Options{}), RenderOptions{}); !strings.Contains(md, "TEXTWINS") {
		t.Errorf("empty html alternative: %s", md)
	}
}

func TestUUEncode(t *testing.T) {
	raw := "Subject: uu\r\n\r\nbefore\r\nbegin 644 a.txt\r\n#86)C\r\n`\r\nend\r\nafter\r\nbegin 644 broken\r\n!!!\r\nnot uu\r\n"
	m := mustParse(t, raw, Options{})
	if len(m.Attachments) != 1 || m.Attachments[0].Filename != "a.txt" || string(readAll(t, m.Attachments[0])) != "abc" {
		t.Fatalf("attachments %+v", m.Attachments)
	}
	if !strings.Contains(m.Text, "before") || !strings.Contains(m.Text, "after") || strings.Contains(m.Text, "#86") ||
		!strings.Contains(m.Text, "begin 644 broken") {
		t.Errorf("text %q", m.Text)
	}
}

func TestGuessBoundaryAndCROnly(t *testing.T) {
	raw := "Subject: g\rContent-Type: multipart/mixed\r\r--XYZ\rContent-Type: text/plain\r\rguessed text\r--XYZ--\r"
	m := mustParse(t, raw, Options{})
	if m.Subject != "g" || strings.TrimSpace(m.Text) != "guessed text" {
		t.Errorf("subject %q text %q warnings %q", m.Subject, m.Text, m.Warnings)
	}
}

func TestQuotedParamBackslash(t *testing.T) {
	_, p := parseParams(`attachment; filename="C:\Users\bob\x.txt"; name="a\"b"`, func(string, ...any) {})
	if p["filename"] != `C:\Users\bob\x.txt` || p["name"] != `a"b` {
		t.Errorf("params %q", p)
	}
	if got := sanitizeFilename(p["filename"], "", 1); got != "x.txt" {
		t.Errorf("sanitized %q", got)
	}
}
