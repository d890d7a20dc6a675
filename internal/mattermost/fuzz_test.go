package mattermost

import (
	"net/http"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// FuzzParseAPIError feeds untrusted error answers (status, headers, body) to
// the decoder.
func FuzzParseAPIError(f *testing.F) {
	f.Add(429, "text/plain", "2", "", "limit exceeded")
	f.Add(403, "application/json", "", "rid", `{"id":"api.post.create_post.permissions.app_error","message":"no","request_id":"r1","status_code":403}`)
	f.Add(500, "text/html", "Wed, 21 Oct 2015 07:28:00 GMT", "", "<html>\x00\xff</html>")
	f.Add(502, "", "-1", "\n", `{"id":`)
	f.Add(400, "application/json", "99999999999999", "", `{"id":"`+strings.Repeat("é", 500)+`","message":"a\r\nb"}`)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, status int, ctype, retryAfter, reqID, body string) {
		h := http.Header{}
		h.Set("Content-Type", ctype)
		h.Set("Retry-After", retryAfter)
		h.Set("X-Request-Id", reqID)
		e := parseAPIError("create post", status, h, []byte(body), now)
		if e.Status != status || e.Op != "create post" {
			t.Fatalf("status/op changed: %+v", e)
		}
		if e.RetryAfter < 0 || e.RetryAfter > maxRetryAfter {
			t.Fatalf("RetryAfter out of range: %v", e.RetryAfter)
		}
		for _, s := range []string{e.ID, e.Message, e.RequestID} {
			if !utf8.ValidString(s) || strings.ContainsAny(s, "\r\n\x00") {
				t.Fatalf("unsafe field %q", s)
			}
		}
		if utf8.RuneCountInString(e.Message) > maxMessageRunes+1 {
			t.Fatalf("message too long: %d runes", utf8.RuneCountInString(e.Message))
		}
		if msg := e.Error(); !strings.HasPrefix(msg, "mattermost: create post: ") {
			t.Fatalf("Error() = %q", msg)
		}
	})
}

// FuzzParseRetryAfter checks the header parser on arbitrary input.
func FuzzParseRetryAfter(f *testing.F) {
	for _, s := range []string{"", "2", "0", "-1", "1e3", "Wed, 21 Oct 2015 07:28:00 GMT", "Mon, 02 Jan 2026 15:04:05 GMT", "18446744073709551616"} {
		f.Add(s)
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, v string) {
		d := parseRetryAfter(v, now)
		if d < 0 || d > maxRetryAfter {
			t.Fatalf("parseRetryAfter(%q) = %v", v, d)
		}
	})
}
