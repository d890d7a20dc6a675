package mailparse

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"io"
	"math/rand/v2"
	"mime/quotedprintable"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/japanese"
	"golang.org/x/text/encoding/korean"
	"golang.org/x/text/encoding/simplifiedchinese"
	"golang.org/x/text/encoding/traditionalchinese"
	"golang.org/x/text/encoding/unicode"
)

// A property test: random MIME trees (nesting, transfer encodings, charsets,
// line endings and malformations), generated from a seed, must parse and
// render without losing a body text or an attachment.

type genCharset struct {
	label  string
	enc    encoding.Encoding // nil: UTF-8
	sample string            // text representable in the charset
	b64    bool              // must be transfer-encoded (not ASCII compatible)
}

var genCharsets = []genCharset{
	{"utf-8", nil, "Grüße ✓ 東京 🚀", false},
	{"UTF-8", nil, "Zürich €", false},
	{"iso-8859-1", charmap.Windows1252, "Grüße € café", false},
	{"windows-1252", charmap.Windows1252, "naïve “quotes” …", false},
	{"iso-8859-2", charmap.ISO8859_2, "Zażółć gęślą", false},
	{"iso-8859-15", charmap.ISO8859_15, "Œuvre 5 €", false},
	{"windows-1250", charmap.Windows1250, "Příliš žluťoučký", false},
	{"windows-1251", charmap.Windows1251, "Привет мир", false},
	{"koi8-r", charmap.KOI8R, "Сервер недоступен", false},
	{"shift_jis", japanese.ShiftJIS, "メンテナンス", false},
	{"euc-jp", japanese.EUCJP, "障害のお知らせ", false},
	{"iso-2022-jp", japanese.ISO2022JP, "障害のお知らせ", false},
	{"euc-kr", korean.EUCKR, "백업 완료", false},
	{"gb2312", simplifiedchinese.GBK, "服务器维护", false},
	{"gb18030", simplifiedchinese.GB18030, "服务器 𠀀", false},
	{"big5", traditionalchinese.Big5, "伺服器維護", false},
	{"utf-16le", unicode.UTF16(unicode.LittleEndian, unicode.IgnoreBOM), "Größe ✓", true},
	{"utf-16", unicode.UTF16(unicode.BigEndian, unicode.ExpectBOM), "Größe ✓", true},
}

type mimeGen struct {
	r        *rand.Rand
	seed     uint64
	n        int
	markers  []string // must appear in the output
	phrases  []string // must appear in the output (correctly labelled text)
	hashes   map[[32]byte]int
	sizes    map[[32]byte]int
	boundary int
	maxDepth int
}

func (g *mimeGen) pick(p float64) bool { return g.r.Float64() < p }

func (g *mimeGen) marker() string {
	g.n++
	m := fmt.Sprintf("MRK%dX%dZ", g.seed, g.n)
	g.markers = append(g.markers, m)
	return m
}

func (g *mimeGen) newBoundary() string {
	g.boundary++
	b := fmt.Sprintf("b%d-%d", g.boundary, g.r.IntN(1e6))
	switch g.r.IntN(4) {
	case 0:
		b = "----=_Part_" + b
	case 1:
		b += "'()+_,-./:=?"
	case 2:
		b = "=_" + b + " with space"
	}
	return b
}

func quoteParam(v string) string {
	if strings.ContainsAny(v, " ()<>@,;:\\\"/[]?=") || g0(v) {
		return `"` + v + `"`
	}
	return v
}

func g0(v string) bool { return v == "" }

// encodeBody applies a transfer encoding, returning the header value and body.
func (g *mimeGen) encodeBody(b []byte, binary, mustEncode bool) (string, string) {
	choice := g.r.IntN(4)
	if binary || mustEncode {
		choice = g.r.IntN(2) + 2
	}
	switch choice {
	case 0:
		return "", string(b)
	case 1:
		return []string{"7bit", "8bit", "8BIT"}[g.r.IntN(3)], string(b)
	case 2:
		s := base64.StdEncoding.EncodeToString(b)
		var out strings.Builder
		width := []int{76, 64, 72, 1000}[g.r.IntN(4)]
		for i := 0; i < len(s); i += width {
			out.WriteString(s[i:min(len(s), i+width)])
			out.WriteString("\n")
		}
		enc := out.String()
		if g.pick(0.2) {
			enc = strings.TrimRight(enc, "=\n") + "\n" // padding lost
		}
		if g.pick(0.2) {
			enc = strings.ReplaceAll(enc, "\n", " \t\n") // trailing whitespace noise
		}
		return []string{"base64", "BASE64", "Base64"}[g.r.IntN(3)], enc
	default:
		var out bytes.Buffer
		w := quotedprintable.NewWriter(&out)
		w.Binary = binary || mustEncode
		_, _ = w.Write(b)
		_ = w.Close()
		// The writer uses CRLF; the message's line endings are chosen later.
		return []string{"quoted-printable", "Quoted-Printable"}[g.r.IntN(2)], strings.ReplaceAll(out.String(), "\r\n", "\n")
	}
}

// text returns a text/plain or text/html leaf with a marker.
func (g *mimeGen) text(html bool) string {
	cs := genCharsets[g.r.IntN(len(genCharsets))]
	mk := g.marker()
	content := mk + " status " + cs.sample + "\nsecond line " + fmt.Sprint(g.r.IntN(1000)) + "\n"
	if html {
		content = "<html><body><p>" + mk + " status <b>" + cs.sample + "</b></p><div>second line</div>"
		if g.pick(0.3) {
			content += "<table><tr><td>a<td>b" // unclosed tags
		} else {
			content += "</body></html>"
		}
		content += "\n"
	}
	raw := []byte(content)
	if cs.enc != nil {
		var err error
		raw, err = cs.enc.NewEncoder().Bytes([]byte(content))
		if err != nil {
			panic(err)
		}
		if cs.label == "utf-16" {
			raw = append([]byte{0xFE, 0xFF}, raw...)
		}
	}
	label := cs.label
	mislabelled := false
	switch {
	case g.pick(0.1) && !cs.b64:
		label, mislabelled = "x-unknown-"+fmt.Sprint(g.r.IntN(9)), true
	case g.pick(0.1) && cs.enc == nil:
		label = "" // unlabelled UTF-8
	}
	if !mislabelled {
		g.phrases = append(g.phrases, cs.sample)
	}
	cte, body := g.encodeBody(raw, false, cs.b64)
	ct := "text/plain"
	if html {
		ct = "text/html"
	}
	var h strings.Builder
	switch {
	case label == "" && !html && cte == "" && g.pick(0.3):
		// A part without any header.
		return "\n" + body
	case label == "":
		fmt.Fprintf(&h, "Content-Type: %s\n", ct)
	case g.pick(0.5):
		fmt.Fprintf(&h, "Content-Type: %s; charset=%q\n", ct, label)
	default:
		fmt.Fprintf(&h, "Content-Type: %s;\n\tcharset=%s\n", ct, label)
	}
	if !html && g.pick(0.2) {
		h.WriteString("Content-Disposition: inline\n")
	}
	if cte != "" {
		fmt.Fprintf(&h, "Content-Transfer-Encoding: %s\n", cte)
	}
	if cte == "" && !cs.b64 && g.pick(0.1) {
		return h.String() + body // no blank line after the header
	}
	return h.String() + "\n" + body
}

var genTypes = []string{"application/pdf", "image/png", "application/octet-stream", "application/ms-tnef",
	"text/calendar", "text/csv", "application/zip", "image/jpeg"}

var genNames = []string{"report.pdf", "../../etc/passwd", "C:\\Temp\\x.bin", "invoice\u202Efdp.exe", "",
	"Störung – Protokoll.pdf", "日本語.txt", "a\"b.txt", "with space.csv", "winmail.dat"}

// attachment returns a leaf with random bytes and records their hash.
func (g *mimeGen) attachment() string {
	data := make([]byte, g.r.IntN(3000))
	for i := range data {
		data[i] = byte(g.r.IntN(256))
	}
	if g.pick(0.3) {
		data = []byte(strings.Repeat("line of text\r\n", g.r.IntN(40)+1))
	}
	g.hashes[sha256.Sum256(data)]++
	if g.sizes != nil {
		g.sizes[sha256.Sum256(data)] = len(data)
	}
	ct := genTypes[g.r.IntN(len(genTypes))]
	name := genNames[g.r.IntN(len(genNames))]
	var h strings.Builder
	switch {
	case name == "":
		fmt.Fprintf(&h, "Content-Type: %s\n", ct)
	case g.pick(0.3):
		fmt.Fprintf(&h, "Content-Type: %s; name=\"=?UTF-8?B?%s?=\"\n", ct, base64.StdEncoding.EncodeToString([]byte(name)))
	default:
		fmt.Fprintf(&h, "Content-Type: %s; name=%s\n", ct, quoteParam(strings.ReplaceAll(name, `"`, `\"`)))
	}
	disp := "attachment"
	if strings.HasPrefix(ct, "image/") && g.pick(0.5) {
		disp = "inline"
		fmt.Fprintf(&h, "Content-ID: <img%d@gen>\n", g.n)
	}
	switch {
	case name == "":
		fmt.Fprintf(&h, "Content-Disposition: %s\n", disp)
	case g.pick(0.3):
		fmt.Fprintf(&h, "Content-Disposition: %s;\n filename*=UTF-8''%s\n", disp, pctEncode(name))
	default:
		fmt.Fprintf(&h, "Content-Disposition: %s; filename=%s\n", disp, quoteParam(strings.ReplaceAll(name, `"`, `\"`)))
	}
	cte, body := g.encodeBody(data, true, true)
	fmt.Fprintf(&h, "Content-Transfer-Encoding: %s\n\n", cte)
	return h.String() + body
}

func pctEncode(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// node returns a random entity (header and body) at the given depth.
func (g *mimeGen) node(depth int) string {
	if depth >= g.maxDepth || depth > 0 && g.pick(0.45) {
		switch g.r.IntN(5) {
		case 0, 1:
			return g.text(false)
		case 2:
			return g.text(true)
		default:
			return g.attachment()
		}
	}
	sub := []string{"mixed", "alternative", "related", "signed", "report", "x-unknown"}[g.r.IntN(6)]
	b := g.newBoundary()
	var s strings.Builder
	guess := g.pick(0.05) && !strings.Contains(b, " ")
	if guess {
		fmt.Fprintf(&s, "Content-Type: multipart/%s\n\n", sub)
	} else if g.pick(0.5) {
		fmt.Fprintf(&s, "Content-Type: multipart/%s; boundary=\"%s\"\n\n", sub, b)
	} else {
		fmt.Fprintf(&s, "Content-Type: Multipart/%s;\n\tBOUNDARY=%s\n\n", sub, quoteParam(b))
	}
	if !guess && g.pick(0.3) {
		s.WriteString("This is a multi-part message in MIME format.\n")
	}
	n := g.r.IntN(4) + 1
	if sub == "alternative" {
		// Both alternatives hold the same markers in real mail; here only the
		// HTML one (which Render prefers) gets them.
		mk := g.marker()
		g.markers = g.markers[:len(g.markers)-1]
		fmt.Fprintf(&s, "--%s\nContent-Type: text/plain\n\nplain alternative %s\n", b, strings.ToLower(mk))
		fmt.Fprintf(&s, "--%s\n%s\n", b, g.text(true))
		n = g.r.IntN(2)
	}
	for i := 0; i < n; i++ {
		pad := ""
		if g.pick(0.1) {
			pad = "  "
		}
		child := ""
		if sub == "alternative" {
			child = g.attachment() // another text would be an alternative
		} else {
			child = g.node(depth + 1)
		}
		fmt.Fprintf(&s, "--%s%s\n%s\n", b, pad, child)
	}
	if g.pick(0.05) {
		fmt.Fprintf(&s, "--%s\n\n", b) // an empty part
	}
	if !g.pick(0.15) {
		fmt.Fprintf(&s, "--%s--\n", b)
		if g.pick(0.2) {
			s.WriteString("epilogue\n")
		}
	}
	return s.String()
}

// message returns a whole random message.
func (g *mimeGen) message() []byte {
	var s strings.Builder
	subj := g.marker()
	switch g.r.IntN(3) {
	case 0:
		fmt.Fprintf(&s, "Subject: =?UTF-8?B?%s?=\n", base64.StdEncoding.EncodeToString([]byte("⚠ "+subj)))
	case 1:
		fmt.Fprintf(&s, "Subject: Alert\n  %s\n\tfolded\n", subj)
	default:
		fmt.Fprintf(&s, "Subject: %s\n", subj)
	}
	s.WriteString("From: \"Gen, Test\" <gen@example.com>\nTo: ops@example.com\nDate: Tue, 19 Mar 2024 10:00:00 +0000\n")
	if g.pick(0.8) {
		fmt.Fprintf(&s, "Message-ID: <%d@gen.example.com>\nMIME-Version: 1.0\n", g.seed)
	}
	if g.pick(0.1) {
		// A deep chain of multiparts with a text at the bottom.
		depth := 40 + g.r.IntN(20)
		for i := 0; i < depth; i++ {
			fmt.Fprintf(&s, "Content-Type: multipart/mixed; boundary=\"deep%d\"\n\n--deep%d\n", i, i)
		}
		s.WriteString(g.text(false) + "\n")
		for i := depth - 1; i >= 0; i-- {
			fmt.Fprintf(&s, "--deep%d--\n", i)
		}
	} else {
		s.WriteString(g.node(0))
	}
	msg := s.String()
	switch g.r.IntN(4) {
	case 0:
		msg = strings.ReplaceAll(msg, "\n", "\r\n")
	case 1: // mixed line endings
		var b strings.Builder
		for _, l := range strings.SplitAfter(msg, "\n") {
			if strings.HasSuffix(l, "\n") && g.pick(0.5) {
				l = strings.TrimSuffix(l, "\n") + "\r\n"
			}
			b.WriteString(l)
		}
		msg = b.String()
	case 2:
		if len(msg) < 30000 {
			msg = strings.ReplaceAll(msg, "\n", "\r") // classic Mac
		}
	}
	return []byte(msg)
}

func TestPropertyRandomMIME(t *testing.T) {
	n := 400
	if testing.Short() {
		n = 50
	}
	dir := t.TempDir()
	for seed := uint64(1); seed <= uint64(n); seed++ {
		g := &mimeGen{r: rand.New(rand.NewPCG(seed, 0x6d6d67617465)), seed: seed, hashes: map[[32]byte]int{}, sizes: map[[32]byte]int{}, maxDepth: 1 + int(seed%6)}
		raw := g.message()
		if !checkGenerated(t, g, raw, dir) {
			t.Logf("seed %d message:\n%s", seed, truncateBytes(raw, 6000))
			return
		}
	}
}

func truncateBytes(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "\n[...]"
	}
	return string(b)
}

func checkGenerated(t *testing.T, g *mimeGen, raw []byte, dir string) bool {
	t.Helper()
	threshold := int64(1 << 20)
	if g.seed%3 == 0 {
		threshold = 100 // spill most parts to files
	}
	m, err := Parse(bytes.NewReader(raw), Options{SpillDir: dir, SpillThreshold: threshold})
	if err != nil {
		t.Errorf("seed %d: Parse: %v", g.seed, err)
		return false
	}
	defer m.Close()
	md := Render(m, RenderOptions{})
	ok := true
	fail := func(format string, args ...any) {
		t.Errorf("seed %d: "+format, append([]any{g.seed}, args...)...)
		ok = false
	}
	if !utf8.ValidString(md) || strings.IndexByte(md, 0) >= 0 {
		fail("output is not valid UTF-8 or contains NUL")
	}
	var attText strings.Builder
	got := map[[32]byte]int{}
	for _, a := range m.Attachments {
		rc, err := a.Open()
		if err != nil {
			fail("open %s: %v", a.Filename, err)
			continue
		}
		b, err := io.ReadAll(rc)
		_ = rc.Close()
		if err != nil || int64(len(b)) != a.Size {
			fail("attachment %s: %d bytes, Size %d, err %v", a.Filename, len(b), a.Size, err)
		}
		got[sha256.Sum256(b)]++
		attText.Write(b)
		if a.Filename == "" || strings.ContainsAny(a.Filename, "/\\\x00\u202e") || !utf8.ValidString(a.Filename) {
			fail("bad file name %q", a.Filename)
		}
	}
	for _, mk := range g.markers {
		if !strings.Contains(md, mk) && !bytes.Contains([]byte(attText.String()), []byte(mk)) {
			fail("marker %s lost; output:\n%s", mk, md)
		}
	}
	for _, ph := range g.phrases {
		if !strings.Contains(md, ph) && !strings.Contains(m.Text, ph) {
			fail("phrase %q lost (charset decoding); output:\n%s", ph, md)
		}
	}
	for h, n := range g.hashes {
		if got[h] < n {
			fail("attachment with sha256 %x (%d bytes) missing or corrupted (have %d of %d)", h[:6], g.sizes[h], got[h], n)
		}
	}
	return ok
}
