package config

import (
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
)

// Problem is one configuration mistake at a key path.
type Problem struct {
	Path string
	Msg  string
}

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

	if c.Mattermost.URL == "" {
		add("mattermost.url", "is required (e.g. https://chat.example.com)")
	} else if !strings.HasPrefix(c.Mattermost.URL, "http://") && !strings.HasPrefix(c.Mattermost.URL, "https://") {
		add("mattermost.url", "must start with http:// or https://, got %q", c.Mattermost.URL)
	}
	if c.Mattermost.MaxPostRunes < 0 {
		add("mattermost.max_post_runes", "must not be negative")
	}
	if c.Spool.Driver != "sqlite" {
		add("spool.driver", "only sqlite is supported in this version, got %q", c.Spool.Driver)
	}
	if c.Spool.Blobs.Driver != "dir" {
		add("spool.blobs.driver", "only dir is supported in this version, got %q", c.Spool.Blobs.Driver)
	}
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
	if c.Directory.File != "" {
		if _, err := os.Stat(c.Directory.File); err != nil {
			add("directory.file", "%v", err)
		}
	} else if !c.Directory.MattermostLookup {
		add("directory", "set directory.file or directory.mattermost_lookup: true, or no recipient can be resolved")
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
		checkSecret(add, p+".bot_token", a.BotToken, true)
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
	}
	if len(ps) == 0 {
		return nil
	}
	return ps
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
