package e2e

import (
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestMattermostSetupAndSlashCommand: `mmgate mattermost setup` with the
// real Mattermost's admin token turns on what a fresh Mattermost has off
// (bot accounts, slash commands, calls to mmgate's loopback address),
// creates an app's bot, its token (kept in the
// secret store) and the /mmgate command; run again it changes nothing; the
// bot it made posts mail; /mmgate runs through Mattermost's own
// POST /commands/execute; a forged call straight to mmgate is refused.
func TestMattermostSetupAndSlashCommand(t *testing.T) {
	s := setup(t)
	n := nonce()
	botName := "backup-" + n[:8]
	g := newGate(t, s, gateConfig{NoStart: true, PublicURL: true,
		Jira: "  backup:\n    display_name: Backup " + n[:4] + "\n    bot_username: " + botName + "\n    icon: " + writePNG(t, s) + "\n"})
	tokFile := filepath.Join(g.dir, "admin.token")
	if err := os.WriteFile(tokFile, []byte(s.admin.token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Without setup the app has no token: serve starts, and the app's mail
	// waits, saying why.
	if out, errOut, code := g.cli("config", "check"); code != 0 {
		t.Fatalf("config check: %d\n%s%s", code, out, errOut)
	}
	g.start()
	msgID := "setup-" + n + "@e2e.test"
	since := time.Now()
	g.mustSend(nil, "backup-svc@"+mailDomain, []string{"alice@" + mailDomain},
		crlf(header("backup-svc@"+mailDomain, "alice@"+mailDomain, "Backup finished "+n, msgID)+"Content-Type: text/plain\n\nAll good.\n"))
	eventually(t, waitFor, "the backup app's mail waiting for a token", func() (bool, string) {
		r, ok := findRow(g.list("queue", "list"), "Backup finished "+n)
		return ok && strings.Contains(r.Line, "retrying"), r.Line
	})

	// As on a fresh Mattermost: bot accounts and custom slash commands off,
	// and Mattermost not allowed to call a loopback address.
	var before map[string]map[string]any
	if _, err := s.admin.do("GET", "/config", nil, &before); err != nil {
		t.Fatal(err)
	}
	restore := map[string]any{}
	for _, k := range []string{"EnableBotAccountCreation", "EnableCommands", "AllowedUntrustedInternalConnections"} {
		restore[k] = before["ServiceSettings"][k]
	}
	t.Cleanup(func() { _, _ = s.admin.do("PUT", "/config/patch", map[string]any{"ServiceSettings": restore}, nil) })
	if _, err := s.admin.do("PUT", "/config/patch", map[string]any{"ServiceSettings": map[string]any{
		"EnableBotAccountCreation": false, "EnableCommands": false, "AllowedUntrustedInternalConnections": ""}}, nil); err != nil {
		t.Fatal(err)
	}

	out, errOut, code := g.cli("mattermost", "setup", "--admin-token-file", tokFile)
	t.Logf("first setup:\n%s%s", out, errOut)
	if code != 0 {
		t.Fatalf("setup: exit %d", code)
	}
	for _, want := range []string{"settings: turned on EnableBotAccountCreation, EnableCommands, AllowedUntrustedInternalConnections += 127.0.0.1",
		"bot @" + botName + ": created for app backup", "bot @" + botName + ": icon set",
		"bot @" + botName + ": new access token stored in the secret store",
		"app jira: has its own apps.jira.bot_token; its bot is left alone"} {
		if !strings.Contains(out, want) {
			t.Errorf("first setup lacks %q", want)
		}
	}
	if !strings.Contains(out, "/mmgate created") && !strings.Contains(out, "/mmgate updated (now http://"+g.httpAddr+"/mattermost/command)") {
		t.Errorf("first setup did not install /mmgate for this gate:\n%s", out)
	}
	if strings.Contains(out+errOut, s.admin.token) {
		t.Error("setup printed the admin token")
	}
	out2, errOut2, code := g.cli("mattermost", "setup", "--admin-token-file", tokFile)
	t.Logf("second setup:\n%s%s", out2, errOut2)
	if code != 0 || !strings.Contains(out2, "nothing to change") || strings.Contains(out2, "created") || strings.Contains(out2, "new access token") {
		t.Errorf("the second setup changed something (exit %d):\n%s", code, out2)
	}

	// The bot setup made posts mail from its app.
	var bot struct {
		ID    string `json:"id"`
		IsBot bool   `json:"is_bot"`
	}
	if _, err := s.admin.do("GET", "/users/username/"+botName, nil, &bot); err != nil || !bot.IsBot {
		t.Fatalf("the bot %s: %+v %v", botName, bot, err)
	}
	// The running instance picks the stored token up by itself (within 15
	// seconds), and the waiting mail is posted by the bot setup made.
	dm, derr := s.alice.dmWith(s.aliceID, bot.ID)
	if derr != nil {
		t.Fatal(derr)
	}
	alice := &recipient{name: "alice", c: s.alice, dm: dm}
	ps := alice.waitPosts(t, g, since, msgID, 1)
	if ps[0].UserID != bot.ID {
		t.Errorf("posted by %s, want the bot setup created (%s)", ps[0].UserID, bot.ID)
	}

	// /mmgate through Mattermost.
	exec := func(c *mmClient, text string) string { t.Helper(); return slash(t, s, c, text) }
	if got := exec(s.alice, "help"); !strings.Contains(got, "/mmgate approvals") {
		t.Errorf("/mmgate help: %q", got)
	}
	if got := exec(s.alice, "status"); !strings.Contains(got, "for system admins") {
		t.Errorf("/mmgate status as alice: %q", got)
	}
	if got := exec(s.admin, "status"); !strings.Contains(got, "| posted |") || !strings.Contains(got, "| quarantined |") {
		t.Errorf("/mmgate status as admin: %q", got)
	}
	// The same setup through the admin endpoint: nothing left to change.
	req, _ := http.NewRequest(http.MethodPost, "http://"+g.httpAddr+"/admin/mattermost/setup",
		strings.NewReader(`{"admin_token": "`+s.admin.token+`"}`))
	req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
	ar, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var res struct {
		Success bool     `json:"success"`
		Changed int      `json:"changed"`
		Report  []string `json:"report"`
	}
	_ = json.NewDecoder(ar.Body).Decode(&res)
	ar.Body.Close()
	if ar.StatusCode != 200 || !res.Success || res.Changed != 0 || len(res.Report) == 0 {
		t.Errorf("POST /admin/mattermost/setup: %d %+v", ar.StatusCode, res)
	}
	// A Mattermost token that is not a system admin's: 403, with a stable code.
	req, _ = http.NewRequest(http.MethodPost, "http://"+g.httpAddr+"/admin/mattermost/setup",
		strings.NewReader(`{"admin_token": "`+s.alice.token+`"}`))
	req.Header.Set("Authorization", "Bearer "+e2eAdminToken)
	if ar, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	var refused struct {
		Code string `json:"code"`
	}
	_ = json.NewDecoder(ar.Body).Decode(&refused)
	ar.Body.Close()
	if ar.StatusCode != http.StatusForbidden || refused.Code != "admin_token_refused" {
		t.Errorf("setup with alice's token: %d %+v, want 403 admin_token_refused", ar.StatusCode, refused)
	}
	// A forged call straight to mmgate, without the command's token.
	resp, err := http.PostForm("http://"+g.httpAddr+"/mattermost/command", url.Values{"token": {"forged"}, "team_id": {s.teamID},
		"user_id": {s.aliceID}, "text": {"status"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("forged /mmgate call: %d, want 401", resp.StatusCode)
	}
}

// slash runs `/mmgate text` as c through Mattermost's POST /commands/execute
// (Mattermost calls mmgate) and returns the answer's text.
func slash(t *testing.T, s *suite, c *mmClient, text string) string {
	t.Helper()
	var resp struct {
		Text string `json:"text"`
	}
	if _, err := c.do("POST", "/commands/execute", map[string]string{"channel_id": townSquare(t, s), "team_id": s.teamID,
		"command": "/mmgate " + text}, &resp); err != nil {
		t.Fatalf("/mmgate %s: %v", text, err)
	}
	return resp.Text
}

func townSquare(t *testing.T, s *suite) string {
	t.Helper()
	var ch struct{ ID string }
	if _, err := s.admin.do("GET", "/teams/"+s.teamID+"/channels/name/town-square", nil, &ch); err != nil {
		t.Fatal(err)
	}
	return ch.ID
}

func writePNG(t *testing.T, s *suite) string {
	t.Helper()
	p := filepath.Join(s.root, "icon.png")
	if err := os.WriteFile(p, testPNG(t), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}
