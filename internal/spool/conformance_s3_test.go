package spool_test

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/spool"
	"github.com/mmgate/mmgate/internal/spool/spooltest"
)

// s3Server starts a real S3-compatible server (versitygw, Apache-2.0,
// installed by test/peers/install.sh with go install) on loopback and returns
// its endpoint and keys. Without it the test is skipped, unless
// MMGATE_E2E=1 (make test), when it fails.
func s3Server(t *testing.T) (endpoint, access, secret string) {
	t.Helper()
	bin, err := exec.LookPath("versitygw")
	if err != nil {
		home, _ := os.UserHomeDir()
		if p := filepath.Join(home, "go", "bin", "versitygw"); fileExists(p) {
			bin, err = p, nil
		}
	}
	if err != nil {
		if os.Getenv("MMGATE_E2E") == "1" {
			t.Fatal("versitygw is not installed: run test/peers/install.sh (go install github.com/versity/versitygw/cmd/versitygw@v1.8.0)")
		}
		t.Skip("versitygw not installed")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	endpoint = l.Addr().String()
	_ = l.Close()
	dir := t.TempDir()
	access, secret = "mmgatetest", "mmgatetestsecret"
	cmd := exec.Command(bin, "--access", access, "--secret", secret, "--port", endpoint, "--keep-alive", "--quiet", "posix", dir)
	logf, err := os.Create(filepath.Join(dir, "..", "versitygw.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting versitygw: %v", err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		_ = logf.Close()
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", endpoint, time.Second)
		if err == nil {
			_ = c.Close()
			break
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			t.Fatalf("versitygw did not listen on %s: %s", endpoint, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return endpoint, access, secret
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

var bucketSeq atomic.Int64

func TestConformanceSQLiteS3(t *testing.T) {
	ep, ak, sk := s3Server(t)
	spooltest.Run(t, func(t *testing.T) spool.Options {
		return spool.Options{Path: filepath.Join(t.TempDir(), "spool.db"),
			S3: &spool.S3Options{Endpoint: ep, Bucket: fmt.Sprintf("spool-%d", bucketSeq.Add(1)), Prefix: "raw/",
				AccessKey: ak, SecretKey: sk, Insecure: true}}
	})
}

func TestConformancePostgresS3(t *testing.T) {
	admin := spooltest.PostgresServer(t)
	ep, ak, sk := s3Server(t)
	spooltest.Run(t, func(t *testing.T) spool.Options {
		return spool.Options{PostgresDSN: spooltest.NewDatabase(t, admin),
			S3: &spool.S3Options{Endpoint: ep, Bucket: fmt.Sprintf("pgspool-%d", bucketSeq.Add(1)),
				AccessKey: ak, SecretKey: sk, Insecure: true}}
	})
}
