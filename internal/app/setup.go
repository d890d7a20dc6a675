package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/mmgate/mmgate/internal/config"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/provision"
	"github.com/mmgate/mmgate/internal/secrets"
)

// SetupMattermost runs `mmgate mattermost setup` with a system admin's
// token against the Mattermost at mmURL ("" : mattermost.url), keeping
// tokens in st; report gets one line per thing looked at.
func SetupMattermost(ctx context.Context, cfg config.Config, st *secrets.Store, mmURL, adminToken string, teams []string,
	report func(string)) (provision.Result, error) {
	if len(teams) == 0 {
		teams = cfg.Mattermost.Setup.Teams
	}
	o := provision.Options{Admin: newClient(cfg, mmURL, adminToken), Secrets: st, Teams: teams, Report: report,
		Check: func(ctx context.Context, token, userID string) (bool, error) {
			me, err := newClient(cfg, mmURL, token).Me(ctx)
			if err != nil {
				if mattermost.IsUnauthorized(err) {
					return false, nil
				}
				return false, err
			}
			return me.ID == userID, nil
		}}
	if cfg.HTTP.PublicURL != "" {
		o.CommandURL = strings.TrimRight(cfg.HTTP.PublicURL, "/") + "/mattermost/command"
	} else if report != nil {
		report("slash command: skipped (set http.public_url, mmgate's address as Mattermost reaches it)")
	}
	names := make([]string, 0, len(cfg.Apps))
	for name := range cfg.Apps {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		a := cfg.Apps[name]
		pa := provision.App{Name: name, Username: a.BotName(name), DisplayName: a.DisplayName,
			Description: "Mail from " + name + ", posted by mmgate", External: a.BotToken.IsSet()}
		if pa.DisplayName == "" {
			pa.DisplayName = name
		}
		if a.Icon != "" {
			b, err := os.ReadFile(a.Icon)
			if err != nil {
				return provision.Result{}, fmt.Errorf("apps.%s.icon: %w", name, err)
			}
			pa.Icon, pa.IconName = b, filepath.Base(a.Icon)
		}
		o.Apps = append(o.Apps, pa)
	}
	return provision.Run(ctx, o)
}
