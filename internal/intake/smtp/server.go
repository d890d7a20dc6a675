// Package smtpintake owns mmgate's SMTP intake: an ESMTP server (built on
// github.com/emersion/go-smtp) that authenticates source tools with AUTH PLAIN or
// LOGIN (after STARTTLS, or on loopback when explicitly allowed), accepts mail only
// for the configured recipient domains, and streams each message into a Store.
//
// It only stores. It must never parse a message for routing, never talk to
// Mattermost, never relay mail anywhere, and never answer 250 to DATA unless
// Store.Accept returned nil (the store has made the message durable by then).
// Every failure is answered with an *smtp.SMTPError built by fault.SMTP, so a
// temporary storage problem is a 4xx and the sender retries.
//
// Stored bytes: a Received: trace header written by this server, followed by the
// message exactly as the client sent it after SMTP dot-unstuffing, except that
// bare LF line endings are normalised to CRLF (a lone CR is kept). The
// end-of-data marker must be the standard <CRLF>.<CRLF>; "<LF>.<LF>" and the other
// bare-LF variants are never taken as the end of a message (SMTP smuggling
// protection), they stay message content. (go-smtp v0.25.1 accepts bare LF inside
// DATA; after a bare LF it does not look for a leading dot, so dot-stuffing is
// only undone on CRLF lines.) CHUNKING/BDAT is accepted as go-smtp offers it.
//
// AUTH PLAIN and LOGIN are offered and accepted over TLS, or without TLS only
// when AllowInsecureAuth is set and the client connects from loopback. After
// three failed attempts the connection is closed with 421 4.7.0. A message whose
// client closed the connection before the end of the data is never stored.
//
// Metrics: one mmgate_smtp_sessions_total per accepted connection; the final
// reply of MAIL, RCPT, DATA/BDAT and AUTH as produced by this package's session
// in mmgate_smtp_replies_total (replies go-smtp sends without asking the
// session, such as 552 for a SIZE= parameter, 501 syntax errors or 502 bad
// sequence, are not counted); mmgate_messages_received_total{intake="smtp"} per
// stored message.
package smtpintake

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mmgate/mmgate/internal/metrics"
	"github.com/mmgate/mmgate/internal/spool"
)

// Store is what the intake needs from the spool (spool.Spool satisfies it).
// Accept must read body to io.EOF and return nil only once the message is durable;
// if reading body fails it must return an error.
type Store interface {
	Accept(ctx context.Context, env spool.Envelope, body io.Reader) (string, error)
}

// Credential is one source app's SMTP login. Passwords are compared in constant
// time. App may be empty for a relay login whose app is decided later.
type Credential struct {
	Username, Password, App string
}

// Options configures a Server. Zero values take the documented defaults.
type Options struct {
	// Addr is the listen address for ListenAndServe; default "127.0.0.1:2525".
	Addr string
	// Hostname is the greeting/EHLO domain and the "by" of the Received header;
	// default os.Hostname().
	Hostname string
	// TLSConfig enables STARTTLS; nil means no STARTTLS.
	TLSConfig *tls.Config
	// Credentials are the accepted logins.
	Credentials []Credential
	// AllowInsecureAuth offers AUTH without TLS, but only to clients connecting
	// from a loopback address.
	AllowInsecureAuth bool
	// RequireAuth refuses MAIL FROM before a successful AUTH (530 5.7.0).
	RequireAuth bool
	// Domains are the accepted recipient domains: exact ("corp.example") or
	// subdomain patterns ("*.corp.example" matches any name below corp.example,
	// not corp.example itself). Case-insensitive. At least one is required.
	Domains []string
	// MaxMessageBytes limits the message size as sent by the client (SIZE= and
	// during DATA/BDAT): 552 5.3.4. Default 50 MiB.
	MaxMessageBytes int64
	// MaxRecipients limits RCPT TO per message: 452 4.5.3. Default 100.
	MaxRecipients int
	// MaxLineLength limits any line, commands and message alike. Default 1 MiB.
	MaxLineLength int
	// ReadTimeout is the idle time allowed between client commands and between
	// reads of message data; default 10 minutes. WriteTimeout bounds each reply;
	// default 1 minute.
	ReadTimeout, WriteTimeout time.Duration
	// Logger receives the intake's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Defaults.
const (
	DefaultAddr            = "127.0.0.1:2525"
	DefaultMaxMessageBytes = 50 << 20
	DefaultMaxRecipients   = 100
	DefaultMaxLineLength   = 1 << 20
	DefaultReadTimeout     = 10 * time.Minute
	DefaultWriteTimeout    = time.Minute
	// maxAuthFailures is the number of failed AUTH attempts after which a
	// session is closed with 421 4.7.0.
	maxAuthFailures = 3
)

// Server is the SMTP intake. Create it with New.
type Server struct {
	store   Store
	opts    Options
	log     *slog.Logger
	creds   *credentials
	domains domainSet
	srv     *smtp.Server

	// baseCtx is the parent of every Store.Accept context; cancelled when the
	// server is forcibly closed.
	baseCtx    context.Context
	cancelBase context.CancelFunc

	draining atomic.Bool

	mu       sync.Mutex
	listener net.Listener
	conns    map[*trackedConn]struct{}
	closed   bool
}

// New validates opts and returns a Server. Every configuration problem is
// reported at once.
func New(store Store, opts Options) (*Server, error) {
	var problems []error
	if store == nil {
		problems = append(problems, errors.New("smtp intake: store is nil"))
	}
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if opts.Hostname == "" {
		h, err := os.Hostname()
		if err != nil || h == "" {
			h = "localhost"
		}
		opts.Hostname = h
	}
	if strings.ContainsAny(opts.Hostname, " \t\r\n") {
		problems = append(problems, fmt.Errorf("smtp intake: hostname %q contains white space", opts.Hostname))
	}
	setDefault(&opts.MaxMessageBytes, DefaultMaxMessageBytes)
	setDefault(&opts.MaxRecipients, DefaultMaxRecipients)
	setDefault(&opts.MaxLineLength, DefaultMaxLineLength)
	setDefault(&opts.ReadTimeout, DefaultReadTimeout)
	setDefault(&opts.WriteTimeout, DefaultWriteTimeout)
	if opts.MaxMessageBytes < 0 {
		problems = append(problems, errors.New("smtp intake: MaxMessageBytes is negative"))
	}
	if opts.MaxRecipients < 0 {
		problems = append(problems, errors.New("smtp intake: MaxRecipients is negative"))
	}
	if opts.MaxLineLength < 0 {
		problems = append(problems, errors.New("smtp intake: MaxLineLength is negative"))
	}
	if opts.ReadTimeout < 0 || opts.WriteTimeout < 0 {
		problems = append(problems, errors.New("smtp intake: negative timeout"))
	}
	domains, err := newDomainSet(opts.Domains)
	if err != nil {
		problems = append(problems, err)
	}
	creds, err := newCredentials(opts.Credentials)
	if err != nil {
		problems = append(problems, err)
	}
	if opts.RequireAuth && len(opts.Credentials) == 0 {
		problems = append(problems, errors.New("smtp intake: RequireAuth is set but there are no credentials"))
	}
	if len(opts.Credentials) > 0 && opts.TLSConfig == nil && !opts.AllowInsecureAuth {
		problems = append(problems, errors.New("smtp intake: credentials are configured but AUTH can never be offered: set TLSConfig, or AllowInsecureAuth for loopback clients"))
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}

	s := &Server{
		store:   store,
		opts:    opts,
		log:     opts.Logger,
		creds:   creds,
		domains: domains,
		conns:   make(map[*trackedConn]struct{}),
	}
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())

	srv := smtp.NewServer(smtp.BackendFunc(s.newSession))
	srv.Addr = opts.Addr
	srv.Domain = opts.Hostname
	srv.TLSConfig = opts.TLSConfig
	srv.MaxMessageBytes = opts.MaxMessageBytes
	// The recipient limit is enforced by the session so that the 452 is counted.
	srv.MaxRecipients = 0
	srv.MaxLineLength = opts.MaxLineLength
	// go-smtp's switch is server-wide; the per-connection decision (TLS, or
	// loopback when AllowInsecureAuth) is made by the session, which offers no
	// mechanism and refuses AUTH when it is not allowed.
	srv.AllowInsecureAuth = true
	srv.ReadTimeout = opts.ReadTimeout
	srv.WriteTimeout = opts.WriteTimeout
	srv.EnableSMTPUTF8 = true
	srv.ErrorLog = slogAdapter{s.log}
	s.srv = srv
	return s, nil
}

func setDefault[T int | int64 | time.Duration](v *T, def T) {
	if *v == 0 {
		*v = def
	}
}

// ListenAndServe listens on Options.Addr and serves until Shutdown.
func (s *Server) ListenAndServe() error {
	l, err := net.Listen("tcp", s.opts.Addr)
	if err != nil {
		return fmt.Errorf("smtp intake: listen %s: %w", s.opts.Addr, err)
	}
	return s.Serve(l)
}

// Serve accepts connections on l until Shutdown; it then returns nil. It returns
// smtp.ErrServerClosed if the server was already shut down.
func (s *Server) Serve(l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		_ = l.Close()
		return smtp.ErrServerClosed
	}
	s.listener = l
	s.mu.Unlock()
	return s.srv.Serve(&trackingListener{Listener: l, s: s})
}

// Addr is the listening address, nil before Serve was called.
func (s *Server) Addr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener == nil {
		return nil
	}
	return s.listener.Addr()
}

// Shutdown stops accepting connections, refuses new transactions with 421,
// closes idle sessions, and waits for transactions in progress to finish. When
// ctx ends first, every remaining connection is closed and ctx's error returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return smtp.ErrServerClosed
	}
	s.closed = true
	s.mu.Unlock()
	s.draining.Store(true)

	done := make(chan error, 1)
	go func() { done <- s.srv.Shutdown(context.Background()) }()

	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		s.closeIdle()
		select {
		case err := <-done:
			s.cancelBase()
			if errors.Is(err, net.ErrClosed) {
				err = nil
			}
			return err
		case <-ctx.Done():
			s.cancelBase()
			_ = s.srv.Close()
			<-done
			return ctx.Err()
		case <-tick.C:
		}
	}
}

// closeIdle closes every connection that is not inside a mail transaction.
func (s *Server) closeIdle() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.closeIfIdle()
	}
}

// trackingListener counts sessions and tracks connections for Shutdown.
type trackingListener struct {
	net.Listener
	s *Server
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	metrics.SMTPSessions.Inc()
	tc := &trackedConn{Conn: c, s: l.s}
	l.s.mu.Lock()
	l.s.conns[tc] = struct{}{}
	l.s.mu.Unlock()
	return tc, nil
}

// trackedConn is an accepted connection. busy is true while a mail transaction
// is in progress (from MAIL until the reply to DATA has been written), during
// which Shutdown does not close it.
type trackedConn struct {
	net.Conn
	s *Server

	mu        sync.Mutex
	busy      bool
	closing   bool
	closeOnce sync.Once

	// peerEOF is set once a read returned io.EOF: the client closed its side.
	peerEOF atomic.Bool
}

func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		c.peerEOF.Store(true)
	}
	return n, err
}

// begin marks the start of a transaction; false if the connection is closing.
func (c *trackedConn) begin() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return false
	}
	c.busy = true
	return true
}

func (c *trackedConn) end() {
	c.mu.Lock()
	c.busy = false
	c.mu.Unlock()
}

func (c *trackedConn) closeIfIdle() {
	c.mu.Lock()
	if c.busy {
		c.mu.Unlock()
		return
	}
	c.closing = true
	c.mu.Unlock()
	_ = c.Conn.Close()
}

func (c *trackedConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
	})
	err = c.Conn.Close()
	return err
}

// rawConn finds the trackedConn under a possibly TLS-wrapped connection.
func rawConn(c net.Conn) *trackedConn {
	for {
		switch v := c.(type) {
		case *trackedConn:
			return v
		case *tls.Conn:
			c = v.NetConn()
		default:
			return nil
		}
	}
}

// slogAdapter lets go-smtp report its internal errors (including recovered
// panics) through slog.
type slogAdapter struct{ log *slog.Logger }

func (a slogAdapter) Printf(format string, v ...any) {
	a.emit(fmt.Sprintf(format, v...))
}

func (a slogAdapter) Println(v ...any) {
	a.emit(strings.TrimSuffix(fmt.Sprintln(v...), "\n"))
}

func (a slogAdapter) emit(msg string) {
	if strings.Contains(msg, "panic") {
		a.log.Error("smtp server panic", "detail", msg)
		return
	}
	a.log.Warn("smtp server error", "detail", msg)
}
