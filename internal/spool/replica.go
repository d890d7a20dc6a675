package spool

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"time"
)

// Replicas (PostgreSQL only). Every worker process writes a heartbeat every
// replicaBeat; one that has not beaten for replicaDeadAfter is taken for
// dead, and the River jobs it was running (River records the client id in
// attempted_by) are made available to the others. A replica that was only
// slow may then see its message handled twice, which the relay's ledger
// makes harmless; a dead one's messages are never stranded.
const (
	replicaBeat      = 5 * time.Second
	replicaDeadAfter = 30 * time.Second
)

func defaultInstanceID() string {
	host, _ := os.Hostname()
	if host == "" {
		host = "mmgate"
	}
	var b [4]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), hex.EncodeToString(b[:]))
}

// pgNowMicros is the database's clock in toDB's unit. Heartbeats are written
// and judged by it, so that a replica whose own clock is off is neither
// taken for dead nor kept alive.
const pgNowMicros = `CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)`

// heartbeat records that this replica is alive.
func (s *Spool) heartbeat(ctx context.Context) error {
	_, err := s.q.ExecContext(ctx, `INSERT INTO replicas (id, heartbeat_at) VALUES (?, `+pgNowMicros+`)
		ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at`, s.opts.InstanceID)
	return err
}

// reviveDead makes the jobs of replicas that stopped beating available again.
func (s *Spool) reviveDead(ctx context.Context) {
	n, err := sqlReviveOrphanedJobs(ctx, s.q, replicaDeadAfter)
	if err != nil {
		s.log.Error("spool: reviving the jobs of dead replicas failed", "err", err)
		return
	}
	if n > 0 {
		s.log.Warn("spool: jobs of a replica that stopped were made available again", "jobs", n)
	}
	if _, err := s.q.ExecContext(ctx, `DELETE FROM replicas WHERE heartbeat_at < `+pgNowMicros+` - ?`, (24 * time.Hour).Microseconds()); err != nil {
		s.log.Warn("spool: removing old replica records", "err", err)
	}
}

// sqlReviveOrphanedJobs (PostgreSQL) makes jobs left running by a replica
// whose heartbeat is older than liveSince available again.
func sqlReviveOrphanedJobs(ctx context.Context, q dbtx, deadAfter time.Duration) (int64, error) {
	res, err := q.ExecContext(ctx, `UPDATE river_job SET state = 'available', scheduled_at = now()
		WHERE state = 'running' AND NOT EXISTS (
			SELECT 1 FROM replicas r
			WHERE r.id = river_job.attempted_by[array_length(river_job.attempted_by, 1)] AND r.heartbeat_at >= `+pgNowMicros+` - ?)`,
		deadAfter.Microseconds())
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
