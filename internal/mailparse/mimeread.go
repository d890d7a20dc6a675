package mailparse

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/textproto"
	"strings"
)

const (
	readBufSize     = 32 * 1024
	maxHeaderBytes  = 4 << 20 // all header lines of one part
	maxHeaderFields = 2000
)

// field is one header field, unfolded, with its name as written.
type field struct {
	Name  string
	Value string // raw (not RFC 2047 decoded), unfolded
}

type header []field

// Get returns the first value of name (case-insensitive).
func (h header) Get(name string) string {
	for _, f := range h {
		if strings.EqualFold(f.Name, name) {
			return f.Value
		}
	}
	return ""
}

// Values returns all values of name (case-insensitive).
func (h header) Values(name string) []string {
	var vs []string
	for _, f := range h {
		if strings.EqualFold(f.Name, name) {
			vs = append(vs, f.Value)
		}
	}
	return vs
}

// readLine reads one line (without its ending) of at most limit bytes; the
// rest of a longer line is discarded and reported with truncated. eol is false
// when the input ended without a line ending.
func readLine(br *bufio.Reader, limit int) (line []byte, eol, truncated bool, err error) {
	for {
		seg, e := br.ReadSlice('\n')
		if len(line)+len(seg) <= limit {
			line = append(line, seg...)
		} else {
			if room := limit - len(line); room > 0 {
				line = append(line, seg[:room]...)
			}
			truncated = true
		}
		if e == bufio.ErrBufferFull {
			continue
		}
		if e != nil {
			if len(line) == 0 {
				return nil, false, truncated, e
			}
			if !errors.Is(e, io.EOF) {
				return line, false, truncated, e
			}
		}
		if n := len(line); n > 0 && line[n-1] == '\n' {
			line = line[:n-1]
			eol = true
			if n := len(line); n > 0 && line[n-1] == '\r' {
				line = line[:n-1]
			}
		}
		return line, eol, truncated, nil
	}
}

// isFieldName reports whether b looks like a header field name followed by a
// colon (tolerating spaces before the colon, as in "Subject :").
func headerLineName(b []byte) (name string, value []byte, ok bool) {
	i := bytes.IndexByte(b, ':')
	if i <= 0 {
		return "", nil, false
	}
	n := bytes.TrimRight(b[:i], " \t")
	if len(n) == 0 {
		return "", nil, false
	}
	for _, c := range n {
		if c <= ' ' || c >= 0x7F {
			return "", nil, false
		}
	}
	return string(n), b[i+1:], true
}

// readHeader reads a header block. It stops at the blank line (consumed) or at
// the first line that is neither a field nor a continuation; that line is
// returned in leftover (with its line ending) so the caller can put it back in
// front of the body. warn receives notes about malformed headers.
func readHeader(br *bufio.Reader, top bool, warn func(string, ...any)) (h header, leftover []byte, err error) {
	total := 0
	first := true
	truncWarned := false
	for {
		line, eol, truncated, e := readLine(br, maxHeaderBytes)
		if e != nil {
			if errors.Is(e, io.EOF) {
				return h, nil, nil
			}
			return h, nil, e
		}
		if truncated && !truncWarned {
			warn("header line longer than %d bytes truncated", maxHeaderBytes)
			truncWarned = true
		}
		if len(line) == 0 {
			return h, nil, nil
		}
		if first && top && bytes.HasPrefix(line, []byte("From ")) {
			// An mbox "From " separator line.
			first = false
			continue
		}
		first = false
		total += len(line)
		if line[0] == ' ' || line[0] == '\t' {
			if len(h) == 0 {
				// Continuation without a field: ignore it.
				warn("header continuation line without a field")
				continue
			}
			if total <= maxHeaderBytes {
				h[len(h)-1].Value += "\n" + string(line)
			}
			continue
		}
		name, value, ok := headerLineName(line)
		if !ok {
			// Not a header: the header block is over (no blank line).
			lo := append([]byte(nil), line...)
			if eol {
				lo = append(lo, '\n')
			}
			return h, lo, nil
		}
		if len(h) >= maxHeaderFields || total > maxHeaderBytes {
			if !truncWarned {
				warn("too many header fields: the rest ignored")
				truncWarned = true
			}
			continue
		}
		h = append(h, field{Name: name, Value: string(value)})
	}
}

// unfold joins folded header lines (RFC 5322 unfolding) and trims the value.
func unfold(v string) string {
	if strings.ContainsAny(v, "\r\n") {
		v = strings.NewReplacer("\r\n", "", "\n", "", "\r", "").Replace(v)
	}
	return strings.TrimSpace(v)
}

func canonicalKey(name string) string { return textproto.CanonicalMIMEHeaderKey(name) }

// partReader reads the body of one part of a multipart entity: everything up
// to (not including) the line break before the next boundary line.
type partReader struct {
	mr      *multipartReader
	pending []byte // content ready to hand out
	eolHeld []byte // line ending held back until the next line is known
	midLine bool   // the last segment read did not end a line
	done    bool
}

func (p *partReader) Read(b []byte) (int, error) {
	for len(p.pending) == 0 {
		if p.done {
			return 0, io.EOF
		}
		if err := p.fill(); err != nil {
			return 0, err
		}
	}
	n := copy(b, p.pending)
	p.pending = p.pending[n:]
	return n, nil
}

// fill reads the next segment of the source into pending.
func (p *partReader) fill() error {
	mr := p.mr
	seg, err := mr.src.ReadSlice('\n')
	if err != nil && err != bufio.ErrBufferFull && !errors.Is(err, io.EOF) {
		return err
	}
	atLineStart := !p.midLine
	full := len(seg) > 0 && seg[len(seg)-1] == '\n'
	p.midLine = !full
	lastLine := !full && errors.Is(err, io.EOF) && len(seg) > 0
	if atLineStart && (full || lastLine) {
		line := seg
		if lastLine {
			// The final line of the input (or of the enclosing part, whose
			// line ending belongs to its delimiter) has no line ending.
			line = append(append(mr.scratch[:0], seg...), '\n')
		}
		switch mr.boundaryKind(line) {
		case boundaryNext:
			p.done = true
			p.eolHeld = nil
			mr.state = stateNextPart
			return nil
		case boundaryEnd:
			p.done = true
			p.eolHeld = nil
			mr.state = stateEnd
			return nil
		}
	}
	if len(seg) == 0 && errors.Is(err, io.EOF) {
		p.done = true
		mr.state = stateEOF
		// A part that ends with its enclosing entity (closing boundary
		// missing): its last line ending is taken as the one that belongs
		// to the missing delimiter, as it would have been.
		p.eolHeld = nil
		return nil
	}
	buf := append(mr.scratch[:0], p.eolHeld...)
	p.eolHeld = p.eolHeld[:0]
	if full {
		body := seg[:len(seg)-1]
		eol := "\n"
		if len(body) > 0 && body[len(body)-1] == '\r' {
			body = body[:len(body)-1]
			eol = "\r\n"
		}
		buf = append(buf, body...)
		p.eolHeld = append(p.eolHeld, eol...)
	} else {
		buf = append(buf, seg...)
	}
	mr.scratch = buf
	p.pending = buf
	if errors.Is(err, io.EOF) && !full {
		// Last bytes of the input without a line ending.
		p.done = true
		mr.state = stateEOF
	}
	return nil
}

type boundaryResult int

const (
	boundaryNone boundaryResult = iota
	boundaryNext
	boundaryEnd
)

type mpState int

const (
	statePreamble mpState = iota
	stateNextPart
	stateEnd
	stateEOF
)

// multipartReader walks the parts of one multipart entity.
type multipartReader struct {
	src     *bufio.Reader
	dash    []byte // "--" + boundary
	state   mpState
	cur     *partReader
	scratch []byte
	parts   int
	// preamble keeps the start of the text before the first boundary, so that
	// a multipart entity whose boundary never appears is not lost.
	preamble []byte
}

const maxPreamble = 1 << 20

func newMultipartReader(src *bufio.Reader, boundary string) *multipartReader {
	return &multipartReader{src: src, dash: []byte("--" + boundary)}
}

// boundaryKind classifies a complete line (with its ending).
func (mr *multipartReader) boundaryKind(line []byte) boundaryResult {
	if !bytes.HasPrefix(line, mr.dash) {
		return boundaryNone
	}
	rest := line[len(mr.dash):]
	end := false
	if bytes.HasPrefix(rest, []byte("--")) {
		end = true
		rest = rest[2:]
	}
	// Only transport padding may follow the boundary.
	if len(bytes.TrimRight(rest, " \t\r\n")) != 0 {
		return boundaryNone
	}
	if end {
		return boundaryEnd
	}
	return boundaryNext
}

// NextPart returns a reader for the next part's header and body, or nil when
// there are no more parts. unterminated is true when the entity ended without
// its closing boundary.
func (mr *multipartReader) NextPart() (r *partReader, err error) {
	if mr.cur != nil {
		if _, err := io.Copy(io.Discard, mr.cur); err != nil {
			return nil, err
		}
		mr.cur = nil
	}
	if mr.state == statePreamble {
		// Skip the preamble up to the first boundary.
		for {
			line, eol, _, err := readLine(mr.src, 4096)
			if err != nil {
				if errors.Is(err, io.EOF) {
					mr.state = stateEOF
					return nil, nil
				}
				return nil, err
			}
			switch mr.boundaryKind(append(line, '\n')) {
			case boundaryNext:
				mr.state = stateNextPart
			case boundaryEnd:
				mr.state = stateEnd
			}
			if mr.state != statePreamble {
				break
			}
			if len(mr.preamble) < maxPreamble {
				mr.preamble = append(mr.preamble, line...)
				if eol {
					mr.preamble = append(mr.preamble, '\n')
				}
			}
			if !eol {
				mr.state = stateEOF
				return nil, nil
			}
		}
	}
	if mr.state != stateNextPart {
		return nil, nil
	}
	mr.parts++
	mr.cur = &partReader{mr: mr}
	return mr.cur, nil
}

// Epilogue drains what follows the closing boundary.
func (mr *multipartReader) Drain() error {
	if mr.cur != nil {
		if _, err := io.Copy(io.Discard, mr.cur); err != nil {
			return err
		}
		mr.cur = nil
	}
	_, err := io.Copy(io.Discard, mr.src)
	return err
}
