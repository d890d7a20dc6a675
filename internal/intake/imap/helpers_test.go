package imapintake

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-imap/v2"
	"github.com/emersion/go-imap/v2/imapclient"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/spool"
)

// waitLimit bounds every wait for something the poller does.
const waitLimit = 20 * time.Second

const ldaPath = "/usr/lib/dovecot/dovecot-lda"

// ---- a throwaway dovecot (test/peers/dovecot.sh) ----

type dovecot struct {
	t      testing.TB
	dir    string
	port   int
	addr   string
	script string
}

// toolPath makes sure the script finds dovecot in /usr/sbin.
func toolPath() string {
	return "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:" + os.Getenv("PATH")
}

// requireDovecot skips the test when dovecot cannot be run here, or fails it
// when MMGATE_E2E=1 says the peers must be there.
func requireDovecot(t testing.TB) string {
	t.Helper()
	miss := func(why string) {
		t.Helper()
		if os.Getenv("MMGATE_E2E") == "1" {
			t.Fatal(why)
		}
		t.Skip(why)
	}
	_, err := exec.LookPath("dovecot")
	if err != nil {
		if _, err2 := os.Stat("/usr/sbin/dovecot"); err2 != nil {
			miss("dovecot is not installed: install the Debian package dovecot-imapd (test/peers/install.sh does)")
		}
	}
	if _, err := os.Stat(ldaPath); err != nil {
		miss(ldaPath + " is missing: install the Debian package dovecot-imapd (test/peers/install.sh does)")
	}
	if os.Geteuid() != 0 {
		miss("the throwaway dovecot (test/peers/dovecot.sh) must be started as root: it keeps mail as nobody")
	}
	script, err := filepath.Abs(filepath.Join("..", "..", "..", "test", "peers", "dovecot.sh"))
	if err == nil {
		_, err = os.Stat(script)
	}
	if err != nil {
		t.Fatalf("test/peers/dovecot.sh not found: %v", err)
	}
	return script
}

// startDovecot starts a dovecot for this test on a free loopback port and
// stops it when the test ends.
func startDovecot(t *testing.T) *dovecot {
	t.Helper()
	script := requireDovecot(t)
	// A short path (dovecot's Unix sockets live under it), readable by nobody
	// (t.TempDir is 0700), removed at the end.
	dir, err := os.MkdirTemp("", "mmgate-dv-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &dovecot{t: t, dir: dir, port: freePort(t), script: script}
	d.addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(d.port))
	d.start()
	t.Cleanup(d.stop)
	return d
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// start runs the script (again: it rewrites the configuration in the same
// directory) and waits until dovecot answers.
func (d *dovecot) start() {
	d.t.Helper()
	cmd := exec.Command("bash", d.script, d.dir, strconv.Itoa(d.port))
	cmd.Env = append(os.Environ(), toolPath())
	out, err := cmd.CombinedOutput()
	if err != nil {
		d.t.Fatalf("dovecot.sh: %v\n%s", err, out)
	}
	deadline := time.Now().Add(waitLimit)
	for {
		c, err := net.DialTimeout("tcp", d.addr, time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(d.dir, "dovecot.log"))
			fg, _ := os.ReadFile(filepath.Join(d.dir, "fg.log"))
			d.t.Fatalf("dovecot does not answer on %s: %v\n%s\n%s", d.addr, err, log, fg)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends SIGTERM to dovecot's master (DIR/pid) and waits for it to exit.
func (d *dovecot) stop() {
	d.t.Helper()
	b, err := os.ReadFile(filepath.Join(d.dir, "pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return
	}
	deadline := time.Now().Add(waitLimit)
	if processAlive(pid) {
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
			d.t.Fatalf("kill dovecot: %v", err)
		}
		for processAlive(pid) {
			if time.Now().After(deadline) {
				d.t.Fatalf("dovecot (pid %d) did not exit after SIGTERM", pid)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// The master's children (imap sessions, auth, stats, ...) outlive it and
	// keep serving open connections; a service manager stops them too
	// (systemd's KillMode=control-group), and so do we.
	for {
		pids := d.instanceProcs()
		if len(pids) == 0 {
			break
		}
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGTERM)
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("dovecot processes %v did not exit after SIGTERM", pids)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// Its listener is gone with it; make sure before a restart.
	for {
		c, err := net.DialTimeout("tcp", d.addr, time.Second)
		if err != nil {
			return
		}
		_ = c.Close()
		if time.Now().After(deadline) {
			d.t.Fatalf("something still listens on %s after dovecot exited", d.addr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// instanceProcs lists the live processes of this dovecot instance (titled
// "dovecot-INSTANCE/service", instance_name being DIR's base name).
func (d *dovecot) instanceProcs() []int {
	prefix := "dovecot-" + filepath.Base(d.dir) + "/"
	ents, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.HasPrefix(string(b), prefix) || !processAlive(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}

// processAlive: the process exists and is not a zombie (dovecot is not our
// child, so whoever inherits it may be slow to reap it).
func processAlive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

// deliver hands msg to dovecot-lda for alice (needs the running daemon for
// the user lookup).
func (d *dovecot) deliver(msg []byte) {
	d.t.Helper()
	cmd := exec.Command(ldaPath, "-c", filepath.Join(d.dir, "dovecot.conf"), "-d", "alice")
	cmd.Stdin = bytes.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		d.t.Fatalf("dovecot-lda: %v\n%s", err, out)
	}
}

// deliverOffline delivers msg while dovecot is stopped. dovecot-lda -d asks
// the daemon's auth service for the user, so here lda runs as the mail user
// (nobody) with alice's home in its environment instead, which needs no
// daemon.
func (d *dovecot) deliverOffline(msg []byte) {
	d.t.Helper()
	uid, gid := uint32(65534), uint32(65534)
	if u, err := user.Lookup("nobody"); err == nil {
		if n, err := strconv.Atoi(u.Uid); err == nil {
			uid = uint32(n)
		}
	}
	if g, err := user.LookupGroup("nogroup"); err == nil {
		if n, err := strconv.Atoi(g.Gid); err == nil {
			gid = uint32(n)
		}
	}
	cmd := exec.Command(ldaPath, "-c", filepath.Join(d.dir, "dovecot.conf"), "-o", "log_path=/dev/stderr")
	cmd.Env = []string{"HOME=" + filepath.Join(d.dir, "home", "alice"), "USER=alice", toolPath()}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	cmd.Stdin = bytes.NewReader(msg)
	if out, err := cmd.CombinedOutput(); err != nil {
		d.t.Fatalf("dovecot-lda (offline): %v\n%s", err, out)
	}
}

type msgInfo struct {
	UID     imap.UID
	Flags   []imap.Flag
	Subject string
}

func (m msgInfo) has(f imap.Flag) bool { return slices.Contains(m.Flags, f) }

// inspect lists folder's messages over a separate, read-only connection.
func (d *dovecot) inspect(folder string) ([]msgInfo, error) {
	c, err := imapclient.DialInsecure(d.addr, nil)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	if err := c.Login("alice", "alicepw").Wait(); err != nil {
		return nil, err
	}
	sel, err := c.Select(folder, &imap.SelectOptions{ReadOnly: true}).Wait()
	if err != nil {
		return nil, err
	}
	var out []msgInfo
	if sel.NumMessages > 0 {
		bufs, err := c.Fetch(imap.SeqSet{imap.SeqRange{Start: 1, Stop: 0}},
			&imap.FetchOptions{UID: true, Flags: true, Envelope: true}).Collect()
		if err != nil {
			return nil, err
		}
		for _, b := range bufs {
			m := msgInfo{UID: b.UID, Flags: b.Flags}
			if b.Envelope != nil {
				m.Subject = b.Envelope.Subject
			}
			out = append(out, m)
		}
	}
	_ = c.Logout().Wait()
	slices.SortFunc(out, func(a, b msgInfo) int { return int(a.UID) - int(b.UID) })
	return out, nil
}

func (d *dovecot) mustInspect(folder string) []msgInfo {
	d.t.Helper()
	ms, err := d.inspect(folder)
	if err != nil {
		d.t.Fatalf("inspect %s: %v", folder, err)
	}
	return ms
}

// testMsg is a small message whose Subject names it.
func testMsg(subject string) []byte {
	return []byte("From: Monitor <monitor@tools.example>\r\n" +
		"To: alice@corp.example\r\n" +
		"Subject: " + subject + "\r\n" +
		"Message-ID: <" + subject + "@test.example>\r\n" +
		"Date: Mon, 02 Jan 2006 15:04:05 +0000\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"\r\n" +
		"Body of " + subject + ".\r\nSecond line: äöü.\r\n")
}

// ---- fakes ----

type storedMsg struct {
	id   string
	env  spool.Envelope
	body []byte
}

func (m storedMsg) subject() string { return subjectOf(m.body) }

func subjectOf(body []byte) string {
	for _, line := range strings.Split(string(body), "\r\n") {
		if line == "" {
			break
		}
		if s, ok := strings.CutPrefix(line, "Subject: "); ok {
			return s
		}
	}
	return ""
}

// fakeStore reads the whole body like the spool and records a message only
// when it returns nil.
type fakeStore struct {
	mu      sync.Mutex
	msgs    []storedMsg
	calls   map[string]int          // Accept calls by subject
	fail    func(body []byte) error // if set and non-nil result: Accept fails
	onStore func(stored int)        // called (outside the lock) after each success
	readErr []error                 // body read errors seen
}

func newFakeStore() *fakeStore { return &fakeStore{calls: make(map[string]int)} }

func (f *fakeStore) Accept(ctx context.Context, env spool.Envelope, body io.Reader) (string, error) {
	data, err := io.ReadAll(body)
	f.mu.Lock()
	f.calls[subjectOf(data)]++
	fail, onStore := f.fail, f.onStore
	if err != nil {
		f.readErr = append(f.readErr, err)
	}
	f.mu.Unlock()
	if err != nil {
		return "", fault.Wrap(fault.Temporary, "body_read_failed", "reading the message", err)
	}
	if fail != nil {
		if err := fail(data); err != nil {
			return "", err
		}
	}
	f.mu.Lock()
	id := fmt.Sprintf("id%04d", len(f.msgs)+1)
	f.msgs = append(f.msgs, storedMsg{id: id, env: env, body: data})
	n := len(f.msgs)
	f.mu.Unlock()
	if onStore != nil {
		onStore(n)
	}
	return id, nil
}

func (f *fakeStore) setFail(fn func([]byte) error) {
	f.mu.Lock()
	f.fail = fn
	f.mu.Unlock()
}

func (f *fakeStore) stored() []storedMsg {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.msgs)
}

func (f *fakeStore) callsFor(subject string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[subject]
}

// countBySubject counts stored messages per subject.
func (f *fakeStore) countBySubject() map[string]int {
	m := make(map[string]int)
	for _, s := range f.stored() {
		m[s.subject()]++
	}
	return m
}

type fakeState struct {
	mu sync.Mutex
	m  map[string]string
}

func newFakeState() *fakeState { return &fakeState{m: make(map[string]string)} }

func (s *fakeState) StateGet(_ context.Context, key string) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[key]
	return v, ok, nil
}

func (s *fakeState) StateSet(_ context.Context, key, value string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[key] = value
	return nil
}

func (s *fakeState) get(key string) (string, bool) {
	v, ok, _ := s.StateGet(context.Background(), key)
	return v, ok
}

// ---- running a poller ----

// running is a Poller's Run in a goroutine, with counters from its hooks.
type running struct {
	t      testing.TB
	cancel context.CancelFunc
	exited chan struct{}
	err    error
	cycles atomic.Int64 // cycles completed
	idles  atomic.Int64 // IDLE commands started
	inIdle atomic.Bool  // IDLE started and no cycle begun since
	once   sync.Once
	logw   *testLogWriter
}

// baseMailbox is alice's INBOX on d, without TLS, IDLE refresh far away.
func baseMailbox(d *dovecot) Mailbox {
	return Mailbox{
		Name:         "ops",
		Address:      d.addr,
		TLS:          "none",
		Username:     "alice",
		Password:     "alicepw",
		PollInterval: 10 * time.Minute,
		App:          "jira",
	}
}

func startPoller(t *testing.T, store Store, state State, mb Mailbox) *running {
	t.Helper()
	lw := &testLogWriter{t: t}
	log := slog.New(slog.NewTextHandler(lw, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p := New(store, state, mb, log)
	r := &running{t: t, exited: make(chan struct{}), logw: lw}
	p.hooks.cycleStart = func() { r.inIdle.Store(false) }
	p.hooks.cycleDone = func() { r.cycles.Add(1) }
	p.hooks.idling = func() { r.idles.Add(1); r.inIdle.Store(true) }
	// IMAP_TRACE=1 logs the IMAP protocol (test passwords included).
	if os.Getenv("IMAP_TRACE") != "" {
		p.hooks.trace = lw
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() {
		defer close(r.exited)
		r.err = p.Run(ctx)
	}()
	t.Cleanup(r.stop)
	return r
}

// stop cancels Run and checks that it returns nil promptly.
func (r *running) stop() {
	r.once.Do(func() {
		r.cancel()
		select {
		case <-r.exited:
			if r.err != nil {
				r.t.Errorf("Run returned %v", r.err)
			}
		case <-time.After(waitLimit):
			r.t.Errorf("Run did not return after its context was cancelled")
		}
		r.logw.close()
	})
}

// assertRunning fails if Run has returned before being stopped.
func (r *running) assertRunning() {
	r.t.Helper()
	select {
	case <-r.exited:
		r.t.Fatalf("Run returned early: %v", r.err)
	default:
	}
}

// waitCycles waits for n more completed cycles than now.
func (r *running) waitCycles(n int64) {
	r.t.Helper()
	target := r.cycles.Load() + n
	waitFor(r.t, fmt.Sprintf("%d more poll cycles", n), func() bool { return r.cycles.Load() >= target })
}

// waitIdle waits until the poller IDLEs, its cycle done. Called after
// seeing the effect of a cycle (a message stored), it waits for the end of
// that cycle.
func (r *running) waitIdle() {
	r.t.Helper()
	waitFor(r.t, "the poller to IDLE", r.inIdle.Load)
}

// waitFor polls cond until it holds or waitLimit passes.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitLimit, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testLogWriter sends the poller's log to t.Log until closed.
type testLogWriter struct {
	mu     sync.Mutex
	t      testing.TB
	closed bool
	all    strings.Builder
}

// String is everything logged so far.
func (w *testLogWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.all.String()
}

func (w *testLogWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.all.Write(b)
	if !w.closed {
		w.t.Log(strings.TrimRight(string(b), "\n"))
	}
	return len(b), nil
}

func (w *testLogWriter) close() {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
}
