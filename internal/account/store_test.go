package account

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

// suite runs on a and b, two stores on one database (two replicas).
func suite(t *testing.T, a, b *Store) {
	ctx := context.Background()
	code, err := a.NewCode(ctx, "uid-bob", "bob", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := b.PeekCode(ctx, code); err != nil || p.UserID != "uid-bob" || p.Username != "bob" {
		t.Fatalf("peek on the other replica: %+v %v", p, err)
	}
	if _, err := a.PeekCode(ctx, code+"x"); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown code: %v", err)
	}
	// Two replicas use one code at once: exactly one links.
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, st := range []*Store{a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = st.LinkWithCode(ctx, code, Link{Email: "Alice@Corp.Test", Subject: "ldap:uuid-" + string(rune('a'+i))})
		}()
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errors.Is(err, ErrNotFound):
			t.Fatalf("using a code: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d replicas linked with one code, want exactly 1 (%v)", won, errs)
	}
	if _, err := a.PeekCode(ctx, code); !errors.Is(err, ErrNotFound) {
		t.Errorf("a used code still peeks: %v", err)
	}
	l, ok, err := a.LinkedUser(ctx, "ALICE@corp.test")
	if err != nil || !ok || l.UserID != "uid-bob" || l.Username != "bob" || l.Email != "alice@corp.test" {
		t.Fatalf("linked user: %+v %v %v", l, ok, err)
	}
	// b read its snapshot before? It has none yet: it reads the database.
	if _, ok, _ := b.LinkedUser(ctx, "alice@corp.test"); !ok {
		t.Error("the other replica does not see the link")
	}
	// A second link of the same identity moves it; the other replica sees
	// that once its snapshot is older than Fresh, this one at once.
	code2, _ := b.NewCode(ctx, "uid-carol", "carol", time.Minute)
	if l2, err := b.LinkWithCode(ctx, code2, Link{Email: "alice@corp.test", Subject: "ldap:uuid-a"}); err != nil {
		t.Fatal(err)
	} else if l2.Previous == nil || l2.Previous.UserID != "uid-bob" {
		t.Errorf("the account the link moved from: %+v", l2.Previous)
	}
	if l, _, _ := b.LinkedUser(ctx, "alice@corp.test"); l.UserID != "uid-carol" {
		t.Errorf("the replica that linked still sees %s", l.UserID)
	}
	if l, _, _ := a.LinkedUser(ctx, "alice@corp.test"); l.UserID != "uid-bob" {
		t.Errorf("the snapshot was read again before Fresh: %s", l.UserID)
	}
	a.now = func() time.Time { return time.Now().Add(a.Fresh) }
	if l, _, _ := a.LinkedUser(ctx, "alice@corp.test"); l.UserID != "uid-carol" {
		t.Errorf("after Fresh the other replica still sees %s", l.UserID)
	}
	a.now = time.Now
	// Expired codes do not work.
	old, _ := a.NewCode(ctx, "uid-dave", "dave", -time.Second)
	if _, err := a.LinkWithCode(ctx, old, Link{Email: "dave@corp.test"}); !errors.Is(err, ErrNotFound) {
		t.Errorf("expired code: %v", err)
	}
	links, err := a.Unlink(ctx, "uid-carol")
	if err != nil || len(links) != 1 || links[0].Email != "alice@corp.test" {
		t.Fatalf("unlink: %+v %v", links, err)
	}
	if _, ok, _ := a.LinkedUser(ctx, "alice@corp.test"); ok {
		t.Error("unlinked but still linked")
	}
	if links, err := a.Unlink(ctx, "uid-carol"); err != nil || len(links) != 0 {
		t.Errorf("second unlink: %v %v", links, err)
	}

	// Subscriptions.
	for i, want := range []bool{true, false} {
		fresh, err := a.Subscribe(ctx, Subscriber{App: "backup", UserID: "uid-bob", Username: "bob", Email: "Bob@corp.test"})
		if err != nil || fresh != want {
			t.Errorf("subscribe %d: %v %v, want %v", i, fresh, err, want)
		}
	}
	_, _ = a.Subscribe(ctx, Subscriber{App: "backup", UserID: "uid-alice", Username: "alice", Email: "alice@corp.test"})
	_, _ = a.Subscribe(ctx, Subscriber{App: "cron", UserID: "uid-bob", Username: "bob", Email: "bob@corp.test"})
	subs, err := a.Subscribers(ctx, "backup")
	if err != nil || len(subs) != 2 || subs[0].UserID != "uid-alice" || subs[1].Email != "bob@corp.test" {
		t.Fatalf("subscribers: %+v %v", subs, err)
	}
	mine, err := a.SubscriptionsOf(ctx, "uid-bob")
	if err != nil || len(mine) != 2 || mine[0].App != "backup" || mine[1].App != "cron" {
		t.Fatalf("bob's subscriptions: %+v %v", mine, err)
	}
	for i, want := range []bool{true, false} {
		if gone, err := a.Unsubscribe(ctx, "backup", "uid-bob"); err != nil || gone != want {
			t.Errorf("unsubscribe %d: %v %v", i, gone, err)
		}
	}
	if subs, _ := a.Subscribers(ctx, "backup"); len(subs) != 1 {
		t.Errorf("after unsubscribe: %+v", subs)
	}
}

func open(t testing.TB, opener func() (*sqldb.DB, error)) *Store {
	t.Helper()
	db, err := opener()
	if err != nil {
		t.Fatal(err)
	}
	st, err := Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func TestStoreSQLite(t *testing.T) {
	path := filepath.Join(t.TempDir(), "accounts.db")
	opener := func() (*sqldb.DB, error) { return sqldb.OpenSQLite(path) }
	a, b := open(t, opener), open(t, opener)
	suite(t, a, b)
}

func TestStorePostgres(t *testing.T) {
	dsn := spooltest.NewDatabase(t, spooltest.PostgresServer(t))
	opener := func() (*sqldb.DB, error) { return sqldb.OpenPostgres(dsn) }
	a, b := open(t, opener), open(t, opener)
	suite(t, a, b)
}
