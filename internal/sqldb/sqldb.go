// Package sqldb owns the small SQL databases beside the spool (the sign-in
// bridge's store, the secret store): a SQLite file for the embedded default,
// or the spool's PostgreSQL database when several replicas share the work.
// Statements are written once with "?" placeholders (Q numbers them for
// PostgreSQL); schemas are created under an advisory lock, so that replicas
// starting together do not trip over each other. It never touches the
// spool's own tables.
package sqldb

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	_ "github.com/jackc/pgx/v5/stdlib" // database/sql driver "pgx"
	_ "modernc.org/sqlite"             // database/sql driver "sqlite"
)

// DB is one database.
type DB struct {
	*sql.DB
	// PG is true on PostgreSQL.
	PG bool
}

// OpenSQLite opens (creating, mode 0600) the SQLite file path.
func OpenSQLite(path string) (*DB, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o750); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	_ = f.Close()
	q := url.Values{}
	q.Add("_pragma", "busy_timeout(10000)")
	q.Add("_pragma", "journal_mode(WAL)")
	q.Add("_pragma", "synchronous(FULL)")
	db, err := sql.Open("sqlite", "file:"+(&url.URL{Path: path}).EscapedPath()+"?"+q.Encode())
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	return &DB{DB: db}, nil
}

// OpenPostgres opens the PostgreSQL database at dsn (never shown in errors:
// it may hold a password).
func OpenPostgres(dsn string) (*DB, error) {
	db, err := sql.Open("pgx", dsn)
	if err != nil {
		return nil, errors.New("the PostgreSQL DSN cannot be parsed")
	}
	db.SetMaxOpenConns(8)
	return &DB{DB: db, PG: true}, nil
}

// Q turns "?" placeholders into PostgreSQL's $n.
func (d *DB) Q(query string) string {
	if !d.PG {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Exec runs query (with "?" placeholders) and returns the rows affected.
func (d *DB) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	res, err := d.ExecContext(ctx, d.Q(query), args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// Migrate runs stmts in one transaction, on PostgreSQL under the advisory
// lock key (concurrent CREATE TABLE IF NOT EXISTS can fail there).
func (d *DB) Migrate(ctx context.Context, key int64, stmts ...string) error {
	tx, err := d.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	if d.PG {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock($1)`, key); err != nil {
			return err
		}
	}
	for _, s := range stmts {
		if _, err := tx.ExecContext(ctx, s); err != nil {
			return fmt.Errorf("creating tables: %w", err)
		}
	}
	return tx.Commit()
}
