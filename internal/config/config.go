// Package config owns mmgate's typed configuration: a YAML file overlaid with
// MMGATE_* environment variables, defaults, secrets given inline or as `file:` /
// `env:` references, and Validate, which reports every problem with its key path
// rather than stopping at the first. It never logs or prints a secret's value.
package config

import (
	_ "embed"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"
)

// EnvPrefix is the prefix of environment overrides. A double underscore
// separates levels: MMGATE_SMTP__LISTEN sets smtp.listen and
// MMGATE_APPS__JIRA__BOT_TOKEN sets apps.jira.bot_token.
const EnvPrefix = "MMGATE_"

// Config is the whole configuration.
type Config struct {
	// DataDir holds the spool database and blobs unless set separately.
	DataDir    string           `koanf:"data_dir"`
	Log        LogConfig        `koanf:"log"`
	SMTP       SMTPConfig       `koanf:"smtp"`
	HTTP       HTTPConfig       `koanf:"http"`
	Mattermost MattermostConfig `koanf:"mattermost"`
	Spool      SpoolConfig      `koanf:"spool"`
	Relay      RelayConfig      `koanf:"relay"`
	Directory  DirectoryConfig  `koanf:"directory"`
	Routing    RoutingConfig    `koanf:"routing"`
	Apps       map[string]App   `koanf:"apps"`
	Pipe       PipeConfig       `koanf:"pipe"`
	Postback   PostbackConfig   `koanf:"postback"`
	IMAP       IMAPConfig       `koanf:"imap"`
	SSO        SSOConfig        `koanf:"sso"`
	Approvals  ApprovalsConfig  `koanf:"approvals"`
}

// PipeConfig configures the local socket through which `mmgate deliver`
// (postfix's pipe transport, .forward, procmail) stores a message in the
// running instance.
type PipeConfig struct {
	// Socket is the Unix socket `mmgate serve` listens on; "" = DATA_DIR/mmgate.sock,
	// "-" = no socket.
	Socket string `koanf:"socket"`
	// SocketMode is the socket's permission bits (octal string, default "0660"):
	// whoever can write to it can store mail.
	SocketMode string `koanf:"socket_mode"`
	// SocketGroup, when set, is the group that owns the socket (e.g. the group
	// postfix's pipe user is in).
	SocketGroup string `koanf:"socket_group"`
}

// PostbackConfig configures the HTTP intake that GitLab's mail_room (or any
// client) posts raw messages to: POST /intake/mailroom/{mailbox} on http.listen.
type PostbackConfig struct {
	// MaxMessageBytes bounds one message (default smtp.max_message_bytes): 413.
	MaxMessageBytes int64 `koanf:"max_message_bytes"`
	// Mailboxes by name, the last element of the URL.
	Mailboxes map[string]PostbackMailbox `koanf:"mailboxes"`
}

// PostbackMailbox is one postback endpoint and its credentials. At least one
// of Token and JWTSecretFile is required; either authenticates a request.
type PostbackMailbox struct {
	// Token is accepted as `Authorization: Token token="…"` (mail_room's
	// delivery_token), as `Authorization: Bearer …`, or as the password of
	// Basic auth (with Username, when set).
	Token    Secret `koanf:"token"`
	Username string `koanf:"username"`
	// JWTSecretFile holds base64 of exactly 32 bytes (GitLab's mail_room
	// secret file); requests then carry an HS256 JWT in JWTHeader.
	JWTSecretFile   string `koanf:"jwt_secret_file"`
	JWTHeader       string `koanf:"jwt_header"` // default Gitlab-Mailroom-Api-Request
	JWTIssuer       string `koanf:"jwt_issuer"` // default gitlab-mailroom
	MailboxDefaults `koanf:",squash"`
}

// MailboxDefaults say what a message from a mailbox means when its envelope
// does not: postback and IMAP deliver mail without an SMTP envelope.
type MailboxDefaults struct {
	// App fixes the source app (it wins like an app's SMTP login); "" routes
	// by rules and sender patterns.
	App string `koanf:"app"`
	// Recipients replace the envelope recipients; empty: the message's
	// Delivered-To / X-Original-To, else To and Cc, in smtp.domains.
	Recipients []string `koanf:"recipients"`
}

// IMAPConfig lists the mailboxes mmgate polls.
type IMAPConfig struct {
	Mailboxes map[string]IMAPMailbox `koanf:"mailboxes"`
}

// IMAPMailbox is one polled IMAP folder.
type IMAPMailbox struct {
	// Address is host:port (993 for imaps, 143 otherwise).
	Address string `koanf:"address"`
	// TLS: "imaps" (implicit TLS, default), "starttls", or "none" (loopback only).
	TLS string `koanf:"tls"`
	// CAFile verifies the server's certificate (default: the system roots).
	CAFile string `koanf:"ca_file"`
	// InsecureSkipVerify disables certificate checks (tests only).
	InsecureSkipVerify bool   `koanf:"insecure_skip_verify"`
	Username           string `koanf:"username"`
	Password           Secret `koanf:"password"`
	Folder             string `koanf:"folder"` // default INBOX
	// MoveTo moves stored messages to this folder; "" flags them instead
	// (\Seen and the $MmgateStored keyword) and leaves them in place.
	MoveTo string `koanf:"move_to"`
	// Since: only mail received on or after this date (YYYY-MM-DD) is taken;
	// "all" takes the whole folder; "" (default) takes mail from when mmgate
	// first saw this mailbox, so an old backlog is not replayed.
	Since string `koanf:"since"`
	// PollInterval is used when the server has no IDLE, and as IDLE's
	// refresh (default 1m).
	PollInterval    time.Duration `koanf:"poll_interval"`
	MailboxDefaults `koanf:",squash"`
}

// ApprovalsConfig turns on approval requests (POST /api/v1/approvals).
type ApprovalsConfig struct {
	// App is the app whose bot posts the requests.
	App string `koanf:"app"`
	// SigningKey signs the buttons (at least 32 bytes); unset, one is made
	// and kept in the secret store.
	SigningKey Secret `koanf:"signing_key"`
	// Clients are the systems that may ask, by name.
	Clients map[string]ApprovalClient `koanf:"clients"`
}

// ApprovalClient is a system that may ask for approvals.
type ApprovalClient struct {
	// APIKey authenticates it (Bearer), and is the HMAC key of its JWTs.
	APIKey Secret `koanf:"api_key"`
	// CallbackSecret signs its callbacks (default: the API key).
	CallbackSecret Secret `koanf:"callback_secret"`
	// CallbackPrefixes, when set, are the only URL prefixes its callback_url
	// may start with (mmgate calls them from inside your network).
	CallbackPrefixes []string `koanf:"callback_prefixes"`
}

// SSOConfig is the sign-in bridge: an OAuth2 provider shaped like GitLab's
// (so that Mattermost Team Edition signs people in through it) and a
// standard OpenID Connect provider, in front of LDAP or the organisation's
// own OIDC/OAuth2 platform.
type SSOConfig struct {
	Enabled bool `koanf:"enabled"`
	// Issuer is mmgate's public URL as browsers and Mattermost reach it
	// (https://sso.corp.example); the OAuth endpoints hang under it.
	Issuer string `koanf:"issuer"`
	// Organization and LogoURL brand the sign-in page.
	Organization string `koanf:"organization"`
	LogoURL      string `koanf:"logo_url"`
	// Upstream is where people prove who they are: "ldap" (the
	// directory.ldap servers, a password on mmgate's page) or "oidc".
	Upstream string        `koanf:"upstream"`
	LDAP     SSOLDAPConfig `koanf:"ldap"`
	OIDC     SSOOIDCConfig `koanf:"oidc"`
	// Clients are the applications allowed to sign people in (Mattermost).
	Clients []SSOClient `koanf:"clients"`
	// SessionTTL is how long mmgate's own sign-in lasts (default 12h).
	SessionTTL time.Duration `koanf:"session_ttl"`
	// CodeTTL is an authorization code's life (default 1m, at most 10m).
	CodeTTL time.Duration `koanf:"code_ttl"`
	// TokenTTL is an access token's life (default 1h).
	TokenTTL time.Duration `koanf:"token_ttl"`
	// LoginAttempts is how many failed passwords one username, or one client
	// address, may try per minute before getting 429 (default 5 per
	// username, 4× that per address).
	LoginAttempts int `koanf:"login_attempts"`
	// TrustedProxies (addresses or CIDRs) are the reverse proxies in front
	// of mmgate: their X-Forwarded-For names the client for the per-address
	// limit. Without them every person behind the proxy shares one budget.
	TrustedProxies []string `koanf:"trusted_proxies"`
}

// SSOLDAPConfig says how a password is checked against directory.ldap.
type SSOLDAPConfig struct {
	// LoginAttributes are matched against what the person types (default:
	// uid and mail; sAMAccountName, userPrincipalName and mail on AD).
	LoginAttributes []string `koanf:"login_attributes"`
	// UsernameAttribute is the Mattermost username (default uid;
	// sAMAccountName on AD).
	UsernameAttribute string `koanf:"username_attribute"`
}

// SSOOIDCConfig is the organisation's OIDC (or OAuth2 with a userinfo
// endpoint) provider.
type SSOOIDCConfig struct {
	Issuer       string   `koanf:"issuer"`
	ClientID     string   `koanf:"client_id"`
	ClientSecret Secret   `koanf:"client_secret"`
	Scopes       []string `koanf:"scopes"` // default openid profile email
	// Claims that hold the username, email and display name (defaults
	// preferred_username, email, name).
	UsernameClaim string `koanf:"username_claim"`
	EmailClaim    string `koanf:"email_claim"`
	NameClaim     string `koanf:"name_claim"`
	// AllowUnverifiedEmail accepts an email the platform marks
	// email_verified=false (Mattermost will treat it as verified).
	AllowUnverifiedEmail bool `koanf:"allow_unverified_email"`
}

// SSOClient is one application that signs people in through mmgate.
type SSOClient struct {
	ID     string `koanf:"id"`
	Secret Secret `koanf:"secret"`
	// RedirectURIs must match exactly
	// (https://mattermost.corp.example/signup/gitlab/complete).
	RedirectURIs []string `koanf:"redirect_uris"`
}

// TrustedPrefixes parses sso.trusted_proxies (addresses or CIDRs).
func (s SSOConfig) TrustedPrefixes() ([]netip.Prefix, error) {
	var out []netip.Prefix
	for i, p := range s.TrustedProxies {
		if pfx, err := netip.ParsePrefix(p); err == nil {
			out = append(out, pfx.Masked())
			continue
		}
		a, err := netip.ParseAddr(p)
		if err != nil {
			return nil, Problem{Path: fmt.Sprintf("sso.trusted_proxies[%d]", i), Msg: fmt.Sprintf("%q is not an address or CIDR (10.0.0.0/8)", p)}
		}
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out, nil
}

// LogConfig selects the log level and format.
type LogConfig struct {
	Level  string `koanf:"level"`  // debug, info, warn, error
	Format string `koanf:"format"` // text or json
}

// SMTPConfig configures the SMTP intake.
type SMTPConfig struct {
	Enabled  bool   `koanf:"enabled"`
	Listen   string `koanf:"listen"`
	Hostname string `koanf:"hostname"`
	// Domains are the recipient domains mmgate accepts mail for; anything else
	// is refused with 550 5.7.1 (never an open relay).
	Domains []string `koanf:"domains"`
	TLS     struct {
		CertFile string `koanf:"cert_file"`
		KeyFile  string `koanf:"key_file"`
	} `koanf:"tls"`
	// AllowInsecureAuth offers AUTH without TLS, to loopback clients only.
	AllowInsecureAuth bool `koanf:"allow_insecure_auth"`
	// RequireAuth refuses MAIL FROM before AUTH.
	RequireAuth     bool  `koanf:"require_auth"`
	MaxMessageBytes int64 `koanf:"max_message_bytes"`
	MaxRecipients   int   `koanf:"max_recipients"`
	MaxLineLength   int   `koanf:"max_line_length"`
	// RelayCredentials are logins not bound to one app (e.g. a postfix relay);
	// the app is then found by rules or sender patterns.
	RelayCredentials []Credential `koanf:"relay_credentials"`
}

// Credential is an SMTP login.
type Credential struct {
	Username string `koanf:"username"`
	Password Secret `koanf:"password"`
}

// HTTPConfig configures the HTTP listener (health, metrics, admin).
type HTTPConfig struct {
	Listen string `koanf:"listen"`
	// PublicURL is mmgate's HTTP address as Mattermost reaches it (for the
	// /mmgate command and buttons), e.g. https://mmgate.corp.example.
	PublicURL string `koanf:"public_url"`
	// AdminToken guards the admin endpoints (POST /admin/mattermost/setup);
	// unset, they are off.
	AdminToken Secret `koanf:"admin_token"`
}

// MattermostConfig names the Mattermost server.
type MattermostConfig struct {
	URL string `koanf:"url"`
	// MaxPostRunes overrides the per-post rune limit; 0 asks the server.
	MaxPostRunes int `koanf:"max_post_runes"`
	// RequestTimeout bounds one REST call (uploads get longer).
	RequestTimeout time.Duration `koanf:"request_timeout"`
	// Setup says what `mmgate mattermost setup` installs.
	Setup struct {
		// Teams get the /mmgate command and the bots (empty: every team).
		Teams []string `koanf:"teams"`
		// Secret signs install links (`mmgate mattermost install-link`);
		// unset, there are none. At least 32 bytes.
		Secret Secret `koanf:"secret"`
	} `koanf:"setup"`
}

// SpoolConfig configures durable storage.
type SpoolConfig struct {
	Driver string `koanf:"driver"` // sqlite (default) or postgres
	Path   string `koanf:"path"`   // SQLite file; default DATA_DIR/spool.db
	// DSN is the PostgreSQL connection string (a secret: it may hold a
	// password), e.g. postgres://mmgate@db/mmgate?sslmode=verify-full.
	DSN   Secret `koanf:"dsn"`
	Blobs struct {
		Driver string `koanf:"driver"` // dir (default) or s3
		Dir    string `koanf:"dir"`    // default DATA_DIR/blobs
		S3     S3     `koanf:"s3"`
	} `koanf:"blobs"`
	// Retention keeps posted raw mail this long before purging it.
	Retention time.Duration `koanf:"retention"`
	// MaxRetryAge quarantines a message still failing after this long.
	MaxRetryAge time.Duration `koanf:"max_retry_age"`
	RetryMin    time.Duration `koanf:"retry_min"`
	RetryMax    time.Duration `koanf:"retry_max"`
}

// S3 names an S3-compatible bucket for raw messages.
type S3 struct {
	Endpoint  string `koanf:"endpoint"` // host:port
	Bucket    string `koanf:"bucket"`
	Prefix    string `koanf:"prefix"`
	Region    string `koanf:"region"`
	AccessKey Secret `koanf:"access_key"`
	SecretKey Secret `koanf:"secret_key"`
	// Insecure uses plain HTTP (a server on loopback only).
	Insecure bool `koanf:"insecure"`
}

// RelayConfig configures the delivery workers.
type RelayConfig struct {
	Workers      int           `koanf:"workers"`
	PollInterval time.Duration `koanf:"poll_interval"`
	JobTimeout   time.Duration `koanf:"job_timeout"`
}

// DirectoryConfig says how an email address becomes a Mattermost user.
type DirectoryConfig struct {
	// File is a static directory (YAML): people with their addresses and,
	// optionally, their Mattermost username.
	File string `koanf:"file"`
	// MattermostLookup falls back to looking the address up in Mattermost by
	// email (needs PrivacySettings.ShowEmailAddress or a bot with the right).
	MattermostLookup bool `koanf:"mattermost_lookup"`
	// LDAP is an LDAP or Active Directory directory (instead of File).
	LDAP *LDAPConfig `koanf:"ldap"`
	// DenyGroup is a group DN whose members receive no app's messages.
	DenyGroup string `koanf:"deny_group"`
}

// LDAPConfig is an LDAP / Active Directory directory.
type LDAPConfig struct {
	// URLs are tried in order: ldap://host:389 or ldaps://host:636.
	URLs         []string `koanf:"urls"`
	StartTLS     bool     `koanf:"start_tls"`
	CAFile       string   `koanf:"ca_file"`
	BindDN       string   `koanf:"bind_dn"`
	BindPassword Secret   `koanf:"bind_password"`
	BaseDN       string   `koanf:"base_dn"`
	GroupBaseDN  string   `koanf:"group_base_dn"`
	UserFilter   string   `koanf:"user_filter"`
	GroupFilter  string   `koanf:"group_filter"`
	// MailAttributes hold addresses (default mail, proxyAddresses).
	MailAttributes []string `koanf:"mail_attributes"`
	// UsernameAttribute holds the Mattermost username (uid,
	// sAMAccountName); empty finds the Mattermost user by email.
	UsernameAttribute    string   `koanf:"username_attribute"`
	DisplayNameAttribute string   `koanf:"display_name_attribute"`
	MemberAttributes     []string `koanf:"member_attributes"`
	// Nested is auto (in_chain on Active Directory, else walk), in_chain or walk.
	Nested           string        `koanf:"nested"`
	MaxDepth         int           `koanf:"max_depth"`
	PageSize         int           `koanf:"page_size"`
	PoolSize         int           `koanf:"pool_size"`
	Timeout          time.Duration `koanf:"timeout"`
	CacheTTL         time.Duration `koanf:"cache_ttl"`
	NegativeCacheTTL time.Duration `koanf:"negative_cache_ttl"`
}

// RoutingConfig decides which app a message comes from.
type RoutingConfig struct {
	// SenderPatterns map an envelope sender to an app; {app} stands for the
	// app's name and * for any text. Default: {app}-svc@* and {app}svc@*.
	SenderPatterns []string `koanf:"sender_patterns"`
	// Rules are tried in order before the sender patterns.
	Rules []Rule `koanf:"rules"`
}

// Rule picks an app when every given condition holds. From and To are glob
// patterns (* and ?) on addresses; Subject and Header values are regular
// expressions.
type Rule struct {
	App     string            `koanf:"app"`
	From    string            `koanf:"from"`
	To      string            `koanf:"to"`
	Subject string            `koanf:"subject"`
	Header  map[string]string `koanf:"header"`
}

// App is one source tool: its bot and where its mail goes.
type App struct {
	DisplayName string `koanf:"display_name"`
	// BotToken is the Mattermost bot account's access token; unset, the one
	// `mmgate mattermost setup` keeps in the secret store.
	BotToken Secret `koanf:"bot_token"`
	// BotUsername is the bot's username for setup (default: the app name).
	BotUsername string `koanf:"bot_username"`
	// Icon is a PNG or JPEG file setup gives the bot as its picture.
	Icon string `koanf:"icon"`
	// SMTP is the app's own SMTP login; Username defaults to the app name.
	SMTP struct {
		Username string `koanf:"username"`
		Password Secret `koanf:"password"`
	} `koanf:"smtp"`
	// Senders are extra envelope-sender patterns for this app.
	Senders []string `koanf:"senders"`
	// DirectMessages posts to each recipient as a DM from the bot (default true).
	DirectMessages *bool `koanf:"direct_messages"`
	// Channels are extra destinations as team/channel.
	Channels []string `koanf:"channels"`
	// MaxAttachmentBytes drops larger attachments with a note (0 = no limit).
	MaxAttachmentBytes int64 `koanf:"max_attachment_bytes"`
	// AutoReplies and Bounces say what happens to out-of-office replies and
	// delivery status notifications of this app: "quarantine" (default, with
	// the reason auto-reply or bounce) or "post".
	AutoReplies string `koanf:"auto_replies"`
	Bounces     string `koanf:"bounces"`
	// AllowGroup (an LDAP group DN), when set, is the only people who receive
	// this app's messages; DenyGroup's members never do (deny wins).
	// Nested groups count.
	AllowGroup string `koanf:"allow_group"`
	DenyGroup  string `koanf:"deny_group"`
	// AllowSubscribe lets people subscribe to the app (/mmgate subscribe):
	// every message of the app then also goes to each subscriber the app's
	// groups allow, as a direct message. Only for apps whose mail is not
	// personal (monitoring, backups, cron).
	AllowSubscribe bool `koanf:"allow_subscribe"`
}

// PostsAutoReplies reports whether the app posts automatic replies.
func (a App) PostsAutoReplies() bool { return a.AutoReplies == "post" }

// PostsBounces reports whether the app posts bounces.
func (a App) PostsBounces() bool { return a.Bounces == "post" }

// DMs reports whether the app posts direct messages.
func (a App) DMs() bool { return a.DirectMessages == nil || *a.DirectMessages }

// BotName is the bot's username setup creates.
func (a App) BotName(name string) string {
	if a.BotUsername != "" {
		return a.BotUsername
	}
	return name
}

// SMTPUsername is the app's SMTP login name.
func (a App) SMTPUsername(name string) string {
	if a.SMTP.Username != "" {
		return a.SMTP.Username
	}
	return name
}

// Default returns the configuration with every default filled in.
func Default() Config {
	c := Config{DataDir: "./mmgate-data"}
	c.Log.Level, c.Log.Format = "info", "text"
	c.SMTP.Enabled = true
	c.SMTP.Listen = "127.0.0.1:2525"
	c.SMTP.MaxMessageBytes = 50 << 20
	c.SMTP.MaxRecipients = 100
	c.SMTP.MaxLineLength = 1 << 20
	c.HTTP.Listen = "127.0.0.1:8025"
	c.Mattermost.RequestTimeout = 30 * time.Second
	c.Spool.Driver = "sqlite"
	c.Spool.Blobs.Driver = "dir"
	c.Spool.Retention = 7 * 24 * time.Hour
	c.Spool.MaxRetryAge = 72 * time.Hour
	c.Spool.RetryMin = 5 * time.Second
	c.Spool.RetryMax = 5 * time.Minute
	c.Relay.Workers = 4
	c.Relay.PollInterval = 50 * time.Millisecond
	c.Relay.JobTimeout = 10 * time.Minute
	c.Routing.SenderPatterns = []string{"{app}-svc@*", "{app}svc@*"}
	c.Pipe.SocketMode = "0660"
	return c
}

// SpoolPath is the SQLite file.
func (c Config) SpoolPath() string {
	if c.Spool.Path != "" {
		return c.Spool.Path
	}
	return strings.TrimRight(c.DataDir, "/") + "/spool.db"
}

// PipeSocket is the local socket of `mmgate deliver`, "" when disabled.
func (c Config) PipeSocket() string {
	switch c.Pipe.Socket {
	case "-":
		return ""
	case "":
		return strings.TrimRight(c.DataDir, "/") + "/mmgate.sock"
	}
	return c.Pipe.Socket
}

// PostbackMaxBytes is the postback intake's size limit.
func (c Config) PostbackMaxBytes() int64 {
	if c.Postback.MaxMessageBytes > 0 {
		return c.Postback.MaxMessageBytes
	}
	return c.SMTP.MaxMessageBytes
}

// BlobDir is the raw-message directory.
func (c Config) BlobDir() string {
	if c.Spool.Blobs.Dir != "" {
		return c.Spool.Blobs.Dir
	}
	return strings.TrimRight(c.DataDir, "/") + "/blobs"
}

// Load reads path (optional when "") and the environment, over the defaults.
// Unknown keys and values of the wrong type are errors (Problems); the
// Config returned with them holds everything that did decode, so that
// `config check` can validate the rest and report every problem at once.
// Load does not validate: call Validate.
func Load(path string, environ []string) (Config, error) {
	k := koanf.New(".")
	if path != "" {
		if _, err := os.Stat(path); err != nil {
			return Config{}, fmt.Errorf("config file: %w", err)
		}
		if err := k.Load(file.Provider(path), yaml.Parser()); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", path, err)
		}
	}
	envp := env.Provider(".", env.Opt{
		Prefix:        EnvPrefix,
		TransformFunc: envKey,
		EnvironFunc:   func() []string { return environ },
	})
	if err := k.Load(envp, nil); err != nil {
		return Config{}, fmt.Errorf("environment: %w", err)
	}
	c := Default()
	var md mapstructure.Metadata
	dc := &mapstructure.DecoderConfig{
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(","),
		),
		Metadata:         &md,
		WeaklyTypedInput: true,
		ErrorUnused:      true,
		Result:           &c,
		TagName:          "koanf",
	}
	if err := k.UnmarshalWithConf("", &c, koanf.UnmarshalConf{Tag: "koanf", DecoderConfig: dc}); err != nil {
		return c, decodeError(err)
	}
	// The bridge's URLs (callbacks, redirect URIs) are built on the issuer:
	// "https://sso.x/" and "https://sso.x" are the same issuer.
	c.SSO.Issuer = strings.TrimRight(c.SSO.Issuer, "/")
	return c, nil
}

// envKey maps MMGATE_SMTP__MAX_RECIPIENTS to smtp.max_recipients.
func envKey(k, v string) (string, any) {
	k = strings.TrimPrefix(k, EnvPrefix)
	if k == "" || strings.HasPrefix(k, "_") {
		return "", nil
	}
	return strings.ToLower(strings.ReplaceAll(k, "__", ".")), v
}

// decodeError turns mapstructure's aggregated error into Problems, one per
// key: mapstructure reports every bad value and unknown key, but as lines of
// one error's text ("'smtp.max_recipients' cannot parse value as 'int': …",
// "'config.Config' has invalid keys: a, b").
func decodeError(err error) error {
	var ps Problems
	for _, line := range strings.Split(err.Error(), "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "* "))
		m := decodeLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		path, msg := mapKey.ReplaceAllString(m[1], ".$1"), m[2]
		if keys, ok := strings.CutPrefix(msg, "has invalid keys: "); ok {
			prefix := ""
			if !strings.Contains(path, "config.") {
				prefix = path + "."
			}
			for _, k := range strings.Split(keys, ", ") {
				ps = append(ps, Problem{Path: prefix + k, Msg: "unknown key (see `mmgate config init` for every key)"})
			}
			continue
		}
		ps = append(ps, Problem{Path: path, Msg: msg})
	}
	if len(ps) == 0 {
		var de *mapstructure.DecodeError
		path := ""
		if errors.As(err, &de) {
			path = de.Name()
		}
		ps = append(ps, Problem{Path: path, Msg: err.Error()})
	}
	return ps
}

var mapKey = regexp.MustCompile(`\[([^\]0-9][^\]]*)\]`)

var decodeLine = regexp.MustCompile(`^'([^']*)' (.+)$`)

// Example is a commented example configuration (`mmgate config init`).
//
//go:embed example.yaml
var Example string
