// Package account owns what people set for their own Mattermost account in
// mmgate, through the /mmgate command:
//
//   - A link from a directory identity to a Mattermost account whose email
//     differs (`/mmgate link`). The person proves the Mattermost side by
//     typing the command (Mattermost tells mmgate who typed it) and the
//     directory side by signing in at mmgate's sign-in bridge, with a
//     one-time code that ties the two together. From then on, mail the
//     directory resolves to that identity reaches the linked account.
//   - Subscriptions to apps that allow opting in (`/mmgate subscribe APP`):
//     every message of the app is also sent to each subscriber as a direct
//     message, as long as the app's allow and deny groups let them receive it.
//
// The relay reads both through Store.LinkedUser and Store.Subscribers, from
// a snapshot refreshed every few seconds, so delivery costs no query.
package account

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mmgate/mmgate/internal/sqldb"
)

// ErrNotFound is an unknown, expired or used code.
var ErrNotFound = errors.New("no such code: it expired or was already used")

// Link sends mail for a directory identity to a Mattermost account.
type Link struct {
	Email    string // the identity's email, lowercased (the key)
	Subject  string // the sign-in bridge's subject ("ldap:<uuid>", "oidc:…")
	UserID   string // the Mattermost account
	Username string // its username when linked, for messages
	Created  time.Time
}

// Linked is what LinkWithCode recorded, and the link it replaced.
type Linked struct {
	Link
	// Previous is the account the email was linked to before (nil: none,
	// or the same account).
	Previous *Link
}

// Subscriber is a Mattermost account subscribed to an app.
type Subscriber struct {
	App      string
	UserID   string
	Username string // when subscribed, for listings
	// Email is the directory address the subscriber proved with /mmgate
	// link when subscribing ("" : none); the relay checks the app's groups
	// against the account's link at delivery, else against this.
	Email   string
	Created time.Time
}

// Pending is a link that waits for its owner to sign in.
type Pending struct {
	UserID, Username string
}

// Store keeps links, their one-time codes and subscriptions (SQLite beside
// the spool, or the spool's PostgreSQL).
type Store struct {
	db *sqldb.DB
	// Fresh is how long a snapshot serves the relay (default 10 s): a change
	// made on another replica is seen within it, one made here at once.
	Fresh time.Duration
	now   func() time.Time

	mu      sync.Mutex
	snap    *snapshot
	gen     uint64     // bumped by each change made here
	refresh sync.Mutex // one reading of the tables at a time, outside mu
}

type snapshot struct {
	at     time.Time
	links  map[string]Link         // email → link
	byUser map[string]Link         // user id → its first link (by email)
	subs   map[string][]Subscriber // app → subscribers
}

// Open creates the tables.
func Open(ctx context.Context, db *sqldb.DB) (*Store, error) {
	err := db.Migrate(ctx, 7262864211,
		`CREATE TABLE IF NOT EXISTS account_links (
			email TEXT PRIMARY KEY,
			subject TEXT NOT NULL,
			user_id TEXT NOT NULL,
			username TEXT NOT NULL,
			created_at BIGINT NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS account_links_user ON account_links (user_id)`,
		`CREATE TABLE IF NOT EXISTS account_link_codes (
			code TEXT PRIMARY KEY,
			user_id TEXT NOT NULL,
			username TEXT NOT NULL,
			expires_at BIGINT NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS account_subscriptions (
			app TEXT NOT NULL,
			user_id TEXT NOT NULL,
			username TEXT NOT NULL,
			email TEXT NOT NULL,
			created_at BIGINT NOT NULL,
			PRIMARY KEY (app, user_id))`)
	if err != nil {
		return nil, fmt.Errorf("accounts: %w", err)
	}
	return &Store{db: db, Fresh: 10 * time.Second, now: time.Now}, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

// changed drops the snapshot after a change made here.
func (s *Store) changed() {
	s.mu.Lock()
	s.snap = nil
	s.gen++
	s.mu.Unlock()
}

// fresh returns the snapshot if it is younger than Fresh, and the
// generation it is of.
func (s *Store) fresh() (*snapshot, uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.snap != nil && s.now().Sub(s.snap.at) < s.Fresh {
		return s.snap, s.gen
	}
	return nil, s.gen
}

func hashCode(code string) string {
	h := sha256.Sum256([]byte(code))
	return hex.EncodeToString(h[:])
}

// NewCode returns a one-time code for the Mattermost account userID, valid
// for ttl. Only its hash is stored.
func (s *Store) NewCode(ctx context.Context, userID, username string, ttl time.Duration) (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	code := base64.RawURLEncoding.EncodeToString(b)
	now := s.now()
	if _, err := s.db.Exec(ctx, `DELETE FROM account_link_codes WHERE expires_at <= ?`, now.Unix()); err != nil {
		return "", err
	}
	if _, err := s.db.Exec(ctx, `INSERT INTO account_link_codes (code, user_id, username, expires_at) VALUES (?, ?, ?, ?)`,
		hashCode(code), userID, username, now.Add(ttl).Unix()); err != nil {
		return "", err
	}
	return code, nil
}

// PeekCode returns whom an unused, unexpired code is for, without using it.
func (s *Store) PeekCode(ctx context.Context, code string) (Pending, error) {
	var p Pending
	err := s.db.QueryRowContext(ctx, s.db.Q(`SELECT user_id, username FROM account_link_codes WHERE code = ? AND expires_at > ?`),
		hashCode(code), s.now().Unix()).Scan(&p.UserID, &p.Username)
	if errors.Is(err, sql.ErrNoRows) {
		return p, ErrNotFound
	}
	return p, err
}

// LinkWithCode uses code up and records l for the account the code was
// made for, in one transaction: of two uses of a code, one links and the
// other gets ErrNotFound. A link of the same email to another account is
// replaced (the person who proved the identity moves their mail); Previous
// is then the account it went to.
func (s *Store) LinkWithCode(ctx context.Context, code string, link Link) (Linked, error) {
	l := Linked{Link: link}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return l, err
	}
	defer func() { _ = tx.Rollback() }()
	now := s.now()
	err = tx.QueryRowContext(ctx, s.db.Q(`DELETE FROM account_link_codes WHERE code = ? AND expires_at > ? RETURNING user_id, username`),
		hashCode(code), now.Unix()).Scan(&l.UserID, &l.Username)
	if errors.Is(err, sql.ErrNoRows) {
		return l, ErrNotFound
	}
	if err != nil {
		return l, err
	}
	l.Email = strings.ToLower(strings.TrimSpace(l.Email))
	l.Created = now
	var prevID, prevName string
	err = tx.QueryRowContext(ctx, s.db.Q(`SELECT user_id, username FROM account_links WHERE email = ?`), l.Email).Scan(&prevID, &prevName)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return l, err
	}
	if prevID != "" && prevID != l.UserID {
		l.Previous = &Link{Email: l.Email, UserID: prevID, Username: prevName}
	}
	if _, err := tx.ExecContext(ctx, s.db.Q(`INSERT INTO account_links (email, subject, user_id, username, created_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (email) DO UPDATE SET subject = excluded.subject, user_id = excluded.user_id,
			username = excluded.username, created_at = excluded.created_at`),
		l.Email, l.Subject, l.UserID, l.Username, now.Unix()); err != nil {
		return l, err
	}
	if err := tx.Commit(); err != nil {
		return l, err
	}
	s.changed()
	return l, nil
}

// Unlink removes the links to the Mattermost account userID and returns them.
func (s *Store) Unlink(ctx context.Context, userID string) ([]Link, error) {
	links, err := s.LinksOf(ctx, userID)
	if err != nil || len(links) == 0 {
		return nil, err
	}
	if _, err := s.db.Exec(ctx, `DELETE FROM account_links WHERE user_id = ?`, userID); err != nil {
		return nil, err
	}
	s.changed()
	return links, nil
}

// RemoveLink removes the link of an email (operators); false if none.
func (s *Store) RemoveLink(ctx context.Context, email string) (bool, error) {
	n, err := s.db.Exec(ctx, `DELETE FROM account_links WHERE email = ?`, strings.ToLower(strings.TrimSpace(email)))
	if n > 0 {
		s.changed()
	}
	return n > 0, err
}

func (s *Store) links(ctx context.Context, where string, args ...any) ([]Link, error) {
	rows, err := s.db.QueryContext(ctx, s.db.Q(`SELECT email, subject, user_id, username, created_at FROM account_links `+where+` ORDER BY email`), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Link
	for rows.Next() {
		var l Link
		var at int64
		if err := rows.Scan(&l.Email, &l.Subject, &l.UserID, &l.Username, &at); err != nil {
			return nil, err
		}
		l.Created = time.Unix(at, 0)
		out = append(out, l)
	}
	return out, rows.Err()
}

// LinksOf lists the links to the Mattermost account userID.
func (s *Store) LinksOf(ctx context.Context, userID string) ([]Link, error) {
	return s.links(ctx, `WHERE user_id = ?`, userID)
}

// Links lists every link.
func (s *Store) Links(ctx context.Context) ([]Link, error) { return s.links(ctx, "") }

// Subscribe records that userID receives app's messages; false if it
// already did.
func (s *Store) Subscribe(ctx context.Context, sub Subscriber) (bool, error) {
	n, err := s.db.Exec(ctx, `INSERT INTO account_subscriptions (app, user_id, username, email, created_at) VALUES (?, ?, ?, ?, ?)
		ON CONFLICT (app, user_id) DO NOTHING`, sub.App, sub.UserID, sub.Username, strings.ToLower(sub.Email), s.now().Unix())
	if n > 0 {
		s.changed()
	}
	return n > 0, err
}

// Unsubscribe ends a subscription; false if there was none.
func (s *Store) Unsubscribe(ctx context.Context, app, userID string) (bool, error) {
	n, err := s.db.Exec(ctx, `DELETE FROM account_subscriptions WHERE app = ? AND user_id = ?`, app, userID)
	if n > 0 {
		s.changed()
	}
	return n > 0, err
}

func (s *Store) subscriptions(ctx context.Context, where string, args ...any) ([]Subscriber, error) {
	rows, err := s.db.QueryContext(ctx, s.db.Q(`SELECT app, user_id, username, email, created_at FROM account_subscriptions `+where+` ORDER BY app, created_at, user_id`), args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []Subscriber
	for rows.Next() {
		var sub Subscriber
		var at int64
		if err := rows.Scan(&sub.App, &sub.UserID, &sub.Username, &sub.Email, &at); err != nil {
			return nil, err
		}
		sub.Created = time.Unix(at, 0)
		out = append(out, sub)
	}
	return out, rows.Err()
}

// SubscriptionsOf lists the apps userID subscribed to.
func (s *Store) SubscriptionsOf(ctx context.Context, userID string) ([]Subscriber, error) {
	return s.subscriptions(ctx, `WHERE user_id = ?`, userID)
}

// Subscriptions lists every subscription.
func (s *Store) Subscriptions(ctx context.Context) ([]Subscriber, error) {
	return s.subscriptions(ctx, "")
}

// current returns a snapshot no older than Fresh. The tables are read
// without holding mu, so a slow database delays only those waiting for the
// new snapshot, never a change.
func (s *Store) current(ctx context.Context) (*snapshot, error) {
	if sn, _ := s.fresh(); sn != nil {
		return sn, nil
	}
	s.refresh.Lock()
	defer s.refresh.Unlock()
	sn, gen := s.fresh()
	if sn != nil {
		return sn, nil // another caller read them meanwhile
	}
	links, err := s.Links(ctx)
	if err != nil {
		return nil, err
	}
	subs, err := s.Subscriptions(ctx)
	if err != nil {
		return nil, err
	}
	sn = &snapshot{at: s.now(), links: map[string]Link{}, byUser: map[string]Link{}, subs: map[string][]Subscriber{}}
	for _, l := range links {
		sn.links[l.Email] = l
		if _, ok := sn.byUser[l.UserID]; !ok {
			sn.byUser[l.UserID] = l
		}
	}
	for _, sub := range subs {
		sn.subs[sub.App] = append(sn.subs[sub.App], sub)
	}
	for _, v := range sn.subs {
		sort.Slice(v, func(i, j int) bool { return v[i].UserID < v[j].UserID })
	}
	s.mu.Lock()
	if s.gen == gen {
		s.snap = sn // else a change came meanwhile: the next call reads again
	}
	s.mu.Unlock()
	return sn, nil
}

// LinkedUser returns the Mattermost account linked to email, if any.
func (s *Store) LinkedUser(ctx context.Context, email string) (Link, bool, error) {
	sn, err := s.current(ctx)
	if err != nil {
		return Link{}, false, fmt.Errorf("reading account links: %w", err)
	}
	l, ok := sn.links[strings.ToLower(strings.TrimSpace(email))]
	return l, ok, nil
}

// LinkOf returns the link the Mattermost account userID holds (the first
// by email, when it holds several), if any.
func (s *Store) LinkOf(ctx context.Context, userID string) (Link, bool, error) {
	sn, err := s.current(ctx)
	if err != nil {
		return Link{}, false, fmt.Errorf("reading account links: %w", err)
	}
	l, ok := sn.byUser[userID]
	return l, ok, nil
}

// Subscribers returns app's subscribers, ordered by user id.
func (s *Store) Subscribers(ctx context.Context, app string) ([]Subscriber, error) {
	sn, err := s.current(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading subscriptions: %w", err)
	}
	return sn.subs[app], nil
}
