package mailparse

import (
	"strings"
	"unicode/utf8"
)

// Split cuts Markdown into chunks of at most maxRunes runes. It cuts at a
// paragraph boundary, else a line break, else a space, else anywhere (between
// runes), preferring a cut in the second half of the allowed length. A chunk
// that ends inside a fenced code block gets the fence closed, and the next
// chunk reopens it, so each chunk renders on its own. Whitespace at chunk
// edges is dropped; no other text is lost. maxRunes <= 0 means no limit.
func Split(md string, maxRunes int) []string {
	md = strings.Trim(md, " \t\r\n")
	if md == "" {
		return nil
	}
	if maxRunes <= 0 || !longerThan(md, maxRunes) {
		return []string{md}
	}
	fences := maxRunes >= 16
	var chunks []string
	rest := md
	prefix := "" // a reopened fence line that starts the next chunk
	for {
		if !longerThan(rest, maxRunes-utf8.RuneCountInString(prefix)) {
			if t := strings.TrimRight(prefix+rest, " \t\r\n"); strings.TrimSpace(t) != "" {
				chunks = append(chunks, t)
			}
			return chunks
		}
		// Work on a window: the next chunk never needs more than this.
		window := prefix + rest[:min(len(rest), 4*maxRunes+4)]
		minPos := 1
		if prefix != "" {
			minPos = len(prefix) + 1
		}
		limit := maxRunes
		var cut int
		var opener, closer string
		for {
			cut = chooseCut(window, limit, minPos)
			opener, closer = "", ""
			if fences {
				opener, closer = fenceAt(window[:cut])
			}
			if closer == "" {
				break
			}
			need := utf8.RuneCountInString(closer) + 1
			if utf8.RuneCountInString(strings.TrimRight(window[:cut], " \t\r\n"))+need <= maxRunes {
				break
			}
			if limit-need <= utf8.RuneCountInString(window[:minPos]) {
				// No room to close the fence: cut without fence repair.
				opener, closer = "", ""
				cut = chooseCut(window, maxRunes, minPos)
				break
			}
			limit -= need
		}
		chunk := strings.TrimRight(window[:cut], " \t\r\n")
		next := rest[cut-len(prefix):]
		if closer != "" {
			chunk += "\n" + closer
			next = strings.TrimLeft(next, "\r\n")
			// Reopen with the same fence; drop a long info string.
			if utf8.RuneCountInString(opener)*4 > maxRunes {
				opener = strings.TrimSpace(opener)
				opener = opener[:len(opener)-len(strings.TrimLeft(opener, opener[:1]))]
			}
			if utf8.RuneCountInString(opener)*4 > maxRunes {
				opener = ""
			}
		} else {
			next = strings.TrimLeft(next, " \t\r\n")
		}
		if strings.TrimSpace(chunk) != "" {
			chunks = append(chunks, chunk)
		}
		if strings.TrimSpace(next) == "" {
			return chunks
		}
		rest = next
		prefix = ""
		if opener != "" {
			prefix = opener + "\n"
		}
	}
}

// longerThan reports whether s has more than n runes, looking at no more than
// n+1 of them.
func longerThan(s string, n int) bool {
	if n < 0 {
		return s != ""
	}
	if len(s) <= n {
		return false
	}
	count := 0
	for range s {
		count++
		if count > n {
			return true
		}
	}
	return false
}

// chooseCut returns a byte index in (minPos, index of rune limit] where s is
// cut.
func chooseCut(s string, limit, minPos int) int {
	lim := 0
	for n := 0; n < limit && lim < len(s); n++ {
		_, size := utf8.DecodeRuneInString(s[lim:])
		lim += size
	}
	if lim >= len(s) {
		return len(s)
	}
	if minPos >= lim {
		minPos = lim - 1
	}
	w := s[:lim]
	half := lim / 2
	// A cut exactly before a line break is a line boundary too.
	if s[lim] == '\n' && lim > minPos {
		if lim+1 < len(s) && s[lim+1] == '\n' || w[len(w)-1] == '\n' {
			return lim
		}
	}
	for _, sep := range []string{"\n\n", "\n"} {
		if i := strings.LastIndex(w, sep); i >= half && i > minPos {
			return i
		}
	}
	if s[lim] == '\n' && lim > minPos {
		return lim
	}
	if i := strings.LastIndexAny(w, " \t"); i >= half && i > minPos {
		return i
	}
	if i := strings.LastIndexByte(w, '\n'); i > minPos {
		return i
	}
	if i := strings.LastIndexAny(w, " \t"); i > minPos {
		return i
	}
	// Hard cut at a rune boundary; do not separate a backslash from what it escapes.
	cut := lim
	if cut-1 > minPos && s[cut-1] == '\\' {
		cut--
	}
	if cut <= 0 {
		_, size := utf8.DecodeRuneInString(s)
		cut = size
	}
	return cut
}

// fenceAt reports whether the end of s is inside a fenced code block; if so it
// returns the opening line and the closing fence.
func fenceAt(s string) (opener, closer string) {
	inFence := ""
	openLine := ""
	for _, l := range strings.Split(s, "\n") {
		if inFence != "" {
			if isFenceClose(l, inFence) {
				inFence = ""
			}
			continue
		}
		if f := fenceOpen(l); f != "" {
			inFence = f
			openLine = strings.TrimRight(l, "\r")
		}
	}
	if inFence == "" {
		return "", ""
	}
	return openLine, inFence
}

// fenceOpen returns the fence (run of ` or ~) if l opens a fenced code block.
func fenceOpen(l string) string {
	t := strings.TrimLeft(l, " ")
	if len(l)-len(t) > 3 || len(t) < 3 || (t[0] != '`' && t[0] != '~') {
		return ""
	}
	n := len(t) - len(strings.TrimLeft(t, t[:1]))
	if n < 3 {
		return ""
	}
	if t[0] == '`' && strings.Contains(t[n:], "`") {
		return ""
	}
	return t[:n]
}

// isFenceClose reports whether l closes a block opened with fence.
func isFenceClose(l, fence string) bool {
	t := strings.TrimLeft(l, " ")
	if len(l)-len(t) > 3 {
		return false
	}
	t = strings.TrimRight(t, " \t\r")
	if len(t) < len(fence) || t[0] != fence[0] {
		return false
	}
	return strings.Trim(t, fence[:1]) == ""
}
