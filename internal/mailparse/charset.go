package mailparse

import (
	"bytes"
	"regexp"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/htmlindex"
	"golang.org/x/text/encoding/ianaindex"
	"golang.org/x/text/encoding/unicode"
)

// lookupCharset returns the decoder for a charset label, using the WHATWG
// Encoding Standard mapping first and the IANA registry as a fallback. It returns
// nil for an unknown label.
func lookupCharset(label string) encoding.Encoding {
	l := strings.ToLower(strings.Trim(strings.TrimSpace(label), `"'`))
	if l == "" {
		return nil
	}
	// Salvage mangled labels such as charset="charset=utf-8" or "utf-8*en".
	if i := strings.LastIndexByte(l, '='); i >= 0 {
		l = l[i+1:]
	}
	if i := strings.IndexByte(l, '*'); i >= 0 {
		l = l[:i]
	}
	candidates := []string{l}
	if strings.HasPrefix(l, "x-") {
		candidates = append(candidates, l[2:])
	}
	if strings.HasPrefix(l, "cp") {
		candidates = append(candidates, "windows-"+l[2:], "ibm"+l[2:])
	}
	for _, c := range candidates {
		if e, err := htmlindex.Get(c); err == nil && e != nil {
			return e
		}
	}
	for _, c := range candidates {
		if e, err := ianaindex.IANA.Encoding(c); err == nil && e != nil {
			return e
		}
	}
	return nil
}

// isLatinLabel reports whether label is one that WHATWG decodes as
// windows-1252 and that mailers commonly put on UTF-8 text.
func isLatinLabel(label string) bool {
	switch strings.ToLower(strings.Trim(strings.TrimSpace(label), `"'`)) {
	case "", "us-ascii", "ascii", "ansi_x3.4-1968", "iso-8859-1", "iso8859-1", "latin1",
		"iso_8859-1", "l1", "windows-1252", "cp1252":
		return true
	}
	return false
}

// decodeCharset turns b, labelled with charset label, into a valid UTF-8 string
// without NUL bytes. what names the part for warnings ("part 1.2", "subject").
// A byte order mark wins over the label, as in the Encoding Standard.
func decodeCharset(b []byte, label, what string, warn func(string, ...any)) string {
	switch {
	case bytes.HasPrefix(b, []byte{0xEF, 0xBB, 0xBF}):
		return cleanString(string(b[3:]))
	case bytes.HasPrefix(b, []byte{0xFE, 0xFF}):
		return decodeWith(unicode.UTF16(unicode.BigEndian, unicode.IgnoreBOM), b[2:])
	case bytes.HasPrefix(b, []byte{0xFF, 0xFE}):
		return decodeWith(unicode.UTF16(unicode.LittleEndian, unicode.IgnoreBOM), b[2:])
	}
	label = strings.TrimSpace(label)
	if isUTF7Label(label) {
		return cleanString(decodeUTF7(b))
	}
	if isLatinLabel(label) && (bytes.Contains(b, []byte("\x1b$B")) || bytes.Contains(b, []byte("\x1b$@"))) {
		// Unlabelled (or us-ascii labelled) ISO-2022-JP: 7-bit, so it
		// passes as UTF-8.
		if e := lookupCharset("iso-2022-jp"); e != nil {
			return decodeWith(e, b)
		}
	}
	if isLatinLabel(label) && utf8.Valid(b) {
		if label != "" && !isASCII(b) {
			warn("%s is labelled %q but is valid UTF-8: decoded as UTF-8", what, label)
		}
		return cleanString(string(b))
	}
	if label == "" {
		if !utf8.Valid(b) {
			warn("%s has no charset and is not valid UTF-8: decoded as UTF-8", what)
		}
		return cleanString(string(b))
	}
	enc := lookupCharset(label)
	if enc == nil {
		warn("unknown charset %q in %s: decoded as UTF-8", label, what)
		return cleanString(string(b))
	}
	return decodeWith(enc, b)
}

func decodeWith(enc encoding.Encoding, b []byte) string {
	out, err := enc.NewDecoder().Bytes(b)
	if err != nil {
		// The x/text decoders replace invalid input themselves; an error here
		// means an internal failure, so keep the bytes rather than lose the part.
		return cleanString(string(b))
	}
	return cleanString(string(out))
}

func isASCII(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return false
		}
	}
	return true
}

// cleanString returns s as valid UTF-8 with NUL bytes and bidi embedding,
// override and isolate controls (U+202A–U+202E, U+2066–U+2069) removed: an
// override in a mail can make "exe.pdf" look like "fdp.exe" and would reorder
// the rest of a Mattermost paragraph.
func cleanString(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	if hasBidiControl(s) {
		s = strings.Map(func(r rune) rune {
			if isBidiControl(r) {
				return -1
			}
			return r
		}, s)
	}
	return s
}

func isBidiControl(r rune) bool {
	return r >= '\u202A' && r <= '\u202E' || r >= '\u2066' && r <= '\u2069'
}

// hasBidiControl reports quickly whether s holds a bidi control: all of them
// are encoded as E2 80 AA..AE or E2 81 A6..A9.
func hasBidiControl(s string) bool {
	for i := 0; ; {
		j := strings.IndexByte(s[i:], 0xE2)
		if j < 0 || i+j+2 >= len(s) {
			return false
		}
		i += j
		if b1, b2 := s[i+1], s[i+2]; b1 == 0x80 && b2 >= 0xAA && b2 <= 0xAE || b1 == 0x81 && b2 >= 0xA6 && b2 <= 0xA9 {
			return true
		}
		i++
	}
}

// stripInvisible removes zero-width characters that only serve to hide or
// disguise text in one-line fields (subjects, names, file names): U+200B,
// U+2060, U+FEFF, U+180E and the bidi marks U+200E, U+200F, U+061C. The zero
// width joiner (emoji sequences) and non-joiner (Persian) are kept.
func stripInvisible(s string) string {
	return strings.Map(func(r rune) rune {
		switch r {
		case '\u200B', '\u2060', '\uFEFF', '\u180E', '\u200E', '\u200F', '\u061C':
			return -1
		}
		return r
	}, s)
}

// isUTF7Label reports whether label names UTF-7, which the Encoding Standard
// does not know (it maps it to nothing) but old mailers still send.
func isUTF7Label(label string) bool {
	switch strings.ToLower(strings.Trim(strings.TrimSpace(label), `"'`)) {
	case "utf-7", "utf7", "unicode-1-1-utf-7", "x-unicode20utf7", "csunicode11utf7", "x-utf-7":
		return true
	}
	return false
}

// decodeUTF7 decodes RFC 2152 UTF-7. Malformed shifts are decoded as far as
// they go; unpaired surrogates become U+FFFD.
func decodeUTF7(b []byte) string {
	var out []rune
	var units []uint16
	flushUnits := func() {
		out = append(out, utf16Decode(units)...)
		units = units[:0]
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c != '+' {
			out = append(out, rune(c))
			if c >= 0x80 {
				out[len(out)-1] = utf8.RuneError
			}
			continue
		}
		if i+1 < len(b) && b[i+1] == '-' {
			out = append(out, '+')
			i++
			continue
		}
		var acc uint32
		bits := 0
		j := i + 1
		for ; j < len(b); j++ {
			v := b64Table[b[j]]
			if v == 0xFF {
				break
			}
			acc = acc<<6 | uint32(v)
			bits += 6
			if bits >= 16 {
				bits -= 16
				units = append(units, uint16(acc>>uint(bits)))
				acc &= 1<<uint(bits) - 1
			}
		}
		flushUnits()
		if j < len(b) && b[j] == '-' {
			j++ // the explicit end of the shift is absorbed
		}
		i = j - 1
	}
	return string(out)
}

func utf16Decode(u []uint16) []rune {
	var out []rune
	for i := 0; i < len(u); i++ {
		c := rune(u[i])
		switch {
		case c >= 0xD800 && c < 0xDC00 && i+1 < len(u) && u[i+1] >= 0xDC00 && u[i+1] < 0xE000:
			out = append(out, (c-0xD800)<<10+(rune(u[i+1])-0xDC00)+0x10000)
			i++
		case c >= 0xD800 && c < 0xE000:
			out = append(out, utf8.RuneError)
		default:
			out = append(out, c)
		}
	}
	return out
}

// isASCIICompatible reports whether raw header bytes can be in enc: not a
// UTF-16/32 or UTF-7 encoding.
func rawHeaderEncoding(label string) encoding.Encoding {
	if label == "" || isUTF7Label(label) {
		return nil
	}
	l := strings.ToLower(label)
	if strings.Contains(l, "utf-16") || strings.Contains(l, "utf16") || strings.Contains(l, "utf-32") ||
		strings.Contains(l, "ucs") || strings.Contains(l, "unicode") || strings.Contains(l, "2022") {
		return nil
	}
	enc := lookupCharset(label)
	if enc == nil || enc == unicode.UTF8 {
		return nil
	}
	return enc
}

// decodeRawHeader turns the raw bytes of a header value into UTF-8. Mailers
// that put 8-bit text in headers use the charset of the message; so bytes that
// are not valid UTF-8 are decoded with the first usable label of fallbacks,
// else windows-1252 (which maps every byte, so no accent is lost). Raw
// ISO-2022-JP escape sequences (7-bit, so valid UTF-8) are decoded too.
func decodeRawHeader(b []byte, what string, fallbacks []string, warn func(string, ...any)) string {
	if utf8.Valid(b) {
		if bytes.Contains(b, []byte("\x1b$B")) || bytes.Contains(b, []byte("\x1b$@")) || bytes.Contains(b, []byte("\x1b(J")) {
			if e := lookupCharset("iso-2022-jp"); e != nil {
				return decodeWith(e, b)
			}
		}
		return cleanString(string(b))
	}
	for _, l := range fallbacks {
		if enc := rawHeaderEncoding(l); enc != nil {
			warn("raw 8-bit bytes in %s decoded as %s", what, strings.ToLower(strings.TrimSpace(l)))
			return decodeWith(enc, b)
		}
	}
	warn("raw 8-bit bytes in %s decoded as windows-1252", what)
	return decodeWith(charmap.Windows1252, b)
}

var metaCharsetRE = regexp.MustCompile(`(?i)<meta[^>]+charset\s*=\s*["']?\s*([a-zA-Z0-9_.:\-]+)`)

// htmlMetaCharset finds a charset declared in the first KiB of an HTML document.
func htmlMetaCharset(b []byte) string {
	if len(b) > 2048 {
		b = b[:2048]
	}
	m := metaCharsetRE.FindSubmatch(b)
	if m == nil {
		return ""
	}
	return string(m[1])
}
