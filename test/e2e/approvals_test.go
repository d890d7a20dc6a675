package e2e

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

type approvalDoc struct {
	ID        string `json:"id"`
	State     string `json:"state"`
	Decisions []struct {
		Username string `json:"username"`
		Decision string `json:"decision"`
	} `json:"decisions"`
	Posts []struct {
		PostID    string `json:"post_id"`
		ChannelID string `json:"channel_id"`
	} `json:"posts"`
}

// approvalAPI calls the gate's approvals API with the client's key.
func approvalAPI(t *testing.T, g *gate, key, method, path string, in any, out any) int {
	t.Helper()
	var body io.Reader
	if in != nil {
		b, _ := json.Marshal(in)
		body = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+g.httpAddr+path, body)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if out != nil {
		_ = json.Unmarshal(b, out)
	}
	if resp.StatusCode/100 != 2 {
		t.Logf("%s %s: %d %s", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode
}

// clickAction clicks a post's button as c, through Mattermost's own
// POST /posts/{id}/actions/{action} (Mattermost then calls mmgate).
func clickAction(t *testing.T, c *mmClient, postID, action string) int {
	st, err := c.do("POST", "/posts/"+postID+"/actions/"+action, map[string]any{}, nil)
	if err != nil {
		t.Logf("click %s on %s: %v", action, postID, err)
	}
	return st
}

// allowLoopbackIntegrations lets Mattermost call mmgate on loopback (setup
// does this on a real site).
func allowLoopbackIntegrations(t *testing.T, s *suite) {
	t.Helper()
	if _, err := s.admin.do("PUT", "/config/patch", map[string]any{"ServiceSettings": map[string]any{
		"AllowedUntrustedInternalConnections": "127.0.0.1 localhost"}}, nil); err != nil {
		t.Fatal(err)
	}
}

// TestApprovalClicksAreVerified: a request is posted to bob (DM) and to a
// channel; clicks by a non-reviewer, by the requester and a forged POST
// straight to mmgate change nothing; bob's click through Mattermost's own
// POST /posts/{id}/actions/{action} approves it, every copy is updated, the
// thread gets a reply, and the signed callback arrives exactly once; a
// click after that is refused; an expired request cannot be approved.
func TestApprovalClicksAreVerified(t *testing.T) {
	s := setup(t)
	n := nonce()
	const key = "deploybot-api-key-0123456789"

	// The callback receiver.
	var mu sync.Mutex
	var calls []map[string]any
	var badSig int
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cb := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mac := hmac.New(sha256.New, []byte(key))
		mac.Write([]byte(r.Header.Get("X-Mmgate-Timestamp") + "."))
		mac.Write(body)
		mu.Lock()
		defer mu.Unlock()
		if !hmac.Equal([]byte(r.Header.Get("X-Mmgate-Signature")), []byte("sha256="+hex.EncodeToString(mac.Sum(nil)))) {
			badSig++
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		var m map[string]any
		_ = json.Unmarshal(body, &m)
		calls = append(calls, m)
	})}
	go func() { _ = cb.Serve(l) }()
	t.Cleanup(func() { _ = cb.Close() })

	g := newGate(t, s, gateConfig{PublicURL: true, Extra: "approvals:\n  app: jira\n  clients:\n    deploybot: {api_key: '" + key + "'}\n"})
	api := func(method, path string, in any, out any) int {
		t.Helper()
		return approvalAPI(t, g, key, method, path, in, out)
	}
	allowLoopbackIntegrations(t, s)

	// An expiring request first: it is checked at the end.
	var short approvalDoc
	if st := api("POST", "/api/v1/approvals", map[string]any{"requester": "alice", "what": "Short-lived " + n,
		"reviewers": map[string]any{"users": []string{bobName}}, "expires_in": "1m"}, &short); st != 201 {
		t.Fatalf("create: %d", st)
	}
	created := time.Now()

	var a approvalDoc
	if st := api("POST", "/api/v1/approvals", map[string]any{"requester": "alice", "what": "Deploy release " + n + " to production",
		"reason": "Quarterly release", "reviewers": map[string]any{"users": []string{bobName}, "channel": s.team + "/town-square"},
		"required": 1, "callback_url": "http://" + l.Addr().String() + "/approved"}, &a); st != 201 {
		t.Fatalf("create: %d", st)
	}
	if len(a.Posts) != 2 || a.State != "pending" {
		t.Fatalf("created: %+v", a)
	}
	dmPost, channelPost := a.Posts[0].PostID, a.Posts[1].PostID
	click := func(c *mmClient, postID, action string) int { return clickAction(t, c, postID, action) }
	state := func(id string) approvalDoc {
		var d approvalDoc
		api("GET", "/api/v1/approvals/"+id, nil, &d)
		return d
	}
	// Refused: carol (not a reviewer) and alice (the requester) on the
	// channel copy; a forged POST straight to mmgate.
	click(s.carol, channelPost, "approve")
	click(s.alice, channelPost, "approve")
	forged, _ := json.Marshal(map[string]any{"user_id": s.bobID, "post_id": dmPost, "context": map[string]any{"token": "forged"}})
	if resp, err := http.Post("http://"+g.httpAddr+"/mattermost/actions/approval", "application/json", bytes.NewReader(forged)); err == nil {
		resp.Body.Close()
	}
	if d := state(a.ID); d.State != "pending" || len(d.Decisions) != 0 {
		t.Fatalf("after refused clicks: %+v", d)
	}
	audit := g.mustCLI("approvals", "audit")
	for _, want := range []string{"you are not a reviewer", "you asked for this", "not valid (altered or expired)"} {
		if !strings.Contains(audit, want) {
			t.Errorf("the audit log lacks %q:\n%s", want, audit)
		}
	}

	// bob approves through Mattermost.
	if st := click(s.bob, dmPost, "approve"); st != 200 {
		t.Fatalf("bob's click: %d", st)
	}
	var d approvalDoc
	if st := api("GET", "/api/v1/approvals/"+a.ID+"?wait=20s", nil, &d); st != 200 || d.State != "approved" ||
		len(d.Decisions) != 1 || d.Decisions[0].Username != bobName {
		t.Fatalf("after bob's click: %+v", d)
	}
	for _, p := range a.Posts {
		var got post
		if _, err := s.admin.do("GET", "/posts/"+p.PostID, nil, &got); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(got.Props)
		if !strings.Contains(string(b), "Approved by @"+bobName) || strings.Contains(string(b), `"actions"`) {
			t.Errorf("post %s not updated (no buttons, who approved): %s", p.PostID, b)
		}
		thread, err := s.admin.postsSince(p.ChannelID, created)
		if err != nil {
			t.Fatal(err)
		}
		replied := false
		for _, q := range thread {
			if q.RootID == p.PostID && strings.Contains(q.Message, "Approved by @"+bobName) {
				replied = true
			}
		}
		if !replied {
			t.Errorf("no reply in the thread of %s", p.PostID)
		}
	}
	// A click after the decision (a replay) changes nothing (checked below):
	// Mattermost refuses it now that the post has no buttons, or, if it
	// passes it on, mmgate refuses and audits it.
	if st := click(s.bob, dmPost, "approve"); st == 200 {
		if audit := g.mustCLI("approvals", "audit", a.ID); !strings.Contains(audit, "the request is already approved") {
			t.Errorf("a click after the decision reached mmgate and was not refused:\n%s", audit)
		}
	}
	eventually(t, 30*time.Second, "the callback", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) >= 1, fmt.Sprint(len(calls))
	})
	time.Sleep(5 * time.Second) // a second callback would be sent by now
	mu.Lock()
	if len(calls) != 1 || badSig != 0 || calls[0]["id"] != a.ID || calls[0]["state"] != "approved" {
		t.Errorf("callbacks: %d (bad signatures %d): %v", len(calls), badSig, calls)
	}
	mu.Unlock()
	if d := state(a.ID); d.State != "approved" || len(d.Decisions) != 1 {
		t.Errorf("after the replayed click: %+v", d)
	}

	// Deny asks for a reason in a dialog (seen on bob's websocket as his
	// client would), submitted through Mattermost.
	var dn approvalDoc
	if st := api("POST", "/api/v1/approvals", map[string]any{"requester": "alice", "what": "Drop table " + n,
		"reviewers": map[string]any{"users": []string{bobName, carolName}}, "required": 2}, &dn); st != 201 {
		t.Fatalf("create: %d", st)
	}
	if st := click(s.carol, dn.Posts[1].PostID, "approve"); st != 200 {
		t.Fatalf("carol's approval: %d", st)
	}
	if d := state(dn.ID); d.State != "pending" || len(d.Decisions) != 1 {
		t.Fatalf("one of two approvals: %+v", d)
	}
	// /mmgate approvals lists it for bob (setup installs /mmgate for this gate).
	tokFile := filepath.Join(g.dir, "admin.token")
	if err := os.WriteFile(tokFile, []byte(s.admin.token), 0o600); err != nil {
		t.Fatal(err)
	}
	g.mustCLI("mattermost", "setup", "--admin-token-file", tokFile)
	if text := slash(t, s, s.bob, "approvals"); !strings.Contains(text, "Drop table "+n) || strings.Contains(text, "Deploy release "+n) {
		t.Errorf("/mmgate approvals for bob: %q", text)
	}
	ws := dialEvents(t, s, s.bob.token)
	if st := click(s.bob, dn.Posts[0].PostID, "deny"); st != 200 {
		t.Fatalf("bob's deny: %d", st)
	}
	dURL, cbID, dState := dialogOf(t, ws.next(t, "open_dialog", 20*time.Second))
	submit := func(c *mmClient, reason string) error {
		_, err := c.do("POST", "/actions/dialogs/submit", map[string]any{"url": dURL, "callback_id": cbID, "state": dState,
			"channel_id": dn.Posts[0].ChannelID, "team_id": s.teamID, "submission": map[string]string{"reason": reason}}, nil)
		return err
	}
	// carol replaying bob's dialog state is refused (the state names bob).
	_ = submit(s.carol, "not mine to give")
	if d := state(dn.ID); d.State != "pending" {
		t.Fatalf("carol submitted bob's dialog: %+v", d)
	}
	if err := submit(s.bob, "No backup was taken"); err != nil {
		t.Fatalf("bob's dialog: %v", err)
	}
	if d := state(dn.ID); d.State != "denied" || len(d.Decisions) != 2 {
		t.Errorf("after bob's denial: %+v", d)
	}
	var denied post
	if _, err := s.admin.do("GET", "/posts/"+dn.Posts[1].PostID, nil, &denied); err != nil {
		t.Fatal(err)
	}
	if b, _ := json.Marshal(denied.Props); !strings.Contains(string(b), "Denied by @"+bobName) || !strings.Contains(string(b), "No backup was taken") {
		t.Errorf("carol's copy does not show the denial and its reason: %s", b)
	}

	// The short-lived request expires; a click then is refused.
	if wait := time.Until(created.Add(65 * time.Second)); wait > 0 {
		time.Sleep(wait)
	}
	click(s.bob, short.Posts[0].PostID, "approve")
	eventually(t, 20*time.Second, "the short request expired", func() (bool, string) {
		d := state(short.ID)
		return d.State == "expired", d.State
	})
	if d := state(short.ID); len(d.Decisions) != 0 {
		t.Errorf("an expired request took a decision: %+v", d)
	}
}

// TestApprovalGroupReviewersAreCheckedLive: reviewers given as a directory
// group (a real slapd) may decide; who is in the group is read at the
// click, not from a cache: carol, removed from jira-users, is refused;
// added back, her next click approves.
func TestApprovalGroupReviewersAreCheckedLive(t *testing.T) {
	s := setup(t)
	l := startLDAP(t, s)
	l.seed()
	const key = "groupbot-api-key-0123456789"
	jiraUsers := "cn=jira-users," + ldapGroups
	carolDN := "uid=" + carolName + ",ou=people," + ldapBase
	c := l.admin()
	mod := goldap.NewModifyRequest(carolDN, nil)
	mod.Add("mail", []string{carolEmail}) // her Mattermost email, which the click gives
	if err := c.Modify(mod); err != nil {
		t.Fatal(err)
	}
	leave := goldap.NewModifyRequest(jiraUsers, nil)
	leave.Delete("member", []string{carolDN})
	if err := c.Modify(leave); err != nil {
		t.Fatal(err)
	}
	c.Close()
	pwFile := filepath.Join(l.dir, "bind.pw")
	if err := os.WriteFile(pwFile, []byte("secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	g := newGate(t, s, gateConfig{PublicURL: true,
		Directory: fmt.Sprintf("{ldap: {urls: ['ldap://127.0.0.1:%d'], bind_dn: '%s', bind_password: 'file:%s', base_dn: '%s', timeout: 3s, cache_ttl: 1h}}",
			l.port, ldapAdmin, pwFile, ldapBase),
		Extra: "approvals:\n  app: jira\n  clients:\n    groupbot: {api_key: '" + key + "'}\n"})
	allowLoopbackIntegrations(t, s)
	n := nonce()
	var a approvalDoc
	if st := approvalAPI(t, g, key, "POST", "/api/v1/approvals", map[string]any{"requester": "alice", "what": "Open the firewall " + n,
		"reviewers": map[string]any{"groups": []string{jiraUsers}, "channel": s.team + "/town-square"}}, &a); st != 201 || len(a.Posts) != 1 {
		t.Fatalf("create: %d %+v", st, a)
	}
	state := func() approvalDoc {
		var d approvalDoc
		approvalAPI(t, g, key, "GET", "/api/v1/approvals/"+a.ID, nil, &d)
		return d
	}
	clickAction(t, s.carol, a.Posts[0].PostID, "approve")
	if d := state(); d.State != "pending" {
		t.Fatalf("carol, not in jira-users, decided: %+v", d)
	}
	if audit := g.mustCLI("approvals", "audit", a.ID); !strings.Contains(audit, "you are not a reviewer") {
		t.Fatalf("the refusal is not audited:\n%s", audit)
	}
	c = l.admin()
	join := goldap.NewModifyRequest(jiraUsers, nil)
	join.Add("member", []string{carolDN})
	if err := c.Modify(join); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if st := clickAction(t, s.carol, a.Posts[0].PostID, "approve"); st != 200 {
		t.Fatalf("carol's second click: %d", st)
	}
	var d approvalDoc
	if st := approvalAPI(t, g, key, "GET", "/api/v1/approvals/"+a.ID+"?wait=20s", nil, &d); st != 200 || d.State != "approved" ||
		len(d.Decisions) != 1 || d.Decisions[0].Username != carolName {
		t.Fatalf("after carol joined jira-users (cache_ttl is an hour): %+v", d)
	}
}
