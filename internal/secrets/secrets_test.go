package secrets

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/mmgate/mmgate/internal/spool/spooltest"
	"github.com/mmgate/mmgate/internal/sqldb"
)

func suite(t *testing.T, st *Store) {
	ctx := context.Background()
	if _, err := st.Get(ctx, "bot_token/jira"); !errors.Is(err, ErrNotFound) {
		t.Errorf("missing: %v", err)
	}
	for _, v := range []string{"one", "two"} {
		if err := st.Put(ctx, "bot_token/jira", v); err != nil {
			t.Fatal(err)
		}
		if got, err := st.Get(ctx, "bot_token/jira"); err != nil || got != v {
			t.Errorf("get: %q %v, want %q", got, err, v)
		}
	}
	for i, want := range []bool{true, false} {
		if fresh, err := st.PutNew(ctx, "install/1", "used"); err != nil || fresh != want {
			t.Errorf("PutNew %d: %v %v, want %v", i, fresh, err, want)
		}
	}
	for _, gen := range []string{"first", "second"} {
		if v, err := st.GetOrCreate(ctx, "key", func() (string, error) { return gen, nil }); err != nil || v != "first" {
			t.Errorf("GetOrCreate(%s): %q %v, want the first value kept", gen, v, err)
		}
	}
	_ = st.Delete(ctx, "bot_token/jira")
	if _, err := st.Get(ctx, "bot_token/jira"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted: %v", err)
	}
}

// run opens the store on db (or fails the test) and runs the suite.
func run(t *testing.T, db *sqldb.DB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	st, err := Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	suite(t, st)
}

func TestSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "secrets.db")
	db, err := sqldb.OpenSQLite(path)
	run(t, db, err)
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the secret file's mode: %v %v, want 0600", fi.Mode(), err)
	}
}

func TestPostgres(t *testing.T) {
	admin := spooltest.PostgresServer(t)
	db, err := sqldb.OpenPostgres(spooltest.NewDatabase(t, admin))
	run(t, db, err)
}
