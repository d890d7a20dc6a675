package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mmgate/mmgate/internal/config"
)

func ssoCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "sso", Short: "The sign-in bridge for Mattermost"}
	var siteURL, clientID, buttonText, buttonColor string
	mc := &cobra.Command{
		Use:   "mattermost-config --site-url URL",
		Short: "Print the GitLabSettings that make Mattermost sign people in through mmgate",
		Long: `Prints the GitLabSettings block for Mattermost's config.json and the same
settings as mmctl commands. Mattermost's console cannot edit these endpoints:
use one of the two. The output holds the client secret: do not paste it into
tickets or chat.

The client is the one of sso.clients whose redirect URI is
SITE_URL/signup/gitlab/complete (or --client).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			out, err := mattermostSSOConfig(cfg, siteURL, clientID, buttonText, buttonColor)
			if err != nil {
				return err
			}
			_, err = fmt.Fprint(cmd.OutOrStdout(), out)
			return err
		},
	}
	mc.Flags().StringVar(&siteURL, "site-url", "", "Mattermost's ServiceSettings.SiteURL (required)")
	mc.Flags().StringVar(&clientID, "client", "", "the sso.clients id (default: the one registered for the site URL)")
	mc.Flags().StringVar(&buttonText, "button-text", "", "the sign-in button's text (default: Sign in with ORGANIZATION)")
	mc.Flags().StringVar(&buttonColor, "button-color", "#1c58d9", "the sign-in button's color")
	_ = mc.MarkFlagRequired("site-url")
	c.AddCommand(mc)
	return c
}

func mattermostSSOConfig(cfg config.Config, siteURL, clientID, buttonText, buttonColor string) (string, error) {
	s := cfg.SSO
	if !s.Enabled {
		return "", fmt.Errorf("sso.enabled is false in the configuration: turn the bridge on first (see the README, Sign-in bridge)")
	}
	siteURL = strings.TrimRight(siteURL, "/")
	if !strings.HasPrefix(siteURL, "http://") && !strings.HasPrefix(siteURL, "https://") {
		return "", fmt.Errorf("--site-url must be Mattermost's SiteURL, e.g. https://chat.corp.example, got %q", siteURL)
	}
	redirect := siteURL + "/signup/gitlab/complete"
	var cl *config.SSOClient
	for i := range s.Clients {
		if (clientID != "" && s.Clients[i].ID == clientID) || (clientID == "" && slices.Contains(s.Clients[i].RedirectURIs, redirect)) {
			cl = &s.Clients[i]
			break
		}
	}
	if cl == nil {
		if clientID != "" {
			return "", fmt.Errorf("no sso.clients entry has id %q", clientID)
		}
		return "", fmt.Errorf("no sso.clients entry has the redirect URI %s: add it to the client Mattermost uses, then run this again", redirect)
	}
	if !slices.Contains(cl.RedirectURIs, redirect) {
		return "", fmt.Errorf("sso client %q does not list the redirect URI %s, so Mattermost's sign-in would be refused: add it", cl.ID, redirect)
	}
	secret, err := cl.Secret.Resolve()
	if err != nil {
		return "", fmt.Errorf("sso client %q secret: %w", cl.ID, err)
	}
	if buttonText == "" {
		org := s.Organization
		if org == "" {
			org = "company account"
		}
		buttonText = "Sign in with " + org
	}
	iss := s.Issuer // Load trimmed its trailing slash
	type kv struct {
		key string
		val any
	}
	settings := []kv{
		{"Enable", true}, {"Secret", secret}, {"Id", cl.ID}, {"Scope", ""},
		{"AuthEndpoint", iss + "/oauth/authorize"}, {"TokenEndpoint", iss + "/oauth/token"},
		{"UserAPIEndpoint", iss + "/api/v4/user"}, {"DiscoveryEndpoint", ""},
		{"ButtonText", buttonText}, {"ButtonColor", buttonColor},
	}
	var b strings.Builder
	b.WriteString("# config.json: replace the GitLabSettings block with this one (the output holds the client secret).\n")
	b.WriteString("# TeamSettings.EnableUserCreation must be true, or Mattermost cannot create people on first sign-in.\n")
	b.WriteString("\"GitLabSettings\": {\n")
	for i, x := range settings {
		v, _ := json.Marshal(x.val)
		sep := ","
		if i == len(settings)-1 {
			sep = ""
		}
		fmt.Fprintf(&b, "    %q: %s%s\n", x.key, v, sep)
	}
	b.WriteString("}\n\n# Or, with mmctl signed in as a system admin:\n")
	for _, x := range settings {
		v := shellQuote(fmt.Sprint(x.val))
		if x.key == "Secret" {
			// Read it where it is kept rather than put it in shell history.
			if expr, ok := cl.Secret.ShellExpr(); ok {
				v = expr
			}
		}
		fmt.Fprintf(&b, "mmctl config set GitLabSettings.%s %s\n", x.key, v)
	}
	b.WriteString("mmctl config set TeamSettings.EnableUserCreation true\n")
	fmt.Fprintf(&b, "\n# People then choose %q on %s/login.\n", buttonText, siteURL)
	return b.String(), nil
}

func shellQuote(s string) string {
	if s == "" {
		return "''"
	}
	if strings.IndexFunc(s, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:#@", r))
	}) < 0 {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
