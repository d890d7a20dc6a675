package mailparse

import (
	"fmt"
	"io"
	"mime"
	"net/mail"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jhillyerd/enmime/v2/mediatype"
)

// decodeWords decodes RFC 2047 encoded words anywhere in s. Whitespace between
// adjacent encoded words is dropped and the bytes of adjacent words in the same
// charset are joined before charset decoding, so a multibyte character split
// across two words survives. Malformed words are kept as they are.
func decodeWords(s, what string, warn func(string, ...any)) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	var out strings.Builder
	var pend []byte // decoded bytes of the current run of words
	pendCharset := ""
	flush := func() {
		if pendCharset != "" || len(pend) > 0 {
			out.WriteString(decodeCharset(pend, pendCharset, what, warn))
		}
		pend = pend[:0]
		pendCharset = ""
	}
	i := 0
	lastWasWord := false
	for i < len(s) {
		j := strings.Index(s[i:], "=?")
		if j < 0 {
			flush()
			out.WriteString(s[i:])
			break
		}
		j += i
		charset, enc, text, end, ok := parseWord(s, j)
		if ok && (enc == 'b' || enc == 'B') && !isBase64Text(text) {
			ok = false // garbage, not base64: keep the word as it is
		}
		if !ok {
			flush()
			out.WriteString(s[i : j+2])
			i = j + 2
			lastWasWord = false
			continue
		}
		between := s[i:j]
		if !(lastWasWord && strings.TrimSpace(between) == "") {
			flush()
			out.WriteString(between)
		}
		if k := strings.IndexByte(charset, '*'); k >= 0 { // RFC 2231 language
			charset = charset[:k]
		}
		var raw []byte
		if enc == 'b' || enc == 'B' {
			raw = decodeB64String(text)
		} else {
			raw = decodeQWord(text)
		}
		if pendCharset != "" && !strings.EqualFold(pendCharset, charset) {
			flush()
		}
		pendCharset = charset
		pend = append(pend, raw...)
		i = end
		lastWasWord = true
	}
	flush()
	return out.String()
}

// parseWord parses "=?charset?e?text?=" starting at s[i].
func parseWord(s string, i int) (charset string, enc byte, text string, end int, ok bool) {
	rest := s[i+2:]
	q1 := strings.IndexByte(rest, '?')
	if q1 <= 0 || q1 > 64 || strings.ContainsAny(rest[:q1], " \t\r\n") {
		return "", 0, "", 0, false
	}
	if len(rest) < q1+3 || rest[q1+2] != '?' {
		return "", 0, "", 0, false
	}
	enc = rest[q1+1]
	if enc != 'b' && enc != 'B' && enc != 'q' && enc != 'Q' {
		return "", 0, "", 0, false
	}
	body := rest[q1+3:]
	k := strings.Index(body, "?=")
	if k < 0 {
		return "", 0, "", 0, false
	}
	return rest[:q1], enc, body[:k], i + 2 + q1 + 3 + k + 2, true
}

func isBase64Text(s string) bool {
	for i := 0; i < len(s); i++ {
		if b64Table[s[i]] == 0xFF && s[i] != '=' && s[i] != ' ' && s[i] != '\t' {
			return false
		}
	}
	return true
}

func decodeB64String(s string) []byte {
	b, _ := io.ReadAll(newB64Reader(strings.NewReader(s)))
	return b
}

func decodeQWord(s string) []byte {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '_':
			b = append(b, ' ')
		case c == '=' && i+2 < len(s):
			h, ok1 := unhex(s[i+1])
			l, ok2 := unhex(s[i+2])
			if ok1 && ok2 {
				b = append(b, h<<4|l)
				i += 2
			} else {
				b = append(b, c)
			}
		default:
			b = append(b, c)
		}
	}
	return b
}

// headerText decodes a raw header value to display text: unfolded, raw 8-bit
// bytes checked, encoded words decoded, NUL-free and valid UTF-8.
// fallbacks are the charsets tried for raw 8-bit bytes (see decodeRawHeader).
func headerText(raw, what string, fallbacks []string, warn func(string, ...any)) string {
	v := unfold(raw)
	v = decodeRawHeader([]byte(v), what, fallbacks, warn)
	v = decodeWords(v, what, warn)
	return cleanString(v)
}

// singleLine collapses all whitespace runs (including line breaks) to a space.
func singleLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

// parseParams parses a header value with parameters (Content-Type,
// Content-Disposition). The value is lower-cased. RFC 2231 extended and
// continued parameters are assembled and decoded in any charset; plain
// parameters holding RFC 2047 words (common for filenames) are decoded too.
func parseParams(v string, warn func(string, ...any)) (string, map[string]string) {
	v = unfold(v)
	params := map[string]string{}
	if v == "" {
		return "", params
	}
	// Let enmime's tolerant parser find the media type (it repairs many broken
	// forms); the parameters are parsed below.
	head, rest, _ := strings.Cut(v, ";")
	value := strings.ToLower(strings.TrimSpace(head))
	if f := strings.Fields(value); len(f) > 1 {
		// "text/html charset=utf-8": a missing semicolon.
		value = f[0]
		rest = strings.Join(strings.Fields(head)[1:], " ") + ";" + rest
	}
	if strings.Contains(value, "/") {
		if mt, _, _, err := mediatype.Parse(value); err == nil && mt != "" {
			value = mt
		}
	}
	raw := map[string]string{}
	var order []string
	s := rest
	for len(s) > 0 {
		s = strings.TrimLeft(s, "; \t\r\n")
		if s == "" {
			break
		}
		eq := strings.IndexAny(s, "=;")
		if eq < 0 || s[eq] == ';' {
			// A parameter without a value: skip it.
			if eq < 0 {
				break
			}
			s = s[eq:]
			continue
		}
		name := strings.ToLower(strings.TrimSpace(s[:eq]))
		s = strings.TrimLeft(s[eq+1:], " \t")
		var val string
		if strings.HasPrefix(s, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(s); i++ {
				c := s[i]
				// A backslash escapes only a quote or a backslash:
				// Windows mailers put unescaped paths in file names.
				if c == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
					b.WriteByte(s[i])
					continue
				}
				if c == '"' {
					break
				}
				b.WriteByte(c)
			}
			val = b.String()
			if i < len(s) {
				i++
			}
			s = s[i:]
			// Skip junk up to the next separator.
			if k := strings.IndexByte(s, ';'); k >= 0 {
				s = s[k:]
			} else {
				s = ""
			}
		} else {
			k := strings.IndexByte(s, ';')
			if k < 0 {
				k = len(s)
			}
			val = strings.TrimSpace(s[:k])
			s = s[k:]
		}
		if name == "" {
			continue
		}
		if _, dup := raw[name]; !dup {
			order = append(order, name)
			raw[name] = val
		}
	}
	// Assemble RFC 2231 parameters.
	type seg struct {
		idx int
		ext bool
		val string
	}
	ext := map[string][]seg{}
	for _, name := range order {
		val := raw[name]
		star := strings.IndexByte(name, '*')
		if star < 0 {
			params[name] = decodeWords(val, "parameter "+name, warn)
			continue
		}
		base := name[:star]
		suffix := name[star+1:]
		sg := seg{val: val}
		switch {
		case suffix == "":
			sg.ext = true
		default:
			isExt := strings.HasSuffix(suffix, "*")
			n, err := strconv.Atoi(strings.TrimSuffix(suffix, "*"))
			if err != nil || n < 0 || n > 999 {
				continue
			}
			sg.idx, sg.ext = n, isExt
		}
		ext[base] = append(ext[base], sg)
	}
	for base, segs := range ext {
		sort.SliceStable(segs, func(i, j int) bool { return segs[i].idx < segs[j].idx })
		charset := ""
		var buf []byte
		for i, sg := range segs {
			val := sg.val
			if sg.ext {
				if i == 0 {
					// charset'language'value
					if a := strings.IndexByte(val, '\''); a >= 0 {
						if b := strings.IndexByte(val[a+1:], '\''); b >= 0 {
							charset = val[:a]
							val = val[a+1+b+1:]
						}
					}
				}
				buf = append(buf, percentDecode(val)...)
			} else {
				buf = append(buf, val...)
			}
		}
		params[base] = decodeCharset(buf, charset, "parameter "+base, warn)
	}
	return value, params
}

func percentDecode(s string) []byte {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) {
			h, ok1 := unhex(s[i+1])
			l, ok2 := unhex(s[i+2])
			if ok1 && ok2 {
				b = append(b, h<<4|l)
				i += 2
				continue
			}
		}
		b = append(b, s[i])
	}
	return b
}

// cleanName cleans a display name: one line, no invisible characters.
func cleanName(s string) string { return singleLine(stripInvisible(cleanString(s))) }

var wordDecoder = &mime.WordDecoder{CharsetReader: func(charset string, input io.Reader) (io.Reader, error) {
	if isUTF7Label(charset) {
		b, err := io.ReadAll(input)
		if err != nil {
			return nil, err
		}
		return strings.NewReader(decodeUTF7(b)), nil
	}
	enc := lookupCharset(charset)
	if enc == nil {
		return nil, fmt.Errorf("unknown charset %q", charset)
	}
	return enc.NewDecoder().Reader(input), nil
}}

var (
	angleAddrRE = regexp.MustCompile(`<\s*([^<>\s]+@[^<>\s]+)\s*>`)
	bareAddrRE  = regexp.MustCompile(`[^\s<>()",;:]+@[^\s<>()",;:]+`)
)

// parseAddressList parses an address header, keeping what parses and warning
// about the rest.
func parseAddressList(raw, fieldName string, fallbacks []string, warn func(string, ...any)) []Address {
	v := unfold(raw)
	v = decodeRawHeader([]byte(v), fieldName+" header", fallbacks, warn)
	if strings.TrimSpace(v) == "" {
		return nil
	}
	p := mail.AddressParser{WordDecoder: wordDecoder}
	if list, err := p.ParseList(v); err == nil {
		return convertAddrs(list, fieldName, warn)
	}
	var out []Address
	for _, item := range splitAddressList(v) {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if a, err := p.Parse(item); err == nil {
			out = append(out, convertAddrs([]*mail.Address{a}, fieldName, warn)...)
			continue
		}
		if m := angleAddrRE.FindStringSubmatchIndex(item); m != nil {
			name := strings.Trim(strings.TrimSpace(item[:m[0]]), `"' `)
			out = append(out, Address{
				Name:  cleanName(decodeWords(name, fieldName+" header", warn)),
				Email: cleanString(item[m[2]:m[3]]),
			})
			continue
		}
		if m := bareAddrRE.FindString(item); m != "" {
			out = append(out, Address{Email: cleanString(m)})
			continue
		}
		if strings.HasSuffix(item, ":") || strings.HasSuffix(item, ":;") {
			continue // an empty group such as "undisclosed-recipients:;"
		}
		warn("unparseable address %q in %s header dropped", truncateForWarning(item), fieldName)
	}
	return out
}

func convertAddrs(list []*mail.Address, fieldName string, warn func(string, ...any)) []Address {
	out := make([]Address, 0, len(list))
	for _, a := range list {
		name := a.Name
		if strings.Contains(name, "=?") {
			name = decodeWords(name, fieldName+" header", warn)
		}
		out = append(out, Address{Name: cleanName(name), Email: cleanString(strings.TrimSpace(a.Address))})
	}
	return out
}

// splitAddressList splits at commas and semicolons outside quotes, angle
// brackets and comments; a group's display name ("Team:") is dropped.
func splitAddressList(s string) []string {
	var items []string
	depthAngle, depthParen := 0, 0
	inQuote := false
	start := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote:
			if c == '\\' {
				i++
			} else if c == '"' {
				inQuote = false
			}
		case c == '"':
			inQuote = true
		case c == '<':
			depthAngle++
		case c == '>':
			if depthAngle > 0 {
				depthAngle--
			}
		case c == '(':
			depthParen++
		case c == ')':
			if depthParen > 0 {
				depthParen--
			}
		case c == ':' && depthAngle == 0 && depthParen == 0:
			// Group name, unless this looks like part of an address.
			if !strings.Contains(s[start:i], "@") {
				start = i + 1
			}
		case (c == ',' || c == ';') && depthAngle == 0 && depthParen == 0:
			items = append(items, s[start:i])
			start = i + 1
		}
	}
	items = append(items, s[start:])
	return items
}

func truncateForWarning(s string) string {
	s = singleLine(s)
	if r := []rune(s); len(r) > 60 {
		return string(r[:60]) + "…"
	}
	return s
}

var dateLayouts = []string{
	"Mon, 2 Jan 2006 15:04:05 -0700",
	"Mon, 2 Jan 2006 15:04:05 MST",
	"Mon, 2 Jan 2006 15:04 -0700",
	"2 Jan 2006 15:04:05 -0700",
	"Mon, 2 Jan 06 15:04:05 -0700",
	"Mon Jan 2 15:04:05 2006",
	"Mon Jan 2 15:04:05 MST 2006",
	"Mon, 2 Jan 2006 15:04:05",
	"2006-01-02 15:04:05 -0700",
	"2006-01-02 15:04:05",
	"Monday, 02-Jan-06 15:04:05 MST",
	"Mon, 02-Jan-06 15:04:05 MST",
	"Mon, 2 Jan 2006 15:04:05 -0700 MST",
	"2 Jan 2006 15:04:05 MST",
	"2006-01-02T15:04:05",
	"2006-01-02T15:04:05.999999999Z07:00",
	time.RFC3339,
}

var dateCommentRE = regexp.MustCompile(`\s*\([^)]*\)\s*$`)

// parseDate parses a Date header; the zero time when it cannot be parsed.
func parseDate(v string) (time.Time, bool) {
	v = singleLine(unfold(v))
	if v == "" {
		return time.Time{}, true
	}
	if t, err := mail.ParseDate(v); err == nil {
		return t, true
	}
	v2 := dateCommentRE.ReplaceAllString(v, "")
	v2 = singleLine(strings.ReplaceAll(v2, ",", ", "))
	for _, l := range dateLayouts {
		if t, err := time.Parse(l, v2); err == nil {
			return t, true
		}
	}
	return time.Time{}, false
}

var msgIDRE = regexp.MustCompile(`<([^<>]*)>`)

// parseIDs extracts message ids (without angle brackets) from a header value.
func parseIDs(v string) []string {
	v = unfold(v)
	var ids []string
	ms := msgIDRE.FindAllStringSubmatch(v, -1)
	if len(ms) > 0 {
		for _, m := range ms {
			id := strings.Join(strings.Fields(m[1]), "")
			if id != "" {
				ids = append(ids, cleanString(id))
			}
		}
		return ids
	}
	for _, f := range strings.FieldsFunc(v, func(r rune) bool { return r == ' ' || r == '\t' || r == ',' }) {
		if strings.Contains(f, "@") {
			ids = append(ids, cleanString(f))
		}
	}
	return ids
}

// stripAngle removes surrounding angle brackets and whitespace.
func stripAngle(s string) string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "<")
	s = strings.TrimSuffix(s, ">")
	return strings.TrimSpace(s)
}
