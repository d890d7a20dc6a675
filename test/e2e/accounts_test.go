package e2e

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

var (
	linkInAnswer = regexp.MustCompile(`\((http://[^)\s]+/link/[^)\s]+)\)`)
	ticketField  = regexp.MustCompile(`name="ticket" value="([^"]+)"`)
)

// TestLinkAndSubscribeThroughMattermost: /mmgate link, unlink, subscribe
// and unsubscribe typed in the real Mattermost (POST /commands/execute,
// which calls mmgate), with a real slapd behind the sign-in bridge and the
// app's allow group.
//
// carol's directory entry says carol@corp.test; her Mattermost account has
// carol@example.com, so her mail waits in quarantine. She types /mmgate
// link, opens the link, signs in with her directory password and confirms:
// the quarantined message, released, reaches her, as does new mail. She
// subscribes to jira (allowed: her linked identity is in jira-users) and
// gets a copy of alice's mail, once; bob cannot subscribe (jira has groups,
// and he has not proven who he is in the directory: his Mattermost email,
// which he could change himself, proves nothing).
// After unsubscribe and unlink, she gets neither.
const linkbotKey = "linkbot-api-key-0123456789"

func TestLinkAndSubscribeThroughMattermost(t *testing.T) {
	s := setup(t)
	l := startLDAP(t, s)
	l.seed()
	n := nonce()
	pw := "Carol-Dir-" + n
	c := l.admin()
	mod := goldap.NewModifyRequest("uid="+carolName+",ou=people,"+ldapBase, nil)
	mod.Replace("userPassword", []string{pw})
	if err := c.Modify(mod); err != nil {
		t.Fatal(err)
	}
	c.Close()
	addAliceMattermostEmail(t, s, l)
	showEmails(t, s)
	pwFile := filepath.Join(l.dir, "bind.pw")
	if err := os.WriteFile(pwFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newGate(t, s, gateConfig{NoStart: true, PublicURL: true,
		Directory: fmt.Sprintf("{ldap: {urls: ['ldap://127.0.0.1:%d'], bind_dn: '%s', bind_password: 'file:%s', base_dn: '%s', timeout: 3s}}",
			l.port, ldapAdmin, pwFile, ldapBase),
		Jira:  "    allow_subscribe: true\n    allow_group: 'cn=jira-users," + ldapGroups + "'\n",
		Extra: ssoYAML("ldap") + "approvals:\n  app: jira\n  clients:\n    linkbot: {api_key: '" + linkbotKey + "'}\n",
	})
	if err := os.WriteFile(filepath.Join(g.dir, "client.secret"), []byte("client-secret-"+n+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tokFile := filepath.Join(g.dir, "admin.token")
	if err := os.WriteFile(tokFile, []byte(s.admin.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g.mustCLI("mattermost", "setup", "--admin-token-file", tokFile) // /mmgate now points at this gate
	g.start()
	alice, carol := s.recipient(t, "alice"), s.recipient(t, carolName)
	carolDir := carolName + "@" + mailDomain
	send := func(to, tag string) string {
		t.Helper()
		msgID := tag + "-" + n + "@e2e.test"
		g.mustSend(jiraAuth, "jira@"+mailDomain, []string{to}, crlf(header("jira@"+mailDomain, to, "E2E "+tag+" "+n, msgID)+
			"Content-Type: text/plain\n\nFor "+to+".\n"))
		return msgID
	}
	quarantined := func(tag, reason string) string {
		t.Helper()
		var id string
		eventually(t, waitFor, tag+" quarantined", func() (bool, string) {
			r, ok := findRow(g.list("quarantine", "list"), tag+" "+n)
			id = r.ID
			return ok && strings.Contains(r.Line, reason), r.Line + g.stateHint()
		})
		return id
	}
	countOf := func(r *recipient, since time.Time, msgID string) int {
		t.Helper()
		ps, err := r.postsOf(since, msgID)
		if err != nil {
			t.Fatal(err)
		}
		return len(ps)
	}

	// Before the link: no Mattermost account has carol's directory email.
	since := time.Now()
	first := send(carolDir, "before-link")
	qid := quarantined("before-link", "no Mattermost user")

	// /mmgate link, then the page, as carol in a browser.
	answer := slash(t, s, s.carol, "link")
	m := linkInAnswer.FindStringSubmatch(answer)
	if m == nil || !strings.Contains(answer, "only for @"+carolName) {
		t.Fatalf("/mmgate link answered:\n%s", answer)
	}
	link := m[1]
	if !strings.HasPrefix(link, "http://"+g.httpAddr+"/link/") {
		t.Fatalf("the link %s is not the gate's", link)
	}
	b := newBrowser(t)
	resp, page := b.get(link)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Request.URL.String(), "http://"+g.httpAddr+"/sso/login") {
		t.Fatalf("the link did not lead to the sign-in page: %d at %s\n%s", resp.StatusCode, resp.Request.URL, truncate(page, 1500))
	}
	f := loginFields(t, page)
	f.Set("login", carolName)
	f.Set("password", "wrong-"+n)
	if resp, _ := b.post("http://"+g.httpAddr+"/sso/login", f); resp.StatusCode != 401 {
		t.Fatalf("a wrong directory password: %d", resp.StatusCode)
	}
	f.Set("password", pw)
	resp, page = b.post("http://"+g.httpAddr+"/sso/login", f)
	if resp.StatusCode != 200 || !strings.HasPrefix(resp.Request.URL.Path, "/link/callback") {
		t.Fatalf("signing in did not come back to the link page: %d at %s\n%s", resp.StatusCode, resp.Request.URL, truncate(page, 1500))
	}
	for _, want := range []string{carolDir, "@" + carolName, "Carol Example"} {
		if !strings.Contains(page, want) {
			t.Errorf("the confirmation page does not name %q:\n%s", want, truncate(page, 2000))
		}
	}
	tm := ticketField.FindStringSubmatch(page)
	if tm == nil {
		t.Fatalf("no confirmation form:\n%s", truncate(page, 2000))
	}
	if links := g.mustCLI("accounts", "links"); strings.Contains(links, carolDir) {
		t.Fatalf("linked before confirming:\n%s", links)
	}
	ticket := strings.ReplaceAll(tm[1], "&#43;", "+")
	resp, page = b.post("http://"+g.httpAddr+"/link/confirm", url.Values{"ticket": {ticket}, "action": {"link"}})
	if resp.StatusCode != 200 || !strings.Contains(page, "Linked.") {
		t.Fatalf("confirming: %d\n%s", resp.StatusCode, truncate(page, 1500))
	}
	if links := g.mustCLI("accounts", "links"); !strings.Contains(links, carolDir) || !strings.Contains(links, "@"+carolName) {
		t.Fatalf("mmgate accounts links:\n%s", links)
	}
	// carol is told, by the app's bot.
	eventually(t, waitFor, "the DM telling carol of the link", func() (bool, string) {
		ps, err := carol.c.postsSince(carol.dm, since)
		if err != nil {
			return false, err.Error()
		}
		for _, p := range ps {
			if strings.Contains(p.Message, "Mail addressed to "+carolDir+" in the directory now comes to you here") {
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d posts", len(ps))
	})
	// The link was used up.
	if resp, _ := newBrowser(t).get(link); resp.StatusCode != 404 {
		t.Errorf("the used link opened again: %d", resp.StatusCode)
	}

	// The quarantined message, released, and new mail reach carol.
	g.mustCLI("quarantine", "release", qid)
	carol.waitPosts(t, g, since, first, 1)
	if show := g.mustCLI("queue", "show", qid); !strings.Contains(show, "linked by its owner to @"+carolName) {
		t.Errorf("the history does not say the link was used:\n%s", show)
	}
	carol.waitPosts(t, g, since, send(carolDir, "after-link"), 1)

	// An approval for the jira-users group: carol's Mattermost email is not
	// in the directory, her link is, and it makes her a reviewer.
	var a approvalDoc
	if st := approvalAPI(t, g, linkbotKey, "POST", "/api/v1/approvals", map[string]any{"requester": "alice", "what": "Linked reviewer " + n,
		"reviewers": map[string]any{"groups": []string{"cn=jira-users," + ldapGroups}, "channel": s.team + "/town-square"}}, &a); st != 201 || len(a.Posts) != 1 {
		t.Fatalf("create: %d %+v", st, a)
	}
	if st := clickAction(t, s.carol, a.Posts[0].PostID, "approve"); st != 200 {
		t.Fatalf("carol's click: %d", st)
	}
	var decided approvalDoc
	if st := approvalAPI(t, g, linkbotKey, "GET", "/api/v1/approvals/"+a.ID+"?wait=20s", nil, &decided); st != 200 || decided.State != "approved" {
		t.Fatalf("carol, a reviewer through her link, did not approve: %d %+v\n%s", st, decided, g.mustCLI("approvals", "audit", a.ID))
	}

	// Subscriptions: the app's allow group decides who may.
	if got := slash(t, s, s.bob, "subscribe jira"); !strings.Contains(got, "prove it with `/mmgate link`") {
		t.Errorf("bob (no link; his Mattermost email proves nothing) subscribed to an app with groups: %q", got)
	}
	if got := slash(t, s, s.carol, "subscribe jira"); !strings.Contains(got, "Subscribed") {
		t.Fatalf("/mmgate subscribe jira as carol: %q", got)
	}
	if got := slash(t, s, s.carol, "subscribe"); !strings.Contains(got, "You are subscribed to `jira`") {
		t.Errorf("/mmgate subscribe (list): %q", got)
	}
	if subs := g.mustCLI("accounts", "subscriptions"); !strings.Contains(subs, "jira") || !strings.Contains(subs, "@"+carolName) ||
		!strings.Contains(subs, carolDir) {
		t.Errorf("mmgate accounts subscriptions:\n%s", subs)
	}
	since = time.Now()
	toAlice := send("alice@"+mailDomain, "subscribed")
	alice.waitPosts(t, g, since, toAlice, 1)
	carol.waitPosts(t, g, since, toAlice, 1)
	toCarol := send(carolDir, "subscribed-and-recipient")
	carol.waitPosts(t, g, since, toCarol, 1)
	settle(g)
	if a, c1, c2 := countOf(alice, since, toAlice), countOf(carol, since, toAlice), countOf(carol, since, toCarol); a != 1 || c1 != 1 || c2 != 1 {
		t.Errorf("posts: alice %d, carol (subscriber) %d, carol (recipient and subscriber) %d; want 1 each", a, c1, c2)
	}

	// Unsubscribed and unlinked, carol gets neither.
	if got := slash(t, s, s.carol, "unsubscribe jira"); !strings.Contains(got, "Unsubscribed") {
		t.Fatalf("/mmgate unsubscribe jira: %q", got)
	}
	if got := slash(t, s, s.carol, "unlink"); !strings.Contains(got, "Mail for "+carolDir+" no longer comes to this account") {
		t.Fatalf("/mmgate unlink: %q", got)
	}
	since = time.Now()
	late := send("alice@"+mailDomain, "unsubscribed")
	alice.waitPosts(t, g, since, late, 1)
	send(carolDir, "unlinked")
	quarantined("unlinked", "no Mattermost user")
	if k := countOf(carol, since, late); k != 0 {
		t.Errorf("carol got %d post(s) after unsubscribing", k)
	}
	if links := g.mustCLI("accounts", "links"); strings.Contains(links, carolDir) {
		t.Errorf("still linked after /mmgate unlink:\n%s", links)
	}
}
