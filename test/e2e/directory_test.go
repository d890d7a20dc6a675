package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

// ldapPeer is a real slapd (test/peers/slapd.sh) seeded for the directory tests.
type ldapPeer struct {
	t    *testing.T
	s    *suite
	dir  string
	port int
	pid  int
}

const (
	ldapBase   = "dc=example,dc=org"
	ldapAdmin  = "cn=admin,dc=example,dc=org"
	ldapGroups = "ou=groups," + ldapBase
)

func startLDAP(t *testing.T, s *suite) *ldapPeer {
	t.Helper()
	_, err := os.Stat("/usr/sbin/slapd")
	needPeer(t, err == nil, "slapd is not installed (Debian packages slapd, ldap-utils)")
	_, err = exec.LookPath("ldapsearch")
	needPeer(t, err == nil, "ldapsearch is not installed (Debian package ldap-utils)")
	l := &ldapPeer{t: t, s: s, dir: t.TempDir()}
	port, _ := strconv.Atoi(strings.TrimPrefix(freeAddr(t), "127.0.0.1:"))
	l.port = port
	l.start()
	t.Cleanup(l.stop)
	return l
}

func (l *ldapPeer) start() {
	l.pid = peerScript(l.t, l.s, "slapd.sh", l.dir, strconv.Itoa(l.port))
}

func (l *ldapPeer) stop() {
	if l.pid == 0 {
		return
	}
	_ = syscall.Kill(l.pid, syscall.SIGTERM)
	for i := 0; i < 100 && syscall.Kill(l.pid, 0) == nil; i++ {
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(l.pid, syscall.SIGKILL)
	l.pid = 0
}

// admin connects as the root DN.
func (l *ldapPeer) admin() *goldap.Conn {
	l.t.Helper()
	c, err := goldap.DialURL(fmt.Sprintf("ldap://127.0.0.1:%d", l.port))
	if err != nil {
		l.t.Fatal(err)
	}
	if err := c.Bind(ldapAdmin, "secret"); err != nil {
		c.Close()
		l.t.Fatal(err)
	}
	return c
}

// seed adds the people and groups:
//
//	alice  in jira-users directly
//	bob    two addresses (bob@, robert@), in jira-users three levels down:
//	       jira-users ⊃ eng ⊃ backend ⊃ bob, and backend ⊃ jira-users (a cycle)
//	carol  in jira-users and in contractors (the deny group): deny wins
//	dave   in jira-users, no Mattermost account
//	erin   in no group
func (l *ldapPeer) seed() {
	t := l.t
	c := l.admin()
	defer c.Close()
	add := func(dn string, attrs map[string][]string) {
		req := goldap.NewAddRequest(dn, nil)
		for k, v := range attrs {
			req.Attribute(k, v)
		}
		if err := c.Add(req); err != nil {
			t.Fatalf("adding %s: %v", dn, err)
		}
	}
	add(ldapBase, map[string][]string{"objectClass": {"dcObject", "organization"}, "dc": {"example"}, "o": {"Example"}})
	add("ou=people,"+ldapBase, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"people"}})
	add(ldapGroups, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"groups"}})
	person := func(uid string, mails ...string) string {
		dn := "uid=" + uid + ",ou=people," + ldapBase
		add(dn, map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {uid}, "cn": {uid}, "sn": {uid},
			"displayName": {strings.ToUpper(uid[:1]) + uid[1:] + " Example"}, "mail": mails})
		return dn
	}
	group := func(cn string, members ...string) string {
		dn := "cn=" + cn + "," + ldapGroups
		add(dn, map[string][]string{"objectClass": {"groupOfNames"}, "cn": {cn}, "member": members})
		return dn
	}
	alice := person("alice", "alice@"+mailDomain)
	bob := person(bobName, bobName+"@"+mailDomain, "robert@"+mailDomain)
	carol := person(carolName, carolName+"@"+mailDomain)
	dave := person("dave", "dave@"+mailDomain)
	person("erin", "erin@"+mailDomain)
	backend := group("backend", bob)
	eng := group("eng", backend)
	jira := group("jira-users", eng, alice, carol, dave)
	mod := goldap.NewModifyRequest(backend, nil)
	mod.Add("member", []string{jira})
	if err := c.Modify(mod); err != nil {
		t.Fatal(err)
	}
	group("contractors", carol)
}

// TestLDAPDirectoryDecidesWhoReceives: a real slapd decides, through nested
// groups with a cycle, who of five recipients gets the post in the real
// Mattermost; every decision is in `queue show`; `explain` shows the same
// without posting; with slapd stopped the message waits, then is delivered
// when it returns.
func TestLDAPDirectoryDecidesWhoReceives(t *testing.T) {
	s := setup(t)
	l := startLDAP(t, s)
	l.seed()
	pwFile := filepath.Join(l.dir, "bind.pw")
	if err := os.WriteFile(pwFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newGate(t, s, gateConfig{
		Directory: fmt.Sprintf("{ldap: {urls: ['ldap://127.0.0.1:%d'], bind_dn: '%s', bind_password: 'file:%s', base_dn: '%s', "+
			"username_attribute: uid, cache_ttl: 1s, negative_cache_ttl: 1s, timeout: 3s}}", l.port, ldapAdmin, pwFile, ldapBase),
		Jira: "    allow_group: 'cn=jira-users," + ldapGroups + "'\n    deny_group: 'cn=contractors," + ldapGroups + "'\n",
	})
	alice, bob, carol := s.recipient(t, "alice"), s.recipient(t, bobName), s.recipient(t, carolName)

	// 1. Five recipients: alice and bob (through his second address and three
	// levels of groups) receive it; carol is denied, erin not allowed.
	n := nonce()
	msgID := "ldap-" + n + "@e2e.test"
	rcpts := []string{"alice@" + mailDomain, "robert@" + mailDomain, carolName + "@" + mailDomain, "erin@" + mailDomain}
	eml := header("Jira <jira@"+mailDomain+">", strings.Join(rcpts, ", "), "E2E LDAP "+n, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nFor the allowed only (" + n + ").\n"
	since := time.Now()
	g.mustSend(jiraAuth, "jira@"+mailDomain, rcpts, crlf(eml))
	alice.waitPosts(t, g, since, msgID, 1)
	bob.waitPosts(t, g, since, msgID, 1)
	settle(g)
	if ps, err := carol.postsOf(since, msgID); err != nil || len(ps) != 0 {
		t.Errorf("carol is in the deny group and got %d post(s) (err %v)", len(ps), err)
	}
	var id string
	eventually(t, waitFor, "the message posted in `queue list`", func() (bool, string) {
		r, ok := findRow(g.list("queue", "list", "--all"), n)
		id = r.ID
		return ok && strings.Contains(r.Line, "posted"), r.Line
	})
	show := g.mustCLI("queue", "show", id)
	t.Logf("mmgate queue show %s:\n%s", id, show)
	for _, want := range []string{
		"uid=bob,ou=people," + ldapBase,                                // bob's directory entry
		"through cn=eng," + ldapGroups + " → cn=backend," + ldapGroups, // his path through nested groups
		"in app jira's deny group cn=contractors",                      // carol
		"deny wins",
		"erin@" + mailDomain + ": not allowed: not in app jira's allow group", "erin@" + mailDomain + ": skipped",
		"→ @alice", "→ @" + bobName,
	} {
		if !strings.Contains(show, want) {
			t.Errorf("queue show lacks %q:\n%s", want, show)
		}
	}

	// 2. dave has no Mattermost account: recorded and skipped, alice still
	// gets the post, and the message waits in quarantine for an operator.
	n2 := nonce()
	msgID2 := "ldap-dave-" + n2 + "@e2e.test"
	rc2 := []string{"alice@" + mailDomain, "dave@" + mailDomain}
	since = time.Now()
	g.mustSend(jiraAuth, "jira@"+mailDomain, rc2, crlf(header("jira@"+mailDomain, strings.Join(rc2, ", "), "E2E LDAP dave "+n2, msgID2)+
		"Content-Type: text/plain\n\nalice yes, dave has no account\n"))
	alice.waitPosts(t, g, since, msgID2, 1)
	qid := quarantined(t, g, n2)
	qshow := g.mustCLI("quarantine", "show", qid)
	if !strings.Contains(qshow, "no Mattermost user with username dave") || !strings.Contains(qshow, "in app jira's allow group") {
		t.Errorf("quarantine show should name dave's missing account and his allow decision:\n%s", qshow)
	}

	// 3. explain: the same decisions and the rendered post, nothing posted.
	emlPath := filepath.Join(g.dir, "explain.eml")
	n3 := nonce()
	if err := os.WriteFile(emlPath, crlf(header("jira@"+mailDomain, "robert@"+mailDomain, "E2E explain "+n3, "explain-"+n3+"@e2e.test")+
		"Content-Type: text/plain\n\nExplained, never posted ("+n3+").\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	since = time.Now()
	out := g.mustCLI("explain", emlPath, "--sender", "jira-svc@tools.test", "--rcpt", "robert@"+mailDomain, "--rcpt", carolName+"@"+mailDomain)
	t.Logf("mmgate explain:\n%s", out)
	for _, want := range []string{"app jira", "uid=bob,ou=people", "through cn=eng", "→ @" + bobName, "deny wins",
		"Outcome:     posted to @" + bobName, "Explained, never posted (" + n3 + ")"} {
		if !strings.Contains(out, want) {
			t.Errorf("explain output lacks %q:\n%s", want, out)
		}
	}
	settle(g)
	if ps, err := bob.postsOf(since, "explain-"+n3+"@e2e.test"); err != nil || len(ps) != 0 {
		t.Errorf("explain posted %d post(s) (err %v)", len(ps), err)
	}

	// 4. slapd stops: the message waits (retrying, never quarantined), and
	// is delivered once after slapd returns.
	l.stop()
	time.Sleep(1500 * time.Millisecond) // past cache_ttl
	n4 := nonce()
	msgID4 := "ldap-outage-" + n4 + "@e2e.test"
	since = time.Now()
	g.mustSend(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain}, crlf(header("jira@"+mailDomain, "alice@"+mailDomain, "E2E LDAP outage "+n4, msgID4)+
		"Content-Type: text/plain\n\nsent while the directory is down\n"))
	eventually(t, waitFor, "the message retrying with a directory error", func() (bool, string) {
		r, ok := findRow(g.list("queue", "list"), n4)
		return ok && strings.Contains(r.Line, "retrying") && strings.Contains(r.Line, "LDAP"), r.Line
	})
	if rows := g.list("quarantine", "list"); len(rows) != 1 {
		t.Errorf("quarantine should hold only dave's message, has %d", len(rows))
	}
	l.start()
	alice.waitPosts(t, g, since, msgID4, 1)
	settle(g)
	if ps, err := alice.postsOf(since, msgID4); err != nil || len(ps) != 1 {
		t.Errorf("alice has %d posts of the message sent during the outage, want 1 (err %v)", len(ps), err)
	}
}

// TestLDAPPersonFoundInMattermostByEmail: without username_attribute the
// directory person is found in Mattermost by email; alice's Mattermost
// email is her second LDAP address, not the one the mail was sent to.
func TestLDAPPersonFoundInMattermostByEmail(t *testing.T) {
	s := setup(t)
	l := startLDAP(t, s)
	l.seed()
	aliceEmail := addAliceMattermostEmail(t, s, l)
	showEmails(t, s)
	pwFile := filepath.Join(l.dir, "bind.pw")
	if err := os.WriteFile(pwFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newGate(t, s, gateConfig{
		Directory: fmt.Sprintf("{ldap: {urls: ['ldap://127.0.0.1:%d'], bind_dn: '%s', bind_password: 'file:%s', base_dn: '%s', timeout: 3s}}",
			l.port, ldapAdmin, pwFile, ldapBase),
	})
	alice := s.recipient(t, "alice")
	n := nonce()
	msgID := "ldap-email-" + n + "@e2e.test"
	since := time.Now()
	g.mustSend(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain},
		crlf(header("jira@"+mailDomain, "alice@"+mailDomain, "E2E by email "+n, msgID)+"Content-Type: text/plain\n\nFound by email.\n"))
	alice.waitPosts(t, g, since, msgID, 1)
	var id string
	eventually(t, waitFor, "the message posted", func() (bool, string) {
		r, ok := findRow(g.list("queue", "list", "--all"), n)
		id = r.ID
		return ok && strings.Contains(r.Line, "posted"), r.Line
	})
	if show := g.mustCLI("queue", "show", id); !strings.Contains(show, "→ @alice") || !strings.Contains(show, aliceEmail) {
		t.Errorf("queue show should name alice's entry with both addresses and the Mattermost user:\n%s", show)
	}
}

// showEmails turns on Mattermost's PrivacySettings.ShowEmailAddress for the
// test: the bot may look people up by email only when Mattermost shows emails.
func showEmails(t *testing.T, s *suite) {
	t.Helper()
	var cfg map[string]map[string]any
	if _, err := s.admin.do("GET", "/config", nil, &cfg); err != nil {
		t.Fatal(err)
	}
	was := cfg["PrivacySettings"]["ShowEmailAddress"]
	if _, err := s.admin.do("PUT", "/config/patch", map[string]any{"PrivacySettings": map[string]any{"ShowEmailAddress": true}}, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = s.admin.do("PUT", "/config/patch", map[string]any{"PrivacySettings": map[string]any{"ShowEmailAddress": was}}, nil)
	})
}

// addAliceMattermostEmail adds alice's Mattermost email to her directory
// entry, as a second address, and returns it.
func addAliceMattermostEmail(t *testing.T, s *suite, l *ldapPeer) string {
	t.Helper()
	var me struct {
		Email string `json:"email"`
	}
	if _, err := s.alice.do("GET", "/users/me", nil, &me); err != nil || me.Email == "" {
		t.Fatalf("alice's Mattermost email: %v", err)
	}
	c := l.admin()
	defer c.Close()
	mod := goldap.NewModifyRequest("uid=alice,ou=people,"+ldapBase, nil)
	mod.Add("mail", []string{me.Email})
	if err := c.Modify(mod); err != nil {
		t.Fatal(err)
	}
	return me.Email
}
