package mailparse

import (
	"bufio"
	"io"
	"sync"
)

// The read buffers and decoders a parse needs only while it reads a part are
// reused across parts and parses: a message with one attachment otherwise
// allocates about 200 KB of them, which the garbage collector then has to
// find (a third of a delivery's allocations).

var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, readBufSize) }}

func getReader(r io.Reader) *bufio.Reader {
	br := readerPool.Get().(*bufio.Reader)
	br.Reset(r)
	return br
}

// putReader returns br to the pool; the caller must not use it again.
func putReader(br *bufio.Reader) {
	br.Reset(nil)
	readerPool.Put(br)
}

var b64Pool = sync.Pool{New: func() any {
	return &b64Reader{in: make([]byte, 32*1024), out: make([]byte, 0, 24*1024+3)}
}}

func newB64Reader(r io.Reader) *b64Reader {
	d := b64Pool.Get().(*b64Reader)
	*d = b64Reader{r: r, in: d.in, out: d.out[:0]}
	return d
}

// release returns d to the pool; the caller must not use it again.
func (d *b64Reader) release() {
	*d = b64Reader{in: d.in, out: d.out[:0]}
	b64Pool.Put(d)
}

var qpPool = sync.Pool{New: func() any {
	return &qpReader{buf: make([]byte, 0, 32*1024+64), out: make([]byte, 0, 32*1024+64)}
}}

func newQPReader(r io.Reader) *qpReader {
	d := qpPool.Get().(*qpReader)
	*d = qpReader{r: r, buf: d.buf[:0], out: d.out[:0]}
	return d
}

// release returns d to the pool (unless a long line grew its buffer: that
// one is left to the collector); the caller must not use it again.
func (d *qpReader) release() {
	if cap(d.buf) > 32*1024+64 {
		return
	}
	*d = qpReader{buf: d.buf[:0], out: d.out[:0]}
	qpPool.Put(d)
}

// copyBufs are io.Copy's buffers for writing a decoded part.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 32*1024); return &b }}
