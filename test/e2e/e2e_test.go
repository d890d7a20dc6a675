package e2e

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"net/http"
	"net/textproto"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

var jiraAuth = &smtpAuth{user: jiraSMTPUser, pass: jiraSMTPPass}

// b64 wraps base64 at 76 characters per line.
func b64(data []byte) string {
	s := base64.StdEncoding.EncodeToString(data)
	var b strings.Builder
	for len(s) > 76 {
		b.WriteString(s[:76] + "\n")
		s = s[76:]
	}
	b.WriteString(s + "\n")
	return b.String()
}

func testPNG(t *testing.T) []byte {
	t.Helper()
	img := image.NewRGBA(image.Rect(0, 0, 16, 12))
	for y := 0; y < 12; y++ {
		for x := 0; x < 16; x++ {
			img.Set(x, y, color.RGBA{uint8(x * 16), uint8(y * 20), 200, 255})
		}
	}
	var buf bytes.Buffer
	if err := png.Encode(&buf, img); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// checkPostCommon asserts what every post of a message carries.
func checkPostCommon(t *testing.T, s *suite, p post, msgID string) {
	t.Helper()
	if p.UserID != s.botID {
		t.Errorf("post %s is by user %s, want the jira bot %s", p.ID, p.UserID, s.botID)
	}
	if p.prop("mmgate_id") == "" {
		t.Errorf("post %s has no mmgate_id prop: %v", p.ID, p.Props)
	}
	if p.prop("mmgate_part") == "" {
		t.Errorf("post %s has no mmgate_part prop: %v", p.ID, p.Props)
	}
	if got := p.prop("mmgate_message_id"); got != msgID {
		t.Errorf("post %s: mmgate_message_id %q, want %q", p.ID, got, msgID)
	}
}

// fileNames returns the names of a post's files (from its metadata, else
// from /files/{id}/info).
func fileNames(t *testing.T, c *mmClient, p post) []string {
	t.Helper()
	byID := map[string]string{}
	for _, f := range p.Metadata.Files {
		byID[f.ID] = f.Name
	}
	var out []string
	for _, id := range p.FileIDs {
		name, ok := byID[id]
		if !ok {
			var fi fileInfo
			if _, err := c.do("GET", "/files/"+id+"/info", nil, &fi); err != nil {
				t.Fatalf("file info %s: %v", id, err)
			}
			name = fi.Name
		}
		out = append(out, name)
	}
	return out
}

// threadOf splits posts into the root (root_id "") and its replies; it fails
// unless there is exactly one root and every other post replies to it.
func threadOf(t *testing.T, ps []post) (post, []post) {
	t.Helper()
	var roots, replies []post
	for _, p := range ps {
		if p.RootID == "" {
			roots = append(roots, p)
		} else {
			replies = append(replies, p)
		}
	}
	if len(roots) != 1 {
		t.Fatalf("want exactly one root post, got %d (of %d posts)", len(roots), len(ps))
	}
	for _, r := range replies {
		if r.RootID != roots[0].ID {
			t.Errorf("reply %s has root_id %s, want the root %s", r.ID, r.RootID, roots[0].ID)
		}
	}
	return roots[0], replies
}

// 1. HTML with a table and an inline cid: image, sent by swaks with AUTH LOGIN over STARTTLS.
func TestHTMLTableInlineImage(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{})
	alice := s.recipient(t, "alice")
	n := nonce()
	subject := "E2E table report " + n
	msgID := "html-" + n + "@e2e.test"
	img := testPNG(t)
	eml := header("Jira <jira@"+mailDomain+">", "alice@"+mailDomain, subject, msgID) +
		"Content-Type: multipart/related; boundary=\"REL-" + n + "\"\n\n" +
		"--REL-" + n + "\n" +
		"Content-Type: text/html; charset=utf-8\n\n" +
		"<html><body><p>Open issues for " + n + "</p>\n" +
		"<table><thead><tr><th>Key</th><th>Status</th></tr></thead>\n" +
		"<tbody><tr><td>PROJ-1</td><td>Open</td></tr><tr><td>PROJ-2</td><td>Done</td></tr></tbody></table>\n" +
		"<p>Logo: <img src=\"cid:logo-" + n + "@e2e.test\" alt=\"logo\"></p></body></html>\n" +
		"--REL-" + n + "\n" +
		"Content-Type: image/png; name=\"logo.png\"\n" +
		"Content-Transfer-Encoding: base64\n" +
		"Content-ID: <logo-" + n + "@e2e.test>\n" +
		"Content-Disposition: inline; filename=\"logo.png\"\n\n" +
		b64(img) +
		"--REL-" + n + "--\n"
	path := filepath.Join(g.dir, "html.eml")
	if err := os.WriteFile(path, crlf(eml), 0o644); err != nil {
		t.Fatal(err)
	}
	since := time.Now()
	out := g.swaks(jiraSMTPUser, jiraSMTPPass, "jira@"+mailDomain, "alice@"+mailDomain, path)
	if !strings.Contains(out, "250") {
		t.Fatalf("swaks output has no 250:\n%s", out)
	}

	alice.waitPosts(t, g, since, msgID, 1)
	settle(g)
	ps, err := alice.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 {
		t.Fatalf("alice has %d posts of the message, want exactly 1", len(ps))
	}
	p := ps[0]
	checkPostCommon(t, s, p, msgID)
	if first := strings.SplitN(p.Message, "\n", 2)[0]; first != "**"+subject+"**" {
		t.Errorf("first line %q, want %q", first, "**"+subject+"**")
	}
	if !regexp.MustCompile(`(?m)^From: .*jira@corp\.test`).MatchString(p.Message) {
		t.Errorf("no From: line naming jira@corp.test in:\n%s", p.Message)
	}
	if !regexp.MustCompile(`(?m)^\|?\s*Key\s*\|\s*Status\s*\|?\s*$`).MatchString(p.Message) ||
		!regexp.MustCompile(`(?m)^\|?\s*:?-{3,}:?\s*\|\s*:?-{3,}:?\s*\|?\s*$`).MatchString(p.Message) ||
		!regexp.MustCompile(`(?m)^\|?\s*PROJ-2\s*\|\s*Done\s*\|?\s*$`).MatchString(p.Message) {
		t.Errorf("message has no Markdown table (header, separator, rows):\n%s", p.Message)
	}
	if len(p.FileIDs) != 1 {
		t.Fatalf("post has %d files, want 1 (the inline image): %v", len(p.FileIDs), fileNames(t, alice.c, p))
	}
	got, err := alice.c.file(p.FileIDs[0])
	if err != nil {
		t.Fatalf("alice downloading the image: %v", err)
	}
	if !bytes.Equal(got, img) {
		t.Errorf("downloaded image differs: %d bytes, want %d bytes", len(got), len(img))
	}
	if names := fileNames(t, alice.c, p); len(names) != 1 || !strings.HasSuffix(strings.ToLower(names[0]), ".png") {
		t.Errorf("image file name %v, want a .png", names)
	}
}

// 2. Twelve attachments: a root with ten files and a reply in its thread with two.
func TestTwelveAttachmentsSplitIntoThread(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{})
	alice := s.recipient(t, "alice")
	n := nonce()
	subject := "E2E twelve attachments " + n
	msgID := "att12-" + n + "@e2e.test"
	var b strings.Builder
	b.WriteString(header("jira@"+mailDomain, "alice@"+mailDomain, subject, msgID))
	b.WriteString("Content-Type: multipart/mixed; boundary=\"MIX-" + n + "\"\n\n")
	b.WriteString("--MIX-" + n + "\nContent-Type: text/plain; charset=utf-8\n\nTwelve files attached.\n")
	contents := map[string][]byte{}
	for i := 1; i <= 12; i++ {
		name := fmt.Sprintf("report-%02d-%s.bin", i, n)
		data := []byte(fmt.Sprintf("attachment %d of 12 (%s)\x00\x01\x02%s", i, n, strings.Repeat(strconv.Itoa(i), 100+i)))
		contents[name] = data
		fmt.Fprintf(&b, "--MIX-%s\nContent-Type: application/octet-stream; name=\"%s\"\nContent-Transfer-Encoding: base64\n"+
			"Content-Disposition: attachment; filename=\"%s\"\n\n%s", n, name, name, b64(data))
	}
	b.WriteString("--MIX-" + n + "--\n")
	since := time.Now()
	g.mustSend(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain}, crlf(b.String()))

	alice.waitPosts(t, g, since, msgID, 2)
	settle(g)
	ps, err := alice.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 {
		t.Fatalf("alice has %d posts of the message, want 2 (root + one reply)", len(ps))
	}
	root, replies := threadOf(t, ps)
	checkPostCommon(t, s, root, msgID)
	checkPostCommon(t, s, replies[0], msgID)
	if len(root.FileIDs) != 10 {
		t.Errorf("root post has %d files, want 10", len(root.FileIDs))
	}
	if len(replies[0].FileIDs) != 2 {
		t.Errorf("reply has %d files, want 2", len(replies[0].FileIDs))
	}
	if !strings.HasPrefix(root.Message, "**"+subject+"**") {
		t.Errorf("root message does not start with the bold subject:\n%s", root.Message)
	}
	seen := map[string]bool{}
	for _, p := range []post{root, replies[0]} {
		names := fileNames(t, alice.c, p)
		for i, name := range names {
			if seen[name] {
				t.Errorf("file %s attached twice", name)
			}
			seen[name] = true
			want, ok := contents[name]
			if !ok {
				t.Errorf("unexpected file %q", name)
				continue
			}
			got, err := alice.c.file(p.FileIDs[i])
			if err != nil {
				t.Errorf("downloading %s: %v", name, err)
			} else if !bytes.Equal(got, want) {
				t.Errorf("file %s: downloaded %d bytes that differ from the %d sent", name, len(got), len(want))
			}
		}
	}
	for name := range contents {
		if !seen[name] {
			t.Errorf("attachment %s is missing from the posts", name)
		}
	}
}

// words returns the runs of letters and digits in s.
var wordRE = regexp.MustCompile(`[A-Za-z0-9]+`)

// containsSeq reports whether needle occurs as a contiguous run in hay.
func containsSeq(hay, needle []string) bool {
	if len(needle) == 0 {
		return true
	}
outer:
	for i := 0; i+len(needle) <= len(hay); i++ {
		for j := range needle {
			if hay[i+j] != needle[j] {
				continue outer
			}
		}
		return true
	}
	return false
}

// isSubsequence reports whether needle's words all occur in hay, in order.
func isSubsequence(hay, needle []string) bool {
	i := 0
	for _, w := range hay {
		if i < len(needle) && w == needle[i] {
			i++
		}
	}
	return i == len(needle)
}

// 3. A 40,000-character body: root and continuation replies, message.md attached.
func TestLongBodyContinuesInThread(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{})
	alice := s.recipient(t, "alice")
	n := nonce()
	subject := "E2E long body " + n
	msgID := "long-" + n + "@e2e.test"
	start, middle, end := "MARKERSTART"+n, "MARKERMIDDLE"+n, "MARKEREND"+n
	var body strings.Builder
	body.WriteString(start + "\n")
	for i := 1; body.Len() < 40000; i++ {
		fmt.Fprintf(&body, "w%05d", i)
		switch {
		case i%100 == 0:
			body.WriteString("\n\n")
		case i%10 == 0:
			body.WriteString("\n")
		default:
			body.WriteString(" ")
		}
		if i == 2850 {
			body.WriteString(middle + " ")
		}
	}
	body.WriteString("\n" + end + "\n")
	text := body.String()
	if l := len(text); l < 40000 || !strings.Contains(text, middle) {
		t.Fatalf("test body is %d characters (middle marker present: %v)", l, strings.Contains(text, middle))
	}
	eml := header("jira@"+mailDomain, "alice@"+mailDomain, subject, msgID) +
		"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: 7bit\n\n" + text
	since := time.Now()
	g.mustSend(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain}, crlf(eml))

	alice.waitPosts(t, g, since, msgID, 3) // 40,000 runes need at least three posts of ≤ 16,383
	settle(g)
	ps, err := alice.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	root, replies := threadOf(t, ps)
	if !strings.HasPrefix(root.Message, "**"+subject+"**") {
		t.Errorf("root message does not start with the bold subject: %q", truncate(root.Message, 200))
	}
	var all strings.Builder
	var mdFile string
	for _, p := range append([]post{root}, replies...) {
		checkPostCommon(t, s, p, msgID)
		if r := utf8.RuneCountInString(p.Message); r > 16383 {
			t.Errorf("post %s has %d runes, over 16,383", p.ID, r)
		}
		all.WriteString(p.Message + "\n")
		for i, name := range fileNames(t, alice.c, p) {
			if name == "message.md" {
				if mdFile != "" {
					t.Errorf("message.md attached more than once")
				}
				mdFile = p.FileIDs[i]
			}
		}
	}
	for _, m := range []string{start, middle, end} {
		if !strings.Contains(all.String(), m) {
			t.Errorf("the posts together do not contain marker %s", m)
		}
	}
	if mdFile == "" {
		t.Fatalf("no post of the thread has a message.md file")
	}
	md, err := alice.c.file(mdFile)
	if err != nil {
		t.Fatalf("downloading message.md: %v", err)
	}
	if !containsSeq(wordRE.FindAllString(string(md), -1), wordRE.FindAllString(text, -1)) {
		t.Errorf("message.md (%d bytes) does not contain the whole body text in order", len(md))
	}
	// The posts' text, read in order, holds every word of the body, in order
	// and once (continuation notes between chunks are allowed).
	postWords := wordRE.FindAllString(all.String(), -1)
	if !isSubsequence(postWords, wordRE.FindAllString(text, -1)) {
		t.Errorf("the posts' text does not hold the whole body in order (a chunk lost or reordered)")
	}
	seenWord := map[string]int{}
	for _, w := range postWords {
		seenWord[w]++
	}
	for _, w := range wordRE.FindAllString(text, -1) {
		if seenWord[w] != 1 {
			t.Errorf("body word %s appears %d times in the posts, want once", w, seenWord[w])
			break
		}
	}
}

// quarantined waits for a message (found by needle in its list row) in `quarantine list`.
func quarantined(t *testing.T, g *gate, needle string) string {
	t.Helper()
	var id string
	eventually(t, waitFor, "the message in `mmgate quarantine list`", func() (bool, string) {
		rows := g.list("quarantine", "list")
		r, ok := findRow(rows, needle)
		id = r.ID
		return ok, fmt.Sprintf("%d quarantined%s", len(rows), g.stateHint())
	})
	return id
}

// showField returns the value of "Name:" in `mmgate ... show` output.
func showField(out, name string) string {
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, name+":"); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}

// checkShow asserts the sections of `show` output; the "Posts:" section must
// list every post id in postIDs (it may be left out when nothing was posted).
func checkShow(t *testing.T, out string, postIDs ...string) {
	t.Helper()
	for _, sec := range []string{"State:", "History:"} {
		if !strings.Contains(out, sec) {
			t.Errorf("show output has no %q:\n%s", sec, out)
		}
	}
	if len(postIDs) == 0 {
		return
	}
	_, posts, ok := strings.Cut(out, "\nPosts:")
	if !ok {
		t.Errorf("show output has no \"Posts:\" section:\n%s", out)
		return
	}
	for _, id := range postIDs {
		if !strings.Contains(posts, id) {
			t.Errorf("the Posts section does not list post %s:\n%s", id, out)
		}
	}
}

// 4. Unknown sender: quarantined, then released after a routing rule is added: posted once.
func TestUnknownSenderQuarantineRelease(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{})
	alice := s.recipient(t, "alice")
	n := nonce()
	subject := "E2E unknown " + n
	msgID := "unknown-" + n + "@e2e.test"
	eml := header("Other <other@elsewhere.test>", "alice@"+mailDomain, subject, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nFrom a tool nobody configured (" + n + ").\n"
	since := time.Now()
	// No AUTH: it is not required; the 250 comes before routing.
	g.mustSend(nil, "other@elsewhere.test", []string{"alice@" + mailDomain}, crlf(eml))

	id := quarantined(t, g, n)
	show := g.mustCLI("quarantine", "show", id)
	checkShow(t, show)
	if st := showField(show, "State"); st != "quarantined" {
		t.Errorf("State %q, want quarantined:\n%s", st, show)
	}
	if r := showField(show, "Reason"); !strings.HasPrefix(r, "unknown source") {
		t.Errorf("Reason %q, want it to start with \"unknown source\"", r)
	}
	if ps, err := alice.postsOf(since, msgID); err != nil || len(ps) != 0 {
		t.Fatalf("alice got %d posts of a quarantined message (err %v)", len(ps), err)
	}

	// A second unknown message is deleted for good.
	n2 := nonce()
	g.mustSend(nil, "spam@elsewhere.test", []string{"alice@" + mailDomain}, crlf(
		header("spam@elsewhere.test", "alice@"+mailDomain, "E2E delete me "+n2, "del-"+n2+"@e2e.test")+
			"Content-Type: text/plain\n\nunwanted\n"))
	delID := quarantined(t, g, n2)
	if delID == id {
		t.Fatalf("two messages share the spool id %s", id)
	}
	g.mustCLI("quarantine", "delete", delID)
	if _, found := findRow(g.list("quarantine", "list"), delID); found {
		t.Errorf("%s is still listed after quarantine delete", delID)
	}
	if out, _, code := g.cli("quarantine", "show", delID); code == 0 {
		t.Errorf("quarantine show of a deleted message exits 0:\n%s", out)
	}
	if _, found := findRow(g.list("quarantine", "list"), id); !found {
		t.Errorf("deleting %s also removed %s from the quarantine", delID, id)
	}

	// Fix the configuration, restart, release.
	g.stop()
	g.writeConfig(gateConfig{Rules: []string{`{app: jira, from: "other@elsewhere.test"}`}})
	if out, _, code := g.cli("config", "check"); code != 0 {
		t.Fatalf("config check of the fixed configuration: exit %d\n%s", code, out)
	}
	g.start()
	g.mustCLI("quarantine", "release", id)
	alice.waitPosts(t, g, since, msgID, 1)
	settle(g)
	ps, err := alice.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 {
		t.Fatalf("alice has %d posts of the released message, want exactly 1", len(ps))
	}
	checkPostCommon(t, s, ps[0], msgID)
	if ps[0].prop("mmgate_id") != id {
		t.Errorf("post mmgate_id %q, want the spool id %q", ps[0].prop("mmgate_id"), id)
	}
	var out string
	eventually(t, waitFor, "state posted in `queue show`", func() (bool, string) {
		out = g.mustCLI("queue", "show", id)
		return showField(out, "State") == "posted", out
	})
	checkShow(t, out, ps[0].ID)
	if rows := g.list("quarantine", "list"); len(rows) != 0 {
		if _, still := findRow(rows, id); still {
			t.Errorf("%s is still in the quarantine list after release and delivery", id)
		}
	}
}

// mattermostctl runs test/peers/mattermost.sh with one command.
func (s *suite) mattermostctl(t *testing.T, cmd string) {
	t.Helper()
	c := exec.Command("bash", filepath.Join(s.peers, "mattermost.sh"), cmd)
	out, err := c.CombinedOutput()
	if err != nil {
		t.Fatalf("mattermost.sh %s: %v\n%s", cmd, err, out)
	}
}

// 5. Mattermost is down when the mail arrives: 250, retrying with an error, then posted once.
func TestMattermostDownThenUp(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{})
	alice := s.recipient(t, "alice")
	n := nonce()
	subject := "E2E outage " + n
	msgID := "outage-" + n + "@e2e.test"

	stopped := true
	t.Cleanup(func() {
		if stopped {
			s.mattermostctl(t, "start")
		}
	})
	s.mattermostctl(t, "stop")
	if err := s.alice.ping(); err == nil {
		t.Fatal("Mattermost still answers after mattermost.sh stop")
	}

	eml := header("jira@"+mailDomain, "alice@"+mailDomain, subject, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nSent while Mattermost was down (" + n + ").\n"
	since := time.Now()
	if err := g.sendSMTP(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain}, crlf(eml)); err != nil {
		t.Fatalf("SMTP while Mattermost is down must still be accepted (250): %v", err)
	}
	var id string
	eventually(t, waitFor, "the message retrying with an error in `queue list`", func() (bool, string) {
		rows := g.list("queue", "list")
		for _, r := range rows {
			out := g.mustCLI("queue", "show", r.ID)
			if !strings.Contains(out, n) && !strings.Contains(out, msgID) {
				continue
			}
			id = r.ID
			if showField(out, "State") == "retrying" && showField(out, "Last error") != "" &&
				strings.Contains(r.Line, "retrying") {
				return true, ""
			}
			return false, "queue row: " + r.Line + "\nshow:\n" + out
		}
		return false, fmt.Sprintf("%d row(s) in queue list", len(rows))
	})

	// Readiness reports the outage.
	if code, body := getReadyz(t, g); code == http.StatusOK {
		t.Errorf("/readyz answers 200 while Mattermost is down: %s", body)
	}
	// The retrying message survives a restart of mmgate, and an operator can
	// ask for an immediate retry.
	g.restart()
	if out := g.mustCLI("queue", "retry", id); !strings.Contains(out, id) {
		t.Errorf("queue retry output does not name %s: %q", id, out)
	}
	eventually(t, waitFor, "the message retrying again after the restart", func() (bool, string) {
		out := g.mustCLI("queue", "show", id)
		st := showField(out, "State")
		return (st == "retrying" || st == "queued") && showField(out, "Last error") != "", out
	})

	s.mattermostctl(t, "start")
	stopped = false
	alice.waitPosts(t, g, since, msgID, 1)
	settle(g)
	ps, err := alice.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 {
		t.Fatalf("alice has %d posts of the message, want exactly 1", len(ps))
	}
	checkPostCommon(t, s, ps[0], msgID)
	if ps[0].prop("mmgate_id") != id {
		t.Errorf("post mmgate_id %q, want %q", ps[0].prop("mmgate_id"), id)
	}
	eventually(t, waitFor, "state posted", func() (bool, string) {
		out := g.mustCLI("queue", "show", id)
		return showField(out, "State") == "posted", out
	})
	eventually(t, waitFor, "/readyz 200 again", func() (bool, string) {
		code, body := getReadyz(t, g)
		return code == http.StatusOK, body
	})
}

// getReadyz returns /readyz's status and body.
func getReadyz(t *testing.T, g *gate) (int, string) {
	t.Helper()
	resp, err := httpClient.Get("http://" + g.httpAddr + "/readyz")
	if err != nil {
		t.Fatalf("/readyz: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// smtpCode asserts err is an SMTP reply with code and enhanced status code.
func smtpCode(t *testing.T, what string, err error, code int, enhanced string) {
	t.Helper()
	var te *textproto.Error
	if !errors.As(err, &te) {
		t.Errorf("%s: want SMTP %d %s, got %v", what, code, enhanced, err)
		return
	}
	if te.Code != code || (enhanced != "" && !strings.HasPrefix(te.Msg, enhanced)) {
		t.Errorf("%s: got %d %q, want %d %s", what, te.Code, te.Msg, code, enhanced)
	}
}

// dialTLS opens an SMTP session after EHLO and STARTTLS.
func dialTLS(t *testing.T, g *gate) *smtpConn {
	t.Helper()
	c, err := dialSMTP(g)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// 6. Exact SMTP refusals: foreign recipient, bad password, message too large.
func TestSMTPRefusals(t *testing.T) {
	s := setup(t)
	const limit = 64 << 10
	g := newGate(t, s, gateConfig{MaxMessageBytes: limit})

	t.Run("foreign recipient 550 5.7.1", func(t *testing.T) {
		c := dialTLS(t, g)
		if err := c.Auth(jiraAuth); err != nil {
			t.Fatal(err)
		}
		if err := c.Mail("jira@" + mailDomain); err != nil {
			t.Fatal(err)
		}
		smtpCode(t, "RCPT TO:<someone@elsewhere.test>", c.Rcpt("someone@elsewhere.test"), 550, "5.7.1")
		// the session goes on: a local recipient is still accepted
		if err := c.Rcpt("alice@" + mailDomain); err != nil {
			t.Errorf("RCPT to a local address after a refusal: %v", err)
		}
	})
	t.Run("bad password 535 5.7.8", func(t *testing.T) {
		c := dialTLS(t, g)
		smtpCode(t, "AUTH PLAIN with a wrong password", c.Auth(&smtpAuth{user: jiraSMTPUser, pass: "wrong-password"}), 535, "5.7.8")
		c2 := dialTLS(t, g)
		smtpCode(t, "AUTH PLAIN as an unknown user", c2.Auth(&smtpAuth{user: "nobody", pass: jiraSMTPPass}), 535, "5.7.8")
	})
	t.Run("SIZE over the limit 552", func(t *testing.T) {
		c := dialTLS(t, g)
		code, msg, err := c.Cmd(fmt.Sprintf("MAIL FROM:<jira@%s> SIZE=%d", mailDomain, 4*limit))
		if err != nil {
			t.Fatal(err)
		}
		if code != 552 {
			t.Errorf("MAIL FROM with SIZE=%d over max_message_bytes=%d: got %d %s, want 552", 4*limit, limit, code, msg)
		}
	})
	t.Run("DATA over the limit 552", func(t *testing.T) {
		big := header("jira@"+mailDomain, "alice@"+mailDomain, "E2E too big "+nonce(), "big-"+nonce()+"@e2e.test") +
			"Content-Type: text/plain\n\n" + strings.Repeat(strings.Repeat("x", 99)+"\n", 2*limit/100)
		err := g.sendSMTP(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain}, crlf(big))
		smtpCode(t, fmt.Sprintf("DATA of %d bytes over max_message_bytes=%d", len(big), limit), err, 552, "")
		rows := g.list("queue", "list", "--all")
		if len(rows) != 0 {
			t.Errorf("a refused message was stored: %v", rows)
		}
	})
}

// 7. Two known recipients and one unknown: both get their DM once; release after
// fixing the directory posts to the third only.
func TestPartialRecipientsRelease(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{})
	alice, bob, carol := s.recipient(t, "alice"), s.recipient(t, bobName), s.recipient(t, carolName)
	n := nonce()
	subject := "E2E three recipients " + n
	msgID := "three-" + n + "@e2e.test"
	carolAddr := "carol@" + mailDomain
	eml := header("jira@"+mailDomain, "alice@"+mailDomain+", robert@"+mailDomain+", "+carolAddr, subject, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nFor three people (" + n + ").\n"
	since := time.Now()
	// bob through his alias robert@
	g.mustSend(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain, "robert@" + mailDomain, carolAddr}, crlf(eml))

	id := quarantined(t, g, n)
	for _, r := range []*recipient{alice, bob} {
		r.waitPosts(t, g, since, msgID, 1)
	}
	settle(g)
	var posted []string
	count := func(r *recipient) int {
		t.Helper()
		ps, err := r.postsOf(since, msgID)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range ps {
			checkPostCommon(t, s, p, msgID)
			if p.prop("mmgate_id") != id {
				t.Errorf("%s's post has mmgate_id %q, want %q", r.name, p.prop("mmgate_id"), id)
			}
			posted = append(posted, p.ID)
		}
		return len(ps)
	}
	for _, r := range []*recipient{alice, bob} {
		if c := count(r); c != 1 {
			t.Errorf("%s has %d posts of the message before release, want 1", r.name, c)
		}
	}
	show := g.mustCLI("quarantine", "show", id)
	checkShow(t, show, posted...)
	if st := showField(show, "State"); st != "quarantined" {
		t.Errorf("State %q, want quarantined", st)
	}
	if r := showField(show, "Reason"); !strings.Contains(r, carolAddr) {
		t.Errorf("Reason %q does not name %s", r, carolAddr)
	}
	if c := count(carol); c != 0 {
		t.Errorf("carol has %d posts before she is in the directory", c)
	}

	g.stop()
	g.writeConfig(gateConfig{Users: append(defaultUsers(), dirUser{Email: carolAddr, Username: carolName})})
	g.start()
	g.mustCLI("quarantine", "release", id)
	carol.waitPosts(t, g, since, msgID, 1)
	settle(g)
	for _, r := range []*recipient{alice, bob, carol} {
		if c := count(r); c != 1 {
			t.Errorf("%s has %d posts of the message after release, want exactly 1", r.name, c)
		}
	}
	var out string
	eventually(t, waitFor, "state posted", func() (bool, string) {
		out = g.mustCLI("queue", "show", id)
		return showField(out, "State") == "posted", out
	})
	checkShow(t, out, posted...)
}

// 8. /readyz is 200 with every check ok; /metrics counts the posted message.
func TestReadyzAndMetrics(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{})
	alice := s.recipient(t, "alice")

	resp, err := httpClient.Get("http://" + g.httpAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/readyz: HTTP %d: %s", resp.StatusCode, body)
	}
	var rz struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal(body, &rz); err != nil {
		t.Fatalf("/readyz body %q: %v", body, err)
	}
	if len(rz.Checks) == 0 {
		t.Errorf("/readyz lists no checks: %s", body)
	}
	for name, v := range rz.Checks {
		if v != "ok" {
			t.Errorf("/readyz check %s: %q", name, v)
		}
	}

	n := nonce()
	msgID := "metrics-" + n + "@e2e.test"
	eml := header("jira@"+mailDomain, "alice@"+mailDomain, "E2E metrics "+n, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nCounted (" + n + ").\n"
	since := time.Now()
	g.mustSend(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain}, crlf(eml))
	alice.waitPosts(t, g, since, msgID, 1)

	re := regexp.MustCompile(`(?m)^mmgate_messages_posted_total\{app="jira"\} ([0-9.e+]+)$`)
	eventually(t, waitFor, `mmgate_messages_posted_total{app="jira"} >= 1 in /metrics`, func() (bool, string) {
		resp, err := httpClient.Get("http://" + g.httpAddr + "/metrics")
		if err != nil {
			return false, err.Error()
		}
		b, _ := io.ReadAll(resp.Body)
		_ = resp.Body.Close()
		m := re.FindSubmatch(b)
		if m == nil {
			var lines []string
			for _, l := range strings.Split(string(b), "\n") {
				if strings.HasPrefix(l, "mmgate_messages") {
					lines = append(lines, l)
				}
			}
			return false, "no such sample; mmgate_messages* lines: " + strings.Join(lines, "\n")
		}
		v, err := strconv.ParseFloat(string(m[1]), 64)
		return err == nil && v >= 1, "value " + string(m[1])
	})
}

// 9. `config check` reports problems with key paths and exits 78 (EX_CONFIG).
func TestConfigCheck(t *testing.T) {
	s := setup(t)
	g := &gate{t: t, s: s, dir: t.TempDir()}
	g.cfgPath = filepath.Join(g.dir, "mmgate.yaml")
	g.usersYML = filepath.Join(g.dir, "users.yaml")
	g.smtpAddr, g.httpAddr = "127.0.0.1:1", "127.0.0.1:2"
	g.writeConfig(gateConfig{})
	if out, errOut, code := g.cli("config", "check"); code != 0 {
		t.Fatalf("valid configuration: exit %d\n%s%s", code, out, errOut)
	}
	bad := "data_dir: " + g.dir + "/data\nsmtp: {listen: \"not an address\"}\nmattermost: {url: \"\"}\napps: {}\n"
	if err := os.WriteFile(g.cfgPath, []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := g.cli("config", "check")
	if code != 78 {
		t.Errorf("invalid configuration: exit %d, want 78\n%s%s", code, out, errOut)
	}
	for _, key := range []string{"smtp.listen", "mattermost.url"} {
		if !strings.Contains(out+errOut, key) {
			t.Errorf("config check output does not name %s:\n%s%s", key, out, errOut)
		}
	}
}

// 10. The envelope sender names the app (jira-svc@… → jira) without AUTH.
func TestSenderPatternWithoutAuth(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{})
	bob := s.recipient(t, bobName)
	n := nonce()
	subject := "E2E sender pattern " + n
	msgID := "pattern-" + n + "@e2e.test"
	eml := header("Jira Service <jira-svc@tools.test>", "bob@"+mailDomain, subject, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nRouted by the envelope sender " + n + "\nHeads-up @channel, @all and @here!\n"
	since := time.Now()
	g.mustSend(nil, "jira-svc@tools.test", []string{"bob@" + mailDomain}, crlf(eml))
	bob.waitPosts(t, g, since, msgID, 1)
	settle(g)
	ps, err := bob.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 1 {
		t.Fatalf("bob has %d posts of the message, want exactly 1", len(ps))
	}
	checkPostCommon(t, s, ps[0], msgID)
	if !strings.HasPrefix(ps[0].Message, "**"+subject+"**\nFrom: ") {
		t.Errorf("message does not start with the bold subject and a From: line:\n%s", ps[0].Message)
	}
	if !strings.Contains(ps[0].Message, "Routed by the envelope sender "+n) {
		t.Errorf("message does not hold the body:\n%s", ps[0].Message)
	}
	// Mail must never notify a whole channel: @channel/@all/@here are defused.
	if m := regexp.MustCompile(`@(channel|all|here)\b`).FindString(ps[0].Message); m != "" {
		t.Errorf("message keeps a live %s mention:\n%q", m, ps[0].Message)
	}
	if !strings.Contains(ps[0].Message, "Heads-up @") {
		t.Errorf("the mention line is missing:\n%q", ps[0].Message)
	}
}

// 11. mmgate killed (SIGKILL) while posting a many-part message: after a
// restart every part is in Mattermost exactly once.
func TestCrashDuringDeliveryExactlyOnce(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{MaxMessageBytes: 20 << 20})
	alice := s.recipient(t, "alice")
	n := nonce()
	subject := "E2E crash " + n
	msgID := "crash-" + n + "@e2e.test"
	var text strings.Builder
	for i := 1; text.Len() < 40000; i++ {
		fmt.Fprintf(&text, "c%05d", i)
		if i%10 == 0 {
			text.WriteString("\n")
		} else {
			text.WriteString(" ")
		}
	}
	var b strings.Builder
	b.WriteString(header("jira@"+mailDomain, "alice@"+mailDomain, subject, msgID))
	b.WriteString("Content-Type: multipart/mixed; boundary=\"MIX-" + n + "\"\n\n")
	b.WriteString("--MIX-" + n + "\nContent-Type: text/plain; charset=utf-8\n\n" + text.String() + "\n")
	want := map[string]bool{"message.md": true}
	for i := 1; i <= 12; i++ {
		name := fmt.Sprintf("crash-%02d-%s.bin", i, n)
		want[name] = true
		data := bytes.Repeat([]byte(fmt.Sprintf("%s part %d;", n, i)), 20000) // ~400 KB each: uploads take a moment
		fmt.Fprintf(&b, "--MIX-%s\nContent-Type: application/octet-stream; name=\"%s\"\nContent-Transfer-Encoding: base64\n"+
			"Content-Disposition: attachment; filename=\"%s\"\n\n%s", n, name, name, b64(data))
	}
	b.WriteString("--MIX-" + n + "--\n")
	since := time.Now()
	g.mustSend(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain}, crlf(b.String()))

	// Kill mmgate as soon as the first post of the message is visible.
	deadline := time.Now().Add(waitFor)
	for {
		ps, err := alice.postsOf(since, msgID)
		if err == nil && len(ps) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no post of the message within %s%s", waitFor, g.stateHint())
		}
		time.Sleep(20 * time.Millisecond)
	}
	g.kill()
	before, _ := alice.postsOf(since, msgID)
	t.Logf("killed mmgate with %d post(s) of the message in Mattermost", len(before))
	// A few more crashes at varied moments of the retry (start-up repair,
	// uploads, between a post and its ledger record).
	for _, d := range []time.Duration{300 * time.Millisecond, 700 * time.Millisecond, 1200 * time.Millisecond} {
		g.start()
		time.Sleep(d)
		g.kill()
	}
	mid, _ := alice.postsOf(since, msgID)
	t.Logf("after 3 more crashes: %d post(s) of the message in Mattermost", len(mid))
	g.start()

	var id string
	eventually(t, waitFor, "the message posted after the restart", func() (bool, string) {
		rows := g.list("queue", "list", "--all")
		r, ok := findRow(rows, n)
		if !ok {
			return false, "not in queue list --all"
		}
		id = r.ID
		out := g.mustCLI("queue", "show", id)
		return showField(out, "State") == "posted", out
	})
	settle(g)
	ps, err := alice.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := threadOf(t, ps)
	if !strings.HasPrefix(root.Message, "**"+subject+"**") {
		t.Errorf("root does not start with the subject: %q", truncate(root.Message, 100))
	}
	parts := map[string]int{}
	files := map[string]int{}
	var all strings.Builder
	for _, p := range ps {
		checkPostCommon(t, s, p, msgID)
		parts[p.prop("mmgate_part")]++
		for _, name := range fileNames(t, alice.c, p) {
			files[name]++
		}
		all.WriteString(p.Message + "\n")
	}
	for part, c := range parts {
		if c != 1 {
			t.Errorf("part %s was posted %d times", part, c)
		}
	}
	for name := range want {
		if files[name] != 1 {
			t.Errorf("file %s is attached %d times, want once", name, files[name])
		}
	}
	for name, c := range files {
		if !want[name] {
			t.Errorf("unexpected file %s (%d times)", name, c)
		}
	}
	words := map[string]int{}
	for _, w := range wordRE.FindAllString(all.String(), -1) {
		words[w]++
	}
	for _, w := range wordRE.FindAllString(text.String(), -1) {
		if words[w] != 1 {
			t.Errorf("body word %s appears %d times in the posts, want once", w, words[w])
			break
		}
	}
	t.Logf("%d posts, %d distinct parts, %d files", len(ps), len(parts), len(files))
}

// 12. Encoded headers and a non-UTF-8 body arrive readable.
func TestEncodedSubjectAndLatin1Body(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{})
	alice := s.recipient(t, "alice")
	n := nonce()
	msgID := "enc-" + n + "@e2e.test"
	// Subject "Grüße ✓ <n>" as an RFC 2047 encoded word; body "Café crème" in ISO-8859-1, quoted-printable.
	subjWord := "=?UTF-8?B?" + base64.StdEncoding.EncodeToString([]byte("Grüße ✓ "+n)) + "?="
	eml := header("=?ISO-8859-1?Q?J=FCrgen?= <jira@"+mailDomain+">", "alice@"+mailDomain, subjWord, msgID) +
		"Content-Type: text/plain; charset=ISO-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n" +
		"Caf=E9 cr=E8me " + n + "\n"
	since := time.Now()
	g.mustSend(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain}, crlf(eml))
	ps := alice.waitPosts(t, g, since, msgID, 1)
	p := ps[0]
	checkPostCommon(t, s, p, msgID)
	if first := strings.SplitN(p.Message, "\n", 2)[0]; first != "**Grüße ✓ "+n+"**" {
		t.Errorf("first line %q, want %q", first, "**Grüße ✓ "+n+"**")
	}
	if !strings.Contains(p.Message, "Jürgen") {
		t.Errorf("the From: line does not hold the decoded name Jürgen:\n%s", p.Message)
	}
	if !strings.Contains(p.Message, "Café crème "+n) {
		t.Errorf("the Latin-1 body is not decoded:\n%s", p.Message)
	}
}

// 13. A 30,000-character line without a space (tools send unfolded lines) is
// split into posts under the limit without losing or repeating a character.
func TestUnbrokenLongLine(t *testing.T) {
	s := setup(t)
	g := newGate(t, s, gateConfig{})
	alice := s.recipient(t, "alice")
	n := nonce()
	msgID := "line-" + n + "@e2e.test"
	line := strings.Repeat("0123456789", 3000)
	eml := header("jira@"+mailDomain, "alice@"+mailDomain, "E2E long line "+n, msgID) +
		"Content-Type: text/plain; charset=utf-8\n\nBefore\n" + line + "\nAfter " + n + "\n"
	since := time.Now()
	g.mustSend(jiraAuth, "jira@"+mailDomain, []string{"alice@" + mailDomain}, crlf(eml))
	alice.waitPosts(t, g, since, msgID, 2)
	var id string
	eventually(t, waitFor, "the message posted", func() (bool, string) {
		r, ok := findRow(g.list("queue", "list", "--all"), n)
		if !ok {
			return false, "not listed"
		}
		id = r.ID
		out := g.mustCLI("queue", "show", id)
		return showField(out, "State") == "posted", out
	})
	ps, err := alice.postsOf(since, msgID)
	if err != nil {
		t.Fatal(err)
	}
	threadOf(t, ps) // one root, the rest replies to it
	var digits strings.Builder
	var all strings.Builder
	for _, p := range ps {
		if r := utf8.RuneCountInString(p.Message); r > 16383 {
			t.Errorf("post %s has %d runes, over 16,383", p.ID, r)
		}
		for _, run := range regexp.MustCompile(`[0-9]{20,}`).FindAllString(p.Message, -1) {
			digits.WriteString(run)
		}
		all.WriteString(p.Message)
	}
	if got := digits.String(); got != line {
		t.Errorf("the long line comes back as %d digits (want %d), or altered", len(got), len(line))
	}
	if !strings.Contains(all.String(), "After "+n) {
		t.Errorf("the text after the long line is missing")
	}
}
