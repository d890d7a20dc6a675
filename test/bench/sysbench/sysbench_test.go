package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"math"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/http/httptest"
	"net/mail"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"github.com/mmgate/mmgate/internal/mattermost"
)

// The stand-in must satisfy mmgate's own Mattermost client for every call
// the relay makes, or figure 1 measures failures instead of deliveries.
func TestStandinAnswersTheClient(t *testing.T) {
	s := &standin{}
	ts := httptest.NewServer(s)
	defer ts.Close()
	ctx := context.Background()
	c := mattermost.New(ts.URL, "tok", mattermost.Options{})

	if err := c.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	me, err := c.Me(ctx)
	if err != nil || me.ID != standinBotID || !me.IsBot {
		t.Fatalf("Me = %+v, %v", me, err)
	}
	u, err := c.UserByUsername(ctx, "Alice")
	if err != nil || u.Username != "alice" || len(u.ID) != 26 {
		t.Fatalf("UserByUsername = %+v, %v", u, err)
	}
	u2, err := c.UserByEmail(ctx, "alice@corp.test")
	if err != nil || u2.ID != u.ID {
		t.Fatalf("UserByEmail = %+v, %v; want id %s", u2, err, u.ID)
	}
	ch1, err := c.DirectChannel(ctx, me.ID, u.ID)
	if err != nil {
		t.Fatalf("DirectChannel: %v", err)
	}
	ch2, err := c.DirectChannel(ctx, u.ID, me.ID)
	if err != nil || ch2.ID != ch1.ID || ch1.Type != "D" {
		t.Fatalf("DirectChannel is not symmetric: %+v vs %+v (%v)", ch1, ch2, err)
	}
	n, err := c.MaxPostRunes(ctx)
	if err != nil || n != 16383 {
		t.Fatalf("MaxPostRunes = %d, %v", n, err)
	}
	payload := bytes.Repeat([]byte("x"), 100_000)
	infos, err := c.UploadFiles(ctx, ch1.ID, []mattermost.Upload{
		{Name: "a.bin", Size: int64(len(payload)), Open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(payload)), nil
		}},
		{Name: "b.txt", Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("hi")), nil }},
	})
	if err != nil || len(infos) != 2 || infos[0].Size != int64(len(payload)) || infos[1].Name != "b.txt" {
		t.Fatalf("UploadFiles = %+v, %v", infos, err)
	}
	p, err := c.CreatePost(ctx, &mattermost.Post{ChannelID: ch1.ID, Message: "m", FileIDs: []string{infos[0].ID},
		Props: map[string]any{propMessageID: "x@y"}})
	if err != nil || p.ID == "" || p.CreateAt == 0 || p.Props[propMessageID] != "x@y" {
		t.Fatalf("CreatePost = %+v, %v", p, err)
	}
	posts, err := c.ChannelPostsSince(ctx, ch1.ID, time.Now().Add(-time.Minute))
	if err != nil || len(posts) != 0 {
		t.Fatalf("ChannelPostsSince = %v, %v", posts, err)
	}
	if s.posts.Load() != 1 || s.files.Load() != 2 {
		t.Fatalf("counted %d posts, %d files; want 1, 2", s.posts.Load(), s.files.Load())
	}
}

func TestStandinRefusesWithoutToken(t *testing.T) {
	ts := httptest.NewServer(&standin{})
	defer ts.Close()
	resp, err := http.Get(ts.URL + "/api/v4/users/me")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want 401", resp.StatusCode)
	}
	c := mattermost.New(ts.URL, "tok", mattermost.Options{})
	if _, err := c.ChannelByName(context.Background(), "t", "c"); err != nil {
		t.Fatalf("ChannelByName: %v", err)
	}
	req, _ := http.NewRequest(http.MethodDelete, ts.URL+"/api/v4/posts/x", nil)
	req.Header.Set("Authorization", "Bearer tok")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Fatalf("unknown call: status %d, want 404", resp.StatusCode)
	}
}

func TestWriteBigMessage(t *testing.T) {
	const size = 100_003 // not a multiple of 57: the last line is short
	var a, b bytes.Buffer
	if err := writeBigMessage(&a, "f@x.test", "t@corp.test", "id1@bench", size, 42); err != nil {
		t.Fatal(err)
	}
	if err := writeBigMessage(&b, "f@x.test", "t@corp.test", "id1@bench", size, 42); err != nil {
		t.Fatal(err)
	}
	// Same seed, same bytes (the Date header aside).
	strip := func(s string) string {
		i := strings.Index(s, "Date:")
		j := strings.Index(s[i:], "\r\n")
		return s[:i] + s[i+j:]
	}
	if strip(a.String()) != strip(b.String()) {
		t.Fatal("same seed gave different messages")
	}
	for i, l := range strings.Split(a.String(), "\r\n") {
		if len(l) > 78 {
			t.Fatalf("line %d is %d characters long", i, len(l))
		}
	}
	m, err := mail.ReadMessage(&a)
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get("Message-ID"); got != "<id1@bench>" {
		t.Fatalf("Message-ID %q", got)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("Content-Type %q: %v", mt, err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var parts []string
	var decoded []byte
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, p.Header.Get("Content-Type"))
		if p.FileName() == "bench-random.bin" {
			// multipart.Reader does not decode base64 (only quoted-printable).
			decoded, err = io.ReadAll(base64.NewDecoder(base64.StdEncoding, p))
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(parts) != 2 || len(decoded) != size {
		t.Fatalf("parts %v, attachment %d bytes; want 2 parts, %d bytes", parts, len(decoded), size)
	}
	if bytes.Count(decoded, []byte{0}) > size/64 {
		t.Fatal("attachment does not look random")
	}
}

func TestPercentiles(t *testing.T) {
	v := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	if got := percentile(v, 90); got != 9 {
		t.Errorf("p90 = %v, want 9", got)
	}
	if got := percentile(v, 100); got != 10 {
		t.Errorf("p100 = %v, want 10", got)
	}
	if got := percentile(v, 0); got != 1 {
		t.Errorf("p0 = %v, want 1", got)
	}
	if got := median([]float64{5, 1, 3}); got != 3 {
		t.Errorf("median odd = %v, want 3", got)
	}
	if got := median([]float64{4, 1, 3, 2}); got != 2.5 {
		t.Errorf("median even = %v, want 2.5", got)
	}
	if !math.IsNaN(median(nil)) || !math.IsNaN(percentile(nil, 50)) {
		t.Error("empty input should give NaN")
	}
	if nanToNeg(math.NaN()) != -1 || nanToNeg(7) != 7 {
		t.Error("nanToNeg")
	}
}

func TestParseProcStatus(t *testing.T) {
	st := parseProcStatus("Name:\tmmgate\nVmHWM:\t   51200 kB\nVmRSS:\t   20480 kB\nThreads:\t9\n")
	if st["VmHWM"] != 51200 || st["VmRSS"] != 20480 {
		t.Fatalf("got %v", st)
	}
	if _, ok := st["Threads"]; ok {
		t.Fatal("Threads has no kB unit and must be skipped")
	}
}

// A small SMTP server to check that sendSMTP authenticates, sends the
// envelope and the message, and reports success only on the final 250.
type rcvd struct {
	user, from string
	to         []string
	data       []byte
}

type testBackend struct {
	mu     sync.Mutex
	got    []rcvd
	refuse atomic.Bool // answer 451 to DATA
}

type testSession struct {
	be  *testBackend
	cur rcvd
}

func (b *testBackend) NewSession(*gosmtp.Conn) (gosmtp.Session, error) {
	return &testSession{be: b}, nil
}
func (s *testSession) AuthMechanisms() []string { return []string{sasl.Plain} }
func (s *testSession) Auth(string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if user != "jira" || pass != "benchpw" {
			return gosmtp.ErrAuthFailed
		}
		s.cur.user = user
		return nil
	}), nil
}
func (s *testSession) Mail(from string, _ *gosmtp.MailOptions) error { s.cur.from = from; return nil }
func (s *testSession) Rcpt(to string, _ *gosmtp.RcptOptions) error {
	s.cur.to = append(s.cur.to, to)
	return nil
}
func (s *testSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.be.refuse.Load() {
		return &gosmtp.SMTPError{Code: 451, EnhancedCode: gosmtp.EnhancedCode{4, 3, 0}, Message: "try later"}
	}
	s.cur.data = b
	s.be.mu.Lock()
	s.be.got = append(s.be.got, s.cur)
	s.be.mu.Unlock()
	return nil
}
func (s *testSession) Reset()        { s.cur = rcvd{user: s.cur.user} }
func (s *testSession) Logout() error { return nil }

func startSMTP(t *testing.T, be *testBackend) string {
	t.Helper()
	srv := gosmtp.NewServer(be)
	srv.Domain = "test.local"
	srv.AllowInsecureAuth = true
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	return l.Addr().String()
}

func TestSendSMTP(t *testing.T) {
	be := &testBackend{}
	addr := startSMTP(t, be)
	if err := waitGreeting(addr, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	at, err := sendSMTP(smtpMessage{Addr: addr, User: "jira", Pass: "benchpw", From: "jira-svc@tools.test",
		To: []string{"alice@corp.test"}, Write: latencyMessage("jira-svc@tools.test", "alice@corp.test", "p1@bench", 1),
		Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if at.Before(before) {
		t.Fatal("250 time before the send")
	}
	be.mu.Lock()
	got := be.got
	be.mu.Unlock()
	if len(got) != 1 || got[0].user != "jira" || got[0].from != "jira-svc@tools.test" ||
		len(got[0].to) != 1 || got[0].to[0] != "alice@corp.test" {
		t.Fatalf("received %+v", got)
	}
	m, err := mail.ReadMessage(bytes.NewReader(got[0].data))
	if err != nil || m.Header.Get("Message-ID") != "<p1@bench>" {
		t.Fatalf("message: %v, Message-ID %q", err, m.Header.Get("Message-ID"))
	}

	if _, err := sendSMTP(smtpMessage{Addr: addr, User: "jira", Pass: "wrong", From: "a@b.test",
		To: []string{"alice@corp.test"}, Write: latencyMessage("a@b.test", "alice@corp.test", "p2@bench", 2),
		Timeout: 10 * time.Second}); err == nil || !strings.Contains(err.Error(), "AUTH") {
		t.Fatalf("wrong password: err = %v, want an AUTH error", err)
	}
	be.refuse.Store(true)
	if _, err := sendSMTP(smtpMessage{Addr: addr, User: "jira", Pass: "benchpw", From: "a@b.test",
		To: []string{"alice@corp.test"}, Write: latencyMessage("a@b.test", "alice@corp.test", "p3@bench", 3),
		Timeout: 10 * time.Second}); err == nil || !strings.Contains(err.Error(), "451") {
		t.Fatalf("refused DATA: err = %v, want the 451", err)
	}
}

func TestWaitGreetingTimesOut(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	if err := waitGreeting(addr, 300*time.Millisecond); err == nil {
		t.Fatal("no server, but waitGreeting succeeded")
	}
}

func TestMMID(t *testing.T) {
	a, b := mmID("x"), mmID("y")
	if len(a) != 26 || a == b || mmID("x") != a {
		t.Fatalf("mmID: %q %q", a, b)
	}
}
