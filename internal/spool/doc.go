// Package spool owns mmgate's durable message store and delivery scheduling:
// the raw bytes of every accepted message (a blob store), its metadata and
// history (SQLite tables), the exactly-once ledger of Mattermost posts, and the
// River jobs that hand each message to the relay's Handler.
//
// The spool never parses, routes or posts a message and never talks to the
// network: it only stores, schedules and records what the Handler decided. It
// must never acknowledge a message that is not durable, never lose an
// acknowledged message, and never leave one stuck without a way forward.
//
// # Durability protocol
//
// Accept reads the body through a fixed 64 KiB buffer. A body that fits is
// stored inline (table bodies) in the commit's transaction. A larger one is
// streamed, through a fixed buffer, into BlobDir/tmp/<id>.tmp and renamed to
// BlobDir/<shard>/<id>.eml (shard: two hex digits of a hash of the id). The
// request then goes to a single committer goroutine that batches whatever
// Accepts queued up meanwhile (up to 256): it fsyncs the batch's blob files
// and their shard directories (concurrently, while it inserts the rows), then
// inserts every River job, message row, inline body and "received" event in
// ONE SQLite transaction (journal_mode=WAL, synchronous=FULL) and commits,
// and answers every caller. Only then does Accept return the id, so that the
// intake may say 250. If anything fails, every caller of the batch gets a
// fault.Temporary error ("spool_unavailable") and its blob file is removed.
//
// Why inline bodies: on small VMs one fsync per file costs about a
// millisecond of kernel time and stalls concurrent file creation, which caps
// file-per-message intake far below 2,000 messages/s; inline bodies share the
// batch's single WAL fsync. Blob files need their own fsync, but it happens
// in the committer, concurrently for the whole batch.
//
// A blob file without a row (crash between rename and commit) is an orphan:
// the sender got no 250 and will retry; orphans older than an hour are
// removed by the sweep that runs shortly after Start. Temp files older than an
// hour are removed at Open (younger ones may belong to another process, e.g. a
// pipe intake, still writing).
//
// # States and transitions
//
//	Accept ──► queued ──► (job runs: attempt+1, "attempt" event, Handler.Handle)
//	               │
//	               ├─ OutcomePosted ─────► posted ──(Retention)──► posted, body purged
//	               ├─ OutcomeQuarantine ─► quarantined
//	               └─ OutcomeRetry ──────► retrying ──(NextTry)──► job runs again …
//	                                          │
//	                                          └─ older than MaxRetryAge ─► quarantined ("gave up after …")
//
//	quarantined ──Release──► queued (new job, new retry cycle)
//	quarantined ──Delete───► gone (row, events, ledger and blob removed)
//	queued/retrying ──Retry──► due now (same state)
//
// posted is final. MaxRetryAge counts from the start of the current delivery
// cycle: ReceivedAt, or the last Release.
//
// # Jobs
//
// Every queued or retrying message has exactly one live River job, whose id is
// stored in messages.job_id. A job whose id is not the message's current job
// (stale after a Release) or whose message is no longer queued/retrying
// completes without calling the Handler. The spool commits an attempt twice:
// its claim (attempt count and "attempt" event) and its outcome (state, the
// attempt's history and the ledger entries of its last posts), each one
// statement on PostgreSQL; in between, the Handler commits its delivery
// claims, ledger intents and earlier posts. After a posted or
// quarantined outcome the job completes when Work returns (River batches
// those); if that is lost, the job runs again as a stale one. A retry
// snoozes the job (river.JobSnooze does not consume River attempts, and jobs
// are inserted with a practically unlimited MaxAttempts, so a message never
// runs out of them).
// An operator's Retry makes the job available now, or, if the job is running,
// gives the message a new job (the old one then completes as stale).
//
// A crash at any point may make the Handler run again for the same message (the
// relay's ledger makes that harmless) but never loses it: at Open, the single
// worker process (the one with a Handler, guarded by an flock on <Path>.lock)
// makes River jobs left "running" available again, and gives every queued/retrying message whose job
// is missing or finalized a new job. River's stuck-job rescuer covers handlers
// that hang past JobTimeout.
//
// Other processes (the CLI, a pipe intake) may open the same files without a
// Handler: they store and administer, and the worker process picks up their
// jobs by polling.
//
// # Databases and blob stores
//
// SQLite (one file, one worker process) is the embedded default; PostgreSQL
// (Options.PostgresDSN) lets several replicas share the work. All SQL lives
// in sql.go, written once with "?" placeholders against the dbtx interface
// of db.go (database/sql for SQLite, pgx for PostgreSQL); River runs in the
// same transactions through queue.go (riversqlite or riverpgxv5). On
// PostgreSQL there is no worker lock: replicas heartbeat (replica.go) and the
// running jobs of a silent one are made available to the others. Raw bytes
// above 64 KiB live behind the small blobStore interface: a directory
// (blob.go) or an S3-compatible bucket (blob_s3.go). spooltest.Run is the
// conformance suite every combination passes.
package spool
