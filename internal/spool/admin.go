package spool

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/riverqueue/river"
	"github.com/riverqueue/river/rivertype"

	"github.com/mmgate/mmgate/internal/fault"
)

func dbErr(err error) error { return unavailable("spool database error", err) }

func conflict(id string, st State, op string) error {
	return fault.New(fault.Conflict, "message_state_conflict",
		fmt.Sprintf("message %s is %s: cannot %s", id, st, op))
}

// withTx runs fn in a transaction and commits it.
func (s *Spool) withTx(ctx context.Context, fn func(tx txn) error) error {
	tx, err := s.q.begin(ctx)
	if err != nil {
		return dbErr(err)
	}
	if err := fn(tx); err != nil {
		s.q.rollback(tx)
		var fe *fault.Error
		if errors.As(err, &fe) {
			return err
		}
		return dbErr(err)
	}
	if err := s.q.commit(ctx, tx); err != nil {
		return dbErr(err)
	}
	return nil
}

// oneCommit runs fn as one commit: on PostgreSQL fn is one statement (with
// data-modifying WITHs) on the pool, on SQLite, which has no such WITH, fn's
// statements run in a transaction. Errors map as withTx's.
func (s *Spool) oneCommit(ctx context.Context, fn func(q dbtx, pg bool) error) error {
	if !s.q.postgres() {
		return s.withTx(ctx, func(tx txn) error { return fn(tx, false) })
	}
	err := fn(s.q, true)
	var fe *fault.Error
	if err == nil || errors.As(err, &fe) {
		return err
	}
	return dbErr(err)
}

// getRow loads a message row, mapping absence to fault.NotFound.
func getRow(ctx context.Context, q dbtx, id string) (msgRow, error) {
	if !validID(id) {
		return msgRow{}, notFound(id)
	}
	r, err := sqlGetMessage(ctx, q, id)
	if errors.Is(err, sql.ErrNoRows) {
		return r, notFound(id)
	}
	return r, err
}

// OpenBody returns the raw message; fault.NotFound if the message is unknown
// or its body was purged.
func (s *Spool) OpenBody(ctx context.Context, id string) (io.ReadCloser, error) {
	if !validID(id) {
		return nil, notFound(id)
	}
	purged, isInline, inline, err := sqlBodyRef(ctx, s.q, id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, notFound(id)
	}
	if err != nil {
		return nil, dbErr(err)
	}
	if purged {
		return nil, fault.New(fault.NotFound, "body_purged", fmt.Sprintf("raw message %s was removed after retention", id))
	}
	if isInline {
		return io.NopCloser(bytes.NewReader(inline)), nil
	}
	return s.openBlob(id)
}

// Body returns msg's raw mail. On the Message a Handler is given it reads
// without a database query (the attempt's claim found where the bytes are);
// on any other, it is OpenBody.
func (s *Spool) Body(ctx context.Context, msg Message) (io.ReadCloser, error) {
	ref := msg.body
	switch {
	case ref == nil || msg.BodyPurged:
		return s.OpenBody(ctx, msg.ID)
	case ref.inline:
		return io.NopCloser(bytes.NewReader(ref.data)), nil
	default:
		return s.openBlob(msg.ID)
	}
}

func (s *Spool) openBlob(id string) (io.ReadCloser, error) {
	rc, err := s.blobs.Open(id)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fault.Wrap(fault.NotFound, "body_missing", fmt.Sprintf("raw message %s is missing", id), err)
	}
	if err != nil {
		return nil, unavailable("cannot read the raw message", err)
	}
	return rc, nil
}

// Get returns a message and its events, oldest first; fault.NotFound when unknown.
func (s *Spool) Get(ctx context.Context, id string) (Message, []Event, error) {
	var (
		r   msgRow
		evs []Event
	)
	// One read transaction, so the message and its events agree.
	err := s.withTx(ctx, func(tx txn) error {
		var err error
		if r, err = getRow(ctx, tx, id); err != nil {
			return err
		}
		evs, err = sqlEvents(ctx, tx, id)
		return err
	})
	if err != nil {
		return Message{}, nil, err
	}
	return r.Message, evs, nil
}

// List returns messages newest first.
func (s *Spool) List(ctx context.Context, f ListFilter) ([]Message, error) {
	if f.Limit <= 0 {
		f.Limit = 100
	}
	f.Limit = min(f.Limit, 1000)
	msgs, err := sqlList(ctx, s.q, f)
	if err != nil {
		return nil, dbErr(err)
	}
	return msgs, nil
}

// Counts returns the number of messages in each state (every state present).
func (s *Spool) Counts(ctx context.Context) (map[State]int, error) {
	c, err := sqlCounts(ctx, s.q)
	if err != nil {
		return nil, dbErr(err)
	}
	return c, nil
}

// AddEvent appends an event to a message's history.
func (s *Spool) AddEvent(ctx context.Context, id, kind, detail string) error {
	if kind == "" {
		return fault.New(fault.Invalid, "bad_event", "event kind is required")
	}
	if !validID(id) {
		return notFound(id)
	}
	ok, err := sqlAddEvent(ctx, s.q, id, s.now(), kind, detail)
	if err != nil {
		return dbErr(err)
	}
	if !ok {
		return notFound(id)
	}
	return nil
}

// SetInfo records what the relay learned from parsing and routing; empty
// arguments leave the stored value unchanged.
func (s *Spool) SetInfo(ctx context.Context, id, app, subject, messageID string) error {
	if !validID(id) {
		return notFound(id)
	}
	ok, err := sqlSetInfo(ctx, s.q, id, app, subject, messageID, s.now())
	if err != nil {
		return dbErr(err)
	}
	if !ok {
		return notFound(id)
	}
	return nil
}

// Retry makes a queued or retrying message due now (fault.Conflict for posted
// or quarantined ones). If its delivery is running, nothing changes.
func (s *Spool) Retry(ctx context.Context, id string) error {
	return s.withTx(ctx, func(tx txn) error {
		m, err := getRow(ctx, tx, id)
		if err != nil {
			return err
		}
		if m.State != StateQueued && m.State != StateRetrying {
			return conflict(id, m.State, "retry")
		}
		now := s.now()
		detail := "operator asked for an immediate retry"
		job, err := s.jobs.get(ctx, tx, m.jobID)
		switch {
		case errors.Is(err, river.ErrNotFound) || err == nil && finalized(job.State):
			jobID, err := s.insertJob(ctx, tx, id, time.Time{})
			if err != nil {
				return err
			}
			if err := sqlSetJob(ctx, tx, id, jobID, now); err != nil {
				return err
			}
		case err != nil:
			return err
		case job.State == rivertype.JobStateRunning:
			// The running job may be about to snooze: give the message a
			// new job due now; the old one then finds itself stale.
			detail = "operator asked for an immediate retry while a delivery was running"
			jobID, err := s.insertJob(ctx, tx, id, time.Time{})
			if err != nil {
				return err
			}
			if err := sqlSetJob(ctx, tx, id, jobID, now); err != nil {
				return err
			}
		default:
			if err := s.jobs.retry(ctx, tx, m.jobID); err != nil && !errors.Is(err, river.ErrNotFound) {
				return err
			}
		}
		if m.State == StateRetrying {
			if err := sqlSetNextTry(ctx, tx, id, now, now); err != nil {
				return err
			}
		}
		_, err = sqlAddEvent(ctx, tx, id, now, "retry-now", detail)
		return err
	})
}

func finalized(st rivertype.JobState) bool {
	return st == rivertype.JobStateCompleted || st == rivertype.JobStateCancelled || st == rivertype.JobStateDiscarded
}

// Release moves a quarantined message back to queued with a new delivery job
// and a new retry cycle (fault.Conflict otherwise). note is recorded in the
// "released" event.
func (s *Spool) Release(ctx context.Context, id, note string) error {
	return s.withTx(ctx, func(tx txn) error {
		m, err := getRow(ctx, tx, id)
		if err != nil {
			return err
		}
		if m.State != StateQuarantined {
			return conflict(id, m.State, "release")
		}
		now := s.now()
		jobID, err := s.insertJob(ctx, tx, id, time.Time{})
		if err != nil {
			return err
		}
		if err := sqlRequeue(ctx, tx, id, jobID, now); err != nil {
			return err
		}
		if note == "" {
			note = "released by operator"
		}
		_, err = sqlAddEvent(ctx, tx, id, now, "released", note)
		return err
	})
}

// Delete removes a quarantined message: its record, history, ledger and raw
// bytes (fault.Conflict for other states).
func (s *Spool) Delete(ctx context.Context, id string) error {
	err := s.withTx(ctx, func(tx txn) error {
		m, err := getRow(ctx, tx, id)
		if err != nil {
			return err
		}
		if m.State != StateQuarantined {
			return conflict(id, m.State, "delete")
		}
		return sqlDeleteMessage(ctx, tx, id)
	})
	if err != nil {
		return err
	}
	s.log.Info("spool: deleted quarantined message", "id", id)
	if err := s.blobs.Delete(id); err != nil {
		// The orphan sweep will retry; the record is gone either way.
		s.log.Warn("spool: removing raw message of deleted message", "id", id, "err", err)
	}
	return nil
}

// PurgePosted removes the raw mail of posted messages posted more than
// olderThan ago and returns how many were purged. Metadata, events and ledger
// stay.
func (s *Spool) PurgePosted(ctx context.Context, olderThan time.Duration) (int, error) {
	cutoff := s.now().Add(-max(olderThan, 0))
	total := 0
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		ids, err := sqlPurgeCandidates(ctx, s.q, cutoff, 500)
		if err != nil {
			return total, dbErr(err)
		}
		if len(ids) == 0 {
			return total, nil
		}
		// Blob first: a crash in between leaves a row whose blob is gone,
		// which OpenBody reports as not found and the next purge marks.
		var done []string
		for _, id := range ids {
			if err := s.blobs.Delete(id); err != nil {
				s.log.Warn("spool: purging raw message", "id", id, "err", err)
				continue
			}
			done = append(done, id)
		}
		if len(done) == 0 {
			return total, unavailable("cannot remove raw messages", nil)
		}
		now := s.now()
		err = s.withTx(ctx, func(tx txn) error {
			for _, id := range done {
				if err := sqlMarkPurged(ctx, tx, id, now); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return total, err
		}
		total += len(done)
		if len(ids) < 500 {
			return total, nil
		}
	}
}

// LedgerGet returns the ledger entry of (message, destination, part).
func (s *Spool) LedgerGet(ctx context.Context, msgID, dest, part string) (LedgerEntry, bool, error) {
	e, err := sqlLedgerGet(ctx, s.q, msgID, dest, part)
	if errors.Is(err, sql.ErrNoRows) {
		return LedgerEntry{}, false, nil
	}
	if err != nil {
		return LedgerEntry{}, false, dbErr(err)
	}
	return e, true, nil
}

// LedgerIntent records that a post is about to be attempted. The first
// IntentAt is kept; a non-empty channelID replaces the stored one.
func (s *Spool) LedgerIntent(ctx context.Context, msgID, dest, part, channelID string) error {
	if dest == "" || part == "" {
		return fault.New(fault.Invalid, "bad_ledger_key", "ledger dest and part are required")
	}
	// One statement: the ledger's foreign key answers for a message that
	// is gone (deleted meanwhile), without a transaction around a lookup.
	return ledgerErr(msgID, sqlLedgerIntent(ctx, s.q, msgID, dest, part, channelID, s.now()))
}

// LedgerDone records the post id of (message, destination, part). Recording
// the same post id again is a no-op; a different one is fault.Conflict (the
// first is kept).
func (s *Spool) LedgerDone(ctx context.Context, msgID, dest, part, postID string) error {
	if dest == "" || part == "" || postID == "" {
		return fault.New(fault.Invalid, "bad_ledger_key", "ledger dest, part and post id are required")
	}
	ok, err := sqlLedgerDone(ctx, s.q, msgID, dest, part, postID, s.now())
	if err != nil {
		return ledgerErr(msgID, err)
	}
	if !ok {
		return fault.New(fault.Conflict, "ledger_conflict",
			fmt.Sprintf("%s %s of message %s already has another post", dest, part, msgID))
	}
	return nil
}

// fkViolation reports whether err (or what it wraps) is a foreign key
// violation: a row written for a message that is gone.
func fkViolation(err error) bool {
	var pe *pgconn.PgError
	return err != nil && (errors.As(err, &pe) && pe.Code == "23503" ||
		strings.Contains(err.Error(), "FOREIGN KEY constraint failed"))
}

// ledgerErr maps a ledger write's error: a foreign key violation means the
// message does not exist (any more).
func ledgerErr(msgID string, err error) error {
	switch {
	case err == nil:
		return nil
	case fkViolation(err):
		return notFound(msgID)
	}
	return dbErr(err)
}

// LedgerList returns a message's ledger entries in the order they were started.
func (s *Spool) LedgerList(ctx context.Context, msgID string) ([]LedgerEntry, error) {
	es, err := sqlLedgerList(ctx, s.q, msgID)
	if err != nil {
		return nil, dbErr(err)
	}
	return es, nil
}

// StateGet returns an intake's durable value for key.
func (s *Spool) StateGet(ctx context.Context, key string) (string, bool, error) {
	v, ok, err := sqlStateGet(ctx, s.q, key)
	if err != nil {
		return "", false, dbErr(err)
	}
	return v, ok, nil
}

// StateSet durably stores an intake's value for key.
func (s *Spool) StateSet(ctx context.Context, key, value string) error {
	return s.withTx(ctx, func(tx txn) error { return sqlStateSet(ctx, tx, key, value, s.now()) })
}

// Claim answers ClaimDelivery.
type Claim struct {
	// Holder is the message that posts the mail to the destination: the
	// caller itself, or the message that claimed it first.
	Holder string
	// Another holder's state, and whether it has posted to the destination
	// (or is posted): until it has, the mail may still never arrive there
	// (a quarantined holder can be deleted).
	HolderState State
	Delivered   bool
	// Ledger is, when the caller holds the claim, its ledger entries for
	// the destination, read with the claim (one round trip instead of a
	// LedgerGet per part).
	Ledger []LedgerEntry
}

// Intent is a part a delivery is about to post, and where.
type Intent struct {
	Part, ChannelID string
}

// ClaimDelivery makes msgID the one message that posts the mail identified
// by mailKey (a hash of its Message-ID) to dest, unless another message
// already claimed it, and says who holds the claim. A claim lasts as long
// as its message, or Retention after it was made. When msgID holds it and
// first.Part is set, the intent to post that part is recorded with the
// claim, as LedgerIntent would; Claim.Ledger is then the destination's
// ledger as it was before.
func (s *Spool) ClaimDelivery(ctx context.Context, mailKey, dest, msgID string, first Intent) (Claim, error) {
	if first.Part != "" && dest == "" {
		return Claim{}, fault.New(fault.Invalid, "bad_ledger_key", "ledger dest and part are required")
	}
	var (
		holder string
		ledger []LedgerEntry
	)
	err := s.oneCommit(ctx, func(q dbtx, pg bool) error {
		var err error
		holder, ledger, err = sqlClaimDelivery(ctx, q, pg, mailKey, dest, msgID, first, s.now())
		return err
	})
	if err != nil {
		return Claim{}, err
	}
	c := Claim{Holder: holder}
	if holder == msgID {
		c.Ledger = ledger
	}
	if holder != msgID {
		if c.HolderState, c.Delivered, err = sqlHolderDelivered(ctx, s.q, holder, dest); err != nil {
			return Claim{}, dbErr(err)
		}
	}
	return c, nil
}
