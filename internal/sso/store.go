package sso

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/mmgate/mmgate/internal/sqldb"
)

// Store keeps the bridge's state in SQL, so that every replica sees the
// same codes, tokens and sessions and a person's numeric id survives
// restarts: SQLite (its own file beside the spool's, so that sign-ins never
// wait behind mail) or the spool's PostgreSQL database (tables sso_*).
//
// Codes and session cookies are stored as SHA-256 hashes, and access
// tokens by an id inside an encrypted token, so a copy of the rows alone
// redeems nothing. The keys (sso_keys: the token encryption key and the ID
// token signing key) are in the database too, so that replicas share them:
// protect the database as you protect the mail in it.
type Store struct {
	db  *sqldb.DB
	now func() time.Time
}

// ErrNotFound is a missing, expired or used row.
var ErrNotFound = errors.New("not found")

// NewStore makes the store on db and creates its tables.
func NewStore(ctx context.Context, db *sqldb.DB) (*Store, error) {
	pg := db.PG
	s := &Store{db: db, now: time.Now}
	// Ids start at a random base chosen when the table is created, so that a
	// store that was lost and created again never hands an old id to
	// someone else: Mattermost signs in whoever has the id (AuthData), and
	// with fresh ids a returning person gets Mattermost's "already attached"
	// refusal instead of another person's account.
	var rb [8]byte
	_, _ = rand.Read(rb[:])
	base := int64(binary.BigEndian.Uint64(rb[:])>>20) + 1_000_000 // < 2^44 + 10^6: exact in JavaScript
	id := "INTEGER PRIMARY KEY AUTOINCREMENT"                     // AUTOINCREMENT: an id is never reused
	if pg {
		id = fmt.Sprintf("BIGINT GENERATED ALWAYS AS IDENTITY (START WITH %d) PRIMARY KEY", base)
	}
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS sso_identities (
			id ` + id + `,
			subject TEXT NOT NULL UNIQUE,
			username TEXT NOT NULL,
			email TEXT NOT NULL,
			name TEXT NOT NULL,
			created_at BIGINT NOT NULL,
			seen_at BIGINT NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS sso_requests (
			id TEXT PRIMARY KEY,
			data TEXT NOT NULL,
			identity BIGINT NOT NULL DEFAULT 0,
			code TEXT UNIQUE,
			code_at BIGINT NOT NULL DEFAULT 0,
			code_used INTEGER NOT NULL DEFAULT 0,
			upstream_state TEXT UNIQUE,
			expires_at BIGINT NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS sso_tokens (
			id TEXT PRIMARY KEY,
			identity BIGINT NOT NULL,
			client_id TEXT NOT NULL,
			request_id TEXT NOT NULL,
			scopes TEXT NOT NULL,
			expires_at BIGINT NOT NULL)`,
		`CREATE INDEX IF NOT EXISTS sso_tokens_request ON sso_tokens (request_id)`,
		`CREATE TABLE IF NOT EXISTS sso_sessions (
			id TEXT PRIMARY KEY,
			identity BIGINT NOT NULL,
			auth_time BIGINT NOT NULL,
			expires_at BIGINT NOT NULL)`,
		`CREATE TABLE IF NOT EXISTS sso_keys (
			name TEXT PRIMARY KEY,
			value TEXT NOT NULL)`,
	}
	if !pg {
		stmts = append(stmts, fmt.Sprintf(`INSERT INTO sqlite_sequence (name, seq) SELECT 'sso_identities', %d
			WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'sso_identities')`, base))
	}
	if err := db.Migrate(ctx, 7262864208, stmts...); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("sso: %w", err)
	}
	return s, nil
}

// Close closes the database.
func (s *Store) Close() error { return s.db.Close() }

func (s *Store) q(query string) string { return s.db.Q(query) }

func (s *Store) exec(ctx context.Context, query string, args ...any) (int64, error) {
	return s.db.Exec(ctx, query, args...)
}

// hash is how codes, tokens and session cookies are stored.
func hash(secret string) string {
	h := sha256.Sum256([]byte(secret))
	return hex.EncodeToString(h[:])
}

// ------------------------------------------------------------ identities

// Identity is a person as the bridge hands them on. ID is the number
// Mattermost stores (AuthData): given once per upstream subject, never
// reused, never changed.
type Identity struct {
	ID       int64
	Subject  string // "ldap:<entryUUID>" or "oidc:<issuer>#<sub>"
	Username string
	Email    string
	Name     string
}

// Upsert records a sign-in: it returns the person's stable id, creating it
// on the first sign-in and refreshing username, email and name on later ones.
func (s *Store) Upsert(ctx context.Context, p Identity) (Identity, error) {
	now := s.now().Unix()
	err := s.db.QueryRowContext(ctx, s.q(`INSERT INTO sso_identities (subject, username, email, name, created_at, seen_at)
		VALUES (?, ?, ?, ?, ?, ?)
		ON CONFLICT (subject) DO UPDATE SET username = excluded.username, email = excluded.email,
			name = excluded.name, seen_at = excluded.seen_at
		RETURNING id`), p.Subject, p.Username, p.Email, p.Name, now, now).Scan(&p.ID)
	if err != nil {
		return Identity{}, fmt.Errorf("sso: recording the identity: %w", err)
	}
	return p, nil
}

// IdentityByID returns the person with id.
func (s *Store) IdentityByID(ctx context.Context, id int64) (Identity, error) {
	p := Identity{ID: id}
	err := s.db.QueryRowContext(ctx, s.q(`SELECT subject, username, email, name FROM sso_identities WHERE id = ?`), id).
		Scan(&p.Subject, &p.Username, &p.Email, &p.Name)
	if errors.Is(err, sql.ErrNoRows) {
		return Identity{}, ErrNotFound
	}
	return p, err
}

// ------------------------------------------------------------ requests

// SaveRequest stores a new authorization request.
func (s *Store) SaveRequest(ctx context.Context, r *AuthRequest, ttl time.Duration) error {
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	_, err = s.exec(ctx, `INSERT INTO sso_requests (id, data, expires_at) VALUES (?, ?, ?)`,
		r.ID, string(data), s.now().Add(ttl).Unix())
	return err
}

func (s *Store) scanRequest(row *sql.Row) (*AuthRequest, error) {
	var data string
	var identity int64
	if err := row.Scan(&data, &identity); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return nil, ErrNotFound
		}
		return nil, err
	}
	r := &AuthRequest{}
	if err := json.Unmarshal([]byte(data), r); err != nil {
		return nil, err
	}
	r.Identity = identity
	return r, nil
}

// Request returns an unexpired authorization request.
func (s *Store) Request(ctx context.Context, id string) (*AuthRequest, error) {
	return s.scanRequest(s.db.QueryRowContext(ctx, s.q(`SELECT data, identity FROM sso_requests
		WHERE id = ? AND expires_at > ? AND code_used = 0`), id, s.now().Unix()))
}

// CompleteRequest records who signed in for request id. A request is
// completed once: a second completion (another person in another tab) fails.
func (s *Store) CompleteRequest(ctx context.Context, id string, identity int64, authTime time.Time, amr []string) error {
	r, err := s.Request(ctx, id)
	if err != nil {
		return err
	}
	r.AuthTime, r.AMR = authTime.UTC(), amr
	data, err := json.Marshal(r)
	if err != nil {
		return err
	}
	n, err := s.exec(ctx, `UPDATE sso_requests SET data = ?, identity = ? WHERE id = ? AND identity = 0`, string(data), identity, id)
	if err != nil {
		return err
	}
	if n == 0 {
		return ErrNotFound
	}
	return nil
}

// SetCode attaches the authorization code, once.
func (s *Store) SetCode(ctx context.Context, id, code string) error {
	n, err := s.exec(ctx, `UPDATE sso_requests SET code = ?, code_at = ? WHERE id = ? AND code IS NULL AND identity <> 0`,
		hash(code), s.now().UnixMilli(), id)
	if err != nil {
		return err
	}
	if n == 0 {
		return errors.New("sso: this sign-in already has a code")
	}
	return nil
}

// ErrCodeReused is a code presented a second time; the tokens the first
// exchange issued have been revoked (RFC 6749 §4.1.2).
var ErrCodeReused = errors.New("authorization code already used")

// RequestByCode returns the request of an unused code younger than ttl. It
// does not use the code up: the provider checks the client first, and
// IssueToken then takes it atomically, so that a caller without the client's
// secret cannot burn a code. A code already used revokes the tokens it gave.
func (s *Store) RequestByCode(ctx context.Context, code string, ttl time.Duration) (*AuthRequest, error) {
	h := hash(code)
	var data string
	var identity, codeAt int64
	var used int
	var id string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT id, data, identity, code_at, code_used FROM sso_requests WHERE code = ?`), h).
		Scan(&id, &data, &identity, &codeAt, &used)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if used == 1 {
		_, _ = s.exec(ctx, `DELETE FROM sso_tokens WHERE request_id = ?`, id)
		return nil, ErrCodeReused
	}
	if codeAt <= s.now().Add(-ttl).UnixMilli() {
		return nil, ErrNotFound
	}
	r := &AuthRequest{}
	if err := json.Unmarshal([]byte(data), r); err != nil {
		return nil, err
	}
	r.Identity = identity
	return r, nil
}

// IssueToken uses up the code of request id and records token t, in one
// transaction: of two exchanges of one code, one gets the token and the
// other ErrCodeReused, which also revokes the token the first got (the
// first's transaction has committed by then: the second's UPDATE waited
// for its row).
func (s *Store) IssueToken(ctx context.Context, id string, t Token) error {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback() }()
	res, err := tx.ExecContext(ctx, s.q(useCode), id)
	if err != nil {
		return err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		_ = tx.Rollback()
		_, _ = s.exec(ctx, `DELETE FROM sso_tokens WHERE request_id = ?`, id)
		return ErrCodeReused
	}
	if _, err := tx.ExecContext(ctx, s.q(`INSERT INTO sso_tokens (id, identity, client_id, request_id, scopes, expires_at) VALUES (?, ?, ?, ?, ?, ?)`),
		t.ID, t.Identity, t.ClientID, id, strings.Join(t.Scopes, " "), t.ExpiresAt.Unix()); err != nil {
		return err
	}
	return tx.Commit()
}

// useCode marks a request's code used, unless it already is.
const useCode = `UPDATE sso_requests SET code_used = 1 WHERE id = ? AND code IS NOT NULL AND code_used = 0`

// UseCode uses up the code of request id without issuing a token (mmgate's
// own pages); ErrCodeReused when it was used already.
func (s *Store) UseCode(ctx context.Context, id string) error {
	n, err := s.exec(ctx, useCode, id)
	if err == nil && n == 0 {
		err = ErrCodeReused
	}
	return err
}

// DeleteRequest forgets a request that has no code yet. One whose code was
// used stays until it expires, so that a replay is recognised.
func (s *Store) DeleteRequest(ctx context.Context, id string) error {
	_, err := s.exec(ctx, `DELETE FROM sso_requests WHERE id = ? AND code IS NULL`, id)
	return err
}

// SetUpstreamState binds the state sent to the upstream provider to request id.
func (s *Store) SetUpstreamState(ctx context.Context, id, state string) error {
	n, err := s.exec(ctx, `UPDATE sso_requests SET upstream_state = ? WHERE id = ? AND identity = 0`, hash(state), id)
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	return err
}

// RequestByUpstreamState finds the request an upstream answer belongs to.
func (s *Store) RequestByUpstreamState(ctx context.Context, state string) (*AuthRequest, error) {
	var id string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT id FROM sso_requests WHERE upstream_state = ?`), hash(state)).Scan(&id)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	return s.Request(ctx, id)
}

// ------------------------------------------------------------ tokens

// Token is an issued access token's record.
type Token struct {
	ID        string
	Identity  int64
	ClientID  string
	Scopes    []string
	ExpiresAt time.Time
}

// Token returns an unexpired token.
func (s *Store) Token(ctx context.Context, id string) (Token, error) {
	t := Token{ID: id}
	var scopes string
	var exp int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT identity, client_id, scopes, expires_at FROM sso_tokens WHERE id = ? AND expires_at > ?`),
		id, s.now().Unix()).Scan(&t.Identity, &t.ClientID, &scopes, &exp)
	if errors.Is(err, sql.ErrNoRows) {
		return Token{}, ErrNotFound
	}
	if err != nil {
		return Token{}, err
	}
	t.Scopes, t.ExpiresAt = strings.Fields(scopes), time.Unix(exp, 0)
	return t, nil
}

// DeleteTokens revokes clientID's token id, or every token of identity for
// clientID when id is "".
func (s *Store) DeleteTokens(ctx context.Context, id string, identity int64, clientID string) error {
	if id != "" {
		_, err := s.exec(ctx, `DELETE FROM sso_tokens WHERE id = ? AND client_id = ?`, id, clientID)
		return err
	}
	_, err := s.exec(ctx, `DELETE FROM sso_tokens WHERE identity = ? AND client_id = ?`, identity, clientID)
	return err
}

// ------------------------------------------------------------ sessions

// SaveSession records mmgate's own sign-in cookie.
func (s *Store) SaveSession(ctx context.Context, cookie string, identity int64, authTime time.Time, ttl time.Duration) error {
	_, err := s.exec(ctx, `INSERT INTO sso_sessions (id, identity, auth_time, expires_at) VALUES (?, ?, ?, ?)`,
		hash(cookie), identity, authTime.Unix(), s.now().Add(ttl).Unix())
	return err
}

// Session returns the identity and sign-in time of an unexpired session.
func (s *Store) Session(ctx context.Context, cookie string) (int64, time.Time, error) {
	var id, at int64
	err := s.db.QueryRowContext(ctx, s.q(`SELECT identity, auth_time FROM sso_sessions WHERE id = ? AND expires_at > ?`),
		hash(cookie), s.now().Unix()).Scan(&id, &at)
	if errors.Is(err, sql.ErrNoRows) {
		return 0, time.Time{}, ErrNotFound
	}
	return id, time.Unix(at, 0), err
}

// DeleteSession ends a session.
func (s *Store) DeleteSession(ctx context.Context, cookie string) error {
	_, err := s.exec(ctx, `DELETE FROM sso_sessions WHERE id = ?`, hash(cookie))
	return err
}

// ------------------------------------------------------------ keys

// Key returns the named key, creating it with gen the first time. Replicas
// racing to create it all end up with the one that was stored first.
func (s *Store) Key(ctx context.Context, name string, gen func() (string, error)) (string, error) {
	var v string
	err := s.db.QueryRowContext(ctx, s.q(`SELECT value FROM sso_keys WHERE name = ?`), name).Scan(&v)
	if err == nil {
		return v, nil
	}
	if !errors.Is(err, sql.ErrNoRows) {
		return "", err
	}
	nv, err := gen()
	if err != nil {
		return "", err
	}
	if _, err := s.exec(ctx, `INSERT INTO sso_keys (name, value) VALUES (?, ?) ON CONFLICT (name) DO NOTHING`, name, nv); err != nil {
		return "", err
	}
	err = s.db.QueryRowContext(ctx, s.q(`SELECT value FROM sso_keys WHERE name = ?`), name).Scan(&v)
	return v, err
}

// Purge deletes expired requests, tokens and sessions.
func (s *Store) Purge(ctx context.Context) error {
	now := s.now().Unix()
	for _, t := range []string{"sso_requests", "sso_tokens", "sso_sessions"} {
		if _, err := s.exec(ctx, `DELETE FROM `+t+` WHERE expires_at <= ?`, now); err != nil {
			return err
		}
	}
	return nil
}
