package spool

import (
	"context"
	"database/sql"
	"errors"
	"strconv"
	"strings"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// The spool's statements run on two databases: SQLite through database/sql
// (the embedded default) and PostgreSQL through pgx (several replicas). Both
// are reached through dbtx, written once with "?" placeholders; the pgx side
// numbers them ($1, $2, …). River runs on the same connections and inside the
// same transactions (riversqlite on *sql.Tx, riverpgxv5 on pgx.Tx), so that a
// job and the message row it belongs to always commit together.

// dbtx runs statements, in or outside a transaction.
type dbtx interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) scanner
}

// rows iterates a query's result; *sql.Rows has this shape.
type rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close() error
}

type scanner interface{ Scan(dest ...any) error }

// txn is one transaction. raw is the driver's own transaction (*sql.Tx or
// pgx.Tx) for River.
type txn interface {
	dbtx
	raw() any
	// execMany runs one statement for each argument list (prepared once).
	execMany(ctx context.Context, query string, argLists [][]any) error
}

// database is a connection pool of one backend.
type database interface {
	dbtx
	begin(ctx context.Context) (txn, error)
	commit(ctx context.Context, tx txn) error
	rollback(tx txn)
	close() error
	postgres() bool
}

// --- SQLite (database/sql) ---

type sqlQuerier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

type sqlDB struct{ q sqlQuerier }

func (d sqlDB) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	return d.q.ExecContext(ctx, q, args...)
}

func (d sqlDB) QueryContext(ctx context.Context, q string, args ...any) (rows, error) {
	r, err := d.q.QueryContext(ctx, q, args...)
	if err != nil {
		return nil, err
	}
	return r, nil
}

func (d sqlDB) QueryRowContext(ctx context.Context, q string, args ...any) scanner {
	return d.q.QueryRowContext(ctx, q, args...)
}

type sqliteDB struct {
	sqlDB
	db *sql.DB
	// stmts caches the statements of execMany, prepared once on the pool:
	// parsing SQL is a large part of a small commit's cost in SQLite.
	stmts sync.Map // query → *sql.Stmt
}

type sqliteTx struct {
	sqlDB
	tx *sql.Tx
	d  *sqliteDB
}

func (t sqliteTx) raw() any { return t.tx }

// prepare caches statements for execMany. It must run outside any
// transaction: the pool has one connection, which a transaction holds.
func (d *sqliteDB) prepare(ctx context.Context, queries ...string) error {
	for _, q := range queries {
		st, err := d.db.PrepareContext(ctx, q)
		if err != nil {
			return err
		}
		d.stmts.Store(q, st)
	}
	return nil
}

func (t sqliteTx) execMany(ctx context.Context, q string, argLists [][]any) error {
	var st *sql.Stmt
	if ps, ok := t.d.stmts.Load(q); ok {
		st = t.tx.StmtContext(ctx, ps.(*sql.Stmt))
	} else {
		var err error
		if st, err = t.tx.PrepareContext(ctx, q); err != nil {
			return err
		}
	}
	defer func() { _ = st.Close() }()
	for _, args := range argLists {
		if _, err := st.ExecContext(ctx, args...); err != nil {
			return err
		}
	}
	return nil
}

func newSQLite(db *sql.DB) *sqliteDB { return &sqliteDB{sqlDB: sqlDB{q: db}, db: db} }

func (d *sqliteDB) begin(ctx context.Context) (txn, error) {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return sqliteTx{sqlDB: sqlDB{q: tx}, tx: tx, d: d}, nil
}

func (d *sqliteDB) commit(_ context.Context, tx txn) error { return tx.(sqliteTx).tx.Commit() }
func (d *sqliteDB) rollback(tx txn)                        { _ = tx.(sqliteTx).tx.Rollback() }
func (d *sqliteDB) close() error {
	d.stmts.Range(func(_, v any) bool { _ = v.(*sql.Stmt).Close(); return true })
	return d.db.Close()
}
func (d *sqliteDB) postgres() bool { return false }

// --- PostgreSQL (pgx) ---

type pgQuerier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

type pgDB struct{ q pgQuerier }

// numbered caches the $n form of each statement.
var numbered sync.Map

// pgSQL turns "?" placeholders into $1, $2, … (outside quoted strings).
func pgSQL(q string) string {
	if v, ok := numbered.Load(q); ok {
		return v.(string)
	}
	var b strings.Builder
	n, quoted := 0, false
	for i := 0; i < len(q); i++ {
		c := q[i]
		switch {
		case c == '\'':
			quoted = !quoted
			b.WriteByte(c)
		case c == '?' && !quoted:
			n++
			b.WriteByte('$')
			b.WriteString(strconv.Itoa(n))
		default:
			b.WriteByte(c)
		}
	}
	out := b.String()
	numbered.Store(q, out)
	return out
}

type pgResult struct{ n int64 }

func (r pgResult) LastInsertId() (int64, error) { return 0, errors.New("not supported") }
func (r pgResult) RowsAffected() (int64, error) { return r.n, nil }

func (d pgDB) ExecContext(ctx context.Context, q string, args ...any) (sql.Result, error) {
	tag, err := d.q.Exec(ctx, pgSQL(q), args...)
	if err != nil {
		return nil, err
	}
	return pgResult{tag.RowsAffected()}, nil
}

func (d pgDB) QueryContext(ctx context.Context, q string, args ...any) (rows, error) {
	r, err := d.q.Query(ctx, pgSQL(q), args...)
	if err != nil {
		return nil, err
	}
	return pgRows{r}, nil
}

func (d pgDB) QueryRowContext(ctx context.Context, q string, args ...any) scanner {
	return pgRow{d.q.QueryRow(ctx, pgSQL(q), args...)}
}

type pgRows struct{ pgx.Rows }

func (r pgRows) Close() error { r.Rows.Close(); return r.Rows.Err() }

type pgRow struct{ r pgx.Row }

// Scan maps pgx's "no rows" to database/sql's, which the statements test for.
func (r pgRow) Scan(dest ...any) error {
	err := r.r.Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return sql.ErrNoRows
	}
	return err
}

type postgresDB struct {
	pgDB
	pool *pgxpool.Pool
}

type postgresTx struct {
	pgDB
	tx pgx.Tx
}

func (t postgresTx) raw() any { return t.tx }

func (t postgresTx) execMany(ctx context.Context, q string, argLists [][]any) error {
	b := &pgx.Batch{}
	sqlText := pgSQL(q)
	for _, args := range argLists {
		b.Queue(sqlText, args...)
	}
	return t.tx.SendBatch(ctx, b).Close()
}

func newPostgres(pool *pgxpool.Pool) *postgresDB {
	return &postgresDB{pgDB: pgDB{q: pool}, pool: pool}
}

func (d *postgresDB) begin(ctx context.Context) (txn, error) {
	tx, err := d.pool.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return postgresTx{pgDB: pgDB{q: tx}, tx: tx}, nil
}

func (d *postgresDB) commit(ctx context.Context, tx txn) error {
	return tx.(postgresTx).tx.Commit(ctx)
}

func (d *postgresDB) rollback(tx txn) {
	// Rollback must run even when the caller's context has ended.
	_ = tx.(postgresTx).tx.Rollback(context.Background())
}

func (d *postgresDB) close() error   { d.pool.Close(); return nil }
func (d *postgresDB) postgres() bool { return true }
