package postback

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/spool"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func openSpool(t *testing.T) *spool.Spool {
	t.Helper()
	dir := t.TempDir()
	sp, err := spool.Open(context.Background(), spool.Options{Path: filepath.Join(dir, "spool.db"),
		BlobDir: filepath.Join(dir, "blobs"), Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.Close() })
	return sp
}

func key(t *testing.T) []byte {
	t.Helper()
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		t.Fatal(err)
	}
	return k
}

type fixture struct {
	sp     *spool.Spool
	srv    *httptest.Server
	keyA   []byte
	keyB   []byte
	now    time.Time
	closed bool
}

const token = "s3cret-token"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{sp: openSpool(t), keyA: key(t), keyB: key(t), now: time.Now()}
	h := New(f.sp, Options{MaxBytes: 64 << 10, Logger: quiet(), Now: func() time.Time { return f.now },
		Mailboxes: []Mailbox{
			{Name: "incoming", Token: token, JWTKey: f.keyA, App: "jira", Recipients: []string{"alice@corp.test"}},
			{Name: "service", Token: "other", Username: "mailroom", JWTKey: f.keyB},
		}})
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

type reply struct {
	Success bool   `json:"success"`
	ID      string `json:"id"`
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (f *fixture) post(t *testing.T, mailbox string, body io.Reader, hdr map[string]string) (int, reply) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, f.srv.URL+"/intake/mailroom/"+mailbox, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/plain")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var r reply
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		t.Fatalf("reply is not JSON: %v", err)
	}
	return resp.StatusCode, r
}

func (f *fixture) stored(t *testing.T, id string) (spool.Message, []byte) {
	t.Helper()
	m, _, err := f.sp.Get(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := f.sp.OpenBody(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = rc.Close() }()
	b, _ := io.ReadAll(rc)
	return m, b
}

const mail = "From: jira@corp.test\r\nTo: alice@corp.test\r\nSubject: hi\r\nMessage-ID: <p1@corp.test>\r\n\r\nbody\r\n"

func sign(t *testing.T, method jwt.SigningMethod, k any, claims jwt.MapClaims) string {
	t.Helper()
	s, err := jwt.NewWithClaims(method, claims).SignedString(k)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestTokenBasicAndBearerStore(t *testing.T) {
	f := newFixture(t)
	basic := func(u, p string) string { return "Basic " + base64.StdEncoding.EncodeToString([]byte(u+":"+p)) }
	for name, auth := range map[string]string{
		"mail_room 0.0.9 token": `Token token="` + token + `"`,
		"bare token":            "Token " + token,
		"bearer":                "Bearer " + token,
		"basic":                 basic("anyone", token),
	} {
		t.Run(name, func(t *testing.T) {
			code, r := f.post(t, "incoming", strings.NewReader(mail), map[string]string{"Authorization": auth})
			if code != http.StatusOK || !r.Success || r.ID == "" {
				t.Fatalf("%d %+v", code, r)
			}
			m, b := f.stored(t, r.ID)
			if string(b) != mail {
				t.Errorf("stored bytes differ:\n%q", b)
			}
			e := m.Envelope
			if e.Intake != "postback" || e.Mailbox != "incoming" || !e.NoEnvelope || e.App != "jira" ||
				len(e.Recipients) != 1 || e.Recipients[0] != "alice@corp.test" {
				t.Errorf("envelope %+v", e)
			}
		})
	}
	// Basic with a configured user needs that user.
	if code, r := f.post(t, "service", strings.NewReader(mail), map[string]string{"Authorization": basic("mailroom", "other")}); code != 200 {
		t.Errorf("basic with the right user: %d %+v", code, r)
	}
	if code, r := f.post(t, "service", strings.NewReader(mail), map[string]string{"Authorization": basic("intruder", "other")}); code != 401 || r.Code != "bad_token" {
		t.Errorf("basic with another user: %d %+v", code, r)
	}
}

func TestRefusals(t *testing.T) {
	f := newFixture(t)
	now := f.now
	good := jwt.MapClaims{"iss": DefaultJWTIssuer, "iat": now.Unix(), "nonce": "n-1"}
	tests := []struct {
		name    string
		mailbox string
		hdr     map[string]string
		status  int
		code    string
	}{
		{"no credentials", "incoming", nil, 401, "missing_credentials"},
		{"wrong token", "incoming", map[string]string{"Authorization": `Token token="nope"`}, 401, "bad_token"},
		{"another mailbox's token", "incoming", map[string]string{"Authorization": "Bearer other"}, 401, "bad_token"},
		{"unknown scheme", "incoming", map[string]string{"Authorization": "Digest x"}, 401, "missing_credentials"},
		{"alg none", "incoming", map[string]string{DefaultJWTHeader: sign(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType,
			jwt.MapClaims{"iss": DefaultJWTIssuer, "iat": now.Unix()})}, 401, "jwt_bad_algorithm"},
		{"HS512", "incoming", map[string]string{DefaultJWTHeader: sign(t, jwt.SigningMethodHS512, f.keyA, good)}, 401, "jwt_bad_algorithm"},
		{"wrong issuer", "incoming", map[string]string{DefaultJWTHeader: sign(t, jwt.SigningMethodHS256, f.keyA,
			jwt.MapClaims{"iss": "mailroom", "iat": now.Unix()})}, 401, "jwt_wrong_issuer"},
		{"no issuer", "incoming", map[string]string{DefaultJWTHeader: sign(t, jwt.SigningMethodHS256, f.keyA,
			jwt.MapClaims{"iat": now.Unix()})}, 401, "jwt_wrong_issuer"},
		{"stale iat", "incoming", map[string]string{DefaultJWTHeader: sign(t, jwt.SigningMethodHS256, f.keyA,
			jwt.MapClaims{"iss": DefaultJWTIssuer, "iat": now.Add(-6 * time.Minute).Unix()})}, 401, "jwt_stale"},
		{"iat in the future", "incoming", map[string]string{DefaultJWTHeader: sign(t, jwt.SigningMethodHS256, f.keyA,
			jwt.MapClaims{"iss": DefaultJWTIssuer, "iat": now.Add(10 * time.Minute).Unix()})}, 401, "jwt_invalid"},
		{"no iat", "incoming", map[string]string{DefaultJWTHeader: sign(t, jwt.SigningMethodHS256, f.keyA,
			jwt.MapClaims{"iss": DefaultJWTIssuer})}, 401, "jwt_invalid"},
		{"another mailbox's secret", "incoming", map[string]string{DefaultJWTHeader: sign(t, jwt.SigningMethodHS256, f.keyB, good)}, 401, "jwt_bad_signature"},
		{"garbage JWT", "incoming", map[string]string{DefaultJWTHeader: "a.b.c"}, 401, "jwt_invalid"},
		{"unknown mailbox", "nope", map[string]string{"Authorization": "Bearer " + token}, 404, "unknown_mailbox"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, r := f.post(t, tc.mailbox, strings.NewReader(mail), tc.hdr)
			if code != tc.status || r.Code != tc.code || r.Success {
				t.Fatalf("got %d %+v, want %d %s", code, r, tc.status, tc.code)
			}
		})
	}
	if n, err := f.sp.Counts(context.Background()); err != nil || n[spool.StateQueued] != 0 {
		t.Fatalf("refused requests stored messages: %v %v", n, err)
	}
}

func TestJWTAcceptedOnceThenReplayRefused(t *testing.T) {
	f := newFixture(t)
	tok := sign(t, jwt.SigningMethodHS256, f.keyA, jwt.MapClaims{"iss": DefaultJWTIssuer, "iat": f.now.Add(-4 * time.Minute).Unix(), "nonce": "abc"})
	code, r := f.post(t, "incoming", strings.NewReader(mail), map[string]string{DefaultJWTHeader: tok})
	if code != 200 || r.ID == "" {
		t.Fatalf("valid JWT: %d %+v", code, r)
	}
	code, r = f.post(t, "incoming", strings.NewReader(mail), map[string]string{DefaultJWTHeader: tok})
	if code != 401 || r.Code != "jwt_replayed" {
		t.Fatalf("replayed JWT: %d %+v", code, r)
	}
	// A token without a nonce (GitLab's own shape) is accepted.
	tok = sign(t, jwt.SigningMethodHS256, f.keyA, jwt.MapClaims{"iss": DefaultJWTIssuer, "iat": f.now.Unix()})
	if code, r := f.post(t, "incoming", strings.NewReader(mail), map[string]string{DefaultJWTHeader: tok}); code != 200 {
		t.Fatalf("JWT without nonce: %d %+v", code, r)
	}
}

// failReader fails the test if the server reads the body.
type failReader struct {
	t    *testing.T
	read int
}

func (r *failReader) Read(p []byte) (int, error) {
	r.read += len(p)
	return len(p), nil
}

func TestTooLarge(t *testing.T) {
	f := newFixture(t)
	auth := map[string]string{"Authorization": "Bearer " + token}
	// Declared length over the limit: 413 before reading (handler called directly
	// so that the test sees exactly what it reads).
	h := New(f.sp, Options{MaxBytes: 1000, Logger: quiet(), Mailboxes: []Mailbox{{Name: "incoming", Token: token}}})
	body := &failReader{t: t}
	req := httptest.NewRequest(http.MethodPost, "/intake/mailroom/incoming", io.LimitReader(body, 1<<30))
	req.ContentLength = 1 << 30
	req.SetPathValue("mailbox", "incoming")
	req.Header.Set("Authorization", "Bearer "+token)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusRequestEntityTooLarge || !strings.Contains(rec.Body.String(), "message_too_large") {
		t.Fatalf("%d %s", rec.Code, rec.Body)
	}
	if body.read != 0 {
		t.Fatalf("the server read %d bytes of a body it had to refuse from its Content-Length", body.read)
	}
	// A chunked body (no length) is cut off at the limit.
	big := bytes.Repeat([]byte("x"), 200<<10)
	code, r := f.post(t, "incoming", io.MultiReader(strings.NewReader(mail), bytes.NewReader(big)), auth)
	if code != http.StatusRequestEntityTooLarge || r.Code != "message_too_large" {
		t.Fatalf("chunked over the limit: %d %+v", code, r)
	}
	// Exactly at the limit is fine.
	exact := mail + strings.Repeat("y", 64<<10-len(mail))
	if code, r := f.post(t, "incoming", strings.NewReader(exact), auth); code != 200 {
		t.Fatalf("exactly at the limit: %d %+v", code, r)
	}
	if code, r := f.post(t, "incoming", strings.NewReader(""), auth); code != 400 || r.Code != "empty_message" {
		t.Fatalf("empty body: %d %+v", code, r)
	}
	n, _ := f.sp.Counts(context.Background())
	if n[spool.StateQueued] != 1 {
		t.Fatalf("%d stored, want only the one at the limit", n[spool.StateQueued])
	}
}

type brokenStore struct{}

func (brokenStore) Accept(_ context.Context, _ spool.Envelope, body io.Reader) (string, error) {
	_, _ = io.Copy(io.Discard, body)
	return "", fault.New(fault.Temporary, "spool_unavailable", "could not store the message")
}

func TestStorageFailureIs503(t *testing.T) {
	h := New(brokenStore{}, Options{MaxBytes: 1 << 20, Logger: quiet(), Mailboxes: []Mailbox{{Name: "incoming", Token: token}}})
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	req, _ := http.NewRequest(http.MethodPost, srv.URL+"/intake/mailroom/incoming", strings.NewReader(mail))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = resp.Body.Close() }()
	var r reply
	_ = json.NewDecoder(resp.Body).Decode(&r)
	if resp.StatusCode != http.StatusServiceUnavailable || r.Code != "spool_unavailable" || r.Success {
		t.Fatalf("%d %+v", resp.StatusCode, r)
	}
}

// FuzzAuthenticate feeds arbitrary Authorization and JWT headers: never a
// panic, and never accepted without the secret.
func FuzzAuthenticate(f *testing.F) {
	k := bytes.Repeat([]byte{7}, 32)
	good, _ := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"iss": DefaultJWTIssuer, "iat": time.Now().Unix()}).SignedString(k)
	f.Add(`Token token="x"`, good)
	f.Add("Basic Og==", "eyJhbGciOiJub25lIn0.eyJpc3MiOiJnaXRsYWItbWFpbHJvb20ifQ.")
	f.Add("Bearer ", "a.b.c")
	f.Fuzz(func(t *testing.T, authz, tok string) {
		h := New(nil, Options{MaxBytes: 10, Logger: quiet()}).(*handler)
		mb := Mailbox{Name: "m", Token: "the-real-token", JWTKey: bytes.Repeat([]byte{9}, 32),
			JWTHeader: DefaultJWTHeader, JWTIssuer: DefaultJWTIssuer}
		req := httptest.NewRequest(http.MethodPost, "/", nil)
		req.Header.Set("Authorization", authz)
		req.Header.Set(DefaultJWTHeader, tok)
		if err := h.authenticate(mb, req); err == nil {
			t.Fatalf("accepted without the secret: %q %q", authz, tok)
		}
	})
}
