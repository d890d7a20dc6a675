package mattermost

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mmgate/mmgate/internal/fault"
)

// APIError is a non-2xx answer from Mattermost.
type APIError struct {
	// Op names the call, e.g. "create post".
	Op     string
	Status int
	// ID is Mattermost's error id ("api.post.create_post.…app_error") when the
	// body is Mattermost's JSON AppError, else "" (e.g. the plain-text 429
	// body "limit exceeded").
	ID string
	// Message is the AppError message, or a short one-line excerpt of a plain
	// text body, or the HTTP status text.
	Message string
	// RequestID is the AppError request_id or the X-Request-Id header.
	RequestID string
	// RetryAfter is the delay asked for by Retry-After (seconds or HTTP date),
	// or by X-RateLimit-Reset on a 429 without Retry-After; 0 if none.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("mattermost: ")
	b.WriteString(e.Op)
	b.WriteString(": ")
	b.WriteString(strconv.Itoa(e.Status))
	if e.ID != "" {
		b.WriteString(" ")
		b.WriteString(e.ID)
	}
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	return b.String()
}

// Retryable reports whether repeating the call may succeed: 408, 429 and 5xx,
// except 501, which Mattermost answers for a disabled feature.
func (e *APIError) Retryable() bool {
	switch {
	case e.Status == http.StatusRequestTimeout, e.Status == http.StatusTooManyRequests:
		return true
	case e.Status == http.StatusNotImplemented:
		return false
	case e.Status >= 500 && e.Status <= 599:
		return true
	}
	return false
}

// DecodeError is a 2xx answer whose body is not what the call expects
// (not JSON, wrong shape, or larger than the read limit). It is not retryable:
// the server reported success.
type DecodeError struct {
	Op     string
	Status int
	Err    error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("mattermost: %s: unexpected response (status %d): %v", e.Op, e.Status, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// transportError is a failure before a complete answer was read: dial, TLS,
// write, read, or the context ending.
type transportError struct {
	op        string
	err       error
	retryable bool
}

func (e *transportError) Error() string { return "mattermost: " + e.op + ": " + e.err.Error() }
func (e *transportError) Unwrap() error { return e.err }

// Retryable reports whether a call error is worth retrying: an APIError that
// is (408, 429, 5xx except 501), or any transport error (connection refused or
// reset, EOF, DNS, TLS, timeouts, a deadline of the call's context) unless the
// context was canceled. A DecodeError (2xx with a bad body) is not retryable.
func Retryable(err error) bool {
	if err == nil {
		return false
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Retryable()
	}
	var de *DecodeError
	if errors.As(err, &de) {
		return false
	}
	var te *transportError
	if errors.As(err, &te) {
		return te.retryable
	}
	return netRetryable(err)
}

// netRetryable classifies an error that did not come from this package.
func netRetryable(err error) bool {
	switch {
	case errors.Is(err, context.Canceled):
		return false
	case errors.Is(err, context.DeadlineExceeded),
		errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, syscall.ECONNABORTED), errors.Is(err, syscall.EPIPE),
		errors.Is(err, syscall.ETIMEDOUT), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH):
		return true
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return true
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	return false
}

// RetryAfterOf returns the delay the server asked for, 0 if none.
func RetryAfterOf(err error) time.Duration {
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.RetryAfter
	}
	return 0
}

// maxRetryAfter bounds a server-requested delay.
const maxRetryAfter = 24 * time.Hour

// parseRetryAfter reads a Retry-After value: delta-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n <= 0 {
			return 0
		}
		if n > int64(maxRetryAfter/time.Second) {
			return maxRetryAfter
		}
		return time.Duration(n) * time.Second
	}
	t, err := http.ParseTime(v)
	if err != nil {
		return 0
	}
	d := t.Sub(now)
	if d <= 0 {
		return 0
	}
	return min(d, maxRetryAfter)
}

// appError is Mattermost's JSON error body (server/public/model/utils.go).
type appError struct {
	ID            string `json:"id"`
	Message       string `json:"message"`
	DetailedError string `json:"detailed_error"`
	RequestID     string `json:"request_id"`
	StatusCode    int    `json:"status_code"`
}

// maxMessageRunes bounds APIError.Message.
const maxMessageRunes = 300

// parseAPIError builds the APIError of a non-2xx answer from its status,
// headers and (already bounded) body. The body is untrusted.
func parseAPIError(op string, status int, h http.Header, body []byte, now time.Time) *APIError {
	e := &APIError{Op: op, Status: status, RequestID: oneLine(h.Get("X-Request-Id"), 64)}
	e.RetryAfter = parseRetryAfter(h.Get("Retry-After"), now)
	if e.RetryAfter == 0 && status == http.StatusTooManyRequests {
		// X-RateLimit-Reset is seconds until the bucket refills.
		e.RetryAfter = parseRetryAfter(h.Get("X-RateLimit-Reset"), now)
	}
	var ae appError
	if json.Unmarshal(body, &ae) == nil && ae.ID != "" {
		e.ID = oneLine(ae.ID, 200)
		e.Message = oneLine(ae.Message, maxMessageRunes)
		if ae.RequestID != "" {
			e.RequestID = oneLine(ae.RequestID, 64)
		}
		return e
	}
	mt, _, _ := mime.ParseMediaType(h.Get("Content-Type"))
	if mt == "text/plain" || mt == "" {
		e.Message = oneLine(string(body), maxMessageRunes)
	}
	if e.Message == "" {
		e.Message = http.StatusText(status)
	}
	return e
}

// oneLine makes s printable on one line: valid UTF-8, control characters as
// spaces, runs of spaces collapsed, at most n runes.
func oneLine(s string, n int) string {
	var b strings.Builder
	space := false
	count := 0
	for _, r := range strings.ToValidUTF8(s, "\uFFFD") {
		if unicode.IsSpace(r) || unicode.IsControl(r) {
			space = b.Len() > 0
			continue
		}
		need := 1
		if space {
			need = 2
		}
		if count+need > n {
			b.WriteString("…")
			break
		}
		if space {
			b.WriteByte(' ')
			count++
			space = false
		}
		b.WriteRune(r)
		count++
	}
	out := b.String()
	if !utf8.ValidString(out) {
		return ""
	}
	return out
}

// faultOf gives a call error its fault kind and a client-safe message.
func faultOf(err error) error {
	var ae *APIError
	if errors.As(err, &ae) {
		switch {
		case ae.Status == http.StatusBadRequest:
			return fault.Wrap(fault.Invalid, "mattermost_bad_request", "Mattermost rejected the request", err)
		case ae.Status == http.StatusUnauthorized:
			return fault.Wrap(fault.Unauthorized, "mattermost_unauthorized", "Mattermost rejected the token", err)
		case ae.Status == http.StatusNotFound:
			return fault.Wrap(fault.NotFound, "mattermost_not_found", "Mattermost object not found", err)
		case ae.Status == http.StatusConflict:
			return fault.Wrap(fault.Conflict, "mattermost_conflict", "Mattermost reported a conflict", err)
		case ae.Status == http.StatusRequestEntityTooLarge:
			return fault.Wrap(fault.TooLarge, "mattermost_too_large", "Mattermost refused a too large request", err)
		case ae.Status == http.StatusTooManyRequests:
			return fault.Wrap(fault.Temporary, "mattermost_rate_limited", "Mattermost rate limit reached", err)
		case ae.Retryable():
			return fault.Wrap(fault.Temporary, "mattermost_unavailable", "Mattermost unavailable", err)
		}
		return fault.Wrap(fault.Permanent, "mattermost_rejected", "Mattermost refused the request", err)
	}
	var de *DecodeError
	if errors.As(err, &de) {
		return fault.Wrap(fault.Permanent, "mattermost_bad_response", "Mattermost sent an unexpected response", err)
	}
	var te *transportError
	if errors.As(err, &te) && !te.retryable {
		// A canceled context: keep it unclassified (temporary by default),
		// the caller stops on its own.
		return err
	}
	return fault.Wrap(fault.Temporary, "mattermost_unreachable", "Mattermost unreachable", err)
}

// IsNotFound reports a 404 from Mattermost.
func IsNotFound(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusNotFound
}

// IsForbidden reports a 403: the token is good, the permission missing.
func IsForbidden(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusForbidden
}

// IsUnauthorized reports a 401: a token Mattermost does not accept.
func IsUnauthorized(err error) bool {
	var ae *APIError
	return errors.As(err, &ae) && ae.Status == http.StatusUnauthorized
}
