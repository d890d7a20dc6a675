package app

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"time"

	"github.com/mmgate/mmgate/internal/approval"
	"github.com/mmgate/mmgate/internal/config"
	"github.com/mmgate/mmgate/internal/mattermost"
)

// OpenApprovals opens the approvals store (approvals.db).
func OpenApprovals(ctx context.Context, cfg config.Config) (*approval.Store, error) {
	db, err := OpenSideDB(cfg, "approvals.db")
	if err != nil {
		return nil, fmt.Errorf("approvals: %w", err)
	}
	return approval.OpenStore(ctx, db)
}

// startApprovals builds the approvals service and its routes (nil when no
// client is configured).
func (s *Server) startApprovals(ctx context.Context, cfg config.Config, clients map[string]*mattermost.Client, log *slog.Logger) (map[string]http.Handler, error) {
	if len(cfg.Approvals.Clients) == 0 {
		return nil, nil
	}
	st, err := OpenApprovals(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.approvals = st
	var key []byte
	if cfg.Approvals.SigningKey.IsSet() {
		v, err := cfg.Approvals.SigningKey.Resolve()
		if err != nil {
			return nil, fmt.Errorf("approvals.signing_key: %w", err)
		}
		key = []byte(v)
	} else {
		var err error
		if key, err = s.sharedKey(ctx, "approvals_signing_key"); err != nil {
			return nil, err
		}
	}
	var cls []approval.Client
	names := make([]string, 0, len(cfg.Approvals.Clients))
	for n := range cfg.Approvals.Clients {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := cfg.Approvals.Clients[n]
		k, err := c.APIKey.Resolve()
		if err != nil {
			return nil, fmt.Errorf("approvals.clients.%s.api_key: %w", n, err)
		}
		cs := ""
		if c.CallbackSecret.IsSet() {
			if cs, err = c.CallbackSecret.Resolve(); err != nil {
				return nil, fmt.Errorf("approvals.clients.%s.callback_secret: %w", n, err)
			}
		}
		cls = append(cls, approval.Client{Name: n, Key: k, CallbackSecret: cs, CallbackPrefixes: c.CallbackPrefixes})
	}
	o := approval.Options{Store: st, MM: clients[cfg.Approvals.App], SigningKey: key, PublicURL: cfg.HTTP.PublicURL,
		SiteURL: cfg.Mattermost.URL, Clients: cls, Logger: log}
	o.Links = s.accounts
	if gd, ok := s.dir.(approval.Directory); ok && cfg.Directory.LDAP != nil {
		o.Directory = gd
	}
	svc, err := approval.New(o)
	if err != nil {
		return nil, err
	}
	s.approvalSvc = svc
	rctx, cancel := context.WithCancel(context.Background())
	s.stopApprovals = cancel
	go svc.Run(rctx, 2*time.Second)
	svc.RunSources(rctx)
	return svc.Routes(), nil
}
