package spool

import (
	"context"
	"fmt"

	"github.com/riverqueue/river"
	"github.com/riverqueue/river/riverdriver"
	"github.com/riverqueue/river/riverdriver/riverpgxv5"
	"github.com/riverqueue/river/riverdriver/riversqlite"
	"github.com/riverqueue/river/rivermigrate"
	"github.com/riverqueue/river/rivertype"

	"database/sql"
)

// queue is the spool's use of River, whatever the database: every call that
// takes a txn runs inside the spool's own transaction.
type queue interface {
	insert(ctx context.Context, tx txn, args deliverArgs, opts *river.InsertOpts) (int64, error)
	insertMany(ctx context.Context, tx txn, params []river.InsertManyParams) ([]int64, error)
	get(ctx context.Context, tx txn, id int64) (*rivertype.JobRow, error)
	retry(ctx context.Context, tx txn, id int64) error
	migrate(ctx context.Context, tx txn) error
	// migrateEach applies each pending migration in its own transaction
	// (PostgreSQL: a migration that adds an enum value cannot share a
	// transaction with one that uses it).
	migrateEach(ctx context.Context) error
	start(ctx context.Context) error
	stop(ctx context.Context) error
	stopAndCancel(ctx context.Context) error
}

// riverQueue implements queue for one River driver and its transaction type.
type riverQueue[TTx any] struct {
	client   *river.Client[TTx]
	driver   riverdriver.Driver[TTx]
	migrator *rivermigrate.Migrator[TTx]
}

func newRiverQueue[TTx any](driver riverdriver.Driver[TTx], cfg *river.Config) (*riverQueue[TTx], error) {
	c, err := river.NewClient(driver, cfg)
	if err != nil {
		return nil, err
	}
	m, err := rivermigrate.New(driver, &rivermigrate.Config{Logger: cfg.Logger})
	if err != nil {
		return nil, err
	}
	return &riverQueue[TTx]{client: c, driver: driver, migrator: m}, nil
}

func newSQLiteQueue(db *sql.DB, cfg *river.Config) (queue, error) {
	return newRiverQueue(riversqlite.New(db), cfg)
}

func newPostgresQueue(db *postgresDB, cfg *river.Config) (queue, error) {
	return newRiverQueue(riverpgxv5.New(db.pool), cfg)
}

func (q *riverQueue[TTx]) tx(t txn) TTx {
	v, ok := t.raw().(TTx)
	if !ok {
		panic(fmt.Sprintf("spool: transaction of type %T given to a River client of another database", t.raw()))
	}
	return v
}

func (q *riverQueue[TTx]) insert(ctx context.Context, t txn, args deliverArgs, opts *river.InsertOpts) (int64, error) {
	res, err := q.client.InsertTx(ctx, q.tx(t), args, opts)
	if err != nil {
		return 0, err
	}
	return res.Job.ID, nil
}

func (q *riverQueue[TTx]) insertMany(ctx context.Context, t txn, params []river.InsertManyParams) ([]int64, error) {
	res, err := q.client.InsertManyTx(ctx, q.tx(t), params)
	if err != nil {
		return nil, err
	}
	ids := make([]int64, len(res))
	for i, r := range res {
		ids[i] = r.Job.ID
	}
	return ids, nil
}

func (q *riverQueue[TTx]) get(ctx context.Context, t txn, id int64) (*rivertype.JobRow, error) {
	return q.client.JobGetTx(ctx, q.tx(t), id)
}

func (q *riverQueue[TTx]) retry(ctx context.Context, t txn, id int64) error {
	_, err := q.client.JobRetryTx(ctx, q.tx(t), id)
	return err
}

func (q *riverQueue[TTx]) migrate(ctx context.Context, t txn) error {
	_, err := q.migrator.MigrateTx(ctx, q.tx(t), rivermigrate.DirectionUp, nil)
	return err
}

func (q *riverQueue[TTx]) migrateEach(ctx context.Context) error {
	_, err := q.migrator.Migrate(ctx, rivermigrate.DirectionUp, nil)
	return err
}

func (q *riverQueue[TTx]) start(ctx context.Context) error { return q.client.Start(ctx) }
func (q *riverQueue[TTx]) stop(ctx context.Context) error  { return q.client.Stop(ctx) }
func (q *riverQueue[TTx]) stopAndCancel(ctx context.Context) error {
	return q.client.StopAndCancel(ctx)
}
