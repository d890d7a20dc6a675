package mattermost

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/metrics"
)

// Read limits for response bodies.
const (
	maxJSONBody  = 4 << 20  // one object
	maxListBody  = 32 << 20 // a post list (a thread, posts since)
	maxErrorBody = 64 << 10 // an error answer
)

// Options configures a Client. The zero value is usable.
type Options struct {
	// HTTPClient defaults to a client with dial, TLS and response-header
	// timeouts and no overall Timeout (uploads may be large); every call is
	// bounded by its context instead. A cookie jar, if set, is ignored.
	HTTPClient *http.Client
	// UserAgent defaults to "mmgate".
	UserAgent string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// RequestTimeout bounds each call but UploadFiles; default 30 s.
	RequestTimeout time.Duration
	// UploadTimeout bounds each UploadFiles call; default 10 min.
	UploadTimeout time.Duration
}

// Client is a Mattermost REST API v4 client for one token. It is safe for
// concurrent use.
type Client struct {
	api            string // "https://host/prefix/api/v4", no trailing slash
	token          atomic.Pointer[string]
	configErr      error
	hc             *http.Client
	ua             string
	log            *slog.Logger
	requestTimeout time.Duration
	uploadTimeout  time.Duration

	mu          sync.Mutex
	maxRunes    int
	maxRunesAge time.Time
}

// maxRunesTTL is how long MaxPostRunes trusts a value read from the server.
const maxRunesTTL = 10 * time.Minute

// New returns a client for the server at baseURL ("https://mm.example.com",
// with or without a trailing "/api/v4") authenticating with a bot or personal
// access token. An invalid baseURL makes every call fail with a
// fault.Invalid error.
func New(baseURL, token string, opts Options) *Client {
	c := &Client{
		hc:             opts.HTTPClient,
		ua:             opts.UserAgent,
		log:            opts.Logger,
		requestTimeout: opts.RequestTimeout,
		uploadTimeout:  opts.UploadTimeout,
	}
	if c.hc == nil {
		c.hc = defaultHTTPClient()
	} else if c.hc.Jar != nil {
		hc := *c.hc
		hc.Jar = nil
		c.hc = &hc
	}
	if c.ua == "" {
		c.ua = "mmgate"
	}
	if c.log == nil {
		c.log = slog.Default()
	}
	if c.requestTimeout <= 0 {
		c.requestTimeout = 30 * time.Second
	}
	if c.uploadTimeout <= 0 {
		c.uploadTimeout = 10 * time.Minute
	}
	u, err := url.Parse(strings.TrimSpace(baseURL))
	switch {
	case err != nil:
		c.configErr = fault.Wrap(fault.Invalid, "mattermost_config", "Mattermost URL is invalid", err)
	case u.Scheme != "http" && u.Scheme != "https", u.Host == "", u.RawQuery != "", u.Fragment != "", u.User != nil:
		c.configErr = fault.New(fault.Invalid, "mattermost_config",
			"Mattermost URL must be http(s)://host[/path] without user, query or fragment")
	default:
		p := strings.TrimRight(u.EscapedPath(), "/")
		p = strings.TrimSuffix(p, "/api/v4")
		c.api = u.Scheme + "://" + u.Host + p + "/api/v4"
	}
	c.token.Store(&token)
	return c
}

// SetToken replaces the token (after `mmgate mattermost setup` stored a
// new one); calls already under way keep the old one.
func (c *Client) SetToken(token string) { c.token.Store(&token) }

// String describes the client without its token.
func (c *Client) String() string { return "mattermost.Client(" + c.api + ")" }

func defaultHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DialContext = (&net.Dialer{Timeout: 10 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.TLSHandshakeTimeout = 10 * time.Second
	// Counted from the end of the request body: the server may need time to
	// store a large upload.
	t.ResponseHeaderTimeout = 2 * time.Minute
	t.MaxIdleConnsPerHost = 16
	t.IdleConnTimeout = 90 * time.Second
	t.ExpectContinueTimeout = time.Second
	// Uploads stream through an io.Pipe: with the default 4 KB buffer each
	// 4 KB is a hand-off between goroutines and a write to the socket.
	t.WriteBufferSize = 64 << 10
	return &http.Client{Transport: t}
}

// seg escapes one path segment.
func seg(s string) string { return url.PathEscape(s) }

// request is one call.
type request struct {
	op          string // human name: "create post"
	method      string
	path        string // below /api/v4, already escaped
	query       url.Values
	body        io.Reader
	contentType string
	timeout     time.Duration
	limit       int64 // response read limit
	out         any   // decoded from a 2xx body when non-nil
}

// metricLabel is the op as a metric label value: "create_post".
func metricLabel(op string) string { return strings.ReplaceAll(op, " ", "_") }

// do runs r, decoding a 2xx body into r.out. Every error it returns is
// classified by faultOf.
func (c *Client) do(ctx context.Context, r request) (err error) {
	if c.configErr != nil {
		return c.configErr
	}
	token := *c.token.Load()
	if token == "" {
		// Temporary: messages wait (and /readyz fails) until setup stores one.
		return fault.New(fault.Temporary, "mattermost_no_token",
			"this app has no Mattermost bot token yet: set apps.NAME.bot_token or run `mmgate mattermost setup`")
	}
	defer func() {
		if err != nil {
			err = faultOf(err)
		}
	}()
	timeout := r.timeout
	if timeout <= 0 {
		timeout = c.requestTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	u := c.api + r.path
	if len(r.query) > 0 {
		u += "?" + r.query.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, r.method, u, r.body)
	if err != nil {
		return fault.Wrap(fault.Invalid, "mattermost_request", "invalid Mattermost request", err)
	}
	if r.body != nil && r.contentType != "" {
		req.Header.Set("Content-Type", r.contentType)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)

	start := time.Now()
	label := metricLabel(r.op)
	resp, err := c.hc.Do(req)
	if err != nil {
		metrics.MattermostRequests.WithLabelValues(label, "error").Inc()
		te := c.transport(ctx, r.op, err)
		c.log.DebugContext(ctx, "mattermost call failed", "op", r.op, "error", te, "duration", time.Since(start))
		return te
	}
	defer resp.Body.Close()
	metrics.MattermostRequests.WithLabelValues(label, strconv.Itoa(resp.StatusCode)).Inc()

	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		body, rerr := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		if rerr != nil {
			// Keep what was read: the status is what matters.
			c.log.DebugContext(ctx, "mattermost error body unreadable", "op", r.op, "error", rerr)
		}
		ae := parseAPIError(r.op, resp.StatusCode, resp.Header, body, time.Now())
		c.log.DebugContext(ctx, "mattermost call refused", "op", r.op, "status", resp.StatusCode,
			"error_id", ae.ID, "request_id", ae.RequestID, "duration", time.Since(start))
		return ae
	}

	limit := r.limit
	if limit <= 0 {
		limit = maxJSONBody
	}
	body, rerr := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if rerr != nil {
		return c.transport(ctx, r.op, fmt.Errorf("reading response: %w", rerr))
	}
	c.log.DebugContext(ctx, "mattermost call", "op", r.op, "status", resp.StatusCode,
		"request_id", resp.Header.Get("X-Request-Id"), "duration", time.Since(start))
	if int64(len(body)) > limit {
		return &DecodeError{Op: r.op, Status: resp.StatusCode, Err: fmt.Errorf("body larger than %d bytes", limit)}
	}
	if r.out == nil {
		return nil
	}
	if err := json.Unmarshal(body, r.out); err != nil {
		return &DecodeError{Op: r.op, Status: resp.StatusCode, Err: err}
	}
	return nil
}

// transport wraps a failure to get a complete answer. It is retryable unless
// the context was canceled.
func (c *Client) transport(ctx context.Context, op string, err error) *transportError {
	canceled := errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled)
	if errors.Is(ctx.Err(), context.DeadlineExceeded) && !errors.Is(err, context.DeadlineExceeded) {
		// The transport may report a read interrupted by the deadline as a
		// plain network error: keep the cause visible.
		err = fmt.Errorf("%w (%w)", err, context.DeadlineExceeded)
	}
	return &transportError{op: op, err: err, retryable: !canceled}
}

// getJSON is a GET decoded into out.
func (c *Client) getJSON(ctx context.Context, op, path string, q url.Values, limit int64, out any) error {
	return c.do(ctx, request{op: op, method: http.MethodGet, path: path, query: q, limit: limit, out: out})
}

// sendJSON is a method with a JSON body, decoded into out.
func (c *Client) sendJSON(ctx context.Context, op, method, path string, in, out any) error {
	b, err := json.Marshal(in)
	if err != nil {
		return fault.Wrap(fault.Invalid, "mattermost_request", "invalid Mattermost request", err)
	}
	return c.do(ctx, request{op: op, method: method, path: path, body: bytes.NewReader(b),
		contentType: "application/json", out: out})
}
