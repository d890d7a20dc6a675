package mailparse

import (
	"bufio"
	"bytes"
	"io"
	"os"
)

// spillBuf collects one decoded part: in memory up to threshold bytes, in a
// file under dir beyond that. It is written once, then opened any number of
// times. In memory it is a list of chunks, each about the size of what came
// before (4 KB to 64 KB), so growing never copies: one contiguous slice
// grown by append allocated four times a 64 KB attachment.
type spillBuf struct {
	dir       string
	threshold int64
	chunks    [][]byte
	path      string
	f         *os.File
	w         *bufio.Writer
	size      int64
}

func (s *spillBuf) Write(p []byte) (int, error) {
	if s.f == nil && s.size+int64(len(p)) > s.threshold {
		f, err := os.CreateTemp(s.dir, "mmgate-part-*")
		if err != nil {
			return 0, err
		}
		s.f, s.path = f, f.Name()
		s.w = bufio.NewWriterSize(f, 64*1024)
		for _, c := range s.chunks {
			if _, err := s.w.Write(c); err != nil {
				return 0, err
			}
		}
		s.chunks = nil
	}
	if s.f != nil {
		s.size += int64(len(p))
		return s.w.Write(p)
	}
	n := len(p)
	for len(p) > 0 {
		if k := len(s.chunks); k == 0 || len(s.chunks[k-1]) == cap(s.chunks[k-1]) {
			size := min(max(s.size, int64(len(p)), 4<<10), 64<<10)
			s.chunks = append(s.chunks, make([]byte, 0, size))
		}
		c := &s.chunks[len(s.chunks)-1]
		k := min(cap(*c)-len(*c), len(p))
		*c = append(*c, p[:k]...)
		p = p[k:]
		s.size += int64(k)
	}
	return n, nil
}

// finish closes the file being written, if any.
func (s *spillBuf) finish() error {
	if s.f == nil {
		return nil
	}
	err := s.w.Flush()
	if cerr := s.f.Close(); err == nil {
		err = cerr
	}
	s.f, s.w = nil, nil
	return err
}

func (s *spillBuf) open() (io.ReadCloser, error) {
	if s.path != "" {
		return os.Open(s.path)
	}
	if len(s.chunks) == 1 {
		return io.NopCloser(bytes.NewReader(s.chunks[0])), nil
	}
	return io.NopCloser(&chunkReader{chunks: s.chunks}), nil
}

// head returns at most n bytes from the start of the content.
func (s *spillBuf) head(n int64) ([]byte, error) {
	if s.path == "" {
		if len(s.chunks) == 1 {
			c := s.chunks[0]
			return c[:min(int64(len(c)), n)], nil
		}
		return io.ReadAll(io.LimitReader(&chunkReader{chunks: s.chunks}, n))
	}
	f, err := os.Open(s.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
}

// chunkReader reads a spillBuf's chunks in order.
type chunkReader struct {
	chunks [][]byte
	off    int // in chunks[0]
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.chunks) > 0 && r.off == len(r.chunks[0]) {
		r.chunks, r.off = r.chunks[1:], 0
	}
	if len(r.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.chunks[0][r.off:])
	r.off += n
	return n, nil
}

// WriteTo lets io.Copy write the chunks without a buffer of its own.
func (r *chunkReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for len(r.chunks) > 0 {
		n, err := w.Write(r.chunks[0][r.off:])
		total += int64(n)
		r.off += n
		if err != nil {
			return total, err
		}
		r.chunks, r.off = r.chunks[1:], 0
	}
	return total, nil
}

// remove deletes the spill file, if any.
func (s *spillBuf) remove() error {
	if s.f != nil {
		_ = s.f.Close()
		s.f = nil
	}
	if s.path == "" {
		return nil
	}
	err := os.Remove(s.path)
	if os.IsNotExist(err) {
		err = nil
	}
	s.path = ""
	return err
}
