package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/smtp"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Fixed names of what the suite creates in Mattermost (idempotently).
const (
	jiraBotName  = "mmgate-e2e-jira"
	jiraSMTPUser = "jira"
	jiraSMTPPass = "jira-secret"
	bobName      = "bob"
	bobEmail     = "bob@example.com"
	bobPass      = "Bob-Passw0rd!"
	carolName    = "carol"
	carolEmail   = "carol@example.com"
	carolPass    = "Carol-Passw0rd!"
	mailDomain   = "corp.test"
	smtpHostname = "mmgate.test"
	// deadline for anything asynchronous (delivery, quarantine, start-up).
	waitFor = 30 * time.Second
)

// suite is the state shared by every test, built once.
type suite struct {
	root     string // temporary directory of the whole run
	bin      string // the mmgate binary
	certFile string
	keyFile  string
	caPool   *x509.CertPool
	mmURL    string
	admin    *mmClient
	alice    *mmClient // session of alice (MM_USER_TOKEN)
	bob      *mmClient
	carol    *mmClient
	aliceID  string
	bobID    string
	carolID  string
	botID    string
	botToken string
	tokenID  string
	teamID   string
	team     string // its name
	peers    string // test/peers directory
}

var (
	theSuite  *suite
	suiteErr  error
	suiteOnce sync.Once
	suiteRoot string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if theSuite != nil && theSuite.tokenID != "" {
		// The bot token exists only for this run.
		_, _ = theSuite.admin.do("POST", "/users/tokens/revoke", map[string]string{"token_id": theSuite.tokenID}, nil)
	}
	if suiteRoot != "" && code == 0 && os.Getenv("MMGATE_E2E_KEEP") == "" {
		_ = os.RemoveAll(suiteRoot)
	} else if suiteRoot != "" {
		fmt.Fprintf(os.Stderr, "e2e: kept %s (logs, configs, data) for inspection\n", suiteRoot)
	}
	os.Exit(code)
}

// setup returns the suite, skipping (or failing under MMGATE_E2E=1) when no
// Mattermost is configured.
func setup(t *testing.T) *suite {
	t.Helper()
	if os.Getenv("MM_URL") == "" {
		msg := "MM_URL is not set: start a real Mattermost with " +
			`eval "$(bash test/peers/mattermost.sh up)"` + " and export its variables (or run `make e2e`)"
		if os.Getenv("MMGATE_E2E") == "1" {
			t.Fatal("MMGATE_E2E=1 but " + msg)
		}
		t.Skip(msg)
	}
	suiteOnce.Do(func() { theSuite, suiteErr = newSuite() })
	if suiteErr != nil {
		t.Fatalf("e2e setup: %v", suiteErr)
	}
	return theSuite
}

func requireEnv(names ...string) (map[string]string, error) {
	out := map[string]string{}
	var missing []string
	for _, n := range names {
		v := os.Getenv(n)
		if v == "" {
			missing = append(missing, n)
		}
		out[n] = v
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("missing environment variables %s (from test/peers/mattermost.sh env)", strings.Join(missing, ", "))
	}
	return out, nil
}

func newSuite() (*suite, error) {
	env, err := requireEnv("MM_URL", "MM_ADMIN_TOKEN", "MM_USER_TOKEN", "MM_USER_ID", "MM_TEAM")
	if err != nil {
		return nil, err
	}
	root, err := os.MkdirTemp("", "mmgate-e2e-")
	if err != nil {
		return nil, err
	}
	suiteRoot = root
	s := &suite{root: root, mmURL: strings.TrimRight(env["MM_URL"], "/")}
	_, file, _, _ := runtime.Caller(0)
	repo := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	s.peers = filepath.Join(repo, "test", "peers")

	// 1. the binary
	s.bin = filepath.Join(root, "mmgate")
	gobin := "go"
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		gobin = p
	}
	build := exec.Command(gobin, "build", "-o", s.bin, "./cmd/mmgate")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build ./cmd/mmgate: %v\n%s", err, out)
	}

	// 2. a certificate for STARTTLS
	if err := s.makeCert(); err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}

	// 3. Mattermost: bot, users, team membership
	s.admin = &mmClient{base: s.mmURL, token: env["MM_ADMIN_TOKEN"]}
	s.alice = &mmClient{base: s.mmURL, token: env["MM_USER_TOKEN"]}
	s.aliceID = env["MM_USER_ID"]
	if err := s.alice.ping(); err != nil {
		return nil, fmt.Errorf("alice's session token (MM_USER_TOKEN) does not work: %w", err)
	}
	var team struct{ ID string }
	if _, err := s.admin.do("GET", "/teams/name/"+env["MM_TEAM"], nil, &team); err != nil {
		return nil, fmt.Errorf("team %s: %w", env["MM_TEAM"], err)
	}
	s.teamID, s.team = team.ID, env["MM_TEAM"]
	if s.bobID, err = s.ensureUser(bobName, bobEmail, bobPass); err != nil {
		return nil, err
	}
	if s.carolID, err = s.ensureUser(carolName, carolEmail, carolPass); err != nil {
		return nil, err
	}
	if s.bob, err = s.login(bobName, bobPass); err != nil {
		return nil, err
	}
	if s.carol, err = s.login(carolName, carolPass); err != nil {
		return nil, err
	}
	if err := s.ensureBot(); err != nil {
		return nil, err
	}
	return s, nil
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func (s *suite) makeCert() error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: smtpHostname},
		DNSNames:              []string{smtpHostname, "localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return err
	}
	s.caPool = x509.NewCertPool()
	s.caPool.AddCert(cert)
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	s.certFile = filepath.Join(s.root, "cert.pem")
	s.keyFile = filepath.Join(s.root, "key.pem")
	if err := os.WriteFile(s.certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return err
	}
	return os.WriteFile(s.keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
}

// ensureUser creates a Mattermost user (or resets the password of an existing
// one) and makes it a member of the team. It returns the user id.
func (s *suite) ensureUser(name, email, pass string) (string, error) {
	var u struct{ ID string }
	st, err := s.admin.do("GET", "/users/username/"+name, nil, &u)
	switch {
	case err == nil:
		if _, err := s.admin.do("PUT", "/users/"+u.ID+"/password", map[string]string{"new_password": pass}, nil); err != nil {
			return "", fmt.Errorf("resetting %s's password: %w", name, err)
		}
	case st == http.StatusNotFound:
		if _, err := s.admin.do("POST", "/users", map[string]string{"username": name, "email": email, "password": pass}, &u); err != nil {
			return "", fmt.Errorf("creating user %s: %w", name, err)
		}
	default:
		return "", fmt.Errorf("looking up user %s: %w", name, err)
	}
	if _, err := s.admin.do("POST", "/teams/"+s.teamID+"/members", map[string]string{"team_id": s.teamID, "user_id": u.ID}, nil); err != nil {
		return "", fmt.Errorf("adding %s to the team: %w", name, err)
	}
	return u.ID, nil
}

func (s *suite) login(name, pass string) (*mmClient, error) {
	body, _ := json.Marshal(map[string]string{"login_id": name, "password": pass})
	resp, err := http.Post(s.mmURL+"/api/v4/users/login", "application/json", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	tok := resp.Header.Get("Token")
	if resp.StatusCode != http.StatusOK || tok == "" {
		return nil, fmt.Errorf("login as %s: HTTP %d %s", name, resp.StatusCode, b)
	}
	return &mmClient{base: s.mmURL, token: tok}, nil
}

// ensureBot creates the jira app's bot (once) and a fresh access token for
// this run (revoked in TestMain).
func (s *suite) ensureBot() error {
	var u struct {
		ID       string
		DeleteAt int64 `json:"delete_at"`
	}
	st, err := s.admin.do("GET", "/users/username/"+jiraBotName, nil, &u)
	switch {
	case err == nil:
		if u.DeleteAt != 0 {
			if _, err := s.admin.do("POST", "/bots/"+u.ID+"/enable", nil, nil); err != nil {
				return fmt.Errorf("enabling bot %s: %w", jiraBotName, err)
			}
		}
	case st == http.StatusNotFound:
		var b struct {
			UserID string `json:"user_id"`
		}
		if _, err := s.admin.do("POST", "/bots", map[string]string{"username": jiraBotName, "display_name": "Jira (mmgate e2e)"}, &b); err != nil {
			return fmt.Errorf("creating bot %s: %w", jiraBotName, err)
		}
		u.ID = b.UserID
	default:
		return fmt.Errorf("looking up bot %s: %w", jiraBotName, err)
	}
	s.botID = u.ID
	if _, err := s.admin.do("POST", "/teams/"+s.teamID+"/members", map[string]string{"team_id": s.teamID, "user_id": u.ID}, nil); err != nil {
		return fmt.Errorf("adding the bot to the team: %w", err)
	}
	var tok struct {
		ID    string `json:"id"`
		Token string `json:"token"`
	}
	if _, err := s.admin.do("POST", "/users/"+u.ID+"/tokens", map[string]string{"description": "mmgate e2e " + time.Now().Format(time.RFC3339)}, &tok); err != nil {
		return fmt.Errorf("creating the bot's access token: %w", err)
	}
	s.botToken, s.tokenID = tok.Token, tok.ID
	return os.WriteFile(filepath.Join(s.root, "jira.token"), []byte(tok.Token+"\n"), 0o600)
}

// --- Mattermost REST client (as a user) ---------------------------------------------------------

type mmClient struct {
	base  string
	token string
}

var httpClient = &http.Client{Timeout: 20 * time.Second}

// do sends a JSON request to /api/v4+path and decodes a 2xx answer into out.
func (c *mmClient) do(method, path string, in, out any) (int, error) {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return 0, err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, c.base+"/api/v4"+path, body)
	if err != nil {
		return 0, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return resp.StatusCode, err
	}
	if resp.StatusCode/100 != 2 {
		return resp.StatusCode, fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, truncate(string(b), 300))
	}
	if out != nil {
		if err := json.Unmarshal(b, out); err != nil {
			return resp.StatusCode, fmt.Errorf("%s %s: decoding answer: %w", method, path, err)
		}
	}
	return resp.StatusCode, nil
}

func (c *mmClient) ping() error {
	_, err := c.do("GET", "/users/me", nil, nil)
	return err
}

// file downloads a file as this user.
func (c *mmClient) file(id string) ([]byte, error) {
	req, err := http.NewRequest("GET", c.base+"/api/v4/files/"+id, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /files/%s: HTTP %d: %s", id, resp.StatusCode, truncate(string(b), 200))
	}
	return b, nil
}

type fileInfo struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	Size int64  `json:"size"`
}

type post struct {
	ID        string         `json:"id"`
	CreateAt  int64          `json:"create_at"`
	DeleteAt  int64          `json:"delete_at"`
	UserID    string         `json:"user_id"`
	ChannelID string         `json:"channel_id"`
	RootID    string         `json:"root_id"`
	Message   string         `json:"message"`
	FileIDs   []string       `json:"file_ids"`
	Props     map[string]any `json:"props"`
	Metadata  struct {
		Files []fileInfo `json:"files"`
	} `json:"metadata"`
}

func (p post) prop(k string) string { v, _ := p.Props[k].(string); return v }

// dmWith returns the id of the DM channel between this user and other.
func (c *mmClient) dmWith(self, other string) (string, error) {
	var ch struct{ ID string }
	if _, err := c.do("POST", "/channels/direct", []string{self, other}, &ch); err != nil {
		return "", err
	}
	return ch.ID, nil
}

// postsSince returns the channel's undeleted posts created since (less a
// second), oldest first, read page by page from the newest back. Mattermost's ?since= answer is capped
// at 1,000 posts (the oldest changed ones) and served from a per-channel
// cache that was seen to answer empty right after posts were made, so the
// suite does not use it.
func (c *mmClient) postsSince(channelID string, since time.Time) ([]post, error) {
	ms := since.Add(-time.Second).UnixMilli()
	const perPage = 200
	seen := map[string]bool{}
	var out []post
	for page := 0; ; page++ {
		if page == 2000 {
			return nil, fmt.Errorf("channel %s: more than 2,000 pages of posts since %s", channelID, since.Format(time.RFC3339))
		}
		var pl struct {
			Order []string        `json:"order"`
			Posts map[string]post `json:"posts"`
		}
		if _, err := c.do("GET", fmt.Sprintf("/channels/%s/posts?page=%d&per_page=%d&skipFetchThreads=true", channelID, page, perPage), nil, &pl); err != nil {
			return nil, err
		}
		older := len(pl.Order) < perPage
		for _, id := range pl.Order {
			p, ok := pl.Posts[id]
			if !ok {
				continue
			}
			if p.CreateAt < ms {
				older = true
				continue
			}
			// A post can move to the next page while the pages are read.
			if p.DeleteAt == 0 && !seen[id] {
				seen[id] = true
				out = append(out, p)
			}
		}
		if older {
			break
		}
	}
	sortPosts(out)
	return out, nil
}

func sortPosts(ps []post) {
	for i := 1; i < len(ps); i++ {
		for j := i; j > 0 && (ps[j].CreateAt < ps[j-1].CreateAt ||
			ps[j].CreateAt == ps[j-1].CreateAt && ps[j].ID < ps[j-1].ID); j-- {
			ps[j], ps[j-1] = ps[j-1], ps[j]
		}
	}
}

// recipient is a Mattermost user reading their DM with the jira bot.
type recipient struct {
	name string
	c    *mmClient
	dm   string
}

func (s *suite) recipient(t *testing.T, name string) *recipient {
	t.Helper()
	var c *mmClient
	var id string
	switch name {
	case "alice":
		c, id = s.alice, s.aliceID
	case bobName:
		c, id = s.bob, s.bobID
	case carolName:
		c, id = s.carol, s.carolID
	default:
		t.Fatalf("no such recipient %q", name)
	}
	dm, err := c.dmWith(id, s.botID)
	if err != nil {
		t.Fatalf("DM channel of %s with the bot: %v", name, err)
	}
	return &recipient{name: name, c: c, dm: dm}
}

// postsOf returns the posts in r's DM carrying mmgate_message_id == msgID.
func (r *recipient) postsOf(since time.Time, msgID string) ([]post, error) {
	ps, err := r.c.postsSince(r.dm, since)
	if err != nil {
		return nil, err
	}
	var out []post
	for _, p := range ps {
		if p.prop("mmgate_message_id") == msgID {
			out = append(out, p)
		}
	}
	return out, nil
}

// waitPosts polls until r has at least n posts of msgID, and returns them.
func (r *recipient) waitPosts(t *testing.T, g *gate, since time.Time, msgID string, n int) []post {
	t.Helper()
	var got []post
	eventually(t, waitFor, fmt.Sprintf("%d post(s) of <%s> in %s's DM", n, msgID, r.name), func() (bool, string) {
		ps, err := r.postsOf(since, msgID)
		if err != nil {
			return false, err.Error()
		}
		got = ps
		return len(ps) >= n, fmt.Sprintf("%d post(s) so far%s", len(ps), g.stateHint())
	})
	return got
}

// settle waits a little after a delivery so that a duplicate, if mmgate were
// to post one, has time to show up before the posts are counted. It is not a
// timing assertion: the count is checked after it.
func settle(g *gate) {
	time.Sleep(3 * time.Second)
	_ = g
}

// --- polling ---------------------------------------------------------------------------------

// eventually polls f until it returns true or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, detail := f()
		if ok {
			return
		}
		last = detail
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s: %s", timeout, what, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// --- the mmgate process ----------------------------------------------------------------------

// gateConfig is what differs between tests.
type gateConfig struct {
	MaxMessageBytes int64
	Rules           []string // YAML flow mappings under routing.rules
	Users           []dirUser
	MattermostURL   string // default: the suite's
	// Extra is YAML appended at the top level of mmgate.yaml (e.g. the pipe
	// and postback sections), with {gate_dir} replaced by the gate's
	// directory; "" adds nothing.
	Extra string
	// Name tells apart several gates of one test: their directories are
	// TESTNAME-Name ("" : TESTNAME).
	Name string
	// DataDir is data_dir ("" : GATE_DIR/data), e.g. a mount point.
	DataDir string
	// Spool is the value of the spool key, a YAML flow mapping (""
	// : {retry_min: 1s, retry_max: 3s}); {gate_dir} is replaced.
	Spool string
	// Directory is the value of the directory key ("" : the static
	// users.yaml written from Users).
	Directory string
	// Jira is YAML added under apps.jira, each line indented by four spaces.
	Jira string
	// HTTPAddr is http.listen ("" : a free port), for peers that must know
	// it before the gate starts.
	HTTPAddr string
	// PublicURL sets http.public_url to the gate's own address, and
	// http.admin_token to e2eAdminToken.
	PublicURL bool
	// NoStart writes the configuration without starting mmgate.
	NoStart bool
}

const e2eAdminToken = "e2e-admin-token-for-mmgate"

type dirUser struct {
	Email    string
	Aliases  []string
	Username string
}

func defaultUsers() []dirUser {
	return []dirUser{
		{Email: "alice@" + mailDomain, Username: "alice"},
		{Email: "bob@" + mailDomain, Aliases: []string{"robert@" + mailDomain}, Username: bobName},
	}
}

// gate is one mmgate data directory and the `serve` process working on it.
type gate struct {
	t        *testing.T
	s        *suite
	dir      string
	cfgPath  string
	usersYML string
	logPath  string
	smtpAddr string
	httpAddr string
	cfg      gateConfig

	cmd  *exec.Cmd
	done chan struct{}
	werr error
}

// newGate writes a configuration in a fresh directory and starts mmgate.
func newGate(t *testing.T, s *suite, cfg gateConfig) *gate {
	t.Helper()
	name := strings.NewReplacer("/", "_", " ", "_").Replace(t.Name())
	if cfg.Name != "" {
		name += "-" + cfg.Name
	}
	dir := filepath.Join(s.root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	g := &gate{t: t, s: s, dir: dir, cfgPath: filepath.Join(dir, "mmgate.yaml"),
		usersYML: filepath.Join(dir, "users.yaml"), logPath: filepath.Join(dir, "mmgate.log"),
		smtpAddr: freeAddr(t), httpAddr: cfg.HTTPAddr}
	if g.httpAddr == "" {
		g.httpAddr = freeAddr(t)
	}
	g.writeConfig(cfg)
	t.Cleanup(func() {
		g.stop()
		g.checkLogSecrets()
		if t.Failed() {
			g.dumpLog()
		}
	})
	if !cfg.NoStart {
		g.start()
	}
	return g
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// writeConfig (re)writes mmgate.yaml and users.yaml.
func (g *gate) writeConfig(cfg gateConfig) {
	g.t.Helper()
	if cfg.MaxMessageBytes == 0 {
		cfg.MaxMessageBytes = 5 << 20
	}
	if cfg.Users == nil {
		cfg.Users = defaultUsers()
	}
	if cfg.MattermostURL == "" {
		cfg.MattermostURL = g.s.mmURL
	}
	dataDir := cfg.DataDir
	if dataDir == "" {
		dataDir = g.dir + "/data"
	}
	spoolYAML := cfg.Spool
	if spoolYAML == "" {
		spoolYAML = "{retry_min: 1s, retry_max: 3s}"
	}
	spoolYAML = strings.ReplaceAll(spoolYAML, "{gate_dir}", g.dir)
	dirYAML := cfg.Directory
	if dirYAML == "" {
		dirYAML = "{file: " + g.usersYML + ", mattermost_lookup: false}"
	}
	g.cfg = cfg
	publicURL := ""
	if cfg.PublicURL {
		publicURL = ", public_url: 'http://" + g.httpAddr + "', admin_token: '" + e2eAdminToken + "'"
	}
	var u strings.Builder
	u.WriteString("users:\n")
	for _, x := range cfg.Users {
		fmt.Fprintf(&u, "  - email: %s\n    username: %s\n", x.Email, x.Username)
		if len(x.Aliases) > 0 {
			fmt.Fprintf(&u, "    aliases: [%s]\n", strings.Join(x.Aliases, ", "))
		}
	}
	rules := "  rules: []\n"
	if len(cfg.Rules) > 0 {
		rules = "  rules:\n"
		for _, r := range cfg.Rules {
			rules += "    - " + r + "\n"
		}
	}
	c := fmt.Sprintf(`# written by the mmgate e2e suite
data_dir: %[1]s
log: {level: debug, format: text}
smtp:
  listen: %[2]s
  hostname: %[3]s
  domains: [%[4]s]
  tls: {cert_file: %[5]s, key_file: %[6]s}
  allow_insecure_auth: false
  max_message_bytes: %[7]d
http: {listen: %[8]s%[16]s}
mattermost: {url: %[9]s}
spool: %[15]s
relay: {workers: 4, poll_interval: 50ms}
directory: %[10]s
routing:
%[11]sapps:
  jira:
    bot_token: file:%[12]s
    smtp: {username: %[13]s, password: %[14]s}
`, dataDir, g.smtpAddr, smtpHostname, mailDomain, g.s.certFile, g.s.keyFile, cfg.MaxMessageBytes,
		g.httpAddr, cfg.MattermostURL, dirYAML, rules, filepath.Join(g.s.root, "jira.token"), jiraSMTPUser, jiraSMTPPass,
		spoolYAML, publicURL)
	c += cfg.Jira
	if cfg.Extra != "" {
		extra := strings.NewReplacer("{gate_dir}", g.dir, "{http_addr}", g.httpAddr, "{mm_url}", g.s.mmURL).Replace(cfg.Extra)
		c += strings.TrimRight(extra, "\n") + "\n"
	}
	if err := os.WriteFile(g.usersYML, []byte(u.String()), 0o644); err != nil {
		g.t.Fatal(err)
	}
	if err := os.WriteFile(g.cfgPath, []byte(c), 0o600); err != nil {
		g.t.Fatal(err)
	}
}

// start runs `mmgate serve` and waits for /healthz.
func (g *gate) start() {
	g.t.Helper()
	if err := g.startErr(); err != nil {
		g.dumpLog()
		g.t.Fatal(err)
	}
}

// startErr is start that returns its failure instead of failing the test,
// for goroutines other than the test's (a process that does not start is
// left killed).
func (g *gate) startErr() error {
	lf, err := os.OpenFile(g.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(lf, "==== e2e: mmgate serve starting at %s ====\n", time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(g.s.bin, "serve", "-c", g.cfgPath)
	cmd.Env = cleanEnv()
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = g.dir
	if err := cmd.Start(); err != nil {
		_ = lf.Close()
		return fmt.Errorf("starting mmgate: %w", err)
	}
	done := make(chan struct{})
	g.cmd, g.done = cmd, done
	go func() {
		g.werr = cmd.Wait()
		_ = lf.Close()
		close(done)
	}()
	deadline := time.Now().Add(waitFor)
	for {
		select {
		case <-done:
			g.cmd = nil
			return fmt.Errorf("mmgate serve exited during start-up: %v", g.werr)
		default:
		}
		resp, err := httpClient.Get("http://" + g.httpAddr + "/healthz")
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			g.kill()
			return fmt.Errorf("mmgate /healthz did not answer 200 within %s (last error: %v)", waitFor, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cleanEnv is the test's environment without MMGATE_* overrides.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "MMGATE_") {
			out = append(out, kv)
		}
	}
	return out
}

// stop sends SIGTERM and waits for the process to exit.
func (g *gate) stop() {
	if g.cmd == nil {
		return
	}
	select {
	case <-g.done:
	default:
		_ = g.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-g.done:
		case <-time.After(40 * time.Second):
			g.t.Errorf("mmgate did not stop within 40s of SIGTERM; killing it")
			_ = g.cmd.Process.Kill()
			<-g.done
		}
		var ee *exec.ExitError
		if g.werr != nil && !(errors.As(g.werr, &ee) && ee.ExitCode() == 0) {
			g.t.Errorf("mmgate serve exited with %v after SIGTERM", g.werr)
		}
	}
	g.cmd = nil
}

// kill ends mmgate with SIGKILL (a crash) and waits for it.
func (g *gate) kill() {
	if g.cmd == nil {
		return
	}
	_ = g.cmd.Process.Kill()
	<-g.done
	g.cmd = nil
}

// checkLogSecrets fails the test if the log holds a secret (bot token or SMTP
// password), even at debug level.
func (g *gate) checkLogSecrets() {
	b, err := os.ReadFile(g.logPath)
	if err != nil {
		return
	}
	for name, secret := range map[string]string{"the bot token": g.s.botToken, "the SMTP password": jiraSMTPPass} {
		if secret != "" && bytes.Contains(b, []byte(secret)) {
			g.t.Errorf("mmgate's log %s contains %s", g.logPath, name)
		}
	}
}

// restart stops mmgate and starts it again on the same data (and config file).
func (g *gate) restart() {
	g.t.Helper()
	g.stop()
	g.start()
}

func (g *gate) dumpLog() {
	b, err := os.ReadFile(g.logPath)
	if err != nil {
		g.t.Logf("mmgate log %s: %v", g.logPath, err)
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	const max = 250
	if len(lines) > max {
		g.t.Logf("mmgate log (%s), last %d of %d lines:", g.logPath, max, len(lines))
		lines = lines[len(lines)-max:]
	} else {
		g.t.Logf("mmgate log (%s):", g.logPath)
	}
	for _, l := range lines {
		g.t.Log("  | " + l)
	}
}

// cli runs `mmgate ARGS -c CONFIG` and returns stdout, stderr and the exit code.
func (g *gate) cli(args ...string) (string, string, int) {
	g.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, g.s.bin, append(args, "-c", g.cfgPath)...)
	cmd.Env = cleanEnv()
	cmd.Dir = g.dir
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			g.t.Fatalf("mmgate %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// mustCLI is cli that fails the test on a non-zero exit.
func (g *gate) mustCLI(args ...string) string {
	g.t.Helper()
	out, errOut, code := g.cli(args...)
	if code != 0 {
		g.t.Fatalf("mmgate %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, out, truncate(errOut, 3000))
	}
	return out
}

// listRow is one row of `queue list` / `quarantine list`.
type listRow struct {
	ID   string
	Line string
}

// list parses the table printed by `mmgate queue list` or `quarantine list`.
func (g *gate) list(args ...string) []listRow {
	g.t.Helper()
	out := g.mustCLI(args...)
	sc := bufio.NewScanner(strings.NewReader(out))
	var rows []listRow
	header := false
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		if !header {
			if strings.TrimSpace(line) == "no messages" {
				return nil
			}
			if f := strings.Fields(line); len(f) == 0 || f[0] != "ID" {
				g.t.Fatalf("mmgate %s: first line is not a header starting with ID: %q\n%s", strings.Join(args, " "), line, out)
			}
			header = true
			continue
		}
		rows = append(rows, listRow{ID: strings.Fields(line)[0], Line: line})
	}
	return rows
}

// findRow returns the row whose line contains needle.
func findRow(rows []listRow, needle string) (listRow, bool) {
	for _, r := range rows {
		if strings.Contains(r.Line, needle) {
			return r, true
		}
	}
	return listRow{}, false
}

// stateHint is a short description of the spool, for timeout messages.
func (g *gate) stateHint() string {
	out, _, code := g.cli("queue", "list", "--all")
	if code != 0 {
		return ""
	}
	return "; queue list --all:\n" + truncate(out, 2000)
}

// --- SMTP --------------------------------------------------------------------------------------

type smtpAuth struct{ user, pass string }

// sendSMTP sends one message with net/smtp over STARTTLS (verifying the
// suite's certificate) and returns the first error of the conversation.
func (g *gate) sendSMTP(auth *smtpAuth, from string, to []string, msg []byte) error {
	c, err := smtp.Dial(g.smtpAddr)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Hello("e2e-client.test"); err != nil {
		return err
	}
	if err := c.StartTLS(&tls.Config{ServerName: smtpHostname, RootCAs: g.s.caPool}); err != nil {
		return fmt.Errorf("STARTTLS: %w", err)
	}
	if auth != nil {
		if err := c.Auth(smtp.PlainAuth("", auth.user, auth.pass, smtpHost(g.smtpAddr))); err != nil {
			return err
		}
	}
	if err := c.Mail(from); err != nil {
		return err
	}
	for _, r := range to {
		if err := c.Rcpt(r); err != nil {
			return err
		}
	}
	w, err := c.Data()
	if err != nil {
		return err
	}
	if _, err := w.Write(msg); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return err
	}
	return c.Quit()
}

func (g *gate) mustSend(auth *smtpAuth, from string, to []string, msg []byte) {
	g.t.Helper()
	if err := g.sendSMTP(auth, from, to, msg); err != nil {
		g.t.Fatalf("sending over SMTP: %v", err)
	}
}

// swaks sends emlPath with swaks: STARTTLS, AUTH LOGIN.
func (g *gate) swaks(user, pass, from, to, emlPath string) string {
	g.t.Helper()
	path, err := exec.LookPath("swaks")
	if err != nil {
		msg := "swaks is not installed (apt-get install swaks; `make e2e` installs it)"
		if os.Getenv("MMGATE_E2E") == "1" {
			g.t.Fatal(msg)
		}
		g.t.Skip(msg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, "--server", g.smtpAddr, "--tls", "--auth", "LOGIN",
		"--auth-user", user, "--auth-password", pass, "--from", from, "--to", to,
		"--helo", "swaks.e2e.test", "--data", emlPath, "--suppress-data")
	out, err := cmd.CombinedOutput()
	if err != nil {
		g.t.Fatalf("swaks failed: %v\n%s", err, out)
	}
	return string(out)
}

// --- mail building -----------------------------------------------------------------------------

func nonce() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// crlf turns \n into \r\n.
func crlf(s string) []byte {
	return []byte(strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n"))
}

func header(from, to, subject, msgID string) string {
	return fmt.Sprintf("From: %s\nTo: %s\nSubject: %s\nMessage-ID: <%s>\nDate: %s\nMIME-Version: 1.0\n",
		from, to, subject, msgID, time.Now().Format(time.RFC1123Z))
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// smtpConn is a session after EHLO and STARTTLS, for step-by-step tests.
type smtpConn struct {
	*smtp.Client
	host string
}

func dialSMTP(g *gate) (*smtpConn, error) {
	c, err := smtp.Dial(g.smtpAddr)
	if err != nil {
		return nil, err
	}
	if err := c.Hello("e2e-client.test"); err != nil {
		_ = c.Close()
		return nil, err
	}
	if err := c.StartTLS(&tls.Config{ServerName: smtpHostname, RootCAs: g.s.caPool}); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("STARTTLS: %w", err)
	}
	return &smtpConn{Client: c, host: smtpHost(g.smtpAddr)}, nil
}

// Auth does AUTH PLAIN.
func (c *smtpConn) Auth(a *smtpAuth) error {
	return c.Client.Auth(smtp.PlainAuth("", a.user, a.pass, c.host))
}

// smtpHost is the host net/smtp knows the server by (PlainAuth checks it).
func smtpHost(addr string) string {
	h, _, _ := net.SplitHostPort(addr)
	return h
}

// Cmd sends a raw command and returns the reply, whatever its code.
func (c *smtpConn) Cmd(line string) (int, string, error) {
	id, err := c.Text.Cmd("%s", line)
	if err != nil {
		return 0, "", err
	}
	c.Text.StartResponse(id)
	defer c.Text.EndResponse(id)
	code, msg, err := c.Text.ReadResponse(0)
	var te *textproto.Error
	if errors.As(err, &te) {
		return te.Code, te.Msg, nil
	}
	return code, msg, err
}
