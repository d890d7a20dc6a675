package spool

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	done       chan error
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
	size, err := s.blobs.Put(ctx, id, body, s.opts.BodyLimit)
	if err != nil {
		var be *bodyError
		var fe *fault.Error
		switch {
		case errors.Is(err, errBlobTooLarge):
			return "", fault.New(fault.TooLarge, "message_too_large",
				fmt.Sprintf("message exceeds the size limit of %d bytes", s.opts.BodyLimit))
		case errors.As(err, &be) && errors.As(be.err, &fe):
			return "", fmt.Errorf("spool: %w", be.err)
		case errors.As(err, &be):
			return "", fault.Wrap(fault.Temporary, "body_read_failed", "could not read the message", be.err)
		case ctx.Err() != nil:
			return "", fault.Wrap(fault.Temporary, "canceled", "request canceled", err)
		}
		s.log.Error("spool: storing raw message failed", "err", err)
		return "", unavailable("could not store the message", err)
	}
	req := &acceptReq{
		id:         id,
		env:        env,
		envJSON:    string(envJSON),
		receivedAt: now,
		size:       size,
		done:       make(chan error, 1),
	}
	s.acceptMu.RLock()
	if s.closed {
		s.acceptMu.RUnlock()
		_ = s.blobs.Delete(id)
		return "", unavailable("spool is closed", nil)
	}
	s.commitCh <- req
	s.acceptMu.RUnlock()
	// Wait for the commit even if ctx ends: answering "failed" for a message
	// that then commits would make the sender send it twice.
	if err := <-req.done; err != nil {
		if derr := s.blobs.Delete(id); derr != nil {
			s.log.Warn("spool: removing blob of failed accept", "id", id, "err", derr)
		}
		s.log.Error("spool: committing accepted message failed", "id", id, "err", err)
		return "", unavailable("could not store the message", err)
	}
	metrics.Received.WithLabelValues(env.Intake, env.App).Inc()
	s.log.Debug("spool: accepted", "id", id, "intake", env.Intake, "size", size)
	return id, nil
}

// commitLoop is the single committer, a two-stage pipeline: it batches
// whatever Accepts queued up while the previous batch was being synced (up to
// maxBatch), fsyncs their blobs, and hands the batch to the database stage,
// which inserts all rows in one transaction and commits while the next batch
// is being synced. Every caller of a batch gets the batch's result.
func (s *Spool) commitLoop() {
	defer close(s.commitDone)
	synced := make(chan syncedBatch, 1)
	dbDone := make(chan struct{})
	go func() {
		defer close(dbDone)
		for sb := range synced {
			err := sb.err
			if err == nil {
				err = s.commitBatch(sb.reqs)
			}
			for _, r := range sb.reqs {
				r.done <- err
			}
		}
	}()
	for req := range s.commitCh {
		batch := make([]*acceptReq, 1, 16)
		batch[0] = req
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
		ids := make([]string, len(batch))
		for i, r := range batch {
			ids[i] = r.id
		}
		var err error
		if err = s.blobs.Sync(ids); err != nil {
			err = fmt.Errorf("fsync raw messages: %w", err)
		}
		synced <- syncedBatch{reqs: batch, err: err}
	}
	close(synced)
	<-dbDone
}

type syncedBatch struct {
	reqs []*acceptReq
	err  error
}

// commitBatch inserts the jobs, message rows and "received" events of a
// synced batch in one transaction.
func (s *Spool) commitBatch(batch []*acceptReq) (err error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	params := make([]river.InsertManyParams, len(batch))
	for i, r := range batch {
		params[i] = river.InsertManyParams{
			Args:       deliverArgs{MessageID: r.id},
			InsertOpts: &river.InsertOpts{MaxAttempts: maxAttempts},
		}
	}
	res, err := s.river.InsertManyTx(ctx, tx, params)
	if err != nil {
		return fmt.Errorf("insert jobs: %w", err)
	}
	if len(res) != len(batch) {
		return fmt.Errorf("insert jobs: got %d results for %d jobs", len(res), len(batch))
	}
	jobIDs := make([]int64, len(res))
	for i, r := range res {
		jobIDs[i] = r.Job.ID
	}
	if err = sqlInsertAccepted(ctx, tx, batch, jobIDs, s.now()); err != nil {
		return err
	}
	return tx.Commit()
}
