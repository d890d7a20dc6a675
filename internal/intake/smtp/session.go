package smtpintake

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/metrics"
	"github.com/mmgate/mmgate/internal/spool"
)

var (
	_ smtp.Session     = (*session)(nil)
	_ smtp.AuthSession = (*session)(nil)
)

// Replies the session produces itself (the rest come from fault.SMTP or go-smtp).
var (
	errAuthRequired       = &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	errEncryptionRequired = &smtp.SMTPError{Code: 538, EnhancedCode: smtp.EnhancedCode{5, 7, 11},
		Message: "Encryption required for requested authentication mechanism"}
	errAuthFailed       = &smtp.SMTPError{Code: 535, EnhancedCode: smtp.EnhancedCode{5, 7, 8}, Message: "Authentication credentials invalid"}
	errTooManyAuthFails = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many failed authentication attempts, closing connection"}
	errShuttingDown     = &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 3, 2}, Message: "Service shutting down, try again later"}
	errBadSender        = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 7}, Message: "Bad sender address syntax"}
	errBadRecipient     = &smtp.SMTPError{Code: 501, EnhancedCode: smtp.EnhancedCode{5, 1, 3}, Message: "Bad recipient address syntax"}
	errRelayDenied      = &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Relaying denied"}
	errTooManyRcpts     = &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 5, 3}, Message: "Too many recipients"}
	errTooBig           = &smtp.SMTPError{Code: 552, EnhancedCode: smtp.EnhancedCode{5, 3, 4}, Message: "Message too big"}
	errAuthInTx         = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "AUTH not permitted during a mail transaction"}
	errNestedMail       = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "Nested MAIL command"}
	errNoRecipients     = &smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "No valid recipients"}
)

// session is one go-smtp session: it lives from the first EHLO/HELO until the
// connection ends or STARTTLS replaces it.
type session struct {
	s      *Server
	conn   *smtp.Conn
	raw    *trackedConn // nil only if the connection was not accepted by Serve
	remote net.Addr
	tls    *tlsInfo
	log    *slog.Logger

	// authOK is whether AUTH may be offered and used on this connection.
	authOK bool

	mu           sync.Mutex
	identity     string // configured username after a successful AUTH
	app          string
	authed       bool
	authFailures int
	dead         bool // closed by closeWith: refuse everything
	inTx         bool
	from         string
	rcpts        []string
	rcptSeen     map[string]struct{}
	utf8         bool
}

type tlsInfo struct {
	version, cipher string
}

func (s *Server) newSession(c *smtp.Conn) (smtp.Session, error) {
	nc := c.Conn()
	remote := nc.RemoteAddr()
	sess := &session{
		s:      s,
		conn:   c,
		raw:    rawConn(nc),
		remote: remote,
		log:    s.log.With("remote", addrString(remote)),
	}
	state, isTLS := c.TLSConnectionState()
	if isTLS {
		sess.tls = &tlsInfo{version: strings.Replace(tls.VersionName(state.Version), "TLS ", "TLSv", 1), cipher: tls.CipherSuiteName(state.CipherSuite)}
	}
	sess.authOK = s.creds.len() > 0 && authPermitted(isTLS, remote, s.opts.AllowInsecureAuth)
	return sess, nil
}

// authPermitted is the AUTH policy: always over TLS; without TLS only when
// allowInsecure is set and the client connects from a loopback address.
func authPermitted(isTLS bool, remote net.Addr, allowInsecure bool) bool {
	if isTLS {
		return true
	}
	return allowInsecure && isLoopback(remote)
}

func isLoopback(a net.Addr) bool {
	switch v := a.(type) {
	case nil:
		return false
	case *net.TCPAddr:
		return v.IP.IsLoopback()
	}
	host, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// countReply records the final reply code of a MAIL/RCPT/DATA/AUTH command.
func countReply(code int) {
	metrics.SMTPReplies.WithLabelValues(strconv.Itoa(code)).Inc()
}

// reply counts err's code (250 for nil) and returns err.
func reply(err *smtp.SMTPError) error {
	if err == nil {
		countReply(250)
		return nil
	}
	countReply(err.Code)
	return err
}

// toSMTPError turns any error into the *smtp.SMTPError fault.SMTP chooses.
func toSMTPError(err error) *smtp.SMTPError {
	r := fault.SMTP(err)
	return &smtp.SMTPError{Code: r.Code, EnhancedCode: smtp.EnhancedCode(r.Enhanced), Message: r.Text}
}

// AuthMechanisms lists the mechanisms offered in EHLO: none when AUTH is not
// allowed on this connection.
func (ss *session) AuthMechanisms() []string {
	if !ss.authOK {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth starts a SASL exchange.
func (ss *session) Auth(mech string) (sasl.Server, error) {
	if !ss.authOK {
		ss.log.Warn("smtp auth refused without TLS")
		return nil, reply(errEncryptionRequired)
	}
	ss.mu.Lock()
	inTx, dead := ss.inTx, ss.dead
	ss.mu.Unlock()
	if dead {
		return nil, errTooManyAuthFails
	}
	if inTx {
		return nil, reply(errAuthInTx)
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return &plainServer{auth: ss.authenticate}, nil
	case sasl.Login:
		return &loginServer{auth: ss.authenticate}, nil
	}
	return nil, reply(smtp.ErrAuthUnknownMechanism)
}

// authenticate checks one set of credentials. After maxAuthFailures failures
// the connection is closed with 421 4.7.0.
func (ss *session) authenticate(authzid, username, password string) error {
	var cred *Credential
	if authzid == "" || strings.EqualFold(authzid, username) {
		cred = ss.s.creds.check(username, password)
	} else {
		// Always spend the comparison time, then refuse: proxy authorisation is
		// not supported.
		ss.s.creds.check(username, password)
	}
	ss.mu.Lock()
	if cred != nil {
		ss.authed, ss.identity, ss.app = true, cred.Username, cred.App
		ss.mu.Unlock()
		countReply(235)
		ss.log.Info("smtp auth ok", "user", cred.Username, "app", cred.App)
		return nil
	}
	ss.authFailures++
	failures := ss.authFailures
	ss.mu.Unlock()
	ss.log.Warn("smtp auth failed", "user", sanitizeLog(username), "failures", failures)
	if failures < maxAuthFailures {
		return reply(errAuthFailed)
	}
	countReply(errTooManyAuthFails.Code)
	ss.closeWith(errTooManyAuthFails)
	return errTooManyAuthFails
}

// closeWith writes a final reply directly on the connection and closes it.
// go-smtp has no way to end a session from a backend, so this writes to the
// (possibly TLS) connection itself; its own replies are flushed line by line, so
// nothing is interleaved. Only the network connection is closed, not the
// smtp.Conn: go-smtp goes on to process commands it had already buffered (it
// would call a nil Session after smtp.Conn.Close), and the session refuses them
// all because it is dead.
func (ss *session) closeWith(e *smtp.SMTPError) {
	ss.mu.Lock()
	ss.dead = true
	ss.mu.Unlock()
	nc := ss.conn.Conn()
	_ = nc.SetWriteDeadline(time.Now().Add(ss.s.opts.WriteTimeout))
	_, _ = fmt.Fprintf(nc, "%d %d.%d.%d %s\r\n", e.Code, e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2], e.Message)
	_ = nc.Close()
}

// isDead reports whether closeWith ended the session.
func (ss *session) isDead() bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.dead
}

// Mail starts a transaction.
func (ss *session) Mail(from string, opts *smtp.MailOptions) error {
	if ss.s.draining.Load() {
		return reply(errShuttingDown)
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.dead {
		return errTooManyAuthFails
	}
	if ss.inTx {
		return reply(errNestedMail)
	}
	if ss.s.opts.RequireAuth && !ss.authed {
		return reply(errAuthRequired)
	}
	if from != "" && !validAddress(from) {
		return reply(errBadSender)
	}
	if opts != nil && opts.Size > ss.s.opts.MaxMessageBytes {
		return reply(errTooBig)
	}
	if ss.raw != nil && !ss.raw.begin() {
		return reply(errShuttingDown)
	}
	ss.inTx = true
	ss.from = from
	ss.rcpts = nil
	ss.rcptSeen = nil
	ss.utf8 = opts != nil && opts.UTF8
	return reply(nil)
}

// Rcpt adds a recipient: only in a configured domain, at most MaxRecipients.
func (ss *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.dead {
		return errTooManyAuthFails
	}
	if !ss.inTx {
		return reply(&smtp.SMTPError{Code: 503, EnhancedCode: smtp.EnhancedCode{5, 5, 1}, Message: "MAIL first"})
	}
	local, domain, ok := splitAddress(to)
	if !ok || !validAddress(to) {
		return reply(errBadRecipient)
	}
	if !ss.s.domains.match(domain) {
		ss.log.Info("smtp relaying denied", "domain", sanitizeLog(domain))
		return reply(errRelayDenied)
	}
	addr := local + "@" + strings.ToLower(domain)
	key := strings.ToLower(addr)
	if _, dup := ss.rcptSeen[key]; dup {
		return reply(nil)
	}
	if len(ss.rcpts) >= ss.s.opts.MaxRecipients {
		return reply(errTooManyRcpts)
	}
	if ss.rcptSeen == nil {
		ss.rcptSeen = make(map[string]struct{})
	}
	ss.rcptSeen[key] = struct{}{}
	ss.rcpts = append(ss.rcpts, addr)
	return reply(nil)
}

// Data streams the message into the store. It replies 250 (as an SMTPError
// with code 250, to carry the spool id) only when Accept returned nil and the
// whole message was read.
func (ss *session) Data(r io.Reader) error {
	ss.mu.Lock()
	if ss.dead {
		ss.mu.Unlock()
		return errTooManyAuthFails
	}
	if !ss.inTx || len(ss.rcpts) == 0 {
		ss.mu.Unlock()
		return reply(errNoRecipients)
	}
	env := spool.Envelope{
		Intake:       "smtp",
		Sender:       ss.from,
		Recipients:   append([]string(nil), ss.rcpts...),
		AuthIdentity: ss.identity,
		App:          ss.app,
		RemoteAddr:   addrString(ss.remote),
		Helo:         ss.conn.Hostname(),
	}
	authed, utf8 := ss.authed, ss.utf8
	ss.mu.Unlock()

	hdr := receivedHeader(receivedInfo{
		helo: env.Helo, remote: ss.remote, by: ss.s.opts.Hostname,
		tls: ss.tls, authed: authed, utf8: utf8, recipients: env.Recipients, now: time.Now(),
	})
	body := &bodyReader{r: r, conn: ss.conn, raw: ss.raw, timeout: ss.s.opts.ReadTimeout}
	msg := &messageReader{hdr: hdr, body: newCRLFReader(body)}

	id, err := ss.s.store.Accept(ss.s.baseCtx, env, msg)
	switch {
	case body.err != nil:
		// The client's data could not be read completely: whatever the store
		// says, this message is not accepted.
		ferr := classifyReadError(body.err)
		if err == nil {
			ss.log.Error("store accepted a message whose body failed to read", "id", id, "err", ferr)
		}
		ss.log.Warn("smtp message not stored", "err", ferr, "code", fault.CodeOf(ferr), "bytes", body.n)
		return reply(toSMTPError(ferr))
	case err != nil:
		ss.log.Warn("smtp message not stored", "err", err, "code", fault.CodeOf(err), "bytes", body.n)
		return reply(toSMTPError(err))
	case !body.eof:
		ferr := fault.Wrap(fault.Temporary, "store_short_read", "store returned before reading the whole message", nil)
		ss.log.Error("smtp message not stored", "err", ferr, "id", id)
		return reply(toSMTPError(ferr))
	}
	ss.log.Info("stored", "id", id, "app", env.App, "user", env.AuthIdentity,
		"recipients", len(env.Recipients), "bytes", body.n)
	countReply(250)
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: "OK: queued as " + sanitizeReply(id)}
}

// classifyReadError maps a failure reading the client's message data.
func classifyReadError(err error) error {
	switch {
	case errors.Is(err, smtp.ErrDataTooLarge):
		return fault.Wrap(fault.TooLarge, "message_too_large", "message exceeds the size limit", err)
	case errors.Is(err, smtp.ErrTooLongLine):
		return fault.Wrap(fault.TooLarge, "line_too_long", "message line exceeds the line length limit", err)
	}
	return fault.Wrap(fault.Temporary, "client_read", "reading the message from the client failed", err)
}

// Reset ends the transaction (RSET, EHLO, or after the reply to DATA).
func (ss *session) Reset() {
	ss.mu.Lock()
	ss.resetLocked()
	ss.mu.Unlock()
}

func (ss *session) resetLocked() {
	if ss.inTx && ss.raw != nil {
		ss.raw.end()
	}
	ss.inTx = false
	ss.from = ""
	ss.rcpts = nil
	ss.rcptSeen = nil
	ss.utf8 = false
}

// Logout frees the session.
func (ss *session) Logout() error {
	ss.Reset()
	return nil
}

// sanitizeLog keeps client-supplied strings short and printable in logs.
func sanitizeLog(s string) string {
	const max = 128
	if len(s) > max {
		s = s[:max]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}

func sanitizeReply(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x21 || r > 0x7e {
			return '_'
		}
		return r
	}, s)
}
