// Package app wires mmgate together: it turns a validated configuration into a
// spool, a relay, the intakes and the HTTP server, starts them, and stops them
// in order on a signal (intakes first, so nothing new is acknowledged, then the
// workers, then storage). It owns no behaviour of its own.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/mmgate/mmgate/internal/account"
	"github.com/mmgate/mmgate/internal/approval"
	"github.com/mmgate/mmgate/internal/config"
	ldapdir "github.com/mmgate/mmgate/internal/directory/ldap"
	"github.com/mmgate/mmgate/internal/directory/static"
	"github.com/mmgate/mmgate/internal/httpapi"
	"github.com/mmgate/mmgate/internal/intake/pipe"
	"github.com/mmgate/mmgate/internal/intake/postback"
	smtpintake "github.com/mmgate/mmgate/internal/intake/smtp"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/relay"
	"github.com/mmgate/mmgate/internal/route"
	"github.com/mmgate/mmgate/internal/secrets"
	"github.com/mmgate/mmgate/internal/spool"
	"github.com/mmgate/mmgate/internal/sso"
)

// NewLogger builds the process logger from the config.
func NewLogger(c config.LogConfig) *slog.Logger {
	var lvl slog.Level
	_ = lvl.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: lvl}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewTextHandler(os.Stderr, opts))
}

// OpenSpool opens the configured spool; h may be nil (administration only).
func OpenSpool(ctx context.Context, cfg config.Config, h spool.Handler, log *slog.Logger) (*spool.Spool, error) {
	o := spool.Options{
		Path:         cfg.SpoolPath(),
		BlobDir:      cfg.BlobDir(),
		Logger:       log,
		Handler:      h,
		Workers:      cfg.Relay.Workers,
		PollInterval: cfg.Relay.PollInterval,
		JobTimeout:   cfg.Relay.JobTimeout,
		RetryMin:     cfg.Spool.RetryMin,
		RetryMax:     cfg.Spool.RetryMax,
		MaxRetryAge:  cfg.Spool.MaxRetryAge,
		Retention:    cfg.Spool.Retention,
		BodyLimit:    cfg.SMTP.MaxMessageBytes,
	}
	if cfg.Spool.Driver == "postgres" {
		dsn, err := cfg.Spool.DSN.Resolve()
		if err != nil {
			return nil, fmt.Errorf("spool.dsn: %w", err)
		}
		o.PostgresDSN, o.Path = dsn, ""
	}
	if cfg.Spool.Blobs.Driver == "s3" {
		s3 := cfg.Spool.Blobs.S3
		ak, err := s3.AccessKey.Resolve()
		if err != nil {
			return nil, fmt.Errorf("spool.blobs.s3.access_key: %w", err)
		}
		sk, err := s3.SecretKey.Resolve()
		if err != nil {
			return nil, fmt.Errorf("spool.blobs.s3.secret_key: %w", err)
		}
		o.S3 = &spool.S3Options{Endpoint: s3.Endpoint, Bucket: s3.Bucket, Prefix: s3.Prefix, Region: s3.Region,
			AccessKey: ak, SecretKey: sk, Insecure: s3.Insecure}
		o.BlobDir = ""
	}
	return spool.Open(ctx, o)
}

// Server is a running mmgate.
type Server struct {
	cfg   config.Config
	log   *slog.Logger
	spool *spool.Spool
	smtp  *smtpintake.Server
	http  *http.Server
	pipe  *http.Server
	smtpL net.Listener
	httpL net.Listener
	pipeL net.Listener
	// stopIntakes ends the pollers (IMAP); pollers is their count.
	stopIntakes   context.CancelFunc
	pollers       sync.WaitGroup
	ssoStore      *sso.Store
	stopSSO       context.CancelFunc
	secrets       *secrets.Store
	secretsMu     sync.Mutex
	approvals     *approval.Store
	approvalSvc   *approval.Service
	clients       map[string]*mattermost.Client
	accounts      *account.Store
	tokens        map[string]string // app → the bot token its client has
	tokensMu      sync.Mutex
	tokensErr     string // the last reload's error, said once
	stopTokens    context.CancelFunc
	accountSvc    *account.Service
	bridge        *sso.Bridge
	dir           relay.Directory
	stopApprovals context.CancelFunc
}

// SMTPAddr is the SMTP listener's address (useful with port 0).
func (s *Server) SMTPAddr() net.Addr {
	if s.smtpL == nil {
		return nil
	}
	return s.smtpL.Addr()
}

// HTTPAddr is the HTTP listener's address.
func (s *Server) HTTPAddr() net.Addr { return s.httpL.Addr() }

// Start builds and starts everything. cfg must have passed Validate.
func Start(ctx context.Context, cfg config.Config, log *slog.Logger) (*Server, error) {
	spill := filepath.Join(cfg.DataDir, "tmp")
	if err := os.MkdirAll(spill, 0o700); err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	s := &Server{cfg: cfg, log: log}
	tokens, err := BotTokens(ctx, cfg, s.secretStore)
	if err != nil {
		s.closeSecrets()
		return nil, err
	}
	// Until the spool is open, a failure closes what is open so far.
	early := func(err error) (*Server, error) {
		s.closeSecrets()
		if s.accounts != nil {
			_ = s.accounts.Close()
		}
		if c, ok := s.dir.(interface{ Close() error }); ok && c != nil {
			_ = c.Close()
		}
		return nil, err
	}
	// One directory (its connection pool and caches) serves delivery, the
	// sign-in bridge and approvals.
	if s.dir, err = OpenDirectory(cfg); err != nil {
		return early(err)
	}
	if s.accounts, err = OpenAccounts(ctx, cfg); err != nil {
		return early(err)
	}
	rel, clients, err := buildRelay(cfg, spill, tokens, s.dir, s.accounts, log.With("component", "relay"))
	if err != nil {
		return early(err)
	}
	s.clients = clients
	s.tokens = tokens
	var creds []smtpintake.Credential
	checks := map[string]httpapi.Check{}
	for name, a := range cfg.Apps {
		cl := clients[name]
		checks["mattermost:"+name] = func(ctx context.Context) error {
			if _, err := cl.Me(ctx); err != nil {
				return fmt.Errorf("bot token of app %s: %w", name, err)
			}
			return nil
		}
		if a.SMTP.Password.IsSet() {
			pw, err := a.SMTP.Password.Resolve()
			if err != nil {
				return early(fmt.Errorf("apps.%s.smtp.password: %w", name, err))
			}
			creds = append(creds, smtpintake.Credential{Username: a.SMTPUsername(name), Password: pw, App: name})
		}
	}
	for i, rc := range cfg.SMTP.RelayCredentials {
		pw, err := rc.Password.Resolve()
		if err != nil {
			return early(fmt.Errorf("smtp.relay_credentials[%d].password: %w", i, err))
		}
		creds = append(creds, smtpintake.Credential{Username: rc.Username, Password: pw})
	}
	sp, err := OpenSpool(ctx, cfg, rel, log.With("component", "spool"))
	if err != nil {
		return early(err)
	}
	s.spool = sp
	rel.SetSpool(sp)
	checks["spool"] = sp.Writable

	fail := func(err error) (*Server, error) {
		s.Stop(context.Background())
		return nil, err
	}
	if cfg.SMTP.Enabled {
		var tc *tls.Config
		if cfg.SMTP.TLS.CertFile != "" {
			cert, err := tls.LoadX509KeyPair(cfg.SMTP.TLS.CertFile, cfg.SMTP.TLS.KeyFile)
			if err != nil {
				return fail(fmt.Errorf("smtp.tls: %w", err))
			}
			tc = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		}
		srv, err := smtpintake.New(sp, smtpintake.Options{
			Addr: cfg.SMTP.Listen, Hostname: cfg.SMTP.Hostname, TLSConfig: tc, Credentials: creds,
			AllowInsecureAuth: cfg.SMTP.AllowInsecureAuth, RequireAuth: cfg.SMTP.RequireAuth,
			Domains: cfg.SMTP.Domains, MaxMessageBytes: cfg.SMTP.MaxMessageBytes,
			MaxRecipients: cfg.SMTP.MaxRecipients, MaxLineLength: cfg.SMTP.MaxLineLength,
			Logger: log.With("component", "smtp"),
		})
		if err != nil {
			return fail(err)
		}
		l, err := net.Listen("tcp", cfg.SMTP.Listen)
		if err != nil {
			return fail(fmt.Errorf("smtp.listen: %w", err))
		}
		s.smtp, s.smtpL = srv, l
	}
	routes, err := postbackRoutes(cfg, sp, log)
	if err != nil {
		return fail(err)
	}
	ssoRoutes, err := s.startSSO(ctx, cfg, log.With("component", "sso"))
	if err != nil {
		return fail(fmt.Errorf("sso: %w", err))
	}
	if routes == nil {
		routes = map[string]http.Handler{}
	}
	for k, v := range ssoRoutes {
		routes[k] = v
	}
	apRoutes, err := s.startApprovals(ctx, cfg, clients, log.With("component", "approvals"))
	if err != nil {
		return fail(fmt.Errorf("approvals: %w", err))
	}
	for k, v := range apRoutes {
		routes[k] = v
	}
	accRoutes, err := s.startAccounts(ctx, cfg, rel, clients, log.With("component", "accounts"))
	if err != nil {
		return fail(fmt.Errorf("accounts: %w", err))
	}
	for k, v := range accRoutes {
		routes[k] = v
	}
	routes["POST /mattermost/command"] = s.commandHandler(sp, clients, log.With("component", "command"))
	adminRoutes, err := s.adminRoutes(cfg)
	if err != nil {
		return fail(err)
	}
	for k, v := range adminRoutes {
		routes[k] = v
	}
	hl, err := net.Listen("tcp", cfg.HTTP.Listen)
	if err != nil {
		return fail(fmt.Errorf("http.listen: %w", err))
	}
	s.httpL = hl
	s.http = &http.Server{Handler: httpapi.New(httpapi.Options{Checks: checks, Spool: sp, Routes: routes}),
		ReadHeaderTimeout: 10 * time.Second}
	if sock := cfg.PipeSocket(); sock != "" {
		mode, _ := cfg.PipeSocketMode()
		pl, err := pipe.Listen(sock, mode, cfg.Pipe.SocketGroup)
		if err != nil {
			return fail(err)
		}
		s.pipeL = pl
		s.pipe = &http.Server{Handler: pipe.Handler(sp, cfg.SMTP.MaxMessageBytes, log.With("component", "pipe")),
			ReadHeaderTimeout: 10 * time.Second}
	}

	if err := sp.Start(ctx); err != nil {
		return fail(err)
	}
	go func() {
		if err := s.http.Serve(hl); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("http server stopped", "err", err)
		}
	}()
	if s.smtp != nil {
		go func() {
			if err := s.smtp.Serve(s.smtpL); err != nil && !errors.Is(err, net.ErrClosed) {
				log.Error("smtp server stopped", "err", err)
			}
		}()
	}
	if s.pipe != nil {
		go func() {
			if err := s.pipe.Serve(s.pipeL); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("pipe socket server stopped", "err", err)
			}
		}()
	}
	if err := s.startPollers(cfg, sp, log); err != nil {
		return fail(err)
	}
	tctx, stopTokens := context.WithCancel(context.Background())
	s.stopTokens = stopTokens
	// The bot tokens are read again, so that `mmgate mattermost setup` run
	// from the command line or on another replica, or a rotated token file,
	// takes effect without a restart.
	go every(tctx, 15*time.Second, func(ctx context.Context) { s.reloadTokens(ctx, cfg) })
	spoolAt := cfg.SpoolPath()
	if cfg.Spool.Driver == "postgres" {
		spoolAt = "postgres (spool.dsn)"
	}
	log.Info("mmgate started", "smtp", cfg.SMTP.Listen, "http", hl.Addr().String(), "apps", len(cfg.Apps),
		"spool", spoolAt, "pipe_socket", cfg.PipeSocket(), "postback_mailboxes", len(cfg.Postback.Mailboxes),
		"imap_mailboxes", len(cfg.IMAP.Mailboxes), "sso", cfg.SSO.Enabled)
	return s, nil
}

// Stop shuts down intakes first, then the workers, then storage.
func (s *Server) Stop(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if s.smtp != nil {
		if err := s.smtp.Shutdown(ctx); err != nil {
			s.log.Warn("smtp shutdown", "err", err)
		}
	}
	if s.http != nil {
		_ = s.http.Shutdown(ctx)
	}
	if s.pipe != nil {
		_ = s.pipe.Shutdown(ctx)
	}
	if s.stopIntakes != nil {
		s.stopIntakes()
		s.pollers.Wait()
	}
	if s.stopSSO != nil {
		s.stopSSO()
	}
	if s.stopTokens != nil {
		s.stopTokens()
	}
	if s.ssoStore != nil {
		_ = s.ssoStore.Close()
	}
	if s.stopApprovals != nil {
		s.stopApprovals()
	}
	if s.approvals != nil {
		_ = s.approvals.Close()
	}
	s.closeSecrets()
	if s.spool != nil {
		if err := s.spool.Stop(ctx); err != nil {
			s.log.Warn("spool stop", "err", err)
		}
		if err := s.spool.Close(); err != nil {
			s.log.Warn("spool close", "err", err)
		}
	}
	// After the spool: its workers use the directory and the accounts until
	// they stop.
	if s.accounts != nil {
		_ = s.accounts.Close()
	}
	if c, ok := s.dir.(interface{ Close() error }); ok && c != nil {
		_ = c.Close()
	}
	s.log.Info("mmgate stopped")
}

func (s *Server) closeSecrets() {
	s.secretsMu.Lock()
	defer s.secretsMu.Unlock()
	if s.secrets != nil {
		_ = s.secrets.Close()
		s.secrets = nil
	}
}

// postbackRoutes builds the postback intake's route, if mailboxes are configured.
func postbackRoutes(cfg config.Config, sp *spool.Spool, log *slog.Logger) (map[string]http.Handler, error) {
	if len(cfg.Postback.Mailboxes) == 0 {
		return nil, nil
	}
	var mbs []postback.Mailbox
	for name, m := range cfg.Postback.Mailboxes {
		mb := postback.Mailbox{Name: name, Username: m.Username, JWTHeader: m.JWTHeader, JWTIssuer: m.JWTIssuer,
			App: m.App, Recipients: m.Recipients}
		if m.Token.IsSet() {
			tok, err := m.Token.Resolve()
			if err != nil {
				return nil, fmt.Errorf("postback.mailboxes.%s.token: %w", name, err)
			}
			mb.Token = tok
		}
		if m.JWTSecretFile != "" {
			key, err := config.ReadJWTSecret(m.JWTSecretFile)
			if err != nil {
				return nil, fmt.Errorf("postback.mailboxes.%s.jwt_secret_file: %w", name, err)
			}
			mb.JWTKey = key
		}
		mbs = append(mbs, mb)
	}
	h := postback.New(sp, postback.Options{Mailboxes: mbs, MaxBytes: cfg.PostbackMaxBytes(),
		Logger: log.With("component", "postback")})
	return map[string]http.Handler{postback.Path: h}, nil
}

// startPollers starts one IMAP poller per configured mailbox.
func (s *Server) startPollers(cfg config.Config, sp *spool.Spool, log *slog.Logger) error {
	if len(cfg.IMAP.Mailboxes) == 0 {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	s.stopIntakes = cancel
	for name, m := range cfg.IMAP.Mailboxes {
		plog := log.With("component", "imap", "mailbox", name)
		p, err := newPoller(name, m, sp, plog)
		if err != nil {
			return err
		}
		if err := p.Check(); err != nil {
			return fmt.Errorf("imap.mailboxes.%s: %w", name, err)
		}
		s.pollers.Add(1)
		go func() {
			defer s.pollers.Done()
			if err := p.Run(ctx); err != nil {
				plog.Error("IMAP mailbox is not polled", "err", err)
			}
		}()
	}
	return nil
}

// OpenDirectory builds the configured directory: the static file, LDAP, or
// none (nil: Mattermost lookups only). It does not connect.
func OpenDirectory(cfg config.Config) (relay.Directory, error) {
	switch {
	case cfg.Directory.File != "":
		return static.Load(cfg.Directory.File)
	case cfg.Directory.LDAP != nil:
		l := cfg.Directory.LDAP
		pw := ""
		if l.BindPassword.IsSet() {
			var err error
			if pw, err = l.BindPassword.Resolve(); err != nil {
				return nil, fmt.Errorf("directory.ldap.bind_password: %w", err)
			}
		}
		return ldapdir.New(ldapdir.Config{URLs: l.URLs, StartTLS: l.StartTLS, CAFile: l.CAFile, BindDN: l.BindDN, BindPassword: pw,
			BaseDN: l.BaseDN, GroupBaseDN: l.GroupBaseDN, UserFilter: l.UserFilter, GroupFilter: l.GroupFilter,
			MailAttributes: l.MailAttributes, UsernameAttribute: l.UsernameAttribute, DisplayNameAttribute: l.DisplayNameAttribute,
			MemberAttributes: l.MemberAttributes, Nested: l.Nested, MaxDepth: l.MaxDepth, PageSize: l.PageSize, PoolSize: l.PoolSize,
			Timeout: l.Timeout, CacheTTL: l.CacheTTL, NegativeTTL: l.NegativeCacheTTL})
	}
	return nil, nil
}

// NewExplainer builds the relay as serve would, without a spool, to explain
// messages: it reads the directory and looks users up in Mattermost, and
// posts nothing.
func NewExplainer(cfg config.Config, log *slog.Logger) (*relay.Relay, error) {
	var st *secrets.Store
	tokens, err := BotTokens(context.Background(), cfg, func(ctx context.Context) (*secrets.Store, error) {
		if !sideDBExists(cfg, "secrets.db") {
			return nil, secrets.ErrNotFound
		}
		if st == nil {
			var err error
			st, err = OpenSecrets(ctx, cfg)
			return st, err
		}
		return st, nil
	})
	if st != nil {
		_ = st.Close()
	}
	if err != nil {
		return nil, err
	}
	dir, err := OpenDirectory(cfg)
	if err != nil {
		return nil, err
	}
	// The links and subscriptions, when serve has made them.
	var acc relay.Accounts
	if sideDBExists(cfg, "accounts.db") {
		st, err := OpenAccounts(context.Background(), cfg)
		if err != nil {
			return nil, err
		}
		acc = st
	}
	rel, _, err := buildRelay(cfg, os.TempDir(), tokens, dir, acc, log)
	return rel, err
}

// buildRelay makes the relay of cfg (without its spool) and each app's
// Mattermost client. Nothing connects yet.
func buildRelay(cfg config.Config, spill string, tokens map[string]string, dir relay.Directory, acc relay.Accounts,
	log *slog.Logger) (*relay.Relay, map[string]*mattermost.Client, error) {
	router, err := route.New(cfg)
	if err != nil {
		return nil, nil, err
	}
	apps := map[string]*relay.App{}
	clients := map[string]*mattermost.Client{}
	for name, a := range cfg.Apps {
		tok := tokens[name]
		cl := mattermost.New(cfg.Mattermost.URL, tok, mattermost.Options{Logger: log, RequestTimeout: cfg.Mattermost.RequestTimeout})
		clients[name] = cl
		apps[name] = &relay.App{Name: name, DisplayName: a.DisplayName, Client: cl, DirectMessages: a.DMs(), Channels: a.Channels,
			MaxAttachmentBytes: a.MaxAttachmentBytes, PostAutoReplies: a.PostsAutoReplies(), PostBounces: a.PostsBounces(),
			AllowGroup: a.AllowGroup, DenyGroup: a.DenyGroup, Subscribable: a.AllowSubscribe}
	}
	rel := relay.New(relay.Options{Router: router, Directory: dir, Accounts: acc, MattermostLookup: cfg.Directory.MattermostLookup,
		DenyGroup: cfg.Directory.DenyGroup, Apps: apps, SiteURL: cfg.Mattermost.URL, MaxPostRunes: cfg.Mattermost.MaxPostRunes,
		SpillDir: spill, Domains: cfg.SMTP.Domains, Logger: log})
	return rel, clients, nil
}
