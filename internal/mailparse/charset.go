package mailparse

import (
	"bytes"
	"regexp"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/encoding"
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

// cleanString returns s as valid UTF-8 with NUL bytes removed.
func cleanString(s string) string {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "")
	}
	return s
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
