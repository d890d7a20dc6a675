package sso

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/spool/spooltest"
	"github.com/mmgate/mmgate/internal/sqldb"
)

// storeSuite runs on SQLite and on a real PostgreSQL.
func storeSuite(t *testing.T, open func(t *testing.T) *Store) {
	ctx := context.Background()
	t.Run("ids are stable, never reused and start high", func(t *testing.T) {
		st := open(t)
		a, err := st.Upsert(ctx, Identity{Subject: "ldap:a", Username: "ann", Email: "ann@x", Name: "Ann"})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := st.Upsert(ctx, Identity{Subject: "ldap:b", Username: "bob", Email: "bob@x"})
		a2, _ := st.Upsert(ctx, Identity{Subject: "ldap:a", Username: "ann.lee", Email: "ann.lee@x", Name: "Ann Lee"})
		if a.ID < 1_000_000 || b.ID == a.ID || a2.ID != a.ID {
			t.Fatalf("ids: ann %d, bob %d, ann renamed %d", a.ID, b.ID, a2.ID)
		}
		got, err := st.IdentityByID(ctx, a.ID)
		if err != nil || got.Username != "ann.lee" || got.Email != "ann.lee@x" {
			t.Errorf("after the rename: %+v %v", got, err)
		}
		other := open(t)
		c, _ := other.Upsert(ctx, Identity{Subject: "ldap:a", Username: "ann", Email: "ann@x"})
		if c.ID == a.ID {
			t.Errorf("a new store gave the old id %d again: a lost store would hand out other people's ids", c.ID)
		}
	})
	t.Run("a code is exchanged once, even by racing exchanges", func(t *testing.T) {
		st := open(t)
		r := &AuthRequest{ID: newID(), ClientID: "c", RedirectURI: "http://x/cb"}
		if err := st.SaveRequest(ctx, r, time.Minute); err != nil {
			t.Fatal(err)
		}
		if err := st.SetCode(ctx, r.ID, "code-1"); err == nil {
			t.Error("a code before anyone signed in")
		}
		if err := st.CompleteRequest(ctx, r.ID, 42, time.Now(), []string{"pwd"}); err != nil {
			t.Fatal(err)
		}
		if err := st.CompleteRequest(ctx, r.ID, 43, time.Now(), []string{"pwd"}); err == nil {
			t.Error("a request completed twice")
		}
		if err := st.SetCode(ctx, r.ID, "code-1"); err != nil {
			t.Fatal(err)
		}
		if err := st.SetCode(ctx, r.ID, "code-2"); err == nil {
			t.Error("a second code for one sign-in")
		}
		if got, err := st.RequestByCode(ctx, "code-1", time.Minute); err != nil || got.Identity != 42 {
			t.Fatalf("request by code: %+v %v", got, err)
		}
		if _, err := st.RequestByCode(ctx, "code-1", time.Minute); err != nil {
			t.Errorf("reading a code does not use it up: %v", err)
		}
		var wg sync.WaitGroup
		var mu sync.Mutex
		wins := 0
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := st.IssueToken(ctx, r.ID, Token{ID: newID(), Identity: 42, ClientID: "c", ExpiresAt: time.Now().Add(time.Hour)}); err == nil {
					mu.Lock()
					wins++
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		if wins != 1 {
			t.Errorf("%d of 8 racing exchanges used the code, want 1", wins)
		}
		// The losers revoked the winner's token (a replay means the code leaked).
		var n int
		_ = st.db.QueryRowContext(ctx, st.q(`SELECT COUNT(*) FROM sso_tokens WHERE request_id = ?`), r.ID).Scan(&n)
		if n != 0 {
			t.Errorf("%d tokens survive racing exchanges of one code, want 0 (revoked)", n)
		}
		if _, err := st.exec(ctx, `INSERT INTO sso_tokens (id, identity, client_id, request_id, scopes, expires_at) VALUES (?, ?, ?, ?, ?, ?)`,
			"tok", 42, "c", r.ID, "", time.Now().Add(time.Hour).Unix()); err != nil {
			t.Fatal(err)
		}
		if _, err := st.RequestByCode(ctx, "code-1", time.Minute); !errors.Is(err, ErrCodeReused) {
			t.Errorf("replay: %v, want ErrCodeReused", err)
		}
		if _, err := st.Token(ctx, "tok"); !errors.Is(err, ErrNotFound) {
			t.Errorf("the token of a replayed code: %v, want revoked", err)
		}
		st.now = func() time.Time { return time.Now().Add(2 * time.Minute) }
		defer func() { st.now = time.Now }()
		r2 := &AuthRequest{ID: newID()}
		_ = st.SaveRequest(ctx, r2, time.Hour)
		_ = st.CompleteRequest(ctx, r2.ID, 42, time.Now(), nil)
		_ = st.SetCode(ctx, r2.ID, "code-2")
		st.now = func() time.Time { return time.Now().Add(4 * time.Minute) }
		if _, err := st.RequestByCode(ctx, "code-2", time.Minute); !errors.Is(err, ErrNotFound) {
			t.Errorf("expired code: %v, want ErrNotFound", err)
		}
	})
	t.Run("keys are shared: the first one stored wins", func(t *testing.T) {
		st := open(t)
		k1, err := st.Key(ctx, "k", func() (string, error) { return "one", nil })
		if err != nil {
			t.Fatal(err)
		}
		k2, _ := st.Key(ctx, "k", func() (string, error) { return "two", nil })
		if k1 != "one" || k2 != "one" {
			t.Errorf("keys: %q then %q", k1, k2)
		}
	})
	t.Run("sessions expire and end", func(t *testing.T) {
		st := open(t)
		if err := st.SaveSession(ctx, "cookie", 7, time.Now(), time.Hour); err != nil {
			t.Fatal(err)
		}
		if id, _, err := st.Session(ctx, "cookie"); err != nil || id != 7 {
			t.Fatalf("session: %d %v", id, err)
		}
		st.now = func() time.Time { return time.Now().Add(2 * time.Hour) }
		if _, _, err := st.Session(ctx, "cookie"); !errors.Is(err, ErrNotFound) {
			t.Errorf("expired session: %v", err)
		}
		st.now = time.Now
		_ = st.DeleteSession(ctx, "cookie")
		if _, _, err := st.Session(ctx, "cookie"); !errors.Is(err, ErrNotFound) {
			t.Errorf("ended session: %v", err)
		}
	})
}

func TestStoreSQLite(t *testing.T) {
	storeSuite(t, func(t *testing.T) *Store {
		st, err := openSQLite(t)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	})
}

func TestStorePostgres(t *testing.T) {
	admin := spooltest.PostgresServer(t)
	storeSuite(t, func(t *testing.T) *Store {
		db, err := sqldb.OpenPostgres(spooltest.NewDatabase(t, admin))
		if err != nil {
			t.Fatal(err)
		}
		st, err := NewStore(context.Background(), db)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Close() })
		return st
	})
}

func openSQLite(t testing.TB) (*Store, error) {
	db, err := sqldb.OpenSQLite(filepath.Join(t.TempDir(), "sso.db"))
	if err != nil {
		return nil, err
	}
	return NewStore(context.Background(), db)
}
