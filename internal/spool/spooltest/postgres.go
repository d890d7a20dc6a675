package spooltest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// PostgresServer returns the DSN of a PostgreSQL to create test databases
// in: MMGATE_TEST_PG_DSN when set, else a throwaway server started with the
// project's test/peers/postgres.sh (needs root and Debian's postgresql).
// Without either the test is skipped, unless MMGATE_E2E=1 (make test), when
// it fails: the PostgreSQL backend must be tested there.
func PostgresServer(t *testing.T) string {
	t.Helper()
	if dsn := os.Getenv("MMGATE_TEST_PG_DSN"); dsn != "" {
		return dsn
	}
	initdb, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(initdb) == 0 || os.Geteuid() != 0 {
		if os.Getenv("MMGATE_E2E") == "1" {
			t.Fatal("PostgreSQL is not installed (Debian package postgresql; run as root), or set MMGATE_TEST_PG_DSN")
		}
		t.Skip("no PostgreSQL: set MMGATE_TEST_PG_DSN or install postgresql and run as root")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	dir, err := os.MkdirTemp("", "mmgate-pg-")
	if err != nil {
		t.Fatal(err)
	}
	_, self, _, _ := runtime.Caller(0) // internal/spool/spooltest/postgres.go
	script := filepath.Join(filepath.Dir(self), "..", "..", "..", "test", "peers", "postgres.sh")
	out, err := exec.Command("bash", script, dir, fmt.Sprint(port)).Output()
	if err != nil {
		t.Fatalf("starting PostgreSQL: %v\n%s", err, out)
	}
	// The script prints the postmaster's PID (whichever version it chose).
	pid, _ := strconv.Atoi(strings.TrimSpace(string(out)))
	t.Cleanup(func() {
		if pid > 0 {
			_ = syscall.Kill(pid, syscall.SIGQUIT) // immediate shutdown
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
		}
		_ = os.RemoveAll(dir)
	})
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", port)
}

var dbSeq atomic.Int64

// NewDatabase creates a fresh database and returns its DSN.
func NewDatabase(t *testing.T, admin string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = c.Close(context.Background()) }()
	name := fmt.Sprintf("spool_%d_%d", os.Getpid(), dbSeq.Add(1))
	if _, err := c.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	return strings.Replace(admin, "/postgres?", "/"+name+"?", 1)
}
