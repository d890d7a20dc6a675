package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/mmgate/mmgate/internal/app"
	"github.com/mmgate/mmgate/internal/httpapi"
)

func mattermostCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "mattermost", Short: "Install mmgate in a Mattermost site"}
	var mmURL, tokenFile string
	var teams []string
	setup := &cobra.Command{
		Use:   "setup --admin-token-file FILE [--url URL] [--team NAME…]",
		Short: "Create the bots, their tokens and the /mmgate command from a system admin's token",
		Long: `Setup turns on what mmgate needs in Mattermost (bot accounts, personal access
tokens, custom slash commands, and calls to mmgate's own address when it is
internal), creates or updates one bot per configured app (apps.NAME.bot_username,
display_name, icon), adds the bots to the teams, keeps each bot's access token
in mmgate's secret store (an app without apps.NAME.bot_token uses it), and
creates or updates the /mmgate slash command in each team (http.public_url must
be set), keeping its token too. It prints what it did; run again, it changes
nothing that is already right.

The admin token (a system admin's personal access token) is read from a file
and used for this run only: it is not stored.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			b, err := os.ReadFile(tokenFile)
			if err != nil {
				return fmt.Errorf("--admin-token-file: %w", err)
			}
			tok := strings.TrimSpace(string(b))
			if tok == "" {
				return fmt.Errorf("--admin-token-file %s is empty: put a system admin's personal access token in it", tokenFile)
			}
			st, err := app.OpenSecrets(cmd.Context(), cfg)
			if err != nil {
				return err
			}
			defer st.Close()
			w := cmd.OutOrStdout()
			res, err := app.SetupMattermost(cmd.Context(), cfg, st, mmURL, tok, teams, func(line string) { fmt.Fprintln(w, line) })
			if err != nil {
				return err
			}
			if res.Changed == 0 {
				fmt.Fprintf(w, "nothing to change (%d things checked)\n", res.Unchanged)
			} else {
				fmt.Fprintf(w, "%d changed, %d already right\n", res.Changed, res.Unchanged)
				fmt.Fprintln(w, "running `mmgate serve` instances pick new bot tokens up within 15 seconds; no restart needed")
			}
			return nil
		},
	}
	setup.Flags().StringVar(&mmURL, "url", "", "Mattermost's URL (default: mattermost.url)")
	setup.Flags().StringVar(&tokenFile, "admin-token-file", "", "file holding a system admin's personal access token (required)")
	setup.Flags().StringArrayVar(&teams, "team", nil, "team name to install in (repeatable; default: mattermost.setup.teams, else every team)")
	_ = setup.MarkFlagRequired("admin-token-file")
	var ttl time.Duration
	link := &cobra.Command{
		Use:   "install-link [--ttl 15m]",
		Short: "Print a single-use link that lets a Mattermost admin finish the setup in a browser",
		Long: `The link opens a page on mmgate (http.public_url) where a Mattermost system
admin pastes a personal access token; mmgate then runs the same setup as
` + "`mmgate mattermost setup`" + ` and shows what it did. The link is signed with
mattermost.setup.secret, works once, and expires after --ttl.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			if !cfg.Mattermost.Setup.Secret.IsSet() || cfg.HTTP.PublicURL == "" {
				return fmt.Errorf("install links need mattermost.setup.secret (at least 32 bytes, e.g. file: with openssl rand -base64 32) and http.public_url")
			}
			key, err := cfg.Mattermost.Setup.Secret.Resolve()
			if err != nil {
				return fmt.Errorf("mattermost.setup.secret: %w", err)
			}
			tok, err := httpapi.InstallToken([]byte(key), ttl)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s/setup?token=%s\n(valid for %s, once)\n", strings.TrimRight(cfg.HTTP.PublicURL, "/"), tok, ttl)
			return nil
		},
	}
	link.Flags().DurationVar(&ttl, "ttl", 15*time.Minute, "how long the link works")
	c.AddCommand(setup, link)
	return c
}
