package relay

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/account"
	"github.com/mmgate/mmgate/internal/directory"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/spool"
	"github.com/mmgate/mmgate/internal/sqldb"
)

func accountStore(t *testing.T) *account.Store {
	t.Helper()
	db, err := sqldb.OpenSQLite(filepath.Join(t.TempDir(), "accounts.db"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := account.Open(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Close() })
	return st
}

func link(t *testing.T, st *account.Store, email, userID, username string) {
	t.Helper()
	ctx := context.Background()
	code, err := st.NewCode(ctx, userID, username, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.LinkWithCode(ctx, code, account.Link{Email: email, Subject: "ldap:" + username}); err != nil {
		t.Fatal(err)
	}
}

func channels(h *harness) map[string]int {
	got := map[string]int{}
	for _, p := range h.mm.posts {
		got[p.ChannelID]++
	}
	return got
}

func TestLinkedIdentityReachesTheLinkedAccount(t *testing.T) {
	h := newHarness(t)
	st := accountStore(t)
	h.r.o.Accounts = st
	// zed is in the directory, but no Mattermost account has his email or
	// username: without a link his mail waits for an operator.
	h.dir["zed@corp.test"] = ""
	h.dir["zed.alias@corp.test"] = ""
	out := h.handle("l1", "jira-svc@tools.test", []string{"zed@corp.test"}, mkMail("before", "x"))
	if out.Kind != spool.OutcomeQuarantine || !strings.Contains(out.Reason, "no Mattermost user with email zed@corp.test") {
		t.Fatalf("without a link: %+v", out)
	}
	link(t, st, "ZED@corp.test", "uid-bob", "bob")
	out = h.handle("l2", "jira-svc@tools.test", []string{"zed@corp.test"}, mkMail("after", "x"))
	if out.Kind != spool.OutcomePosted {
		t.Fatalf("linked: %+v\n%v", out, h.sp.events)
	}
	if got := channels(h); len(got) != 1 || got["dm-uid-bob"] != 1 {
		t.Fatalf("want one post to bob, got %v", got)
	}
	if hist := strings.Join(h.sp.events, "\n"); !strings.Contains(hist, "zed@corp.test → @bob (directory: test; linked by its owner to @bob (/mmgate link, zed@corp.test))") {
		t.Errorf("history does not say the link was used:\n%s", hist)
	}
	// The link beats a username the directory gives: the person chose.
	h.dir["alice@corp.test"] = "alice"
	link(t, st, "alice@corp.test", "uid-bob", "bob")
	h.mm.posts = nil
	if out := h.handle("l3", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("alice", "x")); out.Kind != spool.OutcomePosted {
		t.Fatalf("%+v", out)
	}
	if got := channels(h); got["dm-uid-bob"] != 1 || got["dm-uid-alice"] != 0 {
		t.Fatalf("alice's linked mail went to %v", got)
	}
	// Unlinked, zed's mail waits again; a linked account that is gone is a
	// reason an operator can act on.
	if _, err := st.Unlink(context.Background(), "uid-bob"); err != nil {
		t.Fatal(err)
	}
	h.r = New(h.r.o) // a fresh user cache, as after ten minutes
	out = h.handle("l4", "jira-svc@tools.test", []string{"zed@corp.test"}, mkMail("unlinked", "x"))
	if out.Kind != spool.OutcomeQuarantine {
		t.Fatalf("after unlink: %+v", out)
	}
	link(t, st, "zed@corp.test", "uid-gone", "gone")
	out = h.handle("l5", "jira-svc@tools.test", []string{"zed@corp.test"}, mkMail("gone", "x"))
	if out.Kind != spool.OutcomeQuarantine || !strings.Contains(out.Reason, "the id of @gone, which this address is linked to") {
		t.Fatalf("linked to a deleted account: %+v", out)
	}
}

func TestSubscribersReceiveEveryMessageOnce(t *testing.T) {
	h := newHarness(t)
	st := accountStore(t)
	h.r.o.Accounts = st
	h.mm.users["carol"] = "uid-carol"
	ctx := context.Background()
	for _, s := range []account.Subscriber{
		{App: "jira", UserID: "uid-carol", Username: "carol", Email: "carol@corp.test"},
		{App: "jira", UserID: "uid-alice", Username: "alice", Email: "alice@corp.test"},
		{App: "jira", UserID: "uid-deleted", Username: "deleted", Email: "deleted@corp.test"},
		{App: "other", UserID: "uid-bob", Username: "bob", Email: "bob@corp.test"},
	} {
		if _, err := st.Subscribe(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	// An app that does not allow subscribing ignores the subscriptions.
	if out := h.handle("s1", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("closed", "x")); out.Kind != spool.OutcomePosted {
		t.Fatalf("%+v", out)
	}
	if got := channels(h); len(got) != 1 {
		t.Fatalf("subscribers of an app that does not allow it got posts: %v", got)
	}
	h.mm.posts = nil
	h.r.o.Apps["jira"].Subscribable = true
	out := h.handle("s2", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("open", "x"))
	if out.Kind != spool.OutcomePosted {
		t.Fatalf("%+v\n%v", out, h.sp.events)
	}
	got := channels(h)
	if len(got) != 2 || got["dm-uid-alice"] != 1 || got["dm-uid-carol"] != 1 {
		t.Fatalf("want alice (recipient and subscriber) once and carol once, got %v", got)
	}
	hist := strings.Join(h.sp.events, "\n")
	for _, want := range []string{"subscriber @carol (/mmgate subscribe jira)", "subscriber @alice already receives this message",
		"subscriber @deleted: skipped, the Mattermost account no longer exists"} {
		if !strings.Contains(hist, want) {
			t.Errorf("history lacks %q:\n%s", want, hist)
		}
	}
	// Handled again (a retry), nothing is posted twice.
	if out := h.handle("s2", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("open", "x")); out.Kind != spool.OutcomePosted {
		t.Fatalf("%+v", out)
	}
	if n := len(h.mm.posts); n != 2 {
		t.Fatalf("a retry posted again: %d posts", n)
	}
	// Mail whose only destination is a subscriber is posted to them.
	h.mm.posts = nil
	if out := h.handle("s3", "jira-svc@tools.test", []string{"nobody@elsewhere.test"}, mkMail("only", "x")); out.Kind != spool.OutcomeQuarantine {
		t.Fatalf("an unresolved recipient still waits for an operator: %+v", out)
	}
	if got := channels(h); got["dm-uid-carol"] != 1 {
		t.Fatalf("the subscriber did not get the message: %v", got)
	}
}

func TestSubscribersPassTheAppsGroups(t *testing.T) {
	h, _ := policyHarness(t)
	st := accountStore(t)
	h.r.o.Accounts = st
	h.r.o.Apps["jira"].Subscribable = true
	for _, u := range []string{"bob", "erin", "carol"} {
		if _, err := st.Subscribe(context.Background(), account.Subscriber{App: "jira", UserID: "uid-" + u, Username: u, Email: u + "@corp.test"}); err != nil {
			t.Fatal(err)
		}
	}
	// dave subscribed without a proven address; the link his account holds
	// now (to bob's entry, in the allow group) is what counts.
	if _, err := st.Subscribe(context.Background(), account.Subscriber{App: "jira", UserID: "uid-dave", Username: "dave"}); err != nil {
		t.Fatal(err)
	}
	link(t, st, "bob@corp.test", "uid-dave", "dave")
	if out := h.handle("g1", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("groups", "x")); out.Kind != spool.OutcomePosted {
		t.Fatalf("%+v", out)
	}
	got := channels(h)
	if len(got) != 3 || got["dm-uid-alice"] != 1 || got["dm-uid-bob"] != 1 || got["dm-uid-dave"] != 1 {
		t.Fatalf("want alice, bob and dave (allowed through his link) only, got %v", got)
	}
	hist := strings.Join(h.sp.events, "\n")
	for _, want := range []string{"subscriber @erin: skipped, not in app jira's allow group", "subscriber @carol: skipped, in app jira's deny group"} {
		if !strings.Contains(hist, want) {
			t.Errorf("history lacks %q:\n%s", want, hist)
		}
	}
	for email, want := range map[string]bool{"bob@corp.test": true, "erin@corp.test": false, "dave@corp.test": false, "nobody@corp.test": false} {
		if ok, why, err := h.r.MayReceive(context.Background(), "jira", email); err != nil || ok != want || (!ok && why == "") {
			t.Errorf("MayReceive(%s) = %v %q %v, want %v with a reason", email, ok, why, err, want)
		}
	}
}

func TestLinkOfAReusedAddressIsIgnored(t *testing.T) {
	h := newHarness(t)
	st := accountStore(t)
	h.r.o.Accounts = st
	// zed@corp.test now belongs to the entry uuid-new; the link was made by
	// the person who had it before (uuid-old).
	h.r.o.Directory = &groupDir{people: map[string]directory.Person{
		"zed@corp.test": {Email: "zed@corp.test", DN: "uid=zed,dc=x", ID: "uuid-new", Source: "test"}}}
	code, _ := st.NewCode(context.Background(), "uid-bob", "bob", time.Minute)
	if _, err := st.LinkWithCode(context.Background(), code, account.Link{Email: "zed@corp.test", Subject: "ldap:uuid-old"}); err != nil {
		t.Fatal(err)
	}
	out := h.handle("r1", "jira-svc@tools.test", []string{"zed@corp.test"}, mkMail("reused", "x"))
	if out.Kind != spool.OutcomeQuarantine || len(h.mm.posts) != 0 {
		t.Fatalf("the old owner's link was used: %+v, %d posts", out, len(h.mm.posts))
	}
	if hist := strings.Join(h.sp.events, "\n"); !strings.Contains(hist, "was made by another directory entry (ldap:uuid-old): ignored") {
		t.Errorf("history:\n%s", hist)
	}
	code, _ = st.NewCode(context.Background(), "uid-bob", "bob", time.Minute)
	if _, err := st.LinkWithCode(context.Background(), code, account.Link{Email: "zed@corp.test", Subject: "ldap:uuid-new"}); err != nil {
		t.Fatal(err)
	}
	if out := h.handle("r2", "jira-svc@tools.test", []string{"zed@corp.test"}, mkMail("relinked", "x")); out.Kind != spool.OutcomePosted || channels(h)["dm-uid-bob"] != 1 {
		t.Fatalf("the new owner's link: %+v %v", out, channels(h))
	}
}

func TestRefusedBotTokenWaits(t *testing.T) {
	h := newHarness(t)
	h.mm.failWith = &mattermost.APIError{Op: "create post", Status: 401, ID: "api.context.session_expired.app_error"}
	out := h.handle("t1", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("token", "x"))
	if out.Kind != spool.OutcomeRetry || !strings.Contains(out.Reason, "bot token") {
		t.Fatalf("a refused bot token must wait, not quarantine: %+v", out)
	}
	h.mm.failWith = nil
	if out := h.handle("t1", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("token", "x")); out.Kind != spool.OutcomePosted {
		t.Fatalf("after the token is fixed: %+v", out)
	}
}
