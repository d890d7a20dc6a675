package spool

import (
	"context"
	"log/slog"
	"time"
)

// State is a message's delivery state.
type State string

// Message states; see the package documentation for the transitions.
const (
	StateQueued      State = "queued"
	StateRetrying    State = "retrying"
	StatePosted      State = "posted"
	StateQuarantined State = "quarantined"
)

// AllStates lists every state, in lifecycle order.
var AllStates = []State{StateQueued, StateRetrying, StatePosted, StateQuarantined}

// Envelope is what the intake learned about a message besides its bytes.
type Envelope struct {
	Intake       string   `json:"intake"`                  // "smtp", "pipe", "postback", "imap"
	Sender       string   `json:"sender"`                  // envelope MAIL FROM ("" = null sender)
	Recipients   []string `json:"recipients"`              // envelope RCPT TO
	AuthIdentity string   `json:"auth_identity,omitempty"` // SMTP AUTH user, "" if none
	App          string   `json:"app,omitempty"`           // app fixed at intake (AUTH identity), "" if not known
	RemoteAddr   string   `json:"remote_addr,omitempty"`
	Helo         string   `json:"helo,omitempty"`
	// Mailbox names the postback or IMAP mailbox the message came from.
	Mailbox string `json:"mailbox,omitempty"`
	// NoEnvelope says the intake had no SMTP envelope (postback, IMAP, a pipe
	// run without --sender): Sender is unknown rather than null, and the relay
	// takes the sender from Return-Path and, when Recipients is empty, the
	// recipients from the header.
	NoEnvelope bool `json:"no_envelope,omitempty"`
}

// Message is a spooled message's metadata.
type Message struct {
	ID         string // spool id: short, URL-safe, time-sortable, unique across replicas (random part)
	Envelope   Envelope
	ReceivedAt time.Time
	Size       int64 // raw size in bytes
	State      State
	App        string    // app decided by the relay (or Envelope.App)
	Subject    string    // set by the relay after parsing (Outcome.Info)
	MessageID  string    // RFC 5322 Message-ID, set by the relay
	Attempt    int       // delivery attempts so far
	NextTry    time.Time // for retrying
	LastError  string    // last delivery error (retrying)
	Reason     string    // quarantine reason
	UpdatedAt  time.Time
	BodyPurged bool // raw mail removed after retention

	// body is where the raw mail is, as the delivery's claim read it (only
	// on the Message a Handler is given): Spool.Body then needs no query.
	body *bodyRef
}

// bodyRef is a message's raw mail: the bytes when stored inline, else in the
// blob store.
type bodyRef struct {
	inline bool
	data   []byte
}

// Event is one line of a message's history.
type Event struct {
	At     time.Time
	Kind   string // "received","attempt","decision","posted","retry","quarantined","released","retry-now","purged","deleted", or free kinds the relay adds
	Detail string
}

// OutcomeKind is what a Handler decided for one delivery attempt.
type OutcomeKind int

// Outcome kinds.
const (
	OutcomePosted     OutcomeKind = iota + 1 // every destination has its posts
	OutcomeRetry                             // temporary failure; try again later
	OutcomeQuarantine                        // needs an operator; Reason says why
)

func (k OutcomeKind) String() string {
	switch k {
	case OutcomePosted:
		return "posted"
	case OutcomeRetry:
		return "retry"
	case OutcomeQuarantine:
		return "quarantine"
	}
	return "invalid"
}

// Outcome is what a Handler decided for one delivery attempt.
type Outcome struct {
	Kind       OutcomeKind
	Reason     string        // quarantine reason or retry error (human readable)
	RetryAfter time.Duration // minimum delay requested by the peer (Retry-After); 0 = spool's backoff
	// Code is a stable snake_case reason code for metrics ("unknown_source",
	// "no_recipient", ...); "" counts as "handler".
	Code string
	// Events are history lines of the attempt (decisions, recipients,
	// posts), written with the outcome in one transaction.
	Events []Event
	// Posts are posts the attempt made that the ledger does not have yet
	// (the relay records each post before its next delivery claim or
	// intent, and hands the last ones over here): they are recorded as LedgerDone
	// would, with the outcome, even when the outcome no longer applies
	// (unless the message is gone).
	Posts []Post
	// Info is what the handler learned of the message (app, subject,
	// Message-ID), recorded with the outcome; nil leaves them as they are.
	Info *Info
}

// Post is one post a delivery made: the ledger's (destination, part) and the
// post's id.
type Post struct {
	Dest, Part, PostID string
}

// Info describes a message once it is parsed; empty fields are left unchanged.
type Info struct {
	App, Subject, MessageID string
}

// CodeDuplicate is the Code of an OutcomePosted that posted nothing: the
// same mail had reached every destination through another message.
const CodeDuplicate = "duplicate"

// Handler processes one message (the relay implements it). ctx carries the job timeout.
type Handler interface {
	Handle(ctx context.Context, msg Message) Outcome
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, msg Message) Outcome

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, msg Message) Outcome { return f(ctx, msg) }

// Options configure a Spool. Zero values mean the documented defaults.
type Options struct {
	Path    string // SQLite database file (created with parents if missing)
	BlobDir string // directory for raw messages (created if missing)
	// PostgresDSN selects PostgreSQL instead of SQLite (Path is then unused):
	// several replicas may share it, each message delivered by one of them.
	PostgresDSN string
	// S3 keeps raw messages in an S3-compatible bucket instead of BlobDir.
	S3 *S3Options
	// InstanceID names this replica (River's client id, heartbeats); default
	// host name, process id and a random suffix.
	InstanceID   string
	Logger       *slog.Logger
	Handler      Handler       // nil: this process only stores and administers (CLI, intake-only)
	Workers      int           // concurrent deliveries (default 4)
	PollInterval time.Duration // how often workers look for due jobs (default 50ms)
	JobTimeout   time.Duration // default 10m
	RetryMin     time.Duration // backoff start (default 5s)
	RetryMax     time.Duration // backoff cap (default 5m)
	MaxRetryAge  time.Duration // after this since the cycle start a retrying message is quarantined "gave up after ...: <last error>" (default 72h)
	Retention    time.Duration // posted messages' raw mail purged after this (default 168h); 0 = default, negative = keep forever
	BodyLimit    int64         // Accept fails with fault.TooLarge when the body exceeds it (0 = no limit)
}

// Defaults.
const (
	DefaultWorkers      = 4
	DefaultPollInterval = 50 * time.Millisecond
	DefaultJobTimeout   = 10 * time.Minute
	DefaultRetryMin     = 5 * time.Second
	DefaultRetryMax     = 5 * time.Minute
	DefaultMaxRetryAge  = 72 * time.Hour
	DefaultRetention    = 168 * time.Hour
)

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Workers <= 0 {
		o.Workers = DefaultWorkers
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	if o.JobTimeout <= 0 {
		o.JobTimeout = DefaultJobTimeout
	}
	if o.RetryMin <= 0 {
		o.RetryMin = DefaultRetryMin
	}
	if o.RetryMax <= 0 {
		o.RetryMax = DefaultRetryMax
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = o.RetryMin
	}
	if o.MaxRetryAge <= 0 {
		o.MaxRetryAge = DefaultMaxRetryAge
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.InstanceID == "" {
		o.InstanceID = defaultInstanceID()
	}
	return o
}

// ListFilter selects messages for List.
type ListFilter struct {
	States []State // empty: all states
	App    string  // "": all apps
	Limit  int     // 0 = 100; capped at 1000
	Before string  // id cursor, optional: only messages older than this id
}

// LedgerEntry records one post of one message part to one destination.
type LedgerEntry struct {
	MessageID, Dest, Part, ChannelID, PostID string
	IntentAt, DoneAt                         time.Time
}
