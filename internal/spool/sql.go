package spool

// The spool's SQL lives in this file (SQLite dialect, "?" placeholders, times
// as INTEGER unix microseconds); db.go rewrites it for PostgreSQL. The
// PostgreSQL-only statements (replica heartbeats, the migration lock) are in
// replica.go and spool.go.

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"
)

const schemaVersion = 1

var schemaSQL = []string{
	`CREATE TABLE IF NOT EXISTS spool_meta (
		key   TEXT PRIMARY KEY,
		value TEXT NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS messages (
		id          TEXT PRIMARY KEY,
		envelope    TEXT NOT NULL,
		received_at INTEGER NOT NULL,
		size        INTEGER NOT NULL,
		state       TEXT NOT NULL CHECK (state IN ('queued','retrying','posted','quarantined')),
		app         TEXT NOT NULL DEFAULT '',
		subject     TEXT NOT NULL DEFAULT '',
		message_id  TEXT NOT NULL DEFAULT '',
		attempt     INTEGER NOT NULL DEFAULT 0,
		next_try    INTEGER,
		last_error  TEXT NOT NULL DEFAULT '',
		reason      TEXT NOT NULL DEFAULT '',
		updated_at  INTEGER NOT NULL,
		body_purged INTEGER NOT NULL DEFAULT 0,
		job_id      INTEGER,
		cycle_start INTEGER NOT NULL
	)`,
	`CREATE INDEX IF NOT EXISTS messages_state_id ON messages (state, id)`,
	`CREATE INDEX IF NOT EXISTS messages_app_id ON messages (app, id)`,
	`CREATE INDEX IF NOT EXISTS messages_state_updated ON messages (state, body_purged, updated_at)`,
	`CREATE TABLE IF NOT EXISTS bodies (
		id   TEXT PRIMARY KEY REFERENCES messages (id) ON DELETE CASCADE,
		data BLOB NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS events (
		seq        INTEGER PRIMARY KEY,
		message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
		at         INTEGER NOT NULL,
		kind       TEXT NOT NULL,
		detail     TEXT NOT NULL DEFAULT ''
	)`,
	`CREATE INDEX IF NOT EXISTS events_message ON events (message_id, seq)`,
	`CREATE TABLE IF NOT EXISTS ledger (
		message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
		dest       TEXT NOT NULL,
		part       TEXT NOT NULL,
		channel_id TEXT NOT NULL DEFAULT '',
		post_id    TEXT NOT NULL DEFAULT '',
		intent_at  INTEGER,
		done_at    INTEGER,
		PRIMARY KEY (message_id, dest, part)
	)`,
	// Intake state: small durable values an intake keeps (an IMAP
	// mailbox's first-seen time).
	`CREATE TABLE IF NOT EXISTS intake_state (
		key        TEXT PRIMARY KEY,
		value      TEXT NOT NULL,
		updated_at INTEGER NOT NULL
	)`,
	// Delivery claims: which message posts a mail (by its Message-ID) to a
	// destination, so that the same mail stored twice (two intakes, a
	// sender's resend after a lost 250, a re-polled mailbox) is posted once.
	`CREATE TABLE IF NOT EXISTS claims (
		mail_key   TEXT NOT NULL,
		dest       TEXT NOT NULL,
		message_id TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
		at         INTEGER NOT NULL,
		PRIMARY KEY (mail_key, dest)
	)`,
	`CREATE INDEX IF NOT EXISTS claims_at ON claims (at)`,
	`CREATE INDEX IF NOT EXISTS claims_message ON claims (message_id)`,
	// Replicas sharing a PostgreSQL spool, with their heartbeats.
	`CREATE TABLE IF NOT EXISTS replicas (
		id           TEXT PRIMARY KEY,
		heartbeat_at INTEGER NOT NULL
	)`,
	`CREATE TABLE IF NOT EXISTS spool_probe (
		k  INTEGER PRIMARY KEY,
		at INTEGER NOT NULL
	)`,
}

// ddl adapts a schema statement to the database: SQLite's BLOB and
// INTEGER PRIMARY KEY (a rowid) are BYTEA and BIGSERIAL on PostgreSQL, and
// every INTEGER there is a BIGINT (times are microseconds).
func ddl(q string, postgres bool) string {
	if !postgres {
		return q
	}
	q = strings.ReplaceAll(q, "seq        INTEGER PRIMARY KEY", "seq        BIGSERIAL PRIMARY KEY")
	q = strings.ReplaceAll(q, "INTEGER", "BIGINT")
	return strings.ReplaceAll(q, "BLOB", "BYTEA")
}

func sqlMigrate(ctx context.Context, tx txn, postgres bool) error {
	for _, q := range schemaSQL {
		if _, err := tx.ExecContext(ctx, ddl(q, postgres)); err != nil {
			return fmt.Errorf("schema: %w", err)
		}
	}
	var v string
	err := tx.QueryRowContext(ctx, `SELECT value FROM spool_meta WHERE key = 'schema_version'`).Scan(&v)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		_, err = tx.ExecContext(ctx, `INSERT INTO spool_meta (key, value) VALUES ('schema_version', ?)`, fmt.Sprint(schemaVersion))
		return err
	case err != nil:
		return err
	case v != fmt.Sprint(schemaVersion):
		return fmt.Errorf("spool schema version %s is not supported by this build (want %d)", v, schemaVersion)
	}
	return nil
}

func toDB(t time.Time) int64 { return t.UnixMicro() }

func fromDB(v int64) time.Time { return time.UnixMicro(v).UTC() }

func nullTime(t time.Time) sql.NullInt64 {
	if t.IsZero() {
		return sql.NullInt64{}
	}
	return sql.NullInt64{Int64: toDB(t), Valid: true}
}

func fromNull(v sql.NullInt64) time.Time {
	if !v.Valid {
		return time.Time{}
	}
	return fromDB(v.Int64)
}

// msgRow is a messages row: the public Message plus internal bookkeeping.
type msgRow struct {
	Message
	jobID      int64
	cycleStart time.Time
}

const msgCols = `id, envelope, received_at, size, state, app, subject, message_id, attempt,
	next_try, last_error, reason, updated_at, body_purged, job_id, cycle_start`

func scanMsg(sc scanner) (msgRow, error) {
	var (
		r                        msgRow
		env                      string
		received, updated, cycle int64
		nextTry, jobID           sql.NullInt64
		purged                   int64
		state                    string
	)
	err := sc.Scan(&r.ID, &env, &received, &r.Size, &state, &r.App, &r.Subject, &r.MessageID, &r.Attempt,
		&nextTry, &r.LastError, &r.Reason, &updated, &purged, &jobID, &cycle)
	if err != nil {
		return r, err
	}
	if err := json.Unmarshal([]byte(env), &r.Envelope); err != nil {
		return r, fmt.Errorf("message %s: bad envelope: %w", r.ID, err)
	}
	r.State = State(state)
	r.ReceivedAt = fromDB(received)
	r.UpdatedAt = fromDB(updated)
	r.NextTry = fromNull(nextTry)
	r.BodyPurged = purged != 0
	r.jobID = jobID.Int64
	r.cycleStart = fromDB(cycle)
	return r, nil
}

// sqlGetMessage returns sql.ErrNoRows when id is unknown.
func sqlGetMessage(ctx context.Context, q dbtx, id string) (msgRow, error) {
	return scanMsg(q.QueryRowContext(ctx, `SELECT `+msgCols+` FROM messages WHERE id = ?`, id))
}

const insertMessageSQL = `INSERT INTO messages (id, envelope, received_at, size, state, app, updated_at, job_id, cycle_start)
	VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?)`

const insertEventSQL = `INSERT INTO events (message_id, at, kind, detail) VALUES (?, ?, ?, ?)`

const insertBodySQL = `INSERT INTO bodies (id, data) VALUES (?, ?)`

// sqlInsertAccepted inserts the rows of one committed batch (jobs already inserted).
func sqlInsertAccepted(ctx context.Context, tx txn, reqs []*acceptReq, jobIDs []int64, now time.Time) error {
	msgs := make([][]any, len(reqs))
	evs := make([][]any, len(reqs))
	var bodies [][]any
	for i, r := range reqs {
		received := toDB(r.receivedAt)
		msgs[i] = []any{r.id, r.envJSON, received, r.size, r.env.App, toDB(now), jobIDs[i], received}
		evs[i] = []any{r.id, received, "received", r.eventDetail()}
		if r.inline != nil {
			bodies = append(bodies, []any{r.id, r.inline})
		}
	}
	if err := tx.execMany(ctx, insertMessageSQL, msgs); err != nil {
		return fmt.Errorf("insert messages: %w", err)
	}
	if err := tx.execMany(ctx, insertEventSQL, evs); err != nil {
		return fmt.Errorf("insert events: %w", err)
	}
	if len(bodies) > 0 {
		if err := tx.execMany(ctx, insertBodySQL, bodies); err != nil {
			return fmt.Errorf("insert bodies: %w", err)
		}
	}
	return nil
}

// sqlAddEvent adds an event; it reports false when the message does not exist.
func sqlAddEvent(ctx context.Context, q dbtx, id string, at time.Time, kind, detail string) (bool, error) {
	res, err := q.ExecContext(ctx, `INSERT INTO events (message_id, at, kind, detail)
		SELECT id, CAST(? AS BIGINT), CAST(? AS TEXT), CAST(? AS TEXT) FROM messages WHERE id = ?`, toDB(at), kind, detail, id)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

func sqlEvents(ctx context.Context, q dbtx, id string) ([]Event, error) {
	rows, err := q.QueryContext(ctx, `SELECT at, kind, detail FROM events WHERE message_id = ? ORDER BY seq`, id)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var evs []Event
	for rows.Next() {
		var (
			e  Event
			at int64
		)
		if err := rows.Scan(&at, &e.Kind, &e.Detail); err != nil {
			return nil, err
		}
		e.At = fromDB(at)
		evs = append(evs, e)
	}
	return evs, rows.Err()
}

func sqlList(ctx context.Context, q dbtx, f ListFilter) ([]Message, error) {
	var (
		where []string
		args  []any
	)
	if len(f.States) > 0 {
		ph := make([]string, len(f.States))
		for i, st := range f.States {
			ph[i] = "?"
			args = append(args, string(st))
		}
		where = append(where, "state IN ("+strings.Join(ph, ",")+")")
	}
	if f.App != "" {
		where = append(where, "app = ?")
		args = append(args, f.App)
	}
	if f.Before != "" {
		where = append(where, "id < ?")
		args = append(args, f.Before)
	}
	query := `SELECT ` + msgCols + ` FROM messages`
	if len(where) > 0 {
		query += " WHERE " + strings.Join(where, " AND ")
	}
	query += " ORDER BY id DESC LIMIT ?"
	args = append(args, f.Limit)
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make([]Message, 0, 16)
	for rows.Next() {
		r, err := scanMsg(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r.Message)
	}
	return out, rows.Err()
}

func sqlCounts(ctx context.Context, q dbtx) (map[State]int, error) {
	rows, err := q.QueryContext(ctx, `SELECT state, count(*) FROM messages GROUP BY state`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[State]int, len(AllStates))
	for _, st := range AllStates {
		out[st] = 0
	}
	for rows.Next() {
		var (
			st string
			n  int
		)
		if err := rows.Scan(&st, &n); err != nil {
			return nil, err
		}
		out[State(st)] = n
	}
	return out, rows.Err()
}

// sqlSetInfo updates the non-empty fields; false when the message is unknown.
func sqlSetInfo(ctx context.Context, q dbtx, id, app, subject, messageID string, now time.Time) (bool, error) {
	res, err := q.ExecContext(ctx, `UPDATE messages SET
		app = CASE WHEN CAST(? AS TEXT) <> '' THEN CAST(? AS TEXT) ELSE app END,
		subject = CASE WHEN CAST(? AS TEXT) <> '' THEN CAST(? AS TEXT) ELSE subject END,
		message_id = CASE WHEN CAST(? AS TEXT) <> '' THEN CAST(? AS TEXT) ELSE message_id END,
		updated_at = ?
		WHERE id = ?`, app, app, subject, subject, messageID, messageID, toDB(now), id)
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

// claimSQL counts a delivery attempt for the message's current job; it
// matches nothing once the job no longer owns a queued/retrying message.
const claimSQL = `UPDATE messages SET attempt = attempt + 1, updated_at = ?
	WHERE id = ? AND job_id = ? AND state IN ('queued','retrying') RETURNING ` + msgCols

var claimPGSQL = `WITH m AS (` + claimSQL + `),
	e AS (INSERT INTO events (message_id, at, kind, detail) SELECT id, updated_at, 'attempt', 'attempt ' || attempt FROM m)
	SELECT ` + prefixCols("m.", msgCols) + `, b.id IS NOT NULL, b.data FROM m LEFT JOIN bodies b ON b.id = m.id`

// sqlClaim records the start of a delivery attempt for the message's current
// job, with its "attempt" event, and returns the message and where its raw
// mail is; sql.ErrNoRows when the job no longer owns a queued/retrying
// message. On PostgreSQL it is one statement (one round trip, one commit);
// SQLite has no data-modifying WITH, so there q is the transaction that
// holds the three statements.
func sqlClaim(ctx context.Context, q dbtx, pg bool, id string, jobID int64, now time.Time) (msgRow, error) {
	ref := &bodyRef{}
	if pg {
		r, err := scanMsg(withExtra(q.QueryRowContext(ctx, claimPGSQL, toDB(now), id, jobID), &ref.inline, &ref.data))
		r.body = ref
		return r, err
	}
	r, err := scanMsg(q.QueryRowContext(ctx, claimSQL, toDB(now), id, jobID))
	if err != nil {
		return r, err
	}
	if _, err := q.ExecContext(ctx, insertEventSQL, id, toDB(now), "attempt", fmt.Sprintf("attempt %d", r.Attempt)); err != nil {
		return r, err
	}
	_, ref.inline, ref.data, err = sqlBodyRef(ctx, q, id)
	r.body = ref
	return r, err
}

// withExtra scans a row's trailing columns into extra, after the ones a
// scan function (scanMsg) knows.
func withExtra(sc scanner, extra ...any) scanner { return extraScanner{sc, extra} }

type extraScanner struct {
	sc    scanner
	extra []any
}

func (e extraScanner) Scan(dest ...any) error { return e.sc.Scan(append(dest, e.extra...)...) }

// finishSQL records a delivery outcome (and what the handler learned of the
// message: empty fields are left unchanged) on a queued/retrying message.
const finishSQL = `UPDATE messages SET state = ?, last_error = ?, reason = ?, next_try = ?, updated_at = ?,
	app = CASE WHEN CAST(? AS TEXT) <> '' THEN CAST(? AS TEXT) ELSE app END,
	subject = CASE WHEN CAST(? AS TEXT) <> '' THEN CAST(? AS TEXT) ELSE subject END,
	message_id = CASE WHEN CAST(? AS TEXT) <> '' THEN CAST(? AS TEXT) ELSE message_id END
	WHERE id = ? AND state IN ('queued','retrying') RETURNING id, job_id, app`

// finish is one delivery outcome as sqlFinish writes it.
type finish struct {
	id                string
	state             State
	lastError, reason string
	nextTry, now      time.Time
	info              Info
	events            []Event // At set
	posts             []Post
}

// finishPGSQL is finishSQL with the attempt's events and the ledger's
// posts in one statement. The ledger's CTE does not depend on u: the posts
// exist whatever became of the message (a message that is gone fails the
// foreign key, and the whole statement with it).
var finishPGSQL = `WITH u AS (` + finishSQL + `),
	e AS (INSERT INTO events (message_id, at, kind, detail)
		SELECT u.id, x.at, x.kind, x.detail FROM u,
			unnest(CAST(? AS BIGINT[]), CAST(? AS TEXT[]), CAST(? AS TEXT[])) WITH ORDINALITY AS x(at, kind, detail, n)
		ORDER BY x.n),
	l AS (` + ledgerDoneSQL(`SELECT CAST(? AS TEXT), x.dest, x.part, x.post, CAST(? AS BIGINT), CAST(? AS BIGINT)
		FROM unnest(CAST(? AS TEXT[]), CAST(? AS TEXT[]), CAST(? AS TEXT[])) AS x(dest, part, post)`) + `)
	SELECT id, job_id, app FROM u`

// sqlFinish records a delivery outcome, its events and its posts on a
// queued/retrying message and returns the message's current job; ok is
// false (and only the posts are written) if the message is no longer
// queued/retrying. (During a delivery only an operator's Retry can change
// the message, and only its job, so the outcome still applies.) On
// PostgreSQL it is one statement; on SQLite q is the transaction that
// holds them all (see Spool.oneCommit).
func sqlFinish(ctx context.Context, q dbtx, pg bool, f finish) (jobID int64, app string, ok bool, err error) {
	args := []any{string(f.state), f.lastError, f.reason, nullTime(f.nextTry), toDB(f.now),
		f.info.App, f.info.App, f.info.Subject, f.info.Subject, f.info.MessageID, f.info.MessageID, f.id}
	var (
		job sql.NullInt64
		id  string
	)
	if pg {
		ats := make([]int64, len(f.events))
		kinds := make([]string, len(f.events))
		details := make([]string, len(f.events))
		for i, e := range f.events {
			ats[i], kinds[i], details[i] = toDB(e.At), e.Kind, e.Detail
		}
		// One INSERT cannot touch a row twice: the first post of a part is
		// the one kept anyway.
		var dests, parts, postIDs []string
		seen := make(map[[2]string]bool, len(f.posts))
		for _, p := range f.posts {
			if k := [2]string{p.Dest, p.Part}; !seen[k] {
				seen[k] = true
				dests, parts, postIDs = append(dests, p.Dest), append(parts, p.Part), append(postIDs, p.PostID)
			}
		}
		err = q.QueryRowContext(ctx, finishPGSQL,
			append(args, ats, kinds, details, f.id, toDB(f.now), toDB(f.now), dests, parts, postIDs)...).Scan(&id, &job, &app)
	} else {
		for _, p := range f.posts {
			if _, err := sqlLedgerDone(ctx, q, f.id, p.Dest, p.Part, p.PostID, f.now); err != nil {
				return 0, "", false, err
			}
		}
		err = q.QueryRowContext(ctx, finishSQL, args...).Scan(&id, &job, &app)
		for _, e := range f.events {
			if err != nil {
				break
			}
			_, err = q.ExecContext(ctx, insertEventSQL, f.id, toDB(e.At), e.Kind, e.Detail)
		}
	}
	if errors.Is(err, sql.ErrNoRows) {
		return 0, "", false, nil
	}
	if err != nil {
		return 0, "", false, err
	}
	return job.Int64, app, true, nil
}

// sqlRequeue makes a quarantined (or job-less) message queued with a new job and a new retry cycle.
func sqlRequeue(ctx context.Context, q dbtx, id string, jobID int64, now time.Time) error {
	_, err := q.ExecContext(ctx, `UPDATE messages SET state = 'queued', reason = '', last_error = '', next_try = NULL,
		job_id = ?, cycle_start = ?, updated_at = ? WHERE id = ?`, jobID, toDB(now), toDB(now), id)
	return err
}

// sqlSetJob points a queued/retrying message at a new job.
func sqlSetJob(ctx context.Context, q dbtx, id string, jobID int64, now time.Time) error {
	_, err := q.ExecContext(ctx, `UPDATE messages SET job_id = ?, updated_at = ? WHERE id = ?`, jobID, toDB(now), id)
	return err
}

func sqlSetNextTry(ctx context.Context, q dbtx, id string, nextTry, now time.Time) error {
	_, err := q.ExecContext(ctx, `UPDATE messages SET next_try = ?, updated_at = ? WHERE id = ?`, nullTime(nextTry), toDB(now), id)
	return err
}

func sqlDeleteMessage(ctx context.Context, q dbtx, id string) error {
	_, err := q.ExecContext(ctx, `DELETE FROM messages WHERE id = ?`, id)
	return err
}

// sqlPurgeCandidates lists posted messages with a body, last updated before cutoff.
func sqlPurgeCandidates(ctx context.Context, q dbtx, cutoff time.Time, limit int) ([]string, error) {
	rows, err := q.QueryContext(ctx, `SELECT id FROM messages WHERE state = 'posted' AND body_purged = 0 AND updated_at < ?
		ORDER BY updated_at LIMIT ?`, toDB(cutoff), limit)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// sqlBodyRef reads, in one query, whether the message's raw bytes were
// purged and whether (and then what) they are stored inline rather than in
// the blob store; sql.ErrNoRows when the message is unknown.
func sqlBodyRef(ctx context.Context, q dbtx, id string) (purged, isInline bool, inline []byte, err error) {
	var p, in int64
	err = q.QueryRowContext(ctx, `SELECT m.body_purged, CASE WHEN b.id IS NULL THEN 0 ELSE 1 END, b.data
		FROM messages m LEFT JOIN bodies b ON b.id = m.id WHERE m.id = ?`, id).Scan(&p, &in, &inline)
	return p != 0, in != 0, inline, err
}

func sqlMarkPurged(ctx context.Context, q dbtx, id string, now time.Time) error {
	if _, err := q.ExecContext(ctx, `DELETE FROM bodies WHERE id = ?`, id); err != nil {
		return err
	}
	if _, err := q.ExecContext(ctx, `UPDATE messages SET body_purged = 1 WHERE id = ? AND state = 'posted'`, id); err != nil {
		return err
	}
	_, err := sqlAddEvent(ctx, q, id, now, "purged", "raw message removed after retention")
	return err
}

// sqlExisting returns the subset of ids that have a messages row.
func sqlExisting(ctx context.Context, q dbtx, ids []string) (map[string]bool, error) {
	out := make(map[string]bool, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	ph := strings.TrimSuffix(strings.Repeat("?,", len(ids)), ",")
	args := make([]any, len(ids))
	for i, id := range ids {
		args[i] = id
	}
	rows, err := q.QueryContext(ctx, `SELECT id FROM messages WHERE id IN (`+ph+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		out[id] = true
	}
	return out, rows.Err()
}

func sqlProbe(ctx context.Context, q dbtx, now time.Time) error {
	_, err := q.ExecContext(ctx, `INSERT INTO spool_probe (k, at) VALUES (1, ?)
		ON CONFLICT (k) DO UPDATE SET at = excluded.at`, toDB(now))
	return err
}

// sqlReviveRunningJobs makes River jobs left "running" by a dead process
// available again. Only the process holding the worker lock may call it.
func sqlReviveRunningJobs(ctx context.Context, q dbtx) (int64, error) {
	res, err := q.ExecContext(ctx, `UPDATE river_job SET state = 'available' WHERE state = 'running'`)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

// sqlJoblessMessages lists queued/retrying messages whose job is missing or finalized.
func sqlJoblessMessages(ctx context.Context, q dbtx) ([]msgRow, error) {
	rows, err := q.QueryContext(ctx, `SELECT `+prefixCols("m.", msgCols)+` FROM messages m
		LEFT JOIN river_job j ON j.id = m.job_id
		WHERE m.state IN ('queued','retrying') AND (j.id IS NULL OR j.state IN ('completed','cancelled','discarded'))`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []msgRow
	for rows.Next() {
		r, err := scanMsg(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, r)
	}
	return out, rows.Err()
}

func prefixCols(prefix, cols string) string {
	parts := strings.Split(cols, ",")
	for i, p := range parts {
		parts[i] = prefix + strings.TrimSpace(p)
	}
	return strings.Join(parts, ", ")
}

// Ledger.

const ledgerCols = `message_id, dest, part, channel_id, post_id, intent_at, done_at`

func scanLedger(sc scanner) (LedgerEntry, error) {
	var (
		e              LedgerEntry
		intent, doneAt sql.NullInt64
	)
	if err := sc.Scan(&e.MessageID, &e.Dest, &e.Part, &e.ChannelID, &e.PostID, &intent, &doneAt); err != nil {
		return e, err
	}
	e.IntentAt = fromNull(intent)
	e.DoneAt = fromNull(doneAt)
	return e, nil
}

func sqlLedgerGet(ctx context.Context, q dbtx, msgID, dest, part string) (LedgerEntry, error) {
	return scanLedger(q.QueryRowContext(ctx, `SELECT `+ledgerCols+` FROM ledger WHERE message_id = ? AND dest = ? AND part = ?`, msgID, dest, part))
}

// ledgerIntentSQL records intents given by rows (message_id, dest, part,
// channel_id, intent_at): the first intent_at is kept, a non-empty channel
// replaces the stored one.
func ledgerIntentSQL(rows string) string {
	return `INSERT INTO ledger (message_id, dest, part, channel_id, intent_at) ` + rows + `
		ON CONFLICT (message_id, dest, part) DO UPDATE SET
			channel_id = CASE WHEN excluded.channel_id <> '' THEN excluded.channel_id ELSE ledger.channel_id END,
			intent_at = coalesce(ledger.intent_at, excluded.intent_at)`
}

var ledgerIntentOneSQL = ledgerIntentSQL(`VALUES (?, ?, ?, ?, ?)`)

func sqlLedgerIntent(ctx context.Context, q dbtx, msgID, dest, part, channelID string, now time.Time) error {
	_, err := q.ExecContext(ctx, ledgerIntentOneSQL, msgID, dest, part, channelID, toDB(now))
	return err
}

// ledgerDoneSQL records posts given by rows (message_id, dest, part,
// post_id, intent_at, done_at): a part's first post id is kept.
func ledgerDoneSQL(rows string) string {
	return `INSERT INTO ledger (message_id, dest, part, post_id, intent_at, done_at) ` + rows + `
		ON CONFLICT (message_id, dest, part) DO UPDATE SET
			post_id = excluded.post_id,
			done_at = coalesce(ledger.done_at, excluded.done_at)
		WHERE ledger.post_id = '' OR ledger.post_id = excluded.post_id`
}

var ledgerDoneOneSQL = ledgerDoneSQL(`VALUES (?, ?, ?, ?, ?, ?)`)

// sqlLedgerDone records the post id unless a different one is already recorded
// (then it reports false).
func sqlLedgerDone(ctx context.Context, q dbtx, msgID, dest, part, postID string, now time.Time) (bool, error) {
	res, err := q.ExecContext(ctx, ledgerDoneOneSQL, msgID, dest, part, postID, toDB(now), toDB(now))
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n > 0, err
}

func sqlLedgerList(ctx context.Context, q dbtx, msgID string) ([]LedgerEntry, error) {
	return queryLedger(ctx, q, `SELECT `+ledgerCols+` FROM ledger WHERE message_id = ?
		ORDER BY coalesce(intent_at, done_at), dest, part`, msgID)
}

// queryLedger runs a query of ledgerCols and scans every row.
func queryLedger(ctx context.Context, q dbtx, query string, args ...any) ([]LedgerEntry, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []LedgerEntry
	for rows.Next() {
		e, err := scanLedger(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, rows.Err()
}

func sqlStateGet(ctx context.Context, q dbtx, key string) (string, bool, error) {
	var v string
	err := q.QueryRowContext(ctx, `SELECT value FROM intake_state WHERE key = ?`, key).Scan(&v)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	return v, err == nil, err
}

func sqlStateSet(ctx context.Context, q dbtx, key, value string, now time.Time) error {
	_, err := q.ExecContext(ctx, `INSERT INTO intake_state (key, value, updated_at) VALUES (?, ?, ?)
		ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at`, key, value, toDB(now))
	return err
}

// sqlClaimDelivery records msgID as the poster of mailKey to dest unless
// another message holds that claim, and returns the holder, in one
// statement (the no-op update makes RETURNING give the existing row).
const claimDeliverySQL = `INSERT INTO claims (mail_key, dest, message_id, at) VALUES (?, ?, ?, ?)
	ON CONFLICT (mail_key, dest) DO UPDATE SET mail_key = excluded.mail_key
	RETURNING message_id`

// claimDeliveryPGSQL claims, records the holder's intent (when it is the
// claimant and a part is given) and reads the claimant's ledger entries
// for the destination as they were before, in one statement: the SELECT
// does not see the INSERTs. Without entries its one row has empty strings and
// NULLs; the holder comes last, after ledgerCols.
var claimDeliveryPGSQL = `WITH c AS (` + claimDeliverySQL + `),
	i AS (` + ledgerIntentSQL(`SELECT c.message_id, CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS TEXT), CAST(? AS BIGINT) FROM c
		WHERE c.message_id = CAST(? AS TEXT) AND CAST(? AS TEXT) <> ''`) + `)
	SELECT coalesce(l.message_id, ''), coalesce(l.dest, ''), coalesce(l.part, ''), coalesce(l.channel_id, ''),
		coalesce(l.post_id, ''), l.intent_at, l.done_at, c.message_id FROM c
	LEFT JOIN ledger l ON l.message_id = CAST(? AS TEXT) AND l.dest = CAST(? AS TEXT)`

// sqlClaimDelivery claims, records first's intent if msgID holds the
// claim, and returns the holder and msgID's ledger entries for dest as
// they were before: on PostgreSQL in one statement, on SQLite in q, the
// transaction that holds the three (see Spool.oneCommit).
func sqlClaimDelivery(ctx context.Context, q dbtx, pg bool, mailKey, dest, msgID string, first Intent, now time.Time) (string, []LedgerEntry, error) {
	if !pg {
		var owner string
		if err := q.QueryRowContext(ctx, claimDeliverySQL, mailKey, dest, msgID, toDB(now)).Scan(&owner); err != nil {
			return "", nil, err
		}
		es, err := queryLedger(ctx, q, `SELECT `+ledgerCols+` FROM ledger WHERE message_id = ? AND dest = ?`, msgID, dest)
		if err != nil {
			return "", nil, err
		}
		if owner == msgID && first.Part != "" {
			if err := sqlLedgerIntent(ctx, q, msgID, dest, first.Part, first.ChannelID, now); err != nil {
				return "", nil, err
			}
		}
		return owner, es, nil
	}
	rows, err := q.QueryContext(ctx, claimDeliveryPGSQL, mailKey, dest, msgID, toDB(now),
		dest, first.Part, first.ChannelID, toDB(now), msgID, first.Part, msgID, dest)
	if err != nil {
		return "", nil, err
	}
	defer rows.Close()
	var (
		owner string
		es    []LedgerEntry
	)
	for rows.Next() {
		e, err := scanLedger(withExtra(rows, &owner))
		if err != nil {
			return "", nil, err
		}
		if e.Part != "" {
			es = append(es, e)
		}
	}
	if err := rows.Err(); err != nil {
		return "", nil, err
	}
	if owner == "" {
		return "", nil, sql.ErrNoRows
	}
	return owner, es, nil
}

// sqlHolderDelivered reports whether holder is posted or has a post in dest.
func sqlHolderDelivered(ctx context.Context, q dbtx, holder, dest string) (State, bool, error) {
	var st string
	var posted int
	err := q.QueryRowContext(ctx, `SELECT state, CASE WHEN EXISTS (SELECT 1 FROM ledger l
		WHERE l.message_id = messages.id AND l.dest = ? AND l.post_id <> '') THEN 1 ELSE 0 END
		FROM messages WHERE id = ?`, dest, holder).Scan(&st, &posted)
	if errors.Is(err, sql.ErrNoRows) {
		return "", false, nil
	}
	return State(st), State(st) == StatePosted || posted == 1, err
}

func sqlPurgeClaims(ctx context.Context, q dbtx, cutoff time.Time) (int64, error) {
	res, err := q.ExecContext(ctx, `DELETE FROM claims WHERE at < ?`, toDB(cutoff))
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
