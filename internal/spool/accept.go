package spool

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/riverqueue/river"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/metrics"
)

// maxBatch bounds how many Accepts one transaction commits.
const maxBatch = 256

type acceptReq struct {
	id         string
	env        Envelope
	envJSON    string
	receivedAt time.Time
	size       int64
	inline     []byte // the whole body when stored inline; nil: in the blob store
	done       chan error
}

// inlineMax is the largest body stored inline in the database rather than
// as a blob file. On small VMs one fsync per file costs about a millisecond
// of kernel time and stalls other file creations, which caps durable file
// writes far below the intake's target; inline bodies need no fsync of
// their own. It also bounds the memory an Accept holds.
const inlineMax = 64 << 10

var inlineBufs = sync.Pool{New: func() any { b := make([]byte, inlineMax); return &b }}

// readHead reads body into buf until EOF or buf is full; whole reports
// whether the body ended within buf (a body of exactly len(buf) bytes is not
// whole: there may be more).
//
// Only io.EOF ends the body. io.ReadFull is not used: it reports a short
// body as io.ErrUnexpectedEOF, the same error a reader gives when its
// stream breaks (an HTTP body whose client hung up), and a truncated
// message would have been stored as whole.
func readHead(body io.Reader, buf []byte) (head []byte, whole bool, err error) {
	n := 0
	for n < len(buf) {
		m, err := body.Read(buf[n:])
		n += m
		switch {
		case errors.Is(err, io.EOF):
			return buf[:n], true, nil
		case err != nil:
			return nil, false, &bodyError{err}
		}
	}
	return buf[:n], false, nil
}

// putError maps a failure to read or store a body to the error Accept returns.
func (s *Spool) putError(ctx context.Context, err error) error {
	var (
		be *bodyError
		fe *fault.Error
	)
	switch {
	case errors.Is(err, errBlobTooLarge):
		return fault.New(fault.TooLarge, "message_too_large",
			fmt.Sprintf("message exceeds the size limit of %d bytes", s.opts.BodyLimit))
	case errors.As(err, &be) && errors.As(be.err, &fe):
		return fmt.Errorf("spool: %w", be.err)
	case errors.As(err, &be):
		return fault.Wrap(fault.Temporary, "body_read_failed", "could not read the message", be.err)
	case ctx.Err() != nil:
		return fault.Wrap(fault.Temporary, "canceled", "request canceled", err)
	}
	s.log.Error("spool: storing raw message failed", "err", err)
	return unavailable("could not store the message", err)
}

func (r *acceptReq) eventDetail() string {
	return fmt.Sprintf("via %s, %d bytes, %d recipient(s)", r.env.Intake, r.size, len(r.env.Recipients))
}

// Accept streams body to a blob, fsyncs it, records the metadata and schedules
// the delivery job, all durably before returning the new message's id. Only
// then may the intake acknowledge the message.
//
// Storage errors are fault.Temporary with code "spool_unavailable"; a body
// over BodyLimit is fault.TooLarge ("message_too_large") and nothing is kept.
// A failure reading body is returned as is when it is a *fault.Error, else as
// fault.Temporary "body_read_failed".
func (s *Spool) Accept(ctx context.Context, env Envelope, body io.Reader) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fault.Wrap(fault.Temporary, "canceled", "request canceled", err)
	}
	if env.Recipients == nil {
		env.Recipients = []string{}
	}
	envJSON, err := json.Marshal(env)
	if err != nil {
		return "", fault.Wrap(fault.Invalid, "bad_envelope", "invalid envelope", err)
	}
	now := s.now()
	id := newID(now)

	// Small bodies are stored inline, in the commit's transaction: one
	// database fsync per batch makes them durable. Larger ones stream to a
	// blob file.
	bp := inlineBufs.Get().(*[]byte)
	defer inlineBufs.Put(bp)
	head, whole, err := readHead(body, *bp)
	if err != nil {
		return "", s.putError(ctx, err)
	}
	var (
		size   = int64(len(head))
		inline []byte
	)
	if whole {
		if s.opts.BodyLimit > 0 && size > s.opts.BodyLimit {
			return "", s.putError(ctx, errBlobTooLarge)
		}
		inline = head
	} else {
		size, err = s.blobs.Put(ctx, id, io.MultiReader(bytes.NewReader(head), body), s.opts.BodyLimit)
		if err != nil {
			return "", s.putError(ctx, err)
		}
	}
	req := &acceptReq{
		id:         id,
		env:        env,
		envJSON:    string(envJSON),
		receivedAt: now,
		size:       size,
		inline:     inline,
		done:       make(chan error, 1),
	}
	s.acceptMu.RLock()
	if s.closed {
		s.acceptMu.RUnlock()
		if inline == nil {
			_ = s.blobs.Delete(id)
		}
		return "", unavailable("spool is closed", nil)
	}
	s.commitCh <- req
	s.acceptMu.RUnlock()
	// Wait for the commit even if ctx ends: answering "failed" for a message
	// that then commits would make the sender send it twice.
	if err := <-req.done; err != nil {
		if inline != nil {
			// nothing stored outside the failed transaction
		} else if derr := s.blobs.Delete(id); derr != nil {
			s.log.Warn("spool: removing blob of failed accept", "id", id, "err", derr)
		}
		s.log.Error("spool: committing accepted message failed", "id", id, "err", err)
		return "", unavailable("could not store the message", err)
	}
	metrics.Received.WithLabelValues(env.Intake, env.App).Inc()
	s.log.Debug("spool: accepted", "id", id, "intake", env.Intake, "size", size)
	return id, nil
}

// commitLoop is the single committer: it takes whatever Accepts queued up
// while the previous batch was committing (up to maxBatch), makes their blob
// files durable, inserts all their rows in one transaction and commits, then
// answers every caller of the batch with the batch's result.
func (s *Spool) commitLoop() {
	defer close(s.commitDone)
	batch := make([]*acceptReq, 0, maxBatch)
	lastSize, lastDur := 1, time.Duration(0)
	for req := range s.commitCh {
		batch = append(batch[:0], req)
	drain:
		for len(batch) < maxBatch {
			select {
			case r, ok := <-s.commitCh:
				if !ok {
					break drain
				}
				batch = append(batch, r)
			default:
				break drain
			}
		}
		// Callers answered by the previous commit come back microseconds
		// later; without a short wait for them, a steady load splits into
		// two alternating half-size batches and halves throughput. Wait for
		// as many as the last batch had, at most a quarter of the last
		// commit's duration (≤ 1ms).
		if target := min(lastSize, maxBatch); len(batch) < target {
			timer := time.NewTimer(min(lastDur/4, time.Millisecond))
		linger:
			for len(batch) < target {
				select {
				case r, ok := <-s.commitCh:
					if !ok {
						break linger
					}
					batch = append(batch, r)
				case <-timer.C:
					break linger
				}
			}
			timer.Stop()
		}
		start := time.Now()
		err := s.commitBatch(batch)
		lastSize, lastDur = len(batch), time.Since(start)
		for _, r := range batch {
			r.done <- err
		}
		clear(batch)
	}
}

// commitBatch fsyncs the batch's blob files (concurrently with inserting the
// rows) and commits the jobs, message rows, inline bodies and "received"
// events in one transaction.
func (s *Spool) commitBatch(batch []*acceptReq) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var files []string
	for _, r := range batch {
		if r.inline == nil {
			files = append(files, r.id)
		}
	}
	syncErr := make(chan error, 1)
	if len(files) > 0 {
		go func() { syncErr <- s.blobs.Sync(files) }()
	} else {
		syncErr <- nil
	}
	synced := false
	defer func() {
		if !synced {
			<-syncErr
		}
	}()

	tx, err := s.q.begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			s.q.rollback(tx)
		}
	}()
	params := make([]river.InsertManyParams, len(batch))
	for i, r := range batch {
		params[i] = river.InsertManyParams{
			Args:       deliverArgs{MessageID: r.id},
			InsertOpts: &river.InsertOpts{MaxAttempts: maxAttempts},
		}
	}
	jobIDs, err := s.jobs.insertMany(ctx, tx, params)
	if err != nil {
		return fmt.Errorf("insert jobs: %w", err)
	}
	if len(jobIDs) != len(batch) {
		return fmt.Errorf("insert jobs: got %d results for %d jobs", len(jobIDs), len(batch))
	}
	if err = sqlInsertAccepted(ctx, tx, batch, jobIDs, s.now()); err != nil {
		return err
	}
	synced = true
	if err = <-syncErr; err != nil {
		return fmt.Errorf("fsync raw messages: %w", err)
	}
	return s.q.commit(ctx, tx)
}
