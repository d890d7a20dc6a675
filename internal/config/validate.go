package config

import (
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/mail"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Problem is one configuration mistake at a key path.
type Problem struct {
	Path string
	Msg  string
}

// Error makes a Problem an error (TrustedPrefixes returns one).
func (p Problem) Error() string { return p.String() }

func (p Problem) String() string {
	if p.Path == "" {
		return p.Msg
	}
	return p.Path + ": " + p.Msg
}

// Problems is every mistake found; it is an error.
type Problems []Problem

func (ps Problems) Error() string {
	lines := make([]string, len(ps))
	for i, p := range ps {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Merge returns ps followed by the problems of err that ps does not already
// name (same key path); err may be nil or a Problems.
func (ps Problems) Merge(err error) error {
	out := append(Problems(nil), ps...)
	var more Problems
	if errors.As(err, &more) {
		seen := map[string]bool{}
		for _, p := range ps {
			seen[p.Path] = true
		}
		for _, p := range more {
			if p.Path == "" || !seen[p.Path] {
				out = append(out, p)
			}
		}
	} else if err != nil {
		out = append(out, Problem{Msg: err.Error()})
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

var appName = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// Validate checks everything that can be checked without the network and
// returns all problems (nil when there are none). Secrets are resolved, so a
// missing secret file is reported here rather than at the first message.
func (c Config) Validate() error {
	var ps Problems
	add := func(path, format string, a ...any) { ps = append(ps, Problem{path, fmt.Sprintf(format, a...)}) }

	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		add("log.level", "must be debug, info, warn or error, not %q", c.Log.Level)
	}
	if c.Log.Format != "text" && c.Log.Format != "json" {
		add("log.format", "must be text or json, not %q", c.Log.Format)
	}
	if c.DataDir == "" && (c.Spool.Path == "" || c.Spool.Blobs.Dir == "") {
		add("data_dir", "is required (or set spool.path and spool.blobs.dir)")
	}

	if c.SMTP.Enabled {
		checkAddr(add, "smtp.listen", c.SMTP.Listen)
		if len(c.SMTP.Domains) == 0 {
			add("smtp.domains", "list at least one recipient domain mmgate accepts mail for")
		}
		for i, d := range c.SMTP.Domains {
			if d == "" || strings.ContainsAny(d, "@ /") {
				add(fmt.Sprintf("smtp.domains[%d]", i), "%q is not a domain", d)
			}
		}
		cert, key := c.SMTP.TLS.CertFile, c.SMTP.TLS.KeyFile
		if (cert == "") != (key == "") {
			add("smtp.tls", "set both cert_file and key_file, or neither")
		}
		for path, f := range map[string]string{"smtp.tls.cert_file": cert, "smtp.tls.key_file": key} {
			if f != "" {
				if _, err := os.Stat(f); err != nil {
					add(path, "%v", err)
				}
			}
		}
		if cert == "" && !c.SMTP.AllowInsecureAuth && c.hasSMTPLogins() {
			add("smtp.tls", "AUTH is offered only after STARTTLS: configure a certificate, or set smtp.allow_insecure_auth for loopback-only clients")
		}
		if c.SMTP.MaxMessageBytes <= 0 {
			add("smtp.max_message_bytes", "must be positive")
		}
		if c.SMTP.MaxRecipients <= 0 {
			add("smtp.max_recipients", "must be positive")
		}
		if c.SMTP.MaxLineLength < 1000 {
			add("smtp.max_line_length", "must be at least 1000 (RFC 5322 allows 998 characters plus CRLF)")
		}
		for i, rc := range c.SMTP.RelayCredentials {
			p := fmt.Sprintf("smtp.relay_credentials[%d]", i)
			if rc.Username == "" {
				add(p+".username", "is required")
			}
			checkSecret(add, p+".password", rc.Password, true)
		}
	}
	checkAddr(add, "http.listen", c.HTTP.Listen)
	checkSecret(add, "http.admin_token", c.HTTP.AdminToken, false)
	if c.Mattermost.Setup.Secret.IsSet() {
		if v, err := c.Mattermost.Setup.Secret.Resolve(); err != nil {
			add("mattermost.setup.secret", "%v", err)
		} else if len(v) < 32 {
			add("mattermost.setup.secret", "must be at least 32 bytes (e.g. openssl rand -base64 32)")
		}
		if c.HTTP.PublicURL == "" {
			add("http.public_url", "install links need it: mmgate's address as a browser reaches it")
		}
	}
	if c.HTTP.PublicURL != "" {
		if u, err := url.Parse(c.HTTP.PublicURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("http.public_url", "must be mmgate's URL as Mattermost reaches it, e.g. https://mmgate.corp.example, got %q", c.HTTP.PublicURL)
		}
	}

	if c.Mattermost.URL == "" {
		add("mattermost.url", "is required (e.g. https://chat.example.com)")
	} else if !strings.HasPrefix(c.Mattermost.URL, "http://") && !strings.HasPrefix(c.Mattermost.URL, "https://") {
		add("mattermost.url", "must start with http:// or https://, got %q", c.Mattermost.URL)
	}
	if c.Mattermost.MaxPostRunes < 0 {
		add("mattermost.max_post_runes", "must not be negative")
	}
	c.validateSpool(add)
	if c.Spool.RetryMin <= 0 || c.Spool.RetryMax < c.Spool.RetryMin {
		add("spool.retry_min", "retry_min must be positive and not above retry_max")
	}
	if c.Spool.MaxRetryAge <= 0 {
		add("spool.max_retry_age", "must be positive")
	}
	if c.Relay.Workers < 1 {
		add("relay.workers", "must be at least 1")
	}
	if c.Relay.PollInterval <= 0 {
		add("relay.poll_interval", "must be positive")
	}
	switch {
	case c.Directory.File != "" && c.Directory.LDAP != nil:
		add("directory", "set directory.file or directory.ldap, not both")
	case c.Directory.File != "":
		if _, err := os.Stat(c.Directory.File); err != nil {
			add("directory.file", "%v", err)
		}
	case c.Directory.LDAP != nil:
		validateLDAP(c.Directory.LDAP, add)
	case !c.Directory.MattermostLookup:
		add("directory", "set directory.file, directory.ldap or directory.mattermost_lookup: true, or no recipient can be resolved")
	}
	c.validateSSO(add)
	if len(c.Approvals.Clients) > 0 {
		if _, ok := c.Apps[c.Approvals.App]; !ok {
			add("approvals.app", "must name a configured app, whose bot posts the requests (got %q)", c.Approvals.App)
		}
		if c.HTTP.PublicURL == "" {
			add("http.public_url", "approvals need it: Mattermost sends the buttons' clicks there")
		}
		for _, n := range sortedKeys(c.Approvals.Clients) {
			cl := c.Approvals.Clients[n]
			checkSecret(add, "approvals.clients."+n+".api_key", cl.APIKey, true)
			if v, err := cl.APIKey.Resolve(); err == nil && len(v) < 16 {
				add("approvals.clients."+n+".api_key", "must be at least 16 characters")
			}
			checkSecret(add, "approvals.clients."+n+".callback_secret", cl.CallbackSecret, false)
		}
		checkSecret(add, "approvals.signing_key", c.Approvals.SigningKey, false)
	}
	groups := map[string]string{"directory.deny_group": c.Directory.DenyGroup}
	for name, a := range c.Apps {
		groups["apps."+name+".allow_group"] = a.AllowGroup
		groups["apps."+name+".deny_group"] = a.DenyGroup
	}
	for key, dn := range groups {
		if dn == "" {
			continue
		}
		if c.Directory.LDAP == nil {
			add(key, "groups need directory.ldap (the static file and Mattermost have no groups)")
		} else if !looksLikeDN(dn) {
			add(key, "%q is not a DN (cn=…,ou=…,dc=…)", dn)
		}
	}

	for i, p := range c.Routing.SenderPatterns {
		if !strings.Contains(p, "{app}") {
			add(fmt.Sprintf("routing.sender_patterns[%d]", i), "%q must contain {app}", p)
		}
	}
	for i, r := range c.Routing.Rules {
		p := fmt.Sprintf("routing.rules[%d]", i)
		if _, ok := c.Apps[r.App]; !ok {
			add(p+".app", "%q is not a configured app", r.App)
		}
		if r.From == "" && r.To == "" && r.Subject == "" && len(r.Header) == 0 {
			add(p, "has no condition (from, to, subject or header)")
		}
		if r.Subject != "" {
			if _, err := regexp.Compile(r.Subject); err != nil {
				add(p+".subject", "%v", err)
			}
		}
		for h, re := range r.Header {
			if _, err := regexp.Compile(re); err != nil {
				add(p+".header."+h, "%v", err)
			}
		}
	}

	if len(c.Apps) == 0 {
		add("apps", "configure at least one source app")
	}
	names := make([]string, 0, len(c.Apps))
	for n := range c.Apps {
		names = append(names, n)
	}
	sort.Strings(names)
	logins := map[string]string{}
	for _, rc := range c.SMTP.RelayCredentials {
		logins[strings.ToLower(rc.Username)] = "smtp.relay_credentials"
	}
	for _, n := range names {
		a, p := c.Apps[n], "apps."+n
		if !appName.MatchString(n) {
			add(p, "app names are lowercase letters, digits, - and _")
		}
		checkSecret(add, p+".bot_token", a.BotToken, false) // unset: the secret store's, from `mmgate mattermost setup`
		if a.Icon != "" {
			if _, err := os.Stat(a.Icon); err != nil {
				add(p+".icon", "%v", err)
			}
		}
		if a.SMTP.Password.IsSet() {
			checkSecret(add, p+".smtp.password", a.SMTP.Password, false)
			u := strings.ToLower(a.SMTPUsername(n))
			if other, dup := logins[u]; dup {
				add(p+".smtp.username", "%q is also used by %s", u, other)
			}
			logins[u] = p
		}
		if !a.DMs() && len(a.Channels) == 0 {
			add(p, "has no destination: enable direct_messages or list channels")
		}
		for i, ch := range a.Channels {
			if parts := strings.Split(ch, "/"); len(parts) != 2 || parts[0] == "" || parts[1] == "" {
				add(fmt.Sprintf("%s.channels[%d]", p, i), "%q must be team/channel (names, not display names)", ch)
			}
		}
		if a.MaxAttachmentBytes < 0 {
			add(p+".max_attachment_bytes", "must not be negative")
		}
		for key, v := range map[string]string{"auto_replies": a.AutoReplies, "bounces": a.Bounces} {
			if v != "" && v != "quarantine" && v != "post" {
				add(p+"."+key, "must be quarantine or post, not %q", v)
			}
		}
	}
	c.validateIntakes(add)
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// ValidateStorage checks only what locating the spool needs, for commands
// that administer it or store through the running instance: they must work
// for operators and pipe users who cannot read the bot tokens.
func (c Config) ValidateStorage() error {
	var ps Problems
	add := func(path, format string, a ...any) { ps = append(ps, Problem{path, fmt.Sprintf(format, a...)}) }
	if c.DataDir == "" && (c.Spool.Path == "" || c.Spool.Blobs.Dir == "") {
		add("data_dir", "is required (or set spool.path and spool.blobs.dir)")
	}
	c.validateSpool(add)
	if len(ps) == 0 {
		return nil
	}
	return ps
}

// validateSpool checks the spool's database and blob store.
func (c Config) validateSpool(add func(string, string, ...any)) {
	switch c.Spool.Driver {
	case "sqlite":
		if c.Spool.DSN.IsSet() {
			add("spool.dsn", "is for spool.driver: postgres")
		}
	case "postgres":
		checkSecret(add, "spool.dsn", c.Spool.DSN, true)
	default:
		add("spool.driver", "must be sqlite or postgres, not %q", c.Spool.Driver)
	}
	switch c.Spool.Blobs.Driver {
	case "dir":
	case "s3":
		s3, p := c.Spool.Blobs.S3, "spool.blobs.s3"
		if s3.Endpoint == "" {
			add(p+".endpoint", "is required (host:port)")
		}
		if s3.Bucket == "" {
			add(p+".bucket", "is required")
		}
		checkSecret(add, p+".access_key", s3.AccessKey, true)
		checkSecret(add, p+".secret_key", s3.SecretKey, true)
		if s3.Insecure {
			if host, _, err := net.SplitHostPort(s3.Endpoint); err == nil && !isLoopback(host) {
				add(p+".insecure", "plain HTTP sends the keys and mail in clear text: allowed only for a loopback endpoint")
			}
		}
	default:
		add("spool.blobs.driver", "must be dir or s3, not %q", c.Spool.Blobs.Driver)
	}
}

// validateIntakes checks the pipe socket, the postback mailboxes and the IMAP
// mailboxes.
func (c Config) validateIntakes(add func(string, string, ...any)) {
	if _, err := c.PipeSocketMode(); err != nil {
		add("pipe.socket_mode", "%v", err)
	}
	checkDefaults := func(p string, d MailboxDefaults) {
		if d.App != "" {
			if _, ok := c.Apps[d.App]; !ok {
				add(p+".app", "%q is not a configured app", d.App)
			}
		}
		for i, r := range d.Recipients {
			if _, err := mail.ParseAddress(r); err != nil {
				add(fmt.Sprintf("%s.recipients[%d]", p, i), "%q is not an address", r)
			}
		}
	}
	for _, n := range sortedKeys(c.Postback.Mailboxes) {
		m, p := c.Postback.Mailboxes[n], "postback.mailboxes."+n
		if !appName.MatchString(n) {
			add(p, "mailbox names are lowercase letters, digits, - and _ (they are the last element of the URL)")
		}
		if !m.Token.IsSet() && m.JWTSecretFile == "" {
			add(p, "set token or jwt_secret_file: a postback mailbox is never open")
		}
		checkSecret(add, p+".token", m.Token, false)
		if m.JWTSecretFile != "" {
			if _, err := ReadJWTSecret(m.JWTSecretFile); err != nil {
				add(p+".jwt_secret_file", "%v", err)
			}
		}
		checkDefaults(p, m.MailboxDefaults)
	}
	if c.Postback.MaxMessageBytes < 0 {
		add("postback.max_message_bytes", "must not be negative")
	}
	for _, n := range sortedKeys(c.IMAP.Mailboxes) {
		m, p := c.IMAP.Mailboxes[n], "imap.mailboxes."+n
		checkAddr(add, p+".address", m.Address)
		switch m.TLS {
		case "", "imaps", "starttls":
		case "none":
			if host, _, err := net.SplitHostPort(m.Address); err == nil && !isLoopback(host) {
				add(p+".tls", "none sends the password in clear text: allowed only for a loopback address")
			}
		default:
			add(p+".tls", "must be imaps, starttls or none, not %q", m.TLS)
		}
		if m.CAFile != "" {
			if _, err := os.Stat(m.CAFile); err != nil {
				add(p+".ca_file", "%v", err)
			}
		}
		if m.Username == "" {
			add(p+".username", "is required")
		}
		checkSecret(add, p+".password", m.Password, true)
		if m.Since != "" && m.Since != "all" {
			if _, err := time.Parse("2006-01-02", m.Since); err != nil {
				add(p+".since", "must be a date (YYYY-MM-DD), \"all\" or empty, not %q", m.Since)
			}
		}
		if m.PollInterval < 0 {
			add(p+".poll_interval", "must not be negative")
		}
		folder := m.Folder
		if folder == "" {
			folder = "INBOX"
		}
		if m.MoveTo != "" && strings.EqualFold(m.MoveTo, folder) {
			add(p+".move_to", "%q is the folder being watched: give another folder, or leave it empty to flag mail as seen instead", m.MoveTo)
		}
		checkDefaults(p, m.MailboxDefaults)
	}
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// PipeSocketMode parses pipe.socket_mode.
func (c Config) PipeSocketMode() (os.FileMode, error) {
	v := c.Pipe.SocketMode
	if v == "" {
		v = "0660"
	}
	n, err := strconv.ParseUint(v, 8, 32)
	if err != nil || n > 0o777 {
		return 0, fmt.Errorf("%q is not an octal permission such as 0660", v)
	}
	return os.FileMode(n), nil
}

// ReadJWTSecret reads a mail_room JWT secret file: base64 (standard, strict)
// of exactly 32 bytes, a trailing newline allowed.
func ReadJWTSecret(path string) ([]byte, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	key, err := base64.StdEncoding.Strict().DecodeString(strings.TrimRight(string(b), "\r\n"))
	if err != nil {
		return nil, fmt.Errorf("%s is not base64: %v (make one with: head -c 32 /dev/urandom | base64 > %s)", path, err, path)
	}
	if len(key) != 32 {
		return nil, fmt.Errorf("%s holds %d bytes, want exactly 32 (make one with: head -c 32 /dev/urandom | base64 > %s)", path, len(key), path)
	}
	return key, nil
}

func (c Config) hasSMTPLogins() bool {
	if len(c.SMTP.RelayCredentials) > 0 {
		return true
	}
	for _, a := range c.Apps {
		if a.SMTP.Password.IsSet() {
			return true
		}
	}
	return false
}

func checkAddr(add func(string, string, ...any), path, addr string) {
	if addr == "" {
		add(path, "is required (host:port)")
		return
	}
	if _, _, err := net.SplitHostPort(addr); err != nil {
		add(path, "%q is not host:port: %v", addr, err)
	}
}

func checkSecret(add func(string, string, ...any), path string, s Secret, required bool) {
	if !s.IsSet() {
		if required {
			add(path, "is required (inline, file:/path or env:NAME)")
		}
		return
	}
	if _, err := s.Resolve(); err != nil {
		add(path, "%v", err)
	}
}

func validateLDAP(l *LDAPConfig, add func(key, format string, a ...any)) {
	if len(l.URLs) == 0 {
		add("directory.ldap.urls", "at least one server (ldap://host:389 or ldaps://host:636)")
	}
	for i, u := range l.URLs {
		if !strings.HasPrefix(u, "ldap://") && !strings.HasPrefix(u, "ldaps://") {
			add(fmt.Sprintf("directory.ldap.urls[%d]", i), "%q must start with ldap:// or ldaps://", u)
		}
	}
	if l.BaseDN == "" {
		add("directory.ldap.base_dn", "is required (where people are searched)")
	} else if !looksLikeDN(l.BaseDN) {
		add("directory.ldap.base_dn", "%q is not a DN", l.BaseDN)
	}
	checkSecret(add, "directory.ldap.bind_password", l.BindPassword, l.BindDN != "")
	if l.CAFile != "" {
		if _, err := os.Stat(l.CAFile); err != nil {
			add("directory.ldap.ca_file", "%v", err)
		}
	}
	switch l.Nested {
	case "", "auto", "in_chain", "walk":
	default:
		add("directory.ldap.nested", "%q must be auto, in_chain or walk", l.Nested)
	}
	for key, v := range map[string]int{"max_depth": l.MaxDepth, "page_size": l.PageSize, "pool_size": l.PoolSize} {
		if v < 0 {
			add("directory.ldap."+key, "must not be negative")
		}
	}
	for key, v := range map[string]time.Duration{"timeout": l.Timeout, "cache_ttl": l.CacheTTL, "negative_cache_ttl": l.NegativeCacheTTL} {
		if v < 0 {
			add("directory.ldap."+key, "must not be negative")
		}
	}
}

// looksLikeDN is a light check that catches a group name given instead of a DN.
func looksLikeDN(s string) bool {
	t, v, ok := strings.Cut(s, "=")
	return ok && strings.TrimSpace(t) != "" && strings.TrimSpace(v) != ""
}

// validateSSO checks the sign-in bridge.
func (c Config) validateSSO(add func(string, string, ...any)) {
	s := c.SSO
	if !s.Enabled {
		return
	}
	if u, err := url.Parse(s.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		add("sso.issuer", "must be mmgate's public URL, e.g. https://sso.corp.example, got %q", s.Issuer)
	} else if strings.Trim(u.Path, "/") != "" || u.RawQuery != "" {
		add("sso.issuer", "must have no path (%q): serve mmgate at the root of its own host name", s.Issuer)
	}
	switch s.Upstream {
	case "ldap":
		if c.Directory.LDAP == nil {
			add("sso.upstream", "ldap needs directory.ldap (the servers passwords are checked against)")
		}
	case "oidc":
		o := s.OIDC
		if u, err := url.Parse(o.Issuer); err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			add("sso.oidc.issuer", "must be the platform's issuer URL (its /.well-known/openid-configuration is read), got %q", o.Issuer)
		}
		if o.ClientID == "" {
			add("sso.oidc.client_id", "is required: register mmgate at the platform with the redirect URI %s/sso/upstream/callback", s.Issuer)
		}
		checkSecret(add, "sso.oidc.client_secret", o.ClientSecret, true)
	default:
		add("sso.upstream", "must be ldap or oidc, not %q", s.Upstream)
	}
	if len(s.Clients) == 0 {
		add("sso.clients", "register at least one client (Mattermost: redirect URI SITE_URL/signup/gitlab/complete)")
	}
	seen := map[string]bool{}
	for i, cl := range s.Clients {
		p := fmt.Sprintf("sso.clients[%d]", i)
		if cl.ID == "" {
			add(p+".id", "is required")
		} else if seen[cl.ID] {
			add(p+".id", "%q is registered twice", cl.ID)
		}
		seen[cl.ID] = true
		checkSecret(add, p+".secret", cl.Secret, true)
		if len(cl.RedirectURIs) == 0 {
			add(p+".redirect_uris", "list the exact redirect URIs (Mattermost: SITE_URL/signup/gitlab/complete)")
		}
		for j, r := range cl.RedirectURIs {
			u, err := url.Parse(r)
			if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.Fragment != "" || strings.ContainsAny(r, "*") {
				add(fmt.Sprintf("%s.redirect_uris[%d]", p, j), "%q must be an absolute http(s) URL without wildcards or fragment", r)
			}
		}
	}
	var bad Problem
	if _, err := s.TrustedPrefixes(); errors.As(err, &bad) {
		add(bad.Path, "%s", bad.Msg)
	}
	if s.CodeTTL < 0 || s.CodeTTL > 10*time.Minute {
		add("sso.code_ttl", "must be between 0 (default 1m) and 10m (RFC 6749 §4.1.2)")
	}
	if s.SessionTTL < 0 || s.TokenTTL < 0 || s.LoginAttempts < 0 {
		add("sso", "session_ttl, token_ttl and login_attempts must not be negative")
	}
}
