package spool_test

import (
	"path/filepath"
	"testing"

	"github.com/mmgate/mmgate/internal/spool"
	"github.com/mmgate/mmgate/internal/spool/spooltest"
)

func TestConformanceSQLite(t *testing.T) {
	spooltest.Run(t, func(t *testing.T) spool.Options {
		dir := t.TempDir()
		return spool.Options{
			Path:    filepath.Join(dir, "db", "spool.db"),
			BlobDir: filepath.Join(dir, "blobs"),
		}
	})
}
