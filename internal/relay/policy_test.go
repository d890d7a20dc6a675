package relay

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/mmgate/mmgate/internal/directory"
	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/spool"
)

// groupDir is a directory with groups: person DN → group DN → parent.
type groupDir struct {
	people map[string]directory.Person // address → person
	groups map[string]directory.Groups // person DN → groups
	down   bool
}

func (d *groupDir) Lookup(_ context.Context, e string) (directory.Person, error) {
	if d.down {
		return directory.Person{}, fault.New(fault.Temporary, "directory_unavailable", "LDAP directory unavailable")
	}
	p, ok := d.people[strings.ToLower(e)]
	if !ok {
		return directory.Person{}, directory.ErrNotFound
	}
	return p, nil
}

func (d *groupDir) Groups(_ context.Context, p directory.Person) (directory.Groups, error) {
	if d.down {
		return directory.Groups{}, errors.New("down")
	}
	return d.groups[p.DN], nil
}

func policyHarness(t *testing.T) (*harness, *groupDir) {
	h := newHarness(t)
	pd := func(u string) string { return "uid=" + u + ",ou=people,dc=x" }
	const allow, deny, global, sub = "cn=allow,dc=x", "cn=deny,dc=x", "cn=global,dc=x", "cn=sub,dc=x"
	g := func(u string, parents map[string]string) directory.Groups {
		gr := directory.Groups{Parent: map[string]string{}, Names: map[string]string{}, How: "test"}
		for k, v := range parents {
			gr.Parent[directory.NormDN(k)] = directory.NormDN(v)
			gr.Names[directory.NormDN(k)] = k
		}
		gr.Names[directory.NormDN(pd(u))] = pd(u)
		return gr
	}
	d := &groupDir{people: map[string]directory.Person{}, groups: map[string]directory.Groups{}}
	for _, u := range []string{"alice", "bob", "carol", "dave", "erin"} {
		d.people[u+"@corp.test"] = directory.Person{Email: u + "@corp.test", Username: u, DN: pd(u), Source: "test"}
		h.mm.users[u] = "uid-" + u
	}
	d.groups[pd("alice")] = g("alice", map[string]string{allow: pd("alice")})
	d.groups[pd("bob")] = g("bob", map[string]string{sub: pd("bob"), allow: sub})
	d.groups[pd("carol")] = g("carol", map[string]string{allow: pd("carol"), deny: pd("carol")})
	d.groups[pd("dave")] = g("dave", map[string]string{allow: pd("dave"), global: pd("dave")})
	d.groups[pd("erin")] = g("erin", nil)
	h.r.o.Directory = d
	h.r.o.DenyGroup = global
	h.r.o.Apps["jira"].AllowGroup = allow
	h.r.o.Apps["jira"].DenyGroup = deny
	return h, d
}

func TestPolicyAllowsDeniesAndExplains(t *testing.T) {
	h, _ := policyHarness(t)
	rcpts := []string{"alice@corp.test", "bob@corp.test", "carol@corp.test", "dave@corp.test", "erin@corp.test"}
	out := h.handle("p1", "jira-svc@tools.test", rcpts, mkMail("policy", "x"))
	if out.Kind != spool.OutcomePosted {
		t.Fatalf("policy skips are not failures: %+v\n%v", out, h.sp.events)
	}
	got := map[string]bool{}
	for _, p := range h.mm.posts {
		got[p.ChannelID] = true
	}
	if len(h.mm.posts) != 2 || !got["dm-uid-alice"] || !got["dm-uid-bob"] {
		t.Fatalf("want posts to alice and bob only, got %v", got)
	}
	hist := strings.Join(h.sp.events, "\n")
	for _, want := range []string{
		"bob@corp.test: allowed: in app jira's allow group cn=allow,dc=x (through cn=sub,dc=x)",
		"carol@corp.test: denied: in app jira's deny group cn=deny,dc=x (direct member), and deny wins",
		"dave@corp.test: denied: in the global deny group",
		"erin@corp.test: not allowed: not in app jira's allow group cn=allow,dc=x",
		"erin@corp.test: skipped",
	} {
		if !strings.Contains(hist, want) {
			t.Errorf("history lacks %q:\n%s", want, hist)
		}
	}
}

func TestPolicyLeavingNobodyQuarantinesWithTheReason(t *testing.T) {
	h, _ := policyHarness(t)
	out := h.handle("p2", "jira-svc@tools.test", []string{"carol@corp.test", "erin@corp.test"}, mkMail("nobody", "x"))
	if out.Kind != spool.OutcomeQuarantine || !strings.Contains(out.Reason, "deny wins") || !strings.Contains(out.Reason, "allow group") {
		t.Fatalf("%+v", out)
	}
	if len(h.mm.posts) != 0 {
		t.Fatalf("posted %d", len(h.mm.posts))
	}
}

func TestDirectoryDownRetriesNeverQuarantines(t *testing.T) {
	h, d := policyHarness(t)
	d.down = true
	out := h.handle("p3", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("down", "x"))
	if out.Kind != spool.OutcomeRetry || !strings.Contains(out.Reason, "directory") {
		t.Fatalf("directory down: %+v", out)
	}
	d.down = false
	if out := h.handle("p3", "jira-svc@tools.test", []string{"alice@corp.test"}, mkMail("down", "x")); out.Kind != spool.OutcomePosted {
		t.Fatalf("after it returns: %+v", out)
	}
}

func TestAddressOutsideTheDirectoryIsNotPostedWhenGroupsApply(t *testing.T) {
	h, _ := policyHarness(t)
	h.r.o.MattermostLookup = true
	h.mm.users["zed"] = "uid-zed"
	out := h.handle("p4", "jira-svc@tools.test", []string{"zed@corp.test", "alice@corp.test"}, mkMail("zed", "x"))
	if out.Kind != spool.OutcomePosted || len(h.mm.posts) != 1 || h.mm.posts[0].ChannelID != "dm-uid-alice" {
		t.Fatalf("%+v posts %d", out, len(h.mm.posts))
	}
	if !strings.Contains(strings.Join(h.sp.events, "\n"), "cannot be checked") {
		t.Errorf("history should say why zed was skipped:\n%s", strings.Join(h.sp.events, "\n"))
	}
}

func TestExplainPostsNothing(t *testing.T) {
	h, _ := policyHarness(t)
	ex := h.r.Explain(context.Background(), bytes.NewReader([]byte(mkMail("explained", "the body"))),
		spool.Envelope{Sender: "jira-svc@tools.test", Recipients: []string{"bob@corp.test", "erin@corp.test"}})
	if len(h.mm.posts) != 0 {
		t.Fatalf("explain posted %d", len(h.mm.posts))
	}
	if ex.Outcome.Kind != spool.OutcomePosted || len(ex.Destinations) != 1 || ex.Destinations[0] != "@bob" {
		t.Fatalf("%+v", ex)
	}
	if len(ex.Posts) != 1 || !strings.Contains(ex.Posts[0].Message, "the body") {
		t.Fatalf("posts %+v", ex.Posts)
	}
	var lines []string
	for _, e := range ex.Events {
		lines = append(lines, e.Detail)
	}
	if all := strings.Join(lines, "\n"); !strings.Contains(all, "through cn=sub,dc=x") || !strings.Contains(all, "app jira") {
		t.Errorf("explanation:\n%s", all)
	}
}

// An error that retrying can only make worse is quarantined with its code.
func TestPermanentErrorIsQuarantined(t *testing.T) {
	out := failure(fault.New(fault.Permanent, "reconcile_too_many_posts", "too many posts"))
	if out.Kind != spool.OutcomeQuarantine || out.Code != "reconcile_too_many_posts" || out.Reason != "too many posts" {
		t.Fatalf("%+v", out)
	}
	if out := failure(errors.New("connection reset")); out.Kind != spool.OutcomeRetry {
		t.Fatalf("an unknown error must be retried: %+v", out)
	}
}

// A copy whose claim holder has not posted yet waits for it rather than
// ending as a duplicate: the holder may still be quarantined and deleted.
func TestDuplicateWaitsForAHolderThatHasNotPosted(t *testing.T) {
	h := newHarness(t)
	raw := mkMail("held", "x")
	h.mm.failWith = &mattermost.APIError{Op: "create post", Status: 500}
	if out := h.handle("h1", "jira-svc@tools.test", []string{"alice@corp.test"}, raw); out.Kind != spool.OutcomeRetry {
		t.Fatalf("holder with Mattermost failing: %+v", out)
	}
	h.mm.failWith = nil
	out := h.handle("h2", "jira-svc@tools.test", []string{"alice@corp.test"}, raw)
	if out.Kind != spool.OutcomeRetry || !strings.Contains(out.Reason, "waiting for message h1") {
		t.Fatalf("copy while the holder has not posted: %+v", out)
	}
	if out := h.handle("h1", "jira-svc@tools.test", []string{"alice@corp.test"}, raw); out.Kind != spool.OutcomePosted {
		t.Fatalf("holder: %+v", out)
	}
	out = h.handle("h2", "jira-svc@tools.test", []string{"alice@corp.test"}, raw)
	if out.Kind != spool.OutcomePosted || out.Code != spool.CodeDuplicate {
		t.Fatalf("copy after the holder posted: %+v", out)
	}
	if len(h.mm.posts) != 1 {
		t.Fatalf("%d posts, want 1", len(h.mm.posts))
	}
}
