package mailparse

import (
	"io"
)

// Transfer decoders. Both are tolerant and streaming: they never fail on bad
// input (they count what they had to skip), they only pass on read errors.

var b64Table = func() [256]byte {
	var t [256]byte
	for i := range t {
		t[i] = 0xFF
	}
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = byte(i)
	}
	return t
}()

// b64Reader decodes base64, skipping line noise (any byte outside the
// alphabet), tolerating missing padding and treating "=" as the end of one
// encoded block, so that concatenated base64 blocks decode too.
type b64Reader struct {
	r       io.Reader
	in      []byte
	out     []byte
	outPos  int
	quad    [4]byte
	nq      int
	err     error
	noise   int // non-alphabet, non-whitespace bytes skipped
	dropped int // trailing single characters that could not be decoded
}

// flushQuad decodes a partial quad (before "=" or at the end) into out at
// o, and returns the new length.
func (d *b64Reader) flushQuad(out []byte, o int) int {
	q := d.quad
	switch d.nq {
	case 1:
		d.dropped++
	case 2:
		out[o] = q[0]<<2 | q[1]>>4
		o++
	case 3:
		out[o], out[o+1] = q[0]<<2|q[1]>>4, q[1]<<4|q[2]>>2
		o += 2
	}
	d.nq = 0
	return o
}

func (d *b64Reader) Read(p []byte) (int, error) {
	for d.outPos >= len(d.out) {
		if d.err != nil {
			return 0, d.err
		}
		// out holds what one read decodes: 3 bytes per 4 characters, plus
		// the at most 3 characters left from the read before.
		out := d.out[:cap(d.out)]
		o := 0
		d.outPos = 0
		n, err := d.r.Read(d.in)
		q, nq := &d.quad, d.nq
		for _, c := range d.in[:n] {
			if v := b64Table[c]; v != 0xFF {
				q[nq] = v
				nq++
				if nq == 4 {
					out[o], out[o+1], out[o+2] = q[0]<<2|q[1]>>4, q[1]<<4|q[2]>>2, q[2]<<6|q[3]
					o += 3
					nq = 0
				}
				continue
			}
			switch c {
			case '=':
				d.nq = nq
				o = d.flushQuad(out, o)
				nq = 0
			case ' ', '\t', '\r', '\n':
			default:
				d.noise++
			}
		}
		d.nq = nq
		if err != nil {
			o = d.flushQuad(out, o)
			d.err = err
		}
		d.out = out[:o]
	}
	n := copy(p, d.out[d.outPos:])
	d.outPos += n
	return n, nil
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// qpReader decodes quoted-printable. Soft line breaks ("=" at the end of a
// line, even followed by stray whitespace) are removed, "=XX" is decoded, a
// broken escape is kept literally and trailing whitespace on lines is dropped.
type qpReader struct {
	r      io.Reader
	buf    []byte // undecided input carried over plus new input
	out    []byte
	outPos int
	err    error
	broken int // escapes kept literally
}

func (d *qpReader) Read(p []byte) (int, error) {
	for d.outPos >= len(d.out) {
		if d.err != nil && len(d.buf) == 0 {
			return 0, d.err
		}
		d.out = d.out[:0]
		d.outPos = 0
		if d.err == nil {
			// Read more input behind what is carried over.
			if cap(d.buf)-len(d.buf) < 1024 {
				nb := make([]byte, len(d.buf), 2*cap(d.buf))
				copy(nb, d.buf)
				d.buf = nb
			}
			n, err := d.r.Read(d.buf[len(d.buf):cap(d.buf)])
			d.buf = d.buf[:len(d.buf)+n]
			if err != nil {
				d.err = err
			}
		}
		rest := d.decode(d.buf, d.err != nil)
		// Move undecided bytes to the front.
		m := copy(d.buf, rest)
		d.buf = d.buf[:m]
	}
	n := copy(p, d.out[d.outPos:])
	d.outPos += n
	return n, nil
}

// decode decodes as much of b as can be decided and returns the undecided tail.
func (d *qpReader) decode(b []byte, eof bool) []byte {
	i := 0
	for i < len(b) {
		c := b[i]
		switch c {
		case ' ', '\t':
			j := i
			for j < len(b) && (b[j] == ' ' || b[j] == '\t') {
				j++
			}
			if j == len(b) && !eof {
				return b[i:]
			}
			if j == len(b) || b[j] == '\r' || b[j] == '\n' {
				i = j // trailing whitespace: dropped
				continue
			}
			d.out = append(d.out, b[i:j]...)
			i = j
		case '=':
			// Soft break: "=" [WSP*] (CRLF | LF)
			j := i + 1
			for j < len(b) && (b[j] == ' ' || b[j] == '\t') {
				j++
			}
			if j == len(b) {
				if !eof {
					return b[i:]
				}
				i = j // "=" at the very end: a soft break to nowhere
				continue
			}
			if b[j] == '\n' {
				i = j + 1
				continue
			}
			if b[j] == '\r' {
				if j+1 == len(b) && !eof {
					return b[i:]
				}
				if j+1 < len(b) && b[j+1] == '\n' {
					i = j + 2
				} else {
					i = j + 1
				}
				continue
			}
			if i+2 >= len(b) && !eof {
				return b[i:]
			}
			if i+2 < len(b) {
				h, ok1 := unhex(b[i+1])
				l, ok2 := unhex(b[i+2])
				if ok1 && ok2 {
					d.out = append(d.out, h<<4|l)
					i += 3
					continue
				}
			}
			d.broken++
			d.out = append(d.out, '=')
			i++
		default:
			j := i + 1
			for j < len(b) && b[j] != ' ' && b[j] != '\t' && b[j] != '=' {
				j++
			}
			d.out = append(d.out, b[i:j]...)
			i = j
		}
	}
	return b[i:]
}
