package approval

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/mmgate/mmgate/internal/sqldb"
)

// ErrNotFound is an unknown approval.
var ErrNotFound = errors.New("no such approval request")

// errConflict is a concurrent update; the caller reads again and retries.
var errConflict = errors.New("approval changed concurrently")

// Store keeps approval requests and the audit log (SQLite beside the spool,
// or the spool's PostgreSQL). A request is one JSON document with a version:
// every change is a compare-and-swap, so replicas and concurrent clicks
// never lose a decision.
type Store struct{ db *sqldb.DB }

// OpenStore creates the tables.
func OpenStore(ctx context.Context, db *sqldb.DB) (*Store, error) {
	auto := "INTEGER PRIMARY KEY AUTOINCREMENT"
	if db.PG {
		auto = "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
	}
	err := db.Migrate(ctx, 7262864210,
		`CREATE TABLE IF NOT EXISTS approvals (
			id TEXT PRIMARY KEY,
			client TEXT NOT NULL,
			state TEXT NOT NULL,
			data TEXT NOT NULL,
			version BIGINT NOT NULL,
			created_at BIGINT NOT NULL,
			expires_at BIGINT NOT NULL,
			callback_at BIGINT NOT NULL DEFAULT 0)`,
		`CREATE INDEX IF NOT EXISTS approvals_due ON approvals (state, expires_at)`,
		`CREATE INDEX IF NOT EXISTS approvals_callback ON approvals (callback_at)`,
		`CREATE TABLE IF NOT EXISTS approval_audit (
			seq `+auto+`,
			approval_id TEXT NOT NULL,
			at BIGINT NOT NULL,
			actor TEXT NOT NULL,
			action TEXT NOT NULL,
			result TEXT NOT NULL,
			detail TEXT NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS approval_audit_id ON approval_audit (approval_id)`)
	if err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func (s *Store) insert(ctx context.Context, a *Approval) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	a.version = 1
	_, err = s.db.Exec(ctx, `INSERT INTO approvals (id, client, state, data, version, created_at, expires_at, callback_at)
		VALUES (?, ?, ?, ?, 1, ?, ?, 0)`, a.ID, a.Client, a.State, string(b), a.CreatedAt.Unix(), a.ExpiresAt.Unix())
	return err
}

// delete forgets an approval that could not be posted.
func (s *Store) delete(ctx context.Context, id string) error {
	_, err := s.db.Exec(ctx, `DELETE FROM approvals WHERE id = ?`, id)
	return err
}

// Get reads an approval.
func (s *Store) Get(ctx context.Context, id string) (*Approval, error) {
	as, err := s.query(ctx, `SELECT data, version, callback_at FROM approvals WHERE id = ?`, id)
	if err != nil {
		return nil, err
	}
	if len(as) == 0 {
		return nil, ErrNotFound
	}
	return as[0], nil
}

// save writes a changed approval if nobody else changed it since it was
// read (errConflict otherwise); callbackAt > 0 schedules its callback.
func (s *Store) save(ctx context.Context, a *Approval, callbackAt int64) error {
	b, err := json.Marshal(a)
	if err != nil {
		return err
	}
	n, err := s.db.Exec(ctx, `UPDATE approvals SET state = ?, data = ?, version = version + 1, callback_at = ?
		WHERE id = ? AND version = ?`, a.State, string(b), callbackAt, a.ID, a.version)
	if err != nil {
		return err
	}
	if n == 0 {
		return errConflict
	}
	a.version++
	a.callbackAt = callbackAt
	return nil
}

// List returns the newest approvals (of client, "" : all).
func (s *Store) List(ctx context.Context, client string, limit int) ([]*Approval, error) {
	q := `SELECT data, version, callback_at FROM approvals`
	var args []any
	if client != "" {
		q += ` WHERE client = ?`
		args = append(args, client)
	}
	q += ` ORDER BY created_at DESC, id LIMIT ?`
	args = append(args, limit)
	return s.query(ctx, q, args...)
}

func (s *Store) query(ctx context.Context, q string, args ...any) ([]*Approval, error) {
	rows, err := s.db.QueryContext(ctx, s.db.Q(q), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []*Approval
	for rows.Next() {
		var data string
		var version, cb int64
		if err := rows.Scan(&data, &version, &cb); err != nil {
			return nil, err
		}
		a := &Approval{}
		if err := json.Unmarshal([]byte(data), a); err != nil {
			return nil, err
		}
		a.version, a.callbackAt = version, cb
		out = append(out, a)
	}
	return out, rows.Err()
}

// pending returns the oldest pending approvals.
func (s *Store) pending(ctx context.Context, limit int) ([]*Approval, error) {
	return s.query(ctx, `SELECT data, version, callback_at FROM approvals WHERE state = 'pending' ORDER BY created_at LIMIT ?`, limit)
}

// due returns pending approvals past their expiry and approvals whose
// callback is due.
func (s *Store) due(ctx context.Context, now time.Time) ([]*Approval, error) {
	return s.query(ctx, `SELECT data, version, callback_at FROM approvals
		WHERE (state = 'pending' AND expires_at <= ?) OR (callback_at > 0 AND callback_at <= ?) LIMIT 100`, now.Unix(), now.Unix())
}

// leaseCallback takes the callback of a for lease (so that one replica
// sends it); false when another one did.
func (s *Store) leaseCallback(ctx context.Context, a *Approval, until int64) (bool, error) {
	n, err := s.db.Exec(ctx, `UPDATE approvals SET callback_at = ? WHERE id = ? AND callback_at = ?`, until, a.ID, a.callbackAt)
	if err != nil || n == 0 {
		return false, err
	}
	a.callbackAt = until
	return true, nil
}

// AuditEntry is one line of the audit log.
type AuditEntry struct {
	At         time.Time `json:"at"`
	ApprovalID string    `json:"approval_id"`
	Actor      string    `json:"actor"`
	Action     string    `json:"action"`
	Result     string    `json:"result"`
	Detail     string    `json:"detail"`
}

func (s *Store) audit(ctx context.Context, e AuditEntry) error {
	_, err := s.db.Exec(ctx, `INSERT INTO approval_audit (approval_id, at, actor, action, result, detail) VALUES (?, ?, ?, ?, ?, ?)`,
		e.ApprovalID, e.At.UnixMilli(), e.Actor, e.Action, e.Result, e.Detail)
	return err
}

// Audit returns the audit log (of one approval, "" : all), oldest first.
func (s *Store) Audit(ctx context.Context, id string, limit int) ([]AuditEntry, error) {
	q := `SELECT approval_id, at, actor, action, result, detail FROM approval_audit`
	var args []any
	if id != "" {
		q += ` WHERE approval_id = ?`
		args = append(args, id)
	}
	q += ` ORDER BY seq DESC LIMIT ?`
	args = append(args, limit)
	rows, err := s.db.QueryContext(ctx, s.db.Q(q), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []AuditEntry
	for rows.Next() {
		var e AuditEntry
		var at int64
		if err := rows.Scan(&e.ApprovalID, &at, &e.Actor, &e.Action, &e.Result, &e.Detail); err != nil {
			return nil, err
		}
		e.At = time.UnixMilli(at)
		out = append([]AuditEntry{e}, out...)
	}
	return out, rows.Err()
}
