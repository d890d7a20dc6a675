package mailparse

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// Characters escaped anywhere in plain text. Together with the line-start
// rules below they keep text from rendering as Markdown it was not.
// escapeChars are escaped wherever they stand: they can open emphasis, code,
// links or HTML anywhere in a line. Characters that matter only at the start of
// a line (# > | - + =) are handled in escapeLine, and & and ~ only where they
// could start an entity or a strikethrough, so that ordinary text keeps few
// backslashes (they show in notifications and when text is copied).
const escapeChars = "\\`*_[]<"

// linkRE finds spans left unescaped: URLs with a scheme and e-mail
// addresses. They are emitted as CommonMark autolinks (<...>), whose content is
// taken literally, so they stay clickable and are never mangled.
var linkRE = regexp.MustCompile(`(?i)\b(?:(?:https?|ftp)://|mailto:)[^\s<>"\x60]+|[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,}`)

// trimURL removes trailing punctuation that belongs to the sentence, keeping a
// closing parenthesis that balances one inside the URL.
func trimURL(u string) string {
	for len(u) > 0 {
		last := u[len(u)-1]
		switch last {
		case '.', ',', ';', ':', '!', '?', '\'', '*', '_', '~':
			u = u[:len(u)-1]
			continue
		case ')':
			if strings.Count(u, "(") < strings.Count(u, ")") {
				u = u[:len(u)-1]
				continue
			}
		case ']':
			if strings.Count(u, "[") < strings.Count(u, "]") {
				u = u[:len(u)-1]
				continue
			}
		}
		break
	}
	return u
}

// escapeInline escapes s for use inside a line (no line-start rules), leaving
// URLs and e-mail addresses as autolinks.
func escapeInline(s string) string {
	var b strings.Builder
	b.Grow(len(s) + 16)
	rest := s
	for rest != "" {
		// Every link has "@" or ":": text without either (most lines of
		// tool mail) skips the regular expression, whose cost grows with the
		// square of a long word's length.
		var loc []int
		if strings.ContainsAny(rest, "@:") {
			loc = linkRE.FindStringIndex(rest)
		}
		if loc == nil {
			escapeChunk(&b, rest)
			break
		}
		u := trimURL(rest[loc[0]:loc[1]])
		if u == "" || strings.HasSuffix(strings.ToLower(u), "://") || strings.EqualFold(u, "mailto:") {
			escapeChunk(&b, rest[:loc[1]])
			rest = rest[loc[1]:]
			continue
		}
		escapeChunk(&b, rest[:loc[0]])
		b.WriteByte('<')
		b.WriteString(u)
		b.WriteByte('>')
		rest = rest[loc[0]+len(u):]
	}
	return b.String()
}

func escapeChunk(b *strings.Builder, s string) {
	for i, r := range s {
		switch {
		case r < utf8.RuneSelf && strings.IndexByte(escapeChars, byte(r)) >= 0:
			b.WriteByte('\\')
		case r == '&' && i+1 < len(s) && (s[i+1] == '#' || isASCIILetter(s[i+1])):
			b.WriteByte('\\')
		case r == '~' && (i+1 < len(s) && s[i+1] == '~' || i > 0 && s[i-1] == '~'):
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
}

func isASCIILetter(c byte) bool { return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' }

var (
	orderedRE = regexp.MustCompile(`^([0-9]{1,9})([.)])(\s|$)`)
)

// escapeLine escapes one line of plain text, including line-start syntax:
// indentation (kept visible with no-break spaces, so it is not a code block),
// list markers, numbered lists, setext underlines and thematic breaks.
func escapeLine(line string) string {
	i := 0
	var ind strings.Builder
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		if line[i] == '\t' {
			ind.WriteString("\u00a0\u00a0\u00a0\u00a0")
		} else {
			ind.WriteString("\u00a0")
		}
		i++
	}
	rest := line[i:]
	prefix := ""
	switch {
	case rest == "":
	case strings.IndexByte("-+=#>|", rest[0]) >= 0:
		prefix = `\` + rest[:1]
		rest = rest[1:]
	default:
		if m := orderedRE.FindStringSubmatch(rest); m != nil {
			prefix = m[1] + `\` + m[2]
			rest = rest[len(m[1])+1:]
		}
	}
	return ind.String() + prefix + escapeInline(rest)
}

var (
	alignedRE   = regexp.MustCompile(`\S(?: {3,}|\t+)\S`)
	tableRuleRE = regexp.MustCompile(`^\s*[+|][-=+|: ]{3,}[+|]?\s*$|^\s*\|.*\|\s*$|^\s*[-=]{3,}(?:\s+[-=]{3,})+\s*$`)
	traceRE     = regexp.MustCompile(`^\s+at \S+\(.*\)\s*$|^\s*File ".*", line \d+|^Traceback \(most recent call last\)|^goroutine \d+ \[|^\s+\S+\.go:\d+`)
)

// isPreformatted decides whether a block of consecutive non-blank lines is
// preformatted text (see the package documentation for the rule).
func isPreformatted(lines []string) bool {
	if len(lines) < 2 {
		return false
	}
	aligned, indented := 0, 0
	for _, l := range lines {
		// Cheap tests first: each expression needs characters most prose
		// lines lack, and running three per line dominated rendering time.
		if (strings.ContainsAny(l, "+|-=") && tableRuleRE.MatchString(l)) ||
			(mayBeTrace(l) && traceRE.MatchString(l)) || hasBoxDrawing(l) {
			return true
		}
		t := strings.TrimLeft(l, " \t")
		if (strings.Contains(t, "   ") || strings.Contains(t, "\t")) && alignedRE.MatchString(t) {
			aligned++
		}
		if strings.HasPrefix(l, "    ") || strings.HasPrefix(l, "\t") {
			indented++
		}
	}
	return aligned >= 2 && aligned*2 >= len(lines) || indented == len(lines)
}

// mayBeTrace is true for the lines traceRE could match.
func mayBeTrace(l string) bool {
	return strings.Contains(l, "at ") || strings.Contains(l, "File \"") || strings.HasPrefix(l, "Traceback") ||
		strings.HasPrefix(l, "goroutine ") || strings.Contains(l, ".go:")
}

func hasBoxDrawing(s string) bool {
	for _, r := range s {
		if r >= 0x2500 && r <= 0x257F {
			return true
		}
	}
	return false
}

// fenceFor returns a backtick fence longer than any backtick run in s (at
// least three).
func fenceFor(s string) string {
	longest, run := 0, 0
	for i := 0; i < len(s); i++ {
		if s[i] == '`' {
			run++
			if run > longest {
				longest = run
			}
		} else {
			run = 0
		}
	}
	n := 3
	if longest >= n {
		n = longest + 1
	}
	return strings.Repeat("`", n)
}

// textToMarkdown renders a plain text body as safe Markdown: line breaks are
// kept, blank line runs collapse to one, preformatted blocks are fenced and
// every other line is escaped.
func textToMarkdown(text string) string {
	text = strings.ReplaceAll(normalizeNewlines(text), "\f", "\n")
	lines := strings.Split(text, "\n")
	type block struct {
		lines []string
		pre   bool
	}
	var blocks []block
	var cur []string
	flush := func() {
		if len(cur) > 0 {
			blocks = append(blocks, block{lines: cur, pre: isPreformatted(cur)})
			cur = nil
		}
	}
	for _, l := range lines {
		l = strings.TrimRight(l, " \t\u00a0")
		if l == "" {
			flush()
			continue
		}
		cur = append(cur, l)
	}
	flush()

	var out []string
	for i := 0; i < len(blocks); i++ {
		if blocks[i].pre {
			// Merge adjacent preformatted blocks into one fence.
			body := strings.Join(blocks[i].lines, "\n")
			for i+1 < len(blocks) && blocks[i+1].pre {
				i++
				body += "\n\n" + strings.Join(blocks[i].lines, "\n")
			}
			fence := fenceFor(body)
			out = append(out, fence+"\n"+body+"\n"+fence)
			continue
		}
		esc := make([]string, len(blocks[i].lines))
		for j, l := range blocks[i].lines {
			esc[j] = escapeLine(l)
		}
		out = append(out, strings.Join(esc, "\n"))
	}
	return strings.Join(out, "\n\n")
}

// neutralizeMentions inserts U+200B after every @ that starts a word outside
// URLs, autolinks and link destinations, so @channel, @all, @here and
// @username never notify. An @ inside a word (a@b.c) is left alone.
func neutralizeMentions(s string) string {
	if !strings.Contains(s, "@") {
		return s
	}
	skip := skipSpans(s)
	var b strings.Builder
	b.Grow(len(s) + 16)
	si := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		b.WriteByte(c)
		if c != '@' {
			continue
		}
		for si < len(skip) && skip[si][1] <= i {
			si++
		}
		if si < len(skip) && skip[si][0] <= i {
			continue
		}
		if i > 0 {
			p := s[i-1]
			if isWordByte(p) {
				continue
			}
		}
		if i+1 < len(s) && (isWordByte(s[i+1]) || s[i+1] == '.' || s[i+1] == '-' || s[i+1] >= utf8.RuneSelf) {
			b.WriteString("\u200b")
		}
	}
	return b.String()
}

func isWordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_'
}

var skipRE = regexp.MustCompile(`(?i)<[a-z][a-z0-9+.\-]*:[^<>\s]*>|\]\([^)\s]*\)|\b(?:https?|ftp)://[^\s<>()]*`)

func skipSpans(s string) [][]int {
	return skipRE.FindAllStringIndex(s, -1)
}
