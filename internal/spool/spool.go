package spool

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	_ "modernc.org/sqlite" // database/sql driver "sqlite"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/metrics"
)

const (
	codeUnavailable = "spool_unavailable"
	// maxAttempts is given to every job: River attempts are not a budget the
	// spool uses (retries are snoozes, which do not consume attempts), so the
	// limit must never be reached.
	maxAttempts = 1 << 30
	// opTimeout bounds internal database work that must not be abandoned
	// when a caller's context ends (commits, outcome bookkeeping).
	opTimeout = 30 * time.Second
)

// Spool is a durable message store with delivery scheduling. All methods are
// safe for concurrent use.
type Spool struct {
	opts   Options
	log    *slog.Logger
	db     *sql.DB
	river  *river.Client[*sql.Tx]
	driver *riversqlite.Driver
	blobs  blobStore
	now    func() time.Time

	// Accept → committer.
	acceptMu   sync.RWMutex
	closed     bool
	commitCh   chan *acceptReq
	commitDone chan struct{}

	// Start/Stop.
	runMu      sync.Mutex
	started    bool
	riverOn    bool
	runCancel  context.CancelFunc
	bg         sync.WaitGroup
	workerLock *os.File

	inflightMu sync.Mutex
	inflight   map[string]bool

	closeOnce sync.Once
	closeErr  error
}

func unavailable(msg string, err error) error {
	return fault.Wrap(fault.Temporary, codeUnavailable, msg, err)
}

func notFound(id string) error {
	return fault.New(fault.NotFound, "message_not_found", fmt.Sprintf("message %q not found", id))
}

func dsn(path string) string {
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	q.Add("_pragma", "foreign_keys(1)")
	q.Set("_txlock", "immediate")
	return "file:" + (&url.URL{Path: path}).EscapedPath() + "?" + q.Encode()
}

// Open opens (creating if needed) the spool at opts.Path and opts.BlobDir,
// migrates the schema (its own tables and River's) and removes stale temp
// files. With a Handler, this is the worker process: it takes an exclusive
// lock on <Path>.lock (a second worker process fails here) and repairs what
// a crash left behind (jobs left running, messages without a live job).
// Without a Handler it only stores and administers, and may run beside the
// worker process (CLI, pipe intake).
func Open(ctx context.Context, opts Options) (*Spool, error) {
	if opts.Path == "" || opts.BlobDir == "" {
		return nil, fault.New(fault.Invalid, "spool_config", "spool: Path and BlobDir are required")
	}
	opts = opts.withDefaults()
	path, err := filepath.Abs(opts.Path)
	if err != nil {
		return nil, unavailable("spool: bad database path", err)
	}
	opts.Path = path
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, unavailable("spool: cannot create database directory", err)
	}
	blobs, err := openDirStore(opts.BlobDir)
	if err != nil {
		return nil, unavailable("spool: cannot prepare blob directory", err)
	}
	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		return nil, unavailable("spool: cannot open database", err)
	}
	// SQLite allows one writer; River's SQLite driver wants a single
	// connection so its concurrent internal operations queue instead of
	// failing with SQLITE_BUSY.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	s := &Spool{
		opts:       opts,
		log:        opts.Logger,
		db:         db,
		blobs:      blobs,
		now:        time.Now,
		commitCh:   make(chan *acceptReq, 1024),
		commitDone: make(chan struct{}),
		inflight:   make(map[string]bool),
	}
	if err := s.migrate(ctx); err != nil {
		_ = db.Close()
		return nil, unavailable("spool: cannot migrate database", err)
	}
	if err := s.newRiverClient(); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("spool: river client: %w", err)
	}
	if opts.Handler != nil {
		// The worker process: exclusive, and it repairs what a crash left.
		lock, err := lockFile(path + ".lock")
		if err != nil {
			_ = db.Close()
			return nil, unavailable("spool: another process is delivering from this spool", err)
		}
		s.workerLock = lock
		if err := s.repair(ctx); err != nil {
			s.unlock()
			_ = db.Close()
			return nil, unavailable("spool: crash repair failed", err)
		}
	}
	go s.commitLoop()
	return s, nil
}

func (s *Spool) migrate(ctx context.Context) error {
	migrator, err := rivermigrate.New(riversqlite.New(s.db), &rivermigrate.Config{Logger: s.log})
	if err != nil {
		return err
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if _, err := migrator.MigrateTx(ctx, tx, rivermigrate.DirectionUp, nil); err != nil {
		return fmt.Errorf("river migrations: %w", err)
	}
	if err := sqlMigrate(ctx, tx); err != nil {
		return err
	}
	return tx.Commit()
}

func (s *Spool) newRiverClient() error {
	cfg := &river.Config{
		Logger:      s.log,
		MaxAttempts: maxAttempts,
		JobTimeout:  s.opts.JobTimeout,
	}
	if s.opts.Handler != nil {
		workers := river.NewWorkers()
		if err := river.AddWorkerSafely(workers, &deliverWorker{s: s}); err != nil {
			return err
		}
		cooldown := min(max(s.opts.PollInterval/5, time.Millisecond), 100*time.Millisecond)
		cfg.Workers = workers
		cfg.Queues = map[string]river.QueueConfig{river.QueueDefault: {MaxWorkers: s.opts.Workers}}
		cfg.PollOnly = true
		cfg.FetchPollInterval = s.opts.PollInterval
		cfg.FetchCooldown = cooldown
		// A job still running this long after its timeout is stuck (its
		// handler ignores ctx); rescuing it may run the handler twice, which
		// the ledger tolerates, while never rescuing would strand the message.
		cfg.RescueStuckJobsAfter = s.opts.JobTimeout + max(s.opts.JobTimeout, 5*time.Minute)
	}
	s.driver = riversqlite.New(s.db)
	c, err := river.NewClient(s.driver, cfg)
	if err != nil {
		return err
	}
	s.river = c
	return nil
}

// Start starts the delivery workers (only when a Handler is configured) and
// the background maintenance: retention purge, orphan sweep, gauges.
func (s *Spool) Start(ctx context.Context) error {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	if s.started {
		return errors.New("spool: already started")
	}
	s.acceptMu.RLock()
	closed := s.closed
	s.acceptMu.RUnlock()
	if closed {
		return unavailable("spool: closed", nil)
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	if s.opts.Handler != nil {
		if err := s.river.Start(runCtx); err != nil {
			cancel()
			return unavailable("spool: cannot start workers", err)
		}
		s.riverOn = true
	}
	s.runCancel = cancel
	s.started = true
	s.bg.Add(1)
	go s.maintain(runCtx)
	return nil
}

func (s *Spool) unlock() {
	if s.workerLock != nil {
		_ = unlockFile(s.workerLock)
		s.workerLock = nil
	}
}

// Stop stops fetching jobs and waits for running handlers until ctx ends;
// then it cancels their contexts and waits a little more for their outcomes to
// be recorded. Accept keeps working until Close.
func (s *Spool) Stop(ctx context.Context) error {
	s.runMu.Lock()
	defer s.runMu.Unlock()
	if !s.started {
		return nil
	}
	var err error
	if s.riverOn {
		err = s.river.Stop(ctx)
		if ctx.Err() != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if cerr := s.river.StopAndCancel(cctx); cerr != nil {
				s.log.Warn("spool: workers did not stop", "err", cerr)
			}
			cancel()
		}
		s.riverOn = false
	}
	s.runCancel()
	s.bg.Wait()
	s.started = false
	return err
}

// Close stops the spool if needed, lets pending Accepts finish and closes the
// database.
func (s *Spool) Close() error {
	s.closeOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := s.Stop(ctx); err != nil {
			s.log.Warn("spool: stop during close", "err", err)
		}
		s.acceptMu.Lock()
		s.closed = true
		close(s.commitCh)
		s.acceptMu.Unlock()
		<-s.commitDone
		s.closeErr = s.db.Close()
		s.unlock()
	})
	return s.closeErr
}

// repair runs in the worker process at Open, under the worker lock.
func (s *Spool) repair(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	revived, err := sqlReviveRunningJobs(ctx, tx)
	if err != nil {
		return err
	}
	jobless, err := sqlJoblessMessages(ctx, tx)
	if err != nil {
		return err
	}
	now := s.now()
	for _, m := range jobless {
		jobID, err := s.insertJob(ctx, tx, m.ID, m.NextTry)
		if err != nil {
			return err
		}
		if err := sqlSetJob(ctx, tx, m.ID, jobID, now); err != nil {
			return err
		}
		if _, err := sqlAddEvent(ctx, tx, m.ID, now, "repaired", "delivery job was missing; rescheduled"); err != nil {
			return err
		}
	}
	if err := tx.Commit(); err != nil {
		return err
	}
	if revived > 0 || len(jobless) > 0 {
		s.log.Warn("spool: repaired after an unclean stop", "jobs_revived", revived, "jobs_recreated", len(jobless))
	}
	return nil
}

// insertJob inserts a delivery job for id in tx, due at notBefore (or now).
func (s *Spool) insertJob(ctx context.Context, tx *sql.Tx, id string, notBefore time.Time) (int64, error) {
	opts := &river.InsertOpts{MaxAttempts: maxAttempts}
	if notBefore.After(s.now()) {
		opts.ScheduledAt = notBefore
	}
	res, err := s.river.InsertTx(ctx, tx, deliverArgs{MessageID: id}, opts)
	if err != nil {
		return 0, err
	}
	return res.Job.ID, nil
}

// maintain runs the periodic background work until ctx ends.
func (s *Spool) maintain(ctx context.Context) {
	defer s.bg.Done()
	s.refreshGauge(ctx)
	first := time.NewTimer(30 * time.Second)
	defer first.Stop()
	purge := time.NewTicker(time.Hour)
	defer purge.Stop()
	gauge := time.NewTicker(30 * time.Second)
	defer gauge.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-first.C:
			s.purgeRetention(ctx)
			s.sweepOrphans(ctx)
		case <-purge.C:
			s.purgeRetention(ctx)
		case <-gauge.C:
			s.refreshGauge(ctx)
		}
	}
}

func (s *Spool) purgeRetention(ctx context.Context) {
	if s.opts.Retention < 0 {
		return
	}
	n, err := s.PurgePosted(ctx, s.opts.Retention)
	if err != nil {
		s.log.Error("spool: retention purge failed", "err", err)
		return
	}
	if n > 0 {
		s.log.Info("spool: purged raw mail of posted messages", "count", n, "older_than", s.opts.Retention)
	}
	if _, err := sqlPurgeClaims(ctx, s.db, s.now().Add(-s.opts.Retention)); err != nil {
		s.log.Error("spool: purging old delivery claims failed", "err", err)
	}
}

func (s *Spool) refreshGauge(ctx context.Context) {
	counts, err := s.Counts(ctx)
	if err != nil {
		return
	}
	for st, n := range counts {
		metrics.SpoolMessages.WithLabelValues(string(st)).Set(float64(n))
	}
}

// sweepOrphans removes blobs that have no message row and are older than an
// hour: leftovers of a crash between blob rename and commit, or of a Delete
// whose blob removal failed.
func (s *Spool) sweepOrphans(ctx context.Context) {
	removed := 0
	err := s.blobs.Walk(s.now().Add(-staleAfter), func(ids []string) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		existing, err := sqlExisting(ctx, s.db, ids)
		if err != nil {
			return err
		}
		for _, id := range ids {
			if !existing[id] {
				if err := s.blobs.Delete(id); err == nil {
					removed++
				}
			}
		}
		return nil
	})
	if err != nil && ctx.Err() == nil {
		s.log.Error("spool: orphan sweep failed", "err", err)
	}
	if removed > 0 {
		s.log.Warn("spool: removed orphaned raw messages", "count", removed)
	}
}

// Writable is a real write+fsync probe of the database and the blob store,
// for readiness checks.
func (s *Spool) Writable(ctx context.Context) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return unavailable("spool database not writable", err)
	}
	if err := sqlProbe(ctx, tx, s.now()); err != nil {
		_ = tx.Rollback()
		return unavailable("spool database not writable", err)
	}
	if err := tx.Commit(); err != nil {
		return unavailable("spool database not writable", err)
	}
	if err := s.blobs.Probe(); err != nil {
		return unavailable("spool blob store not writable", err)
	}
	return nil
}
