package spool

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime/debug"
	"time"

	"github.com/riverqueue/river"

	"github.com/mmgate/mmgate/internal/metrics"
)

// deliverArgs is the River job that hands one message to the Handler.
type deliverArgs struct {
	MessageID string `json:"message_id"`
}

func (deliverArgs) Kind() string { return "mmgate_deliver" }

type deliverWorker struct {
	river.WorkerDefaults[deliverArgs]
	s *Spool
}

// busySnooze is how long a job waits when its message is already being
// handled in this process (a duplicate job after a rescue).
const busySnooze = time.Second

func (w *deliverWorker) Work(ctx context.Context, job *river.Job[deliverArgs]) error {
	return w.s.deliver(ctx, job)
}

func (s *Spool) markInflight(id string) bool {
	s.inflightMu.Lock()
	defer s.inflightMu.Unlock()
	if s.inflight[id] {
		return false
	}
	s.inflight[id] = true
	return true
}

func (s *Spool) clearInflight(id string) {
	s.inflightMu.Lock()
	delete(s.inflight, id)
	s.inflightMu.Unlock()
}

// deliver runs one delivery attempt. Returning nil completes the job; a
// river.JobSnooze reschedules it without consuming River attempts; any other
// error (database trouble) lets River retry it.
func (s *Spool) deliver(ctx context.Context, job *river.Job[deliverArgs]) error {
	id := job.Args.MessageID
	if !s.markInflight(id) {
		return river.JobSnooze(busySnooze)
	}
	defer s.clearInflight(id)

	// Bookkeeping must outlive the job's deadline.
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opTimeout)
	defer cancel()

	row, ok, err := s.claim(bctx, id, job.ID)
	if err != nil {
		return err
	}
	if !ok {
		s.log.Debug("spool: stale delivery job", "id", id, "job_id", job.ID)
		return nil
	}

	out := s.callHandler(ctx, row.Message)
	return s.applyOutcome(bctx, job, row, out)
}

// claim counts the attempt if jobID still owns a queued/retrying message,
// and records it in the history, atomically (one commit; on PostgreSQL one
// round trip).
func (s *Spool) claim(ctx context.Context, id string, jobID int64) (msgRow, bool, error) {
	now := s.now()
	var r msgRow
	err := s.oneCommit(ctx, func(q dbtx, pg bool) error {
		var err error
		r, err = sqlClaim(ctx, q, pg, id, jobID, now)
		return err
	})
	if errors.Is(err, sql.ErrNoRows) {
		return msgRow{}, false, nil
	}
	if err != nil {
		return msgRow{}, false, err
	}
	return r, true, nil
}

func (s *Spool) callHandler(ctx context.Context, msg Message) (out Outcome) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("spool: handler panicked", "id", msg.ID, "panic", fmt.Sprint(v), "stack", string(debug.Stack()))
			out = Outcome{Kind: OutcomeRetry, Reason: fmt.Sprintf("panic: %v", v)}
		}
	}()
	out = s.opts.Handler.Handle(ctx, msg)
	switch out.Kind {
	case OutcomePosted, OutcomeRetry, OutcomeQuarantine:
	default:
		out = Outcome{Kind: OutcomeRetry, Reason: fmt.Sprintf("handler returned an invalid outcome (%d): %s", out.Kind, out.Reason)}
	}
	return out
}

// backoff returns the delay before retry number attempt (1-based): RetryMin
// doubling up to RetryMax, with ±20% jitter, kept within [RetryMin, RetryMax].
func (s *Spool) backoff(attempt int) time.Duration {
	lo, hi := s.opts.RetryMin, s.opts.RetryMax
	d := lo
	for i := 1; i < attempt && d < hi; i++ {
		d *= 2
	}
	d = min(d, hi)
	if span := int64(d) * 2 / 5; span > 0 {
		d += time.Duration(rand.Int64N(span+1)) - d/5
	}
	return min(max(d, lo), hi)
}

func (s *Spool) applyOutcome(ctx context.Context, job *river.Job[deliverArgs], row msgRow, out Outcome) error {
	msg := row.Message
	id := msg.ID
	var (
		state     = StatePosted
		eventKind = "posted"
		detail    = out.Reason
		reason    string
		lastError string
		nextTry   time.Time
		delay     time.Duration
		reasonTag = "handler"
	)
	if out.Code != "" {
		reasonTag = out.Code
	}
	now := s.now()
	switch out.Kind {
	case OutcomePosted:
		if detail == "" {
			detail = fmt.Sprintf("posted on attempt %d", msg.Attempt)
		}
	case OutcomeQuarantine:
		state, eventKind, reason = StateQuarantined, "quarantined", out.Reason
		if reason == "" {
			reason = "quarantined by the relay"
		}
		detail = reason
	case OutcomeRetry:
		lastError = out.Reason
		if lastError == "" {
			lastError = "temporary failure"
		}
		if age := now.Sub(row.cycleStart); age > s.opts.MaxRetryAge {
			state, eventKind, reasonTag = StateQuarantined, "quarantined", "gave_up"
			reason = fmt.Sprintf("gave up after %s: %s", age.Round(time.Second), lastError)
			detail = reason
			break
		}
		delay = max(s.backoff(msg.Attempt), out.RetryAfter)
		nextTry = now.Add(delay)
		state, eventKind = StateRetrying, "retry"
		detail = fmt.Sprintf("attempt %d failed: %s; next try in %s", msg.Attempt, lastError, delay.Round(time.Millisecond))
	}

	f := finish{id: id, state: state, lastError: lastError, reason: reason, nextTry: nextTry, now: now,
		events: make([]Event, 0, len(out.Events)+1), posts: out.Posts}
	if out.Info != nil {
		f.info = *out.Info
	}
	for _, e := range out.Events {
		if e.At.IsZero() {
			e.At = now
		}
		f.events = append(f.events, e)
	}
	f.events = append(f.events, Event{At: now, Kind: eventKind, Detail: detail})
	// The message's state, the attempt's history and the outcome commit
	// together. The job is left to River: a retry snoozes it (below), any
	// other outcome completes it when Work returns. Should that be lost (a
	// crash just after this commit), the job runs again, finds the message
	// no longer queued/retrying (claim) and completes without delivering.
	var (
		applied    bool
		currentJob int64
		app        string
	)
	err := s.oneCommit(ctx, func(q dbtx, pg bool) error {
		var err error
		currentJob, app, applied, err = sqlFinish(ctx, q, pg, f)
		return err
	})
	if fkViolation(err) {
		// The outcome's posts name a message that is gone (deleted
		// meanwhile): nothing was written, nothing is left to do.
		applied, err = false, nil
	}
	// A retry snoozes this job, unless an operator's Retry gave the message
	// a new job meanwhile (the old one then completes). River records a
	// snooze after Work returns; a crash in between leaves the job
	// "running", which is made available again, so the retry only comes
	// early.
	snooze := applied && state == StateRetrying && currentJob == job.ID
	if err != nil {
		s.log.Error("spool: recording delivery outcome failed; will run again", "id", id, "outcome", out.Kind.String(), "err", err)
		return err
	}
	if !applied {
		s.log.Warn("spool: message changed during delivery; outcome dropped", "id", id, "outcome", out.Kind.String())
		return nil
	}
	switch state {
	case StatePosted:
		if out.Code == CodeDuplicate {
			metrics.Duplicates.WithLabelValues(app).Inc()
			s.log.Info("spool: duplicate, nothing posted", "id", id, "app", app)
			break
		}
		metrics.Posted.WithLabelValues(app).Inc()
		metrics.DeliveryLatency.WithLabelValues(app).Observe(now.Sub(msg.ReceivedAt).Seconds())
		s.log.Info("spool: posted", "id", id, "app", app, "attempt", msg.Attempt)
	case StateQuarantined:
		metrics.Quarantined.WithLabelValues(app, reasonTag).Inc()
		s.log.Warn("spool: quarantined", "id", id, "app", app, "reason", reason)
	case StateRetrying:
		metrics.Retries.WithLabelValues(app).Inc()
		s.log.Info("spool: delivery will be retried", "id", id, "app", app, "attempt", msg.Attempt, "in", delay, "err", lastError)
		if snooze {
			// Snoozing does not consume River attempts.
			return river.JobSnooze(delay)
		}
	}
	return nil
}
