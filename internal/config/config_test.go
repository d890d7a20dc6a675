package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func write(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestExampleLoadsAndOnlyLacksLocalFiles(t *testing.T) {
	p := write(t, "mmgate.yaml", Example)
	c, err := Load(p, nil)
	if err != nil {
		t.Fatalf("example does not load: %v", err)
	}
	if c.SMTP.Listen != "127.0.0.1:2525" || c.Spool.Retention != 168*time.Hour || len(c.Apps) != 1 {
		t.Fatalf("unexpected values: %+v", c.SMTP)
	}
	err = c.Validate()
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("expected problems about files that do not exist here, got %v", err)
	}
	for _, p := range ps {
		if p.Path != "apps.jira.bot_token" && p.Path != "apps.jira.smtp.password" && p.Path != "directory.file" {
			t.Errorf("unexpected problem in the example: %s", p)
		}
	}
}

func TestValidateReportsEveryProblemWithPath(t *testing.T) {
	p := write(t, "c.yaml", `
log: {level: loud}
smtp:
  listen: "nonsense"
  domains: ["bad domain"]
  max_recipients: 0
mattermost: {url: "chat.example.com"}
apps:
  Jira:
    direct_messages: false
    channels: [town-square]
routing:
  rules:
    - app: nope
      subject: "("
`)
	c, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = c.Validate()
	var ps Problems
	if !errors.As(err, &ps) {
		t.Fatalf("want Problems, got %v", err)
	}
	want := []string{"log.level", "smtp.listen", "smtp.domains[0]", "smtp.max_recipients", "mattermost.url",
		"apps.Jira", "apps.Jira.channels[0]", "routing.rules[0].app", "routing.rules[0].subject", "directory"}
	got := map[string]bool{}
	for _, p := range ps {
		got[p.Path] = true
	}
	for _, w := range want {
		if !got[w] {
			t.Errorf("missing problem for %s; got:\n%v", w, err)
		}
	}
}

func TestUnknownKeyIsAnError(t *testing.T) {
	p := write(t, "c.yaml", "smtp:\n  listn: 1.2.3.4:25\n")
	_, err := Load(p, nil)
	if err == nil || !strings.Contains(err.Error(), "listn") {
		t.Fatalf("want an error naming the unknown key, got %v", err)
	}
}

func TestEnvironmentOverrides(t *testing.T) {
	p := write(t, "c.yaml", "smtp:\n  listen: 127.0.0.1:25\napps:\n  jira:\n    bot_token: x\n")
	c, err := Load(p, []string{
		"MMGATE_SMTP__LISTEN=0.0.0.0:2525",
		"MMGATE_SMTP__MAX_RECIPIENTS=7",
		"MMGATE_APPS__JIRA__BOT_TOKEN=env:JIRA_TOKEN",
		"MMGATE_SPOOL__RETENTION=24h",
		"OTHER=1",
	})
	if err != nil {
		t.Fatal(err)
	}
	if c.SMTP.Listen != "0.0.0.0:2525" || c.SMTP.MaxRecipients != 7 || c.Spool.Retention != 24*time.Hour {
		t.Fatalf("overrides not applied: %+v %v", c.SMTP, c.Spool.Retention)
	}
	if c.Apps["jira"].BotToken != "env:JIRA_TOKEN" {
		t.Fatalf("nested app override not applied: %q", c.Apps["jira"].BotToken)
	}
}

func TestSecrets(t *testing.T) {
	f := write(t, "tok", "s3cret\n")
	t.Setenv("MMGATE_TEST_SECRET", "from-env")
	for in, want := range map[Secret]string{"inline": "inline", Secret("file:" + f): "s3cret", "env:MMGATE_TEST_SECRET": "from-env"} {
		got, err := in.Resolve()
		if err != nil || got != want {
			t.Errorf("%s: got %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := Secret("file:/nonexistent/x").Resolve(); err == nil {
		t.Error("missing file must be an error")
	}
	if _, err := Secret("env:MMGATE_TEST_UNSET_XYZ").Resolve(); err == nil {
		t.Error("unset variable must be an error")
	}
	if s := Secret("hunter2").String(); strings.Contains(s, "hunter2") {
		t.Errorf("String reveals the secret: %s", s)
	}
}

// A file with decoding problems (a bad type, unknown keys at two levels) still
// gets every problem reported, each at its own key path, together with what
// Validate finds in the parts that did decode.
func TestDecodeProblemsAreSplitAndMergedWithValidate(t *testing.T) {
	p := write(t, "bad.yaml", "smtp:\n  max_recipients: lots\n  listen: nope\nbogus_key: 1\napps:\n  jira:\n    smtp:\n      bogus: 1\n")
	c, err := Load(p, nil)
	var decoded Problems
	if !errors.As(err, &decoded) {
		t.Fatalf("Load: want Problems, got %v", err)
	}
	all := decoded.Merge(c.Validate())
	var ps Problems
	if !errors.As(all, &ps) {
		t.Fatalf("Merge: want Problems, got %v", all)
	}
	got := map[string]bool{}
	for _, p := range ps {
		got[p.Path] = true
	}
	for _, want := range []string{"smtp.max_recipients", "bogus_key", "apps.jira.smtp.bogus", "smtp.listen", "mattermost.url"} {
		if !got[want] {
			t.Errorf("no problem at %s in:\n%v", want, ps)
		}
	}
	if n := strings.Count(ps.Error(), "smtp.max_recipients"); n != 1 {
		t.Errorf("smtp.max_recipients reported %d times, want once:\n%v", n, ps)
	}
}

func TestDirectoryLDAPAndGroupsAreChecked(t *testing.T) {
	p := write(t, "c.yaml", `
mattermost: {url: "http://127.0.0.1:8065"}
directory:
  deny_group: "disabled"
  ldap:
    urls: ["ldap://127.0.0.1:389", "http://wrong"]
    bind_dn: "cn=svc,dc=x"
    nested: deep
    timeout: -1s
apps:
  jira:
    bot_token: inline-token
    allow_group: "cn=jira-users,dc=x"
`)
	got, ps := problemPaths(t, p)
	for _, want := range []string{"directory.ldap.urls[1]", "directory.ldap.base_dn", "directory.ldap.bind_password",
		"directory.ldap.nested", "directory.ldap.timeout", "directory.deny_group"} {
		if !got[want] {
			t.Errorf("no problem at %s; got %v", want, ps)
		}
	}
	if got["apps.jira.allow_group"] {
		t.Errorf("a DN allow group with LDAP configured is fine: %v", ps)
	}
	// Groups without LDAP cannot be checked.
	p2 := write(t, "c2.yaml", `
mattermost: {url: "http://127.0.0.1:8065"}
directory: {mattermost_lookup: true}
apps:
  jira: {bot_token: inline-token, deny_group: "cn=x,dc=y"}
`)
	c2, err := Load(p2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c2.Validate(); err == nil || !strings.Contains(err.Error(), "apps.jira.deny_group") || !strings.Contains(err.Error(), "directory.ldap") {
		t.Errorf("deny group without LDAP: %v", err)
	}
}

func TestIMAPMoveToTheWatchedFolderIsRefused(t *testing.T) {
	p := write(t, "c.yaml", `
mattermost: {url: "http://127.0.0.1:8065"}
directory: {mattermost_lookup: true}
imap:
  mailboxes:
    tools: {address: "127.0.0.1:143", tls: none, username: u, password: pw, move_to: inbox}
`)
	c, err := Load(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err == nil || !strings.Contains(err.Error(), "imap.mailboxes.tools.move_to") {
		t.Errorf("move_to = the default folder: %v", err)
	}
}

func TestSSOIsChecked(t *testing.T) {
	p := write(t, "c.yaml", `
mattermost: {url: "http://127.0.0.1:8065"}
directory: {mattermost_lookup: true}
sso:
  enabled: true
  issuer: "https://sso.corp.example/mmgate"
  upstream: ldap
  code_ttl: 1h
  trusted_proxies: ["10.0.0.0/8", "192.0.2.1", "not-an-address"]
  clients:
    - id: mattermost
      secret: file:/nonexistent/secret
      redirect_uris: ["https://chat.corp.example/*", "chat.corp.example/signup/gitlab/complete"]
    - id: mattermost
      secret: x
      redirect_uris: ["https://chat.corp.example/signup/gitlab/complete"]
`)
	got, ps := problemPaths(t, p)
	for _, want := range []string{"sso.issuer", "sso.upstream", "sso.code_ttl", "sso.clients[0].secret",
		"sso.clients[0].redirect_uris[0]", "sso.clients[0].redirect_uris[1]", "sso.clients[1].id", "sso.trusted_proxies[2]"} {
		if !got[want] {
			t.Errorf("no problem at %s; got %v", want, ps)
		}
	}
	p2 := write(t, "c2.yaml", `
mattermost: {url: "http://127.0.0.1:8065"}
directory: {mattermost_lookup: true}
sso:
  enabled: true
  issuer: "https://sso.corp.example/"
  upstream: oidc
  oidc: {issuer: "https://id.corp.example"}
  clients: [{id: mattermost, secret: x, redirect_uris: ["https://chat.corp.example/signup/gitlab/complete"]}]
`)
	c2, err := Load(p2, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Every URL the bridge builds starts from the issuer: one spelling.
	if c2.SSO.Issuer != "https://sso.corp.example" {
		t.Errorf("issuer %q kept its trailing slash", c2.SSO.Issuer)
	}
	err = c2.Validate()
	if err == nil || !strings.Contains(err.Error(), "sso.oidc.client_id") || !strings.Contains(err.Error(), "https://sso.corp.example/sso/upstream/callback") ||
		!strings.Contains(err.Error(), "sso.oidc.client_secret") || strings.Contains(err.Error(), "sso.issuer") {
		t.Errorf("oidc upstream without a client: %v", err)
	}
}

// problemPaths loads and validates the file at path and returns the key
// paths with problems (and the problems, for messages).
func problemPaths(t *testing.T, path string) (map[string]bool, Problems) {
	t.Helper()
	c, err := Load(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ps Problems
	if !errors.As(c.Validate(), &ps) {
		t.Fatal("want Problems")
	}
	got := map[string]bool{}
	for _, p := range ps {
		got[p.Path] = true
	}
	return got, ps
}
