package spool_test

import (
	"path/filepath"
	"testing"

	"github.com/mmgate/mmgate/internal/spool"
	"github.com/mmgate/mmgate/internal/spool/spooltest"
)

func TestConformancePostgres(t *testing.T) {
	admin := spooltest.PostgresServer(t)
	spooltest.Run(t, func(t *testing.T) spool.Options {
		return spool.Options{PostgresDSN: spooltest.NewDatabase(t, admin), BlobDir: filepath.Join(t.TempDir(), "blobs")}
	})
}
