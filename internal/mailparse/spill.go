package mailparse

import (
	"bufio"
	"bytes"
	"io"
	"os"
)

// spillBuf collects one decoded part: in memory up to threshold bytes, in a
// file under dir beyond that. It is written once, then opened any number of
// times.
type spillBuf struct {
	dir       string
	threshold int64
	mem       []byte
	path      string
	f         *os.File
	w         *bufio.Writer
	size      int64
}

func (s *spillBuf) Write(p []byte) (int, error) {
	if s.f == nil && int64(len(s.mem)+len(p)) > s.threshold {
		f, err := os.CreateTemp(s.dir, "mmgate-part-*")
		if err != nil {
			return 0, err
		}
		s.f, s.path = f, f.Name()
		s.w = bufio.NewWriterSize(f, 64*1024)
		if _, err := s.w.Write(s.mem); err != nil {
			return 0, err
		}
		s.mem = nil
	}
	s.size += int64(len(p))
	if s.f != nil {
		return s.w.Write(p)
	}
	s.mem = append(s.mem, p...)
	return len(p), nil
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
	return io.NopCloser(bytes.NewReader(s.mem)), nil
}

// head returns at most n bytes from the start of the content.
func (s *spillBuf) head(n int64) ([]byte, error) {
	if s.path == "" {
		if int64(len(s.mem)) > n {
			return s.mem[:n], nil
		}
		return s.mem, nil
	}
	f, err := os.Open(s.path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, n))
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
