package main

import (
	"strings"
	"testing"

	"github.com/mmgate/mmgate/internal/config"
)

func TestMattermostSSOConfig(t *testing.T) {
	cfg := config.Default()
	if _, err := mattermostSSOConfig(cfg, "https://chat.corp.example", "", "", "#000"); err == nil || !strings.Contains(err.Error(), "sso.enabled") {
		t.Errorf("bridge off: %v", err)
	}
	cfg.SSO.Enabled = true
	cfg.SSO.Issuer = "https://sso.corp.example" // as Load gives it (no trailing slash)
	cfg.SSO.Organization = "Corp"
	cfg.SSO.Clients = []config.SSOClient{{ID: "mm", Secret: "s3cr'et", RedirectURIs: []string{"https://chat.corp.example/signup/gitlab/complete"}}}
	out, err := mattermostSSOConfig(cfg, "https://chat.corp.example/", "", "", "#1c58d9")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"Id": "mm"`, `"Secret": "s3cr'et"`, `"AuthEndpoint": "https://sso.corp.example/oauth/authorize"`,
		`"TokenEndpoint": "https://sso.corp.example/oauth/token"`, `"UserAPIEndpoint": "https://sso.corp.example/api/v4/user"`,
		`"ButtonText": "Sign in with Corp"`, `"Scope": ""`,
		`mmctl config set GitLabSettings.Secret 's3cr'\''et'`, "mmctl config set GitLabSettings.ButtonText 'Sign in with Corp'",
		"mmctl config set TeamSettings.EnableUserCreation true",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %s:\n%s", want, out)
		}
	}
	cfg.SSO.Clients[0].Secret = "file:/etc/mmgate/sso.secret"
	if out, err := mattermostSSOConfig(cfg, "https://chat.corp.example", "", "", ""); err == nil ||
		!strings.Contains(err.Error(), "/etc/mmgate/sso.secret") {
		t.Errorf("an unreadable secret file: %v\n%s", err, out)
	}
	if _, err := mattermostSSOConfig(cfg, "https://other.corp.example", "", "", ""); err == nil ||
		!strings.Contains(err.Error(), "https://other.corp.example/signup/gitlab/complete") {
		t.Errorf("a site URL no client is registered for: %v", err)
	}
	if _, err := mattermostSSOConfig(cfg, "https://other.corp.example", "mm", "", ""); err == nil || !strings.Contains(err.Error(), "add it") {
		t.Errorf("--client whose redirect URIs lack the site: %v", err)
	}
}
