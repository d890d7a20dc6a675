package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/mmgate/mmgate/internal/command"
	"github.com/mmgate/mmgate/internal/config"
	"github.com/mmgate/mmgate/internal/httpapi"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/provision"
	"github.com/mmgate/mmgate/internal/secrets"
	"github.com/mmgate/mmgate/internal/spool"
	"github.com/mmgate/mmgate/internal/sqldb"
)

// OpenSideDB opens one of the small databases beside the spool: the SQLite
// file DATA_DIR/NAME (mode 0600), or the spool's PostgreSQL database.
func OpenSideDB(cfg config.Config, name string) (*sqldb.DB, error) {
	if cfg.Spool.Driver == "postgres" {
		dsn, err := cfg.Spool.DSN.Resolve()
		if err != nil {
			return nil, fmt.Errorf("spool.dsn: %w", err)
		}
		return sqldb.OpenPostgres(dsn)
	}
	return sqldb.OpenSQLite(filepath.Join(filepath.Dir(cfg.SpoolPath()), name))
}

// sideDBExists reports whether the side database name is there to open: on
// PostgreSQL always; as a SQLite file only once serve has made it. Commands
// that only read (explain) open it then only, never creating a file that
// serve would find owned by whoever ran them.
func sideDBExists(cfg config.Config, name string) bool {
	if cfg.Spool.Driver == "postgres" {
		return true
	}
	_, err := os.Stat(filepath.Join(filepath.Dir(cfg.SpoolPath()), name))
	return err == nil
}

// OpenSecrets opens mmgate's secret store (secrets.db).
func OpenSecrets(ctx context.Context, cfg config.Config) (*secrets.Store, error) {
	db, err := OpenSideDB(cfg, "secrets.db")
	if err != nil {
		return nil, fmt.Errorf("secret store: %w", err)
	}
	return secrets.Open(ctx, db)
}

// BotTokens returns each app's bot token: apps.NAME.bot_token, or else the
// one `mmgate mattermost setup` stored, or else "" (the app's messages wait
// and /readyz says why until setup has run, which the install link can do
// on a running instance). store opens the secret store, only if needed;
// secrets.ErrNotFound from it means there is none yet (no stored tokens).
func BotTokens(ctx context.Context, cfg config.Config, store func(context.Context) (*secrets.Store, error)) (map[string]string, error) {
	out := map[string]string{}
	for name, a := range cfg.Apps {
		if a.BotToken.IsSet() {
			tok, err := a.BotToken.Resolve()
			if err != nil {
				return nil, fmt.Errorf("apps.%s.bot_token: %w", name, err)
			}
			out[name] = tok
			continue
		}
		st, err := store(ctx)
		if errors.Is(err, secrets.ErrNotFound) {
			out[name] = ""
			continue
		}
		if err != nil {
			return nil, err
		}
		tok, err := st.Get(ctx, provision.BotTokenPrefix+name)
		if err != nil && !errors.Is(err, secrets.ErrNotFound) {
			return nil, err
		}
		out[name] = tok
	}
	return out, nil
}

// secretStore opens the secret store once, at its first use, so that a data
// directory that cannot be written (see the spool's refusals) or a database
// that is down never keeps mmgate from starting.
func (s *Server) secretStore(ctx context.Context) (*secrets.Store, error) {
	s.secretsMu.Lock()
	defer s.secretsMu.Unlock()
	if s.secrets == nil {
		st, err := OpenSecrets(ctx, s.cfg)
		if err != nil {
			return nil, err
		}
		s.secrets = st
	}
	return s.secrets, nil
}

// newClient is a Mattermost client of mmgate's configuration for token.
func newClient(cfg config.Config, url, token string) *mattermost.Client {
	if url == "" {
		url = cfg.Mattermost.URL
	}
	return mattermost.New(url, token, mattermost.Options{RequestTimeout: cfg.Mattermost.RequestTimeout})
}

// commandHandler builds the /mmgate slash command's handler.
func (s *Server) commandHandler(sp *spool.Spool, clients map[string]*mattermost.Client, log *slog.Logger) http.Handler {
	users := anyClient(clients)
	var pending func(ctx context.Context, userID string) (string, error)
	if s.approvalSvc != nil {
		pending = s.approvalSvc.Pending
	}
	return command.Handler(command.Options{
		Logger:   log,
		Pending:  pending,
		Accounts: s.accountSvc,
		Token: func(ctx context.Context, teamID string) (string, error) {
			if teamID == "" {
				return "", nil
			}
			st, err := s.secretStore(ctx)
			if err != nil {
				return "", err
			}
			tok, err := st.Get(ctx, provision.CommandTokenPrefix+teamID)
			if errors.Is(err, secrets.ErrNotFound) {
				return "", nil
			}
			return tok, err
		},
		Counts: func(ctx context.Context) (map[string]int, error) {
			c, err := sp.Counts(ctx)
			if err != nil {
				return nil, err
			}
			out := map[string]int{}
			for k, v := range c {
				out[string(k)] = v
			}
			return out, nil
		},
		IsAdmin: func(ctx context.Context, userID string) (bool, error) {
			u, err := users.User(ctx, userID)
			if err != nil {
				return false, err
			}
			return u.IsSystemAdmin(), nil
		},
	})
}

// adminRoutes builds the admin endpoints and the install link's page.
func (s *Server) adminRoutes(cfg config.Config) (map[string]http.Handler, error) {
	o := httpapi.AdminOptions{
		Setup: func(ctx context.Context, adminToken string, teams []string, report func(string)) (int, int, error) {
			st, err := s.secretStore(ctx)
			if err != nil {
				return 0, 0, err
			}
			res, err := SetupMattermost(ctx, cfg, st, "", adminToken, teams, report)
			if err != nil {
				s.log.Error("mattermost setup (admin endpoint or install link) failed", "err", err)
				return res.Changed, res.Unchanged, err
			}
			s.reloadTokens(ctx, cfg)
			return res.Changed, res.Unchanged, nil
		},
		CheckAdmin: func(ctx context.Context, adminToken string) (bool, error) {
			u, err := newClient(cfg, "", adminToken).Me(ctx)
			if mattermost.IsUnauthorized(err) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			return u.IsSystemAdmin(), nil
		},
		Secure: strings.HasPrefix(cfg.HTTP.PublicURL, "https://"),
		Used: func(ctx context.Context, id string) (bool, error) {
			st, err := s.secretStore(ctx)
			if err != nil {
				return false, err
			}
			_, err = st.Get(ctx, "install_link_used/"+id)
			if errors.Is(err, secrets.ErrNotFound) {
				return false, nil
			}
			return err == nil, err
		},
		UseOnce: func(ctx context.Context, id string) (bool, error) {
			st, err := s.secretStore(ctx)
			if err != nil {
				return false, err
			}
			return st.PutNew(ctx, "install_link_used/"+id, "1")
		},
		Release: func(ctx context.Context, id string) error {
			st, err := s.secretStore(ctx)
			if err != nil {
				return err
			}
			return st.Delete(ctx, "install_link_used/"+id)
		},
	}
	if cfg.HTTP.AdminToken.IsSet() {
		v, err := cfg.HTTP.AdminToken.Resolve()
		if err != nil {
			return nil, fmt.Errorf("http.admin_token: %w", err)
		}
		o.AdminToken = v
	}
	if cfg.Mattermost.Setup.Secret.IsSet() {
		v, err := cfg.Mattermost.Setup.Secret.Resolve()
		if err != nil {
			return nil, fmt.Errorf("mattermost.setup.secret: %w", err)
		}
		o.InstallKey = []byte(v)
	}
	return httpapi.AdminRoutes(o), nil
}

// reloadTokens gives the running clients the tokens setup stored (or a
// token file now holds), and says which changed.
func (s *Server) reloadTokens(ctx context.Context, cfg config.Config) {
	toks, err := BotTokens(ctx, cfg, s.secretStore)
	s.tokensMu.Lock()
	defer s.tokensMu.Unlock()
	// Said once when reading fails, and once when it works again.
	switch {
	case err != nil && err.Error() != s.tokensErr:
		s.log.Warn("reloading the bot tokens (the running ones stay in use)", "err", err)
		s.tokensErr = err.Error()
	case err == nil && s.tokensErr != "":
		s.log.Info("the bot tokens can be read again")
		s.tokensErr = ""
	}
	if err != nil {
		return
	}
	if s.tokens == nil {
		s.tokens = map[string]string{}
	}
	for name, c := range s.clients {
		if t := toks[name]; t != "" && t != s.tokens[name] {
			c.SetToken(t)
			if _, had := s.tokens[name]; had {
				s.log.Info("the bot token of an app changed (mattermost setup, or its token file); using the new one", "app", name)
			}
			s.tokens[name] = t
		}
	}
}

// every runs f every interval until ctx ends.
func every(ctx context.Context, interval time.Duration, f func(context.Context)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			f(ctx)
		}
	}
}
