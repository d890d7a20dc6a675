package app

import (
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/mmgate/mmgate/internal/config"
)

// explain reads what serve made and creates nothing: a secrets.db or
// accounts.db made by root running explain would keep serve from opening it.
func TestExplainerCreatesNoSideDatabase(t *testing.T) {
	cfg := config.Default()
	cfg.DataDir = t.TempDir()
	cfg.Mattermost.URL = "http://127.0.0.1:1"
	cfg.Directory.MattermostLookup = true
	cfg.Apps = map[string]config.App{"jira": {}} // no bot_token: setup's would be in secrets.db
	if _, err := NewExplainer(cfg, slog.New(slog.NewTextHandler(io.Discard, nil))); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"secrets.db", "accounts.db"} {
		if _, err := os.Stat(filepath.Join(filepath.Dir(cfg.SpoolPath()), name)); !os.IsNotExist(err) {
			t.Errorf("explain created %s (%v)", name, err)
		}
	}
}
