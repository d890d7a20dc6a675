// Package secrets is mmgate's secret store: credentials mmgate obtains
// itself (bot access tokens and slash-command tokens from `mmgate mattermost
// setup`) rather than reads from the configuration. It keeps them in a
// SQLite file of mode 0600 beside the spool, or in the spool's PostgreSQL
// database, so that every replica sees them. It never logs a value.
package secrets

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/mmgate/mmgate/internal/sqldb"
)

// ErrNotFound is a secret that was never stored.
var ErrNotFound = errors.New("secret not stored")

// Store is the secret store.
type Store struct{ db *sqldb.DB }

// Open opens the store on db and creates its table.
func Open(ctx context.Context, db *sqldb.DB) (*Store, error) {
	if err := db.Migrate(ctx, 7262864209, `CREATE TABLE IF NOT EXISTS mmgate_secrets (
		name TEXT PRIMARY KEY,
		value TEXT NOT NULL,
		updated_at BIGINT NOT NULL)`); err != nil {
		return nil, fmt.Errorf("secret store: %w", err)
	}
	return &Store{db: db}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// Get returns the secret name.
func (s *Store) Get(ctx context.Context, name string) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, s.db.Q(`SELECT value FROM mmgate_secrets WHERE name = ?`), name).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("secret store: %w", err)
	}
	return v, nil
}

// Put stores (or replaces) the secret name.
func (s *Store) Put(ctx context.Context, name, value string) error {
	_, err := s.db.Exec(ctx, `INSERT INTO mmgate_secrets (name, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`, name, value, time.Now().Unix())
	if err != nil {
		return fmt.Errorf("secret store: %w", err)
	}
	return nil
}

// PutNew stores name only if it is not there yet; false when it was.
func (s *Store) PutNew(ctx context.Context, name, value string) (bool, error) {
	n, err := s.db.Exec(ctx, `INSERT INTO mmgate_secrets (name, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (name) DO NOTHING`,
		name, value, time.Now().Unix())
	if err != nil {
		return false, fmt.Errorf("secret store: %w", err)
	}
	return n == 1, nil
}

// GetOrCreate returns the secret name, storing gen's value first if there
// is none; replicas racing to create it all get the one stored first.
func (s *Store) GetOrCreate(ctx context.Context, name string, gen func() (string, error)) (string, error) {
	if v, err := s.Get(ctx, name); !errors.Is(err, ErrNotFound) {
		return v, err
	}
	v, err := gen()
	if err != nil {
		return "", err
	}
	if _, err := s.PutNew(ctx, name, v); err != nil {
		return "", err
	}
	return s.Get(ctx, name)
}

// Delete forgets the secret name.
func (s *Store) Delete(ctx context.Context, name string) error {
	_, err := s.db.Exec(ctx, `DELETE FROM mmgate_secrets WHERE name = ?`, name)
	return err
}
