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

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/riverqueue/river"
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
	opts  Options
	log   *slog.Logger
	db    *sql.DB  // the SQLite pool; nil on PostgreSQL
	q     database // statements, on either database
	jobs  queue    // River, on the same database
	blobs blobStore
	now   func() time.Time

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

// Open opens (creating if needed) the spool — a SQLite file at opts.Path, or
// the PostgreSQL database of opts.PostgresDSN; raw messages in opts.BlobDir
// or the S3 bucket of opts.S3 — migrates the schema (its own tables and
// River's) and removes stale temp files.
//
// With a Handler, this is a worker process. On SQLite there is one: it takes
// an exclusive lock on <Path>.lock (a second worker process fails here) and
// repairs what a crash left behind (jobs left running, messages without a
// live job). On PostgreSQL several replicas work side by side: each
// registers itself with a heartbeat, and the jobs that a replica which
// stopped beating was running are made available again to the others.
// Without a Handler the spool only stores and administers, and may run beside
// the workers (CLI, pipe intake).
func Open(ctx context.Context, opts Options) (*Spool, error) {
	pg := opts.PostgresDSN != ""
	if (!pg && opts.Path == "") || (opts.S3 == nil && opts.BlobDir == "") {
		return nil, fault.New(fault.Invalid, "spool_config", "spool: a database (Path or PostgresDSN) and a blob store (BlobDir or S3) are required")
	}
	opts = opts.withDefaults()
	s := &Spool{
		opts:       opts,
		log:        opts.Logger,
		now:        time.Now,
		commitCh:   make(chan *acceptReq, 1024),
		commitDone: make(chan struct{}),
		inflight:   make(map[string]bool),
	}
	var err error
	if opts.S3 != nil {
		s.blobs, err = openS3Store(ctx, *opts.S3)
	} else {
		s.blobs, err = openDirStore(opts.BlobDir)
	}
	if err != nil {
		return nil, unavailable("spool: cannot prepare the blob store", err)
	}
	if pg {
		err = s.openPostgres(ctx)
	} else {
		err = s.openSQLite()
	}
	if err != nil {
		return nil, err
	}
	fail := func(msg string, err error) (*Spool, error) {
		s.unlock()
		_ = s.q.close()
		return nil, unavailable(msg, err)
	}
	if err := s.newRiverClient(); err != nil {
		_ = s.q.close()
		return nil, fmt.Errorf("spool: river client: %w", err)
	}
	if err := s.migrate(ctx); err != nil {
		return fail("spool: cannot migrate database", err)
	}
	if lite, ok := s.q.(*sqliteDB); ok {
		if err := lite.prepare(ctx, insertMessageSQL, insertEventSQL, insertBodySQL); err != nil {
			return fail("spool: cannot prepare statements", err)
		}
	}
	if opts.Handler != nil {
		if !pg {
			// The worker process: exclusive, and it repairs what a crash left.
			lock, err := lockFile(opts.Path + ".lock")
			if err != nil {
				return fail("spool: another process is delivering from this spool", err)
			}
			s.workerLock = lock
		} else if err := s.heartbeat(ctx); err != nil {
			return fail("spool: cannot register this replica", err)
		}
		if err := s.repair(ctx); err != nil {
			return fail("spool: crash repair failed", err)
		}
	}
	go s.commitLoop()
	return s, nil
}

func (s *Spool) openSQLite() error {
	path, err := filepath.Abs(s.opts.Path)
	if err != nil {
		return unavailable("spool: bad database path", err)
	}
	s.opts.Path = path
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return unavailable("spool: cannot create database directory", err)
	}
	db, err := sql.Open("sqlite", dsn(path))
	if err != nil {
		return unavailable("spool: cannot open database", err)
	}
	// SQLite allows one writer; River's SQLite driver wants a single
	// connection so its concurrent internal operations queue instead of
	// failing with SQLITE_BUSY.
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	db.SetConnMaxLifetime(0)
	s.db, s.q = db, newSQLite(db)
	return nil
}

func (s *Spool) openPostgres(ctx context.Context) error {
	cfg, err := pgxpool.ParseConfig(s.opts.PostgresDSN)
	if err != nil {
		// The DSN may hold a password: never show it.
		return fault.New(fault.Invalid, "spool_config", "spool: the PostgreSQL DSN cannot be parsed")
	}
	if cfg.MaxConns < int32(s.opts.Workers)+8 {
		cfg.MaxConns = int32(s.opts.Workers) + 8
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return unavailable("spool: cannot connect to PostgreSQL", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return unavailable("spool: cannot connect to PostgreSQL", err)
	}
	s.q = newPostgres(pool)
	return nil
}

func (s *Spool) migrate(ctx context.Context) error {
	if pg, ok := s.q.(*postgresDB); ok {
		// Replicas starting together migrate one after the other.
		conn, err := pg.pool.Acquire(ctx)
		if err != nil {
			return err
		}
		defer conn.Release()
		if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(7262864207)`); err != nil {
			return err
		}
		defer func() { _, _ = conn.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(7262864207)`) }()
		if err := s.jobs.migrateEach(ctx); err != nil {
			return fmt.Errorf("river migrations: %w", err)
		}
	}
	tx, err := s.q.begin(ctx)
	if err != nil {
		return err
	}
	defer s.q.rollback(tx)
	if !s.q.postgres() {
		if err := s.jobs.migrate(ctx, tx); err != nil {
			return fmt.Errorf("river migrations: %w", err)
		}
	}
	if err := sqlMigrate(ctx, tx, s.q.postgres()); err != nil {
		return err
	}
	return s.q.commit(ctx, tx)
}

func (s *Spool) newRiverClient() error {
	cfg := &river.Config{
		ID:          s.opts.InstanceID,
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
	var err error
	if pg, ok := s.q.(*postgresDB); ok {
		s.jobs, err = newPostgresQueue(pg, cfg)
	} else {
		s.jobs, err = newSQLiteQueue(s.db, cfg)
	}
	return err
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
		if err := s.jobs.start(runCtx); err != nil {
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
		err = s.jobs.stop(ctx)
		if ctx.Err() != nil {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			if cerr := s.jobs.stopAndCancel(cctx); cerr != nil {
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
		s.closeErr = s.q.close()
		s.unlock()
	})
	return s.closeErr
}

// repair runs in the worker process at Open, under the worker lock.
func (s *Spool) repair(ctx context.Context) error {
	tx, err := s.q.begin(ctx)
	if err != nil {
		return err
	}
	defer s.q.rollback(tx)
	var revived int64
	if s.q.postgres() {
		revived, err = sqlReviveOrphanedJobs(ctx, tx, replicaDeadAfter)
	} else {
		revived, err = sqlReviveRunningJobs(ctx, tx)
	}
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
	if err := s.q.commit(ctx, tx); err != nil {
		return err
	}
	if revived > 0 || len(jobless) > 0 {
		s.log.Warn("spool: repaired after an unclean stop", "jobs_revived", revived, "jobs_recreated", len(jobless))
	}
	return nil
}

// insertJob inserts a delivery job for id in tx, due at notBefore (or now).
func (s *Spool) insertJob(ctx context.Context, tx txn, id string, notBefore time.Time) (int64, error) {
	opts := &river.InsertOpts{MaxAttempts: maxAttempts}
	if notBefore.After(s.now()) {
		opts.ScheduledAt = notBefore
	}
	return s.jobs.insert(ctx, tx, deliverArgs{MessageID: id}, opts)
}

// beat writes this replica's heartbeat and revives the jobs of dead
// replicas until ctx ends.
func (s *Spool) beat(ctx context.Context) {
	defer s.bg.Done()
	t := time.NewTicker(replicaBeat)
	defer t.Stop()
	for beats := 1; ; beats++ {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.heartbeat(ctx); err != nil && ctx.Err() == nil {
			s.log.Error("spool: replica heartbeat failed", "err", err)
		}
		if beats%2 == 0 {
			s.reviveDead(ctx)
		}
	}
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
	// Replicas on PostgreSQL beat and watch each other, on their own: a
	// long purge or sweep must not delay a beat past replicaDeadAfter.
	if s.q.postgres() && s.opts.Handler != nil {
		s.bg.Add(1)
		go s.beat(ctx)
	}
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
	if _, err := sqlPurgeClaims(ctx, s.q, s.now().Add(-s.opts.Retention)); err != nil {
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
		existing, err := sqlExisting(ctx, s.q, ids)
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
	tx, err := s.q.begin(ctx)
	if err != nil {
		return unavailable("spool database not writable", err)
	}
	if err := sqlProbe(ctx, tx, s.now()); err != nil {
		s.q.rollback(tx)
		return unavailable("spool database not writable", err)
	}
	if err := s.q.commit(ctx, tx); err != nil {
		return unavailable("spool database not writable", err)
	}
	if err := s.blobs.Probe(); err != nil {
		return unavailable("spool blob store not writable", err)
	}
	return nil
}
