package mailparse

import (
	"bytes"
	"encoding/base64"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/mmgate/mmgate/internal/fault"
	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/japanese"
	"golang.org/x/text/encoding/korean"
	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/encoding/traditionalchinese"
	"golang.org/x/text/encoding/unicode"
)

func mustParse(t *testing.T, raw string, opts Options) *Message {
	t.Helper()
	if opts.SpillDir == "" {
		opts.SpillDir = t.TempDir()
	}
	m, err := Parse(strings.NewReader(raw), opts)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	t.Cleanup(func() { _ = m.Close() })
	return m
}

func readAll(t *testing.T, a *Attachment) []byte {
	t.Helper()
	rc, err := a.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func encode(t *testing.T, e encoding.Encoding, s string) []byte {
	t.Helper()
	b, err := e.NewEncoder().Bytes([]byte(s))
	if err != nil {
		t.Fatalf("encode %q: %v", s, err)
	}
	return b
}

func TestCharsets(t *testing.T) {
	cases := []struct {
		label string
		enc   encoding.Encoding
		text  string
	}{
		{"iso-8859-1", charmap.Windows1252, "Grüße – 5 €"}, // WHATWG: latin1 means windows-1252
		{"us-ascii", charmap.Windows1252, "price 5 €"},
		{"iso-8859-2", charmap.ISO8859_2, "Zażółć gęślą jaźń"},
		{"iso-8859-5", charmap.ISO8859_5, "Привет"},
		{"iso-8859-7", charmap.ISO8859_7, "Καλημέρα"},
		{"iso-8859-15", charmap.ISO8859_15, "Œuvre 5 €"},
		{"windows-1250", charmap.Windows1250, "Příliš žluťoučký"},
		{"windows-1251", charmap.Windows1251, "Здравствуйте"},
		{"windows-1253", charmap.Windows1253, "Ευχαριστώ"},
		{"windows-1255", charmap.Windows1255, "שלום"},
		{"koi8-r", charmap.KOI8R, "Сервер недоступен"},
		{"shift_jis", japanese.ShiftJIS, "メンテナンス①"}, // ① exists only in windows-31j
		{"euc-jp", japanese.EUCJP, "障害のお知らせ"},
		{"iso-2022-jp", japanese.ISO2022JP, "障害のお知らせ"},
		{"gb2312", simplifiedchinese.GBK, "朱镕基"}, // 镕 is GBK, not GB2312
		{"gbk", simplifiedchinese.GBK, "服务器维护"},
		{"gb18030", simplifiedchinese.GB18030, "服务器维护 𠀀"},
		{"big5", traditionalchinese.Big5, "伺服器維護"},
		{"euc-kr", korean.EUCKR, "서버 점검"},
		{"ks_c_5601-1987", korean.EUCKR, "서버 점검"},
		{"utf-16", unicode.UTF16(unicode.LittleEndian, unicode.UseBOM), "UTF-16 ✓"},
		{"utf-16be", unicode.UTF16(unicode.BigEndian, unicode.IgnoreBOM), "UTF-16 ✓"},
		{"UTF-8", unicode.UTF8, "héllo ✓ 🚀"},
		{"utf8", unicode.UTF8, "héllo ✓"},
		{"cp1252", charmap.Windows1252, "naïve"},
		{"x-sjis", japanese.ShiftJIS, "テスト"},
	}
	for _, c := range cases {
		raw := encode(t, c.enc, c.text)
		var warns []string
		got := decodeCharset(raw, c.label, "part 1", func(f string, a ...any) { warns = append(warns, f) })
		if got != c.text {
			t.Errorf("%s: got %q want %q", c.label, got, c.text)
		}
		if len(warns) > 0 {
			t.Errorf("%s: unexpected warnings %v", c.label, warns)
		}
		// Through a whole message with base64 transfer encoding.
		msg := "Subject: t\r\nContent-Type: text/plain; charset=\"" + c.label + "\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
			base64.StdEncoding.EncodeToString(raw) + "\r\n"
		if m := mustParse(t, msg, Options{}); m.Text != c.text {
			t.Errorf("%s in a message: got %q", c.label, m.Text)
		}
	}
}

func TestCharsetFallbacks(t *testing.T) {
	var warns []string
	w := func(f string, a ...any) { warns = append(warns, f) }
	if got := decodeCharset([]byte("ok \xff"), "x-foo", "part 1.2", w); got != "ok \uFFFD" || len(warns) != 1 {
		t.Errorf("unknown label: %q %v", got, warns)
	}
	warns = nil
	if got := decodeCharset([]byte("caf\xc3\xa9"), "iso-8859-1", "part 1", w); got != "café" || len(warns) != 1 {
		t.Errorf("UTF-8 labelled latin1: %q %v", got, warns)
	}
	warns = nil
	if got := decodeCharset([]byte("a\x00b"), "", "part 1", w); got != "ab" || len(warns) != 0 {
		t.Errorf("NUL: %q %v", got, warns)
	}
	if got := decodeCharset([]byte("\xef\xbb\xbfBOM"), "windows-1252", "p", w); got != "BOM" {
		t.Errorf("BOM: %q", got)
	}
}

func TestHeaderDecoding(t *testing.T) {
	// A multibyte character split across two encoded words; a Q word; an
	// unencoded raw UTF-8 part; RFC 2231 language suffix.
	euro := base64.StdEncoding.EncodeToString([]byte("€")[:2])
	euro2 := base64.StdEncoding.EncodeToString([]byte("€")[2:])
	raw := "Subject: =?UTF-8?B?" + euro + "?=\r\n =?UTF-8?B?" + euro2 + "?= =?ISO-8859-1?Q?caf=E9_cr=E8me?= und ümlaut =?UTF-8*de?Q?T=C3=BCr?=\r\n" +
		"From: =?utf-8?q?M=C3=BCller=2C_Hans?= <hans@example.com>\r\n" +
		"To: alice@example.com, \"Bob, B.\" <bob@example.com>, broken <<>>, Team: carol@example.com, dave@example.com;\r\n" +
		"Cc: undisclosed-recipients:;\r\n" +
		"Date: 12 Mar 2024 10:00:00 +0100\r\n" +
		"Message-ID: <abc@x>\r\nIn-Reply-To: <p1@x> (comment)\r\nReferences: <r1@x>\r\n <r2@x>\r\n\r\nbody\r\n"
	m := mustParse(t, raw, Options{})
	if m.Subject != "€café crème und ümlaut Tür" {
		t.Errorf("subject %q", m.Subject)
	}
	if len(m.From) != 1 || m.From[0].Name != "Müller, Hans" || m.From[0].Email != "hans@example.com" {
		t.Errorf("from %+v", m.From)
	}
	var emails []string
	for _, a := range m.To {
		emails = append(emails, a.Email)
	}
	if strings.Join(emails, " ") != "alice@example.com bob@example.com carol@example.com dave@example.com" {
		t.Errorf("to %+v", m.To)
	}
	if len(m.Cc) != 0 {
		t.Errorf("cc %+v", m.Cc)
	}
	if m.Date.IsZero() || m.Date.UTC().Hour() != 9 {
		t.Errorf("date %v", m.Date)
	}
	if m.MessageID != "abc@x" || strings.Join(m.InReplyTo, ",") != "p1@x" || strings.Join(m.References, ",") != "r1@x,r2@x" {
		t.Errorf("ids %q %q %q", m.MessageID, m.InReplyTo, m.References)
	}
	if got := m.Header["Subject"]; len(got) != 1 || got[0] != m.Subject {
		t.Errorf("Header[Subject] = %q", got)
	}
	if len(m.Warnings) == 0 || !strings.Contains(strings.Join(m.Warnings, "\n"), "unparseable address") {
		t.Errorf("expected a warning for the broken address, got %q", m.Warnings)
	}
}

func TestGeneratedMessageID(t *testing.T) {
	raw := "Subject: x\r\n\r\nhello\r\n"
	a := mustParse(t, raw, Options{})
	b := mustParse(t, raw, Options{})
	c := mustParse(t, raw+"!", Options{})
	if !a.MessageIDGenerated || a.MessageID != b.MessageID || a.MessageID == c.MessageID ||
		!strings.HasSuffix(a.MessageID, "@mmgate.generated") {
		t.Errorf("generated ids %q %q %q", a.MessageID, b.MessageID, c.MessageID)
	}
	// The whole message counts, past what the parser reads ahead.
	big := raw + strings.Repeat("long line of text\r\n", 10000)
	if d, e := mustParse(t, big, Options{}), mustParse(t, big+"!", Options{}); d.MessageID == e.MessageID {
		t.Errorf("messages differing at byte %d have one generated id %q", len(big), d.MessageID)
	}
}

func TestUnusableInput(t *testing.T) {
	for _, in := range []string{"", "\r\n\r\n"} {
		_, err := Parse(strings.NewReader(in), Options{SpillDir: t.TempDir()})
		if err == nil || !fault.Is(err, fault.Invalid) {
			t.Errorf("Parse(%q) err = %v, want an invalid-input fault", in, err)
		}
	}
	// No header at all but text: usable.
	m := mustParse(t, "just some text\nwithout headers\n", Options{})
	if !strings.Contains(m.Text, "just some text") || len(m.Warnings) == 0 {
		t.Errorf("headerless: %q %q", m.Text, m.Warnings)
	}
	// A read error is temporary.
	_, err := Parse(iotest.ErrReader(io.ErrUnexpectedEOF), Options{})
	if err == nil || !fault.Is(err, fault.Temporary) {
		t.Errorf("read error: %v", err)
	}
}

func TestTransferEncodings(t *testing.T) {
	payload := []byte("binary\x00\x01\x02 payload with enough bytes to span a few base64 quads")
	enc := base64.StdEncoding.EncodeToString(payload)
	noisy := strings.TrimRight(enc[:20]+"\r\n  "+enc[20:40]+"*~\r\n"+enc[40:], "=")
	raw := "Content-Type: multipart/mixed; boundary=b\r\n\r\n" +
		"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: BASE64\r\n\r\n" + noisy + "\r\n" +
		"--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n" +
		base64.StdEncoding.EncodeToString([]byte("one")) + base64.StdEncoding.EncodeToString([]byte("two")) + "\r\n" +
		"--b\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" +
		"caf=C3=A9 soft=\r\nbreak, broken =ZZ escape, soft with space= \r\nend   \r\n" +
		"--b\r\nContent-Type: application/x-thing\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nraw\r\n--b--\r\n"
	m := mustParse(t, raw, Options{})
	if len(m.Attachments) != 3 {
		t.Fatalf("attachments: %d", len(m.Attachments))
	}
	if got := readAll(t, m.Attachments[0]); !bytes.Equal(got, payload) {
		t.Errorf("noisy base64: %q", got)
	}
	if got := string(readAll(t, m.Attachments[1])); got != "onetwo" {
		t.Errorf("concatenated base64: %q", got)
	}
	if m.Text != "café softbreak, broken =ZZ escape, soft with spaceend" {
		t.Errorf("qp: %q", m.Text)
	}
	if got := string(readAll(t, m.Attachments[2])); got != "raw" {
		t.Errorf("unknown encoding: %q", got)
	}
	w := strings.Join(m.Warnings, "\n")
	for _, want := range []string{"malformed base64", "malformed quoted-printable", "unknown Content-Transfer-Encoding"} {
		if !strings.Contains(w, want) {
			t.Errorf("missing warning %q in %q", want, w)
		}
	}
}

func TestQPChunked(t *testing.T) {
	// Decoding must not depend on how the input is split into reads.
	in := "a=3D=\r\nb =\nc  \r\nd=E2=82=AC=4"
	want := "a=b c\r\nd€=4"
	got, err := io.ReadAll(newQPReader(iotest.OneByteReader(strings.NewReader(in))))
	if err != nil || string(got) != want {
		t.Errorf("one byte reads: %q %v, want %q", got, err, want)
	}
	got, _ = io.ReadAll(newQPReader(strings.NewReader(in)))
	if string(got) != want {
		t.Errorf("whole: %q", got)
	}
}

func TestStructures(t *testing.T) {
	t.Run("single part attachment", func(t *testing.T) {
		m := mustParse(t, "Subject: scan\r\nContent-Type: application/pdf; name=\"scan.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n", Options{})
		if m.Text != "" || len(m.Attachments) != 1 || m.Attachments[0].Filename != "scan.pdf" || string(readAll(t, m.Attachments[0])) != "%PDF-" {
			t.Errorf("got %+v", m.Attachments)
		}
		if md := Render(m, RenderOptions{}); !strings.Contains(md, "see the attached files") {
			t.Errorf("render: %q", md)
		}
	})
	t.Run("nested missing inner close", func(t *testing.T) {
		raw := "Content-Type: multipart/mixed; boundary=outer\r\n\r\n--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n" +
			"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n--inner\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n" +
			"--outer\r\nContent-Type: image/gif\r\nContent-Disposition: attachment\r\n\r\nGIF89a\r\n--outer--\r\n"
		m := mustParse(t, raw, Options{})
		if m.Text != "plain" || m.HTML != "<p>html</p>" || len(m.Attachments) != 1 || m.Attachments[0].Filename != "attachment-1.gif" {
			t.Errorf("text %q html %q atts %+v", m.Text, m.HTML, m.Attachments)
		}
	})
	t.Run("boundary never found", func(t *testing.T) {
		m := mustParse(t, "Content-Type: multipart/mixed; boundary=nope\r\n\r\nsome text\r\n", Options{})
		if !strings.Contains(m.Text, "some text") || len(m.Warnings) == 0 {
			t.Errorf("text %q warnings %q", m.Text, m.Warnings)
		}
	})
	t.Run("no blank line after header", func(t *testing.T) {
		m := mustParse(t, "Subject: x\r\nthis line is body\r\nmore\r\n", Options{})
		if m.Subject != "x" || m.Text != "this line is body\nmore\n" {
			t.Errorf("subject %q text %q", m.Subject, m.Text)
		}
	})
	t.Run("body larger than MaxBodyBytes", func(t *testing.T) {
		body := strings.Repeat("é", 3000) // 6000 bytes
		m := mustParse(t, "Subject: big\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"+body, Options{MaxBodyBytes: 1001})
		if len(m.Text) > 1001 || !strings.HasPrefix(body, m.Text) || len(m.Text) < 990 {
			t.Errorf("text truncated to %d bytes", len(m.Text))
		}
		if len(m.Attachments) != 1 || m.Attachments[0].Size != int64(len(body)) {
			t.Errorf("full body not kept as an attachment: %+v", m.Attachments)
		}
	})
	t.Run("forwarded message", func(t *testing.T) {
		raw := "Subject: fwd\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n" +
			"Subject: inner\r\nFrom: a@example.com\r\nContent-Type: multipart/mixed; boundary=c\r\n\r\n--c\r\nContent-Type: text/plain\r\n\r\ninner text\r\n" +
			"--c\r\nContent-Type: image/png\r\nContent-Disposition: attachment; filename=x.png\r\n\r\nPNG\r\n--c--\r\n--b--\r\n"
		m := mustParse(t, raw, Options{})
		if len(m.Attachments) != 1 || m.Attachments[0].Filename != "inner.eml" || m.Attachments[0].ContentType != "message/rfc822" {
			t.Fatalf("attachments %+v", m.Attachments)
		}
		md := Render(m, RenderOptions{})
		if !strings.Contains(md, "**Forwarded message:** inner") || !strings.Contains(md, "inner text") {
			t.Errorf("render:\n%s", md)
		}
	})
	t.Run("format flowed", func(t *testing.T) {
		m := mustParse(t, "Content-Type: text/plain; charset=utf-8; format=flowed\r\n\r\nThis is a long \r\nparagraph that \r\nflows.\r\n From stuffed\r\n> quoted \r\n> text\r\n", Options{})
		if m.Text != "This is a long paragraph that flows.\nFrom stuffed\n> quoted \n> text\n" {
			t.Errorf("flowed: %q", m.Text)
		}
	})
	t.Run("rfc2231 filename", func(t *testing.T) {
		raw := "Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: application/pdf\r\n" +
			"Content-Disposition: attachment; filename*0*=UTF-8''%E2%82%AC%20; filename*1=\"report.pdf\"\r\n\r\nx\r\n" +
			"--b\r\nContent-Type: application/pdf; name=\"=?UTF-8?Q?R=C3=A9sum=C3=A9.pdf?=\"\r\n\r\nx\r\n--b--\r\n"
		m := mustParse(t, raw, Options{})
		if len(m.Attachments) != 2 || m.Attachments[0].Filename != "€ report.pdf" || m.Attachments[1].Filename != "Résumé.pdf" {
			t.Errorf("attachments %+v", m.Attachments)
		}
	})
}
