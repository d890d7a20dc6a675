// Package postback owns mmgate's HTTP intakes of raw messages: the postback
// endpoint that GitLab's mail_room (or any HTTP client) delivers to,
// POST /intake/mailroom/{mailbox}, and the local endpoint of `mmgate deliver`
// (see Pipe). Each request body is one RFC 822 message, streamed into the
// Store.
//
// It only stores. It must never parse a message, never talk to Mattermost,
// and never answer 2xx unless Store.Accept returned nil (the message is
// durable by then). Errors are JSON bodies with stable codes (fault.HTTP):
// 401 for any authentication failure, 413 for a message over the limit
// (refused from its Content-Length before the body is read, or as soon as a
// chunked body passes the limit), 503 when storage fails, so that the client
// retries.
//
// Authentication, per mailbox, any one of:
//   - `Authorization: Token token="…"` (mail_room's delivery_token; what
//     gitlab-mail_room 0.0.9 sends), `Authorization: Token …` or
//     `Authorization: Bearer …`, compared in constant time;
//   - Basic auth whose password is the token (and whose user is Username,
//     when one is configured);
//   - a JWT in the mailbox's JWT header (default Gitlab-Mailroom-Api-Request):
//     HS256 only, signed with the mailbox's 32-byte secret, issuer
//     gitlab-mailroom, `iat` present, at most 5 minutes old and at most a
//     minute in the future. A nonce seen before within that window is a
//     replay and refused.
package postback

import (
	"context"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/httpapi"
	"github.com/mmgate/mmgate/internal/spool"
)

// Store is what the intake needs from the spool (spool.Spool satisfies it).
type Store interface {
	Accept(ctx context.Context, env spool.Envelope, body io.Reader) (string, error)
}

// Defaults of the JWT mode, as GitLab configures mail_room.
const (
	DefaultJWTHeader = "Gitlab-Mailroom-Api-Request"
	DefaultJWTIssuer = "gitlab-mailroom"
	// MaxJWTAge is how old a JWT's iat may be.
	MaxJWTAge = 5 * time.Minute
	// maxJWTSkew is how far in the future an iat may be (clock skew).
	maxJWTSkew = time.Minute
)

// Mailbox is one postback endpoint with its credentials and defaults.
type Mailbox struct {
	Name       string
	Token      string // "" = no token mode
	Username   string // Basic auth user; "" = any
	JWTKey     []byte // 32 bytes; nil = no JWT mode
	JWTHeader  string // default DefaultJWTHeader
	JWTIssuer  string // default DefaultJWTIssuer
	App        string
	Recipients []string
}

// Options configure the postback handler.
type Options struct {
	Mailboxes []Mailbox
	// MaxBytes bounds one message (required).
	MaxBytes int64
	Logger   *slog.Logger
	// Now is the clock (tests).
	Now func() time.Time
}

// Path is the route of the postback endpoint, for an http.ServeMux.
const Path = "POST /intake/mailroom/{mailbox}"

type handler struct {
	store     Store
	o         Options
	log       *slog.Logger
	mailboxes map[string]Mailbox
	nonces    *nonceCache
}

// New returns the postback handler; mount it at Path.
func New(store Store, o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	h := &handler{store: store, o: o, log: o.Logger, mailboxes: map[string]Mailbox{}, nonces: newNonceCache()}
	for _, m := range o.Mailboxes {
		if m.JWTHeader == "" {
			m.JWTHeader = DefaultJWTHeader
		}
		if m.JWTIssuer == "" {
			m.JWTIssuer = DefaultJWTIssuer
		}
		h.mailboxes[m.Name] = m
	}
	return h
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("mailbox")
	mb, ok := h.mailboxes[name]
	if !ok {
		Refuse(w, r, fault.New(fault.NotFound, "unknown_mailbox", "no postback mailbox of this name is configured"))
		return
	}
	log := h.log.With("mailbox", name, "remote", r.RemoteAddr)
	if err := h.authenticate(mb, r); err != nil {
		log.Warn("postback: authentication failed", "code", fault.CodeOf(err), "err", err)
		Refuse(w, r, err)
		return
	}
	env := spool.Envelope{Intake: "postback", Mailbox: name, NoEnvelope: true, App: mb.App,
		Recipients: append([]string{}, mb.Recipients...), RemoteAddr: r.RemoteAddr}
	id, err := StoreBody(r, h.store, env, h.o.MaxBytes)
	if err != nil {
		if fault.Is(err, fault.Temporary) {
			log.Error("postback: message not stored", "err", err)
		} else {
			log.Warn("postback: message refused", "code", fault.CodeOf(err), "err", err)
		}
		Refuse(w, r, err)
		return
	}
	log.Info("postback: stored", "id", id)
	httpapi.WriteJSON(w, http.StatusOK, map[string]any{"success": true, "id": id})
}

// StoreBody streams r's body into store as one message with env, enforcing
// maxBytes: a declared Content-Length over it is refused before reading,
// a longer body as soon as it passes the limit. An empty body is invalid.
func StoreBody(r *http.Request, store Store, env spool.Envelope, maxBytes int64) (string, error) {
	if maxBytes > 0 && r.ContentLength > maxBytes {
		return "", tooLarge(maxBytes)
	}
	body := &limitedBody{r: r.Body, left: maxBytes, max: maxBytes}
	if maxBytes <= 0 {
		body.left = -1
	}
	id, err := store.Accept(r.Context(), env, body)
	if err != nil {
		return "", err
	}
	return id, nil
}

// limitedBody reads at most max bytes and fails with fault.TooLarge beyond,
// and with fault.Invalid on an empty body.
type limitedBody struct {
	r         io.Reader
	left, max int64 // left < 0: no limit
	n         int64
}

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		// At the limit: one more byte means too large.
		var one [1]byte
		n, err := b.r.Read(one[:])
		if n > 0 {
			return 0, tooLarge(b.max)
		}
		return 0, err
	}
	if b.left > 0 && int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.n += int64(n)
	if b.left > 0 {
		b.left -= int64(n)
	}
	if errors.Is(err, io.EOF) && b.n == 0 {
		return 0, fault.New(fault.Invalid, "empty_message", "the request body is empty: post one RFC 822 message")
	}
	return n, err
}

func tooLarge(max int64) error {
	return fault.New(fault.TooLarge, "message_too_large", fmt.Sprintf("the message exceeds the size limit of %d bytes", max))
}

func (h *handler) authenticate(mb Mailbox, r *http.Request) error {
	if mb.JWTKey != nil {
		if tok := r.Header.Get(mb.JWTHeader); tok != "" {
			return h.checkJWT(mb, tok)
		}
	}
	if mb.Token != "" {
		if got, user, basic, ok := credential(r.Header.Get("Authorization")); ok {
			good := subtle.ConstantTimeCompare([]byte(got), []byte(mb.Token)) == 1
			if basic && mb.Username != "" {
				good = subtle.ConstantTimeCompare([]byte(user), []byte(mb.Username)) == 1 && good
			}
			if good {
				return nil
			}
			return fault.New(fault.Unauthorized, "bad_token", "wrong credentials for this mailbox")
		}
	}
	want := []string{}
	if mb.Token != "" {
		want = append(want, "an Authorization header (Token, Bearer or Basic)")
	}
	if mb.JWTKey != nil {
		want = append(want, "a JWT in the "+mb.JWTHeader+" header")
	}
	return fault.New(fault.Unauthorized, "missing_credentials", "this mailbox needs "+strings.Join(want, " or "))
}

// credential extracts the secret (and, for Basic, the user) of an
// Authorization header.
func credential(h string) (secret, user string, basic, ok bool) {
	scheme, rest, found := strings.Cut(strings.TrimSpace(h), " ")
	if !found {
		return "", "", false, false
	}
	rest = strings.TrimSpace(rest)
	switch strings.ToLower(scheme) {
	case "token":
		// Rails' token format: token="abc", options="…"; or a bare token.
		if v, isKV := strings.CutPrefix(rest, "token="); isKV {
			v, _, _ = strings.Cut(v, ",")
			return strings.Trim(strings.TrimSpace(v), `"`), "", false, true
		}
		return rest, "", false, true
	case "bearer":
		return rest, "", false, true
	case "basic":
		raw, err := base64.StdEncoding.DecodeString(rest)
		if err != nil {
			return "", "", false, false
		}
		u, p, found := strings.Cut(string(raw), ":")
		if !found {
			return "", "", false, false
		}
		return p, u, true, true
	}
	return "", "", false, false
}

func (h *handler) checkJWT(mb Mailbox, tok string) error {
	now := h.o.Now()
	if t, _, err := jwt.NewParser().ParseUnverified(tok, jwt.MapClaims{}); err == nil && t.Method.Alg() != "HS256" {
		return fault.New(fault.Unauthorized, "jwt_bad_algorithm", "the JWT must be signed with HS256, not "+t.Method.Alg())
	}
	claims := jwt.MapClaims{}
	_, err := jwt.NewParser(
		jwt.WithValidMethods([]string{"HS256"}),
		jwt.WithIssuer(mb.JWTIssuer),
		jwt.WithTimeFunc(func() time.Time { return now }),
		jwt.WithLeeway(maxJWTSkew),
	).ParseWithClaims(tok, claims, func(*jwt.Token) (any, error) { return mb.JWTKey, nil })
	switch {
	case errors.Is(err, jwt.ErrTokenInvalidIssuer), errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return fault.Wrap(fault.Unauthorized, "jwt_wrong_issuer", "the JWT's issuer is not "+mb.JWTIssuer, err)
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return fault.Wrap(fault.Unauthorized, "jwt_bad_signature", "the JWT is not signed with this mailbox's secret", err)
	case err != nil:
		return fault.Wrap(fault.Unauthorized, "jwt_invalid", "the JWT is not valid (HS256 with iss and iat required)", err)
	}
	iat, err := claims.GetIssuedAt()
	if err != nil || iat == nil {
		return fault.New(fault.Unauthorized, "jwt_invalid", "the JWT has no iat (issued-at) claim")
	}
	if iat.After(now.Add(maxJWTSkew)) {
		return fault.New(fault.Unauthorized, "jwt_invalid", "the JWT was issued in the future (check the clocks)")
	}
	if age := now.Sub(iat.Time); age > MaxJWTAge {
		return fault.New(fault.Unauthorized, "jwt_stale", fmt.Sprintf("the JWT was issued %s ago, more than %s", age.Round(time.Second), MaxJWTAge))
	}
	if nonce, _ := claims["nonce"].(string); nonce != "" {
		if !h.nonces.add(mb.Name+"\x00"+nonce, now) {
			return fault.New(fault.Unauthorized, "jwt_replayed", "this JWT was used before")
		}
	}
	return nil
}

// nonceCache remembers JWT nonces for as long as their JWT is valid.
type nonceCache struct {
	mu   sync.Mutex
	seen map[string]time.Time
	last time.Time
}

func newNonceCache() *nonceCache { return &nonceCache{seen: map[string]time.Time{}} }

// add records key; false when it was seen within the validity window.
func (c *nonceCache) add(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	window := MaxJWTAge + 2*maxJWTSkew
	if now.Sub(c.last) > time.Minute {
		for k, at := range c.seen {
			if now.Sub(at) > window {
				delete(c.seen, k)
			}
		}
		c.last = now
	}
	if at, ok := c.seen[key]; ok && now.Sub(at) <= window {
		return false
	}
	c.seen[key] = now
	return true
}

// Refuse writes err as the standard JSON error (httpapi.WriteError). When
// the request body was not read (a refusal before storing), the connection
// is closed rather than drained, so a large body is never read whole.
func Refuse(w http.ResponseWriter, r *http.Request, err error) {
	if r.ContentLength != 0 {
		w.Header().Set("Connection", "close")
	}
	if fault.HTTPStatus(err) == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Token realm="mmgate"`)
	}
	httpapi.WriteError(w, err)
}
