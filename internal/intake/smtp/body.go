package smtpintake

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"
)

// bodyReader wraps go-smtp's DATA/BDAT reader. It remembers the first read
// error (sticky, so a store cannot read past it), whether io.EOF (the end-of-data
// marker) was reached and how many bytes were read, and it renews the
// connection's read deadline before each read so that ReadTimeout is an idle
// timeout rather than a limit on the whole transfer.
//
// A message whose end was reached after the client closed its side of the
// connection is refused (io.ErrUnexpectedEOF): go-smtp ends a BDAT LAST chunk
// cut short by the peer's EOF as if it were complete, and nobody would be there
// to receive our reply anyway.
type bodyReader struct {
	r       io.Reader
	conn    *smtp.Conn   // nil in unit tests
	raw     *trackedConn // nil in unit tests
	timeout time.Duration

	n   int64
	eof bool
	err error
}

func (b *bodyReader) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if b.eof {
		return 0, io.EOF
	}
	if b.conn != nil && b.timeout > 0 {
		_ = b.conn.Conn().SetReadDeadline(time.Now().Add(b.timeout))
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	switch {
	case err == io.EOF && b.raw != nil && b.raw.peerEOF.Load():
		err = io.ErrUnexpectedEOF
		b.err = err
	case err == io.EOF:
		b.eof = true
	case err != nil:
		b.err = err
	}
	return n, err
}

// messageReader is the stored message: our Received header, then the body.
// (io.MultiReader would do, but its WriteTo allocates a 32 KB buffer per message.)
type messageReader struct {
	hdr  []byte
	body io.Reader
}

func (m *messageReader) Read(p []byte) (int, error) {
	if len(m.hdr) > 0 {
		n := copy(p, m.hdr)
		m.hdr = m.hdr[n:]
		return n, nil
	}
	return m.body.Read(p)
}

// crlfReader turns bare LF line endings into CRLF; CRLF and lone CR are kept.
type crlfReader struct {
	src    io.Reader
	bufs   *crlfBufs
	out    []byte // pending output, a slice of bufs.out
	prevCR bool
	err    error
}

type crlfBufs struct {
	in  [16 << 10]byte
	out [32 << 10]byte
}

var crlfPool = sync.Pool{New: func() any { return new(crlfBufs) }}

func newCRLFReader(src io.Reader) *crlfReader {
	return &crlfReader{src: src}
}

func (c *crlfReader) Read(p []byte) (int, error) {
	for len(c.out) == 0 {
		if c.err != nil {
			if c.bufs != nil {
				crlfPool.Put(c.bufs)
				c.bufs = nil
			}
			return 0, c.err
		}
		if c.bufs == nil {
			c.bufs = crlfPool.Get().(*crlfBufs)
		}
		n, err := c.src.Read(c.bufs.in[:])
		c.out = c.convert(c.bufs.in[:n], c.bufs.out[:0])
		c.err = err
		if n == 0 && err == nil {
			return 0, nil
		}
	}
	n := copy(p, c.out)
	c.out = c.out[n:]
	return n, nil
}

// convert appends in to out with every LF not preceded by CR turned into CRLF.
func (c *crlfReader) convert(in, out []byte) []byte {
	for len(in) > 0 {
		i := bytes.IndexByte(in, '\n')
		if i < 0 {
			out = append(out, in...)
			c.prevCR = in[len(in)-1] == '\r'
			return out
		}
		bare := (i == 0 && !c.prevCR) || (i > 0 && in[i-1] != '\r')
		out = append(out, in[:i]...)
		if bare {
			out = append(out, '\r')
		}
		out = append(out, '\n')
		c.prevCR = false
		in = in[i+1:]
	}
	return out
}

// receivedInfo is what goes into the Received: trace header.
type receivedInfo struct {
	helo       string
	remote     net.Addr
	by         string
	tls        *tlsInfo
	authed     bool
	utf8       bool
	recipients []string
	now        time.Time
}

// receivedHeader builds the RFC 5321 section 4.4 trace header, folded, CRLF
// terminated. Client-supplied parts are sanitised so they cannot inject header
// lines.
func receivedHeader(in receivedInfo) []byte {
	var b strings.Builder
	b.WriteString("Received: from ")
	b.WriteString(headerToken(in.helo, "unknown"))
	if lit := addressLiteral(in.remote); lit != "" {
		b.WriteString(" (" + lit + ")")
	}
	if in.tls != nil {
		b.WriteString("\r\n\t(using " + headerToken(in.tls.version, "TLS") + " with cipher " + headerToken(in.tls.cipher, "unknown") + ")")
	}
	b.WriteString("\r\n\tby " + headerToken(in.by, "localhost") + " (mmgate) with ")
	proto := "ESMTP"
	if in.utf8 {
		proto = "UTF8SMTP"
	}
	if in.tls != nil {
		proto += "S"
	}
	if in.authed {
		proto += "A"
	}
	b.WriteString(proto)
	if len(in.recipients) == 1 && isHeaderSafe(in.recipients[0]) {
		b.WriteString("\r\n\tfor <" + in.recipients[0] + ">")
	}
	b.WriteString(";\r\n\t" + in.now.Format(time.RFC1123Z) + "\r\n")
	return []byte(b.String())
}

// addressLiteral renders the client address as [192.0.2.1] or [IPv6:2001:db8::1].
func addressLiteral(a net.Addr) string {
	if a == nil {
		return ""
	}
	var ip net.IP
	if t, ok := a.(*net.TCPAddr); ok {
		ip = t.IP
	} else if host, _, err := net.SplitHostPort(a.String()); err == nil {
		ip = net.ParseIP(host)
	}
	if ip == nil {
		return ""
	}
	if v4 := ip.To4(); v4 != nil {
		return "[" + v4.String() + "]"
	}
	return "[IPv6:" + ip.String() + "]"
}

// headerToken keeps printable ASCII other than comment/quote specials, at most
// 255 bytes; def replaces an empty result.
func headerToken(s, def string) string {
	if len(s) > 255 {
		s = s[:255]
	}
	s = strings.Map(func(r rune) rune {
		if r <= 0x20 || r >= 0x7f || strings.ContainsRune(`()<>;\"`, r) {
			return '?'
		}
		return r
	}, s)
	if s == "" {
		return def
	}
	return s
}

func isHeaderSafe(s string) bool {
	if len(s) > 320 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= 0x20 || c >= 0x7f || c == '<' || c == '>' || c == ';' || c == '(' || c == ')' {
			return false
		}
	}
	return true
}
