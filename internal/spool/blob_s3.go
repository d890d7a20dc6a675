package spool

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Options name an S3-compatible bucket for raw messages.
type S3Options struct {
	Endpoint  string // host:port
	Bucket    string // created when missing
	Prefix    string // key prefix, e.g. "mmgate/"
	Region    string
	AccessKey string
	SecretKey string
	// Insecure talks plain HTTP (a test server on loopback).
	Insecure bool
}

// s3Store keeps blobs as objects <Prefix><id>.eml. An object exists only once
// PutObject returned, and S3 acknowledges a PUT only when it is durable, so
// Sync has nothing to do. Uploads stream in parts of s3PartSize: a large
// message never sits in memory whole.
type s3Store struct {
	c      *minio.Client
	bucket string
	prefix string
}

const s3PartSize = 8 << 20

func openS3Store(ctx context.Context, o S3Options) (*s3Store, error) {
	if o.Endpoint == "" || o.Bucket == "" {
		return nil, errors.New("S3: endpoint and bucket are required")
	}
	c, err := minio.New(o.Endpoint, &minio.Options{
		Creds:        credentials.NewStaticV4(o.AccessKey, o.SecretKey, ""),
		Secure:       !o.Insecure,
		Region:       o.Region,
		BucketLookup: minio.BucketLookupPath,
	})
	if err != nil {
		return nil, fmt.Errorf("S3 client: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	ok, err := c.BucketExists(cctx, o.Bucket)
	if err != nil {
		return nil, fmt.Errorf("S3 bucket %s: %w", o.Bucket, err)
	}
	if !ok {
		if err := c.MakeBucket(cctx, o.Bucket, minio.MakeBucketOptions{Region: o.Region}); err != nil {
			// Another replica may have created it meanwhile.
			if ok2, _ := c.BucketExists(cctx, o.Bucket); !ok2 {
				return nil, fmt.Errorf("creating S3 bucket %s: %w", o.Bucket, err)
			}
		}
	}
	return &s3Store{c: c, bucket: o.Bucket, prefix: o.Prefix}, nil
}

func (s *s3Store) key(id string) string { return s.prefix + id + blobExt }

// limitedSource reads the caller's body, marking its failures as body errors
// and stopping with errBlobTooLarge past the limit.
type limitedSource struct {
	r     io.Reader
	limit int64
	n     int64
	err   error
}

func (l *limitedSource) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	l.n += int64(n)
	if l.limit > 0 && l.n > l.limit {
		l.err = errBlobTooLarge
		return n, l.err
	}
	if err != nil && !errors.Is(err, io.EOF) {
		l.err = &bodyError{err}
	}
	return n, err
}

func (s *s3Store) Put(ctx context.Context, id string, r io.Reader, limit int64) (int64, error) {
	src := &limitedSource{r: r, limit: limit}
	info, err := s.c.PutObject(ctx, s.bucket, s.key(id), src, -1, minio.PutObjectOptions{
		ContentType: "message/rfc822", PartSize: s3PartSize, DisableMultipart: false})
	if src.err != nil {
		return src.n, src.err
	}
	if err != nil {
		return src.n, err
	}
	return info.Size, nil
}

func (s *s3Store) Sync([]string) error { return nil }

func (s *s3Store) Open(id string) (io.ReadCloser, error) {
	// The object streams for as long as the reader needs: no deadline here.
	obj, err := s.c.GetObject(context.Background(), s.bucket, s.key(id), minio.GetObjectOptions{})
	if err != nil {
		return nil, s3Err(err)
	}
	if _, err := obj.Stat(); err != nil {
		_ = obj.Close()
		return nil, s3Err(err)
	}
	return obj, nil
}

// s3Err maps a missing object to fs.ErrNotExist.
func s3Err(err error) error {
	var er minio.ErrorResponse
	if errors.As(err, &er) && (er.Code == "NoSuchKey" || er.StatusCode == 404) {
		return fmt.Errorf("%w: %v", fs.ErrNotExist, err)
	}
	return err
}

func (s *s3Store) Delete(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := s.c.RemoveObject(ctx, s.bucket, s.key(id), minio.RemoveObjectOptions{})
	if err != nil && errors.Is(s3Err(err), fs.ErrNotExist) {
		return nil
	}
	return err
}

func (s *s3Store) Probe() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	key := s.prefix + "probe/" + defaultInstanceID()
	if _, err := s.c.PutObject(ctx, s.bucket, key, bytes.NewReader([]byte("probe\n")), 6, minio.PutObjectOptions{}); err != nil {
		return err
	}
	return s.c.RemoveObject(ctx, s.bucket, key, minio.RemoveObjectOptions{})
}

func (s *s3Store) Walk(cutoff time.Time, fn func(ids []string) error) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ids []string
	for obj := range s.c.ListObjects(ctx, s.bucket, minio.ListObjectsOptions{Prefix: s.prefix, Recursive: true}) {
		if obj.Err != nil {
			return obj.Err
		}
		name := strings.TrimPrefix(obj.Key, s.prefix)
		if strings.Contains(name, "/") || !strings.HasSuffix(name, blobExt) || !obj.LastModified.Before(cutoff) {
			continue
		}
		ids = append(ids, strings.TrimSuffix(name, blobExt))
		if len(ids) == 500 {
			if err := fn(ids); err != nil {
				return err
			}
			ids = ids[:0]
		}
	}
	if len(ids) > 0 {
		return fn(ids)
	}
	return nil
}
