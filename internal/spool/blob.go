package spool

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// errBlobTooLarge is returned by blobStore.Put when the body exceeds the limit.
var errBlobTooLarge = errors.New("body exceeds the size limit")

// blobStore keeps raw messages. Implementations: dirStore (local directory);
// an S3 store can be added behind the same interface.
type blobStore interface {
	// Put streams r into the blob id (at most limit bytes when limit > 0,
	// else errBlobTooLarge and nothing kept) and returns its size. The blob
	// is not necessarily durable until Sync.
	Put(ctx context.Context, id string, r io.Reader, limit int64) (int64, error)
	// Sync makes the given, already Put, blobs durable: content and names.
	Sync(ids []string) error
	// Open returns the blob's bytes; an error wrapping fs.ErrNotExist if absent.
	Open(id string) (io.ReadCloser, error)
	// Delete removes the blob; absent blobs are not an error.
	Delete(id string) error
	// Probe writes, syncs and removes a small object: a health check.
	Probe() error
	// Walk calls fn with batches of ids of blobs last modified before cutoff.
	Walk(cutoff time.Time, fn func(ids []string) error) error
}

// dirStore keeps blobs as files: <root>/<shard>/<id>.eml, temp files in <root>/tmp.
//
// Put writes the temp file and renames it into place without fsync; Sync then
// fsyncs every file of a batch and their directories concurrently, so that
// the file system can merge them into few journal commits (one fsync per
// message in a row would cap throughput at the disk's fsync rate). The spool
// commits a message's row only after Sync returned, so a crash before that
// leaves at worst an orphan file without a row, which the sweep removes.
type dirStore struct {
	root string
	tmp  string
}

const (
	blobExt     = ".eml"
	tmpExt      = ".tmp"
	copyBufSize = 64 << 10
	staleAfter  = time.Hour
)

var copyBufs = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// openDirStore creates the directories and removes stale temp files.
func openDirStore(root string) (*dirStore, error) {
	d := &dirStore{root: root, tmp: filepath.Join(root, "tmp")}
	if err := os.MkdirAll(d.tmp, 0o750); err != nil {
		return nil, err
	}
	created := false
	for i := 0; i < 256; i++ {
		p := filepath.Join(root, fmt.Sprintf("%02x", i))
		if _, err := os.Stat(p); err == nil {
			continue
		}
		if err := os.Mkdir(p, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
			return nil, err
		}
		created = true
	}
	if created {
		if err := syncPath(root); err != nil {
			return nil, err
		}
	}
	// Temp files of crashed writers. Young ones may belong to another process
	// (a pipe intake) that is still writing, so only stale ones go.
	entries, err := os.ReadDir(d.tmp)
	if err != nil {
		return nil, err
	}
	cutoff := time.Now().Add(-staleAfter)
	for _, e := range entries {
		if info, err := e.Info(); err == nil && info.ModTime().Before(cutoff) {
			_ = os.Remove(filepath.Join(d.tmp, e.Name()))
		}
	}
	return d, nil
}

func shardOf(id string) string {
	h := fnv.New32a()
	_, _ = h.Write([]byte(id))
	return fmt.Sprintf("%02x", h.Sum32()&0xff)
}

func (d *dirStore) path(id string) string {
	return filepath.Join(d.root, shardOf(id), id+blobExt)
}

func (d *dirStore) Put(ctx context.Context, id string, r io.Reader, limit int64) (n int64, err error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	f, err := os.OpenFile(filepath.Join(d.tmp, id+tmpExt), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return 0, err
	}
	tmpName := f.Name()
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(tmpName)
		}
	}()
	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	src := r
	if limit > 0 {
		src = io.LimitReader(r, limit+1)
	}
	// Only the body's read errors are bodyErrors; a failed write (ENOSPC,
	// EIO, EROFS) is a storage failure.
	n, err = io.CopyBuffer(onlyWriter{f}, bodyReader{src}, *bp)
	if err != nil {
		return n, err
	}
	if limit > 0 && n > limit {
		return n, errBlobTooLarge
	}
	if err = f.Close(); err != nil {
		return n, err
	}
	final := d.path(id)
	if err = os.Rename(tmpName, final); err != nil {
		if !errors.Is(err, fs.ErrNotExist) {
			return n, err
		}
		// The shard directory went missing: recreate it once.
		if err = os.MkdirAll(filepath.Dir(final), 0o750); err != nil {
			return n, err
		}
		if err = syncPath(d.root); err != nil {
			return n, err
		}
		if err = os.Rename(tmpName, final); err != nil {
			return n, err
		}
	}
	return n, nil
}

// bodyError marks a failure to read the caller's body (not a storage failure).
type bodyError struct{ err error }

func (e *bodyError) Error() string { return "reading message body: " + e.err.Error() }
func (e *bodyError) Unwrap() error { return e.err }

// onlyWriter / bodyReader hide ReadFrom/WriteTo so CopyBuffer uses our buffer
// (and never reads an unbounded body into memory).
type onlyWriter struct{ w io.Writer }

func (o onlyWriter) Write(p []byte) (int, error) { return o.w.Write(p) }

// bodyReader also marks the caller's read errors as bodyErrors.
type bodyReader struct{ r io.Reader }

func (b bodyReader) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	if err != nil && err != io.EOF {
		err = &bodyError{err}
	}
	return n, err
}

func (d *dirStore) Sync(ids []string) error {
	paths := make([]string, 0, len(ids)+8)
	seen := make(map[string]bool, 8)
	for _, id := range ids {
		paths = append(paths, d.path(id))
		if s := shardOf(id); !seen[s] {
			seen[s] = true
			paths = append(paths, filepath.Join(d.root, s))
		}
	}
	// Order does not matter: the row is committed only after all of them.
	return syncAll(paths)
}

// syncAll fsyncs paths concurrently.
func syncAll(paths []string) error {
	if len(paths) == 1 {
		return syncPath(paths[0])
	}
	errs := make([]error, len(paths))
	sem := make(chan struct{}, 32)
	var wg sync.WaitGroup
	for i, p := range paths {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			errs[i] = syncPath(p)
			<-sem
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (d *dirStore) Open(id string) (io.ReadCloser, error) {
	return os.Open(d.path(id))
}

func (d *dirStore) Delete(id string) error {
	err := os.Remove(d.path(id))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

func (d *dirStore) Probe() error {
	f, err := os.CreateTemp(d.tmp, "probe-*"+tmpExt)
	if err != nil {
		return err
	}
	name := f.Name()
	_, err = f.Write([]byte("probe\n"))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if rerr := os.Remove(name); err == nil {
		err = rerr
	}
	return err
}

func (d *dirStore) Walk(cutoff time.Time, fn func(ids []string) error) error {
	for i := 0; i < 256; i++ {
		entries, err := os.ReadDir(filepath.Join(d.root, fmt.Sprintf("%02x", i)))
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return err
		}
		var ids []string
		for _, e := range entries {
			name := e.Name()
			if !strings.HasSuffix(name, blobExt) {
				continue
			}
			info, err := e.Info()
			if err != nil || !info.ModTime().Before(cutoff) {
				continue
			}
			ids = append(ids, strings.TrimSuffix(name, blobExt))
		}
		for len(ids) > 0 {
			n := min(len(ids), 500)
			if err := fn(ids[:n]); err != nil {
				return err
			}
			ids = ids[n:]
		}
	}
	return nil
}

// syncPath fsyncs a file or directory by name.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}
