package ldap

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/mmgate/mmgate/internal/directory"
	"github.com/mmgate/mmgate/internal/fault"
)

// fixture is the seeded directory the tests share:
//
//	jira-users ⊃ eng ⊃ backend ⊃ frank, and backend ⊃ jira-users (a cycle)
//	jira-users ⊃ carol, contractors ⊃ carol (allowed and denied)
//	alice has two addresses; twin1 and twin2 share one.
type fixture struct {
	s                                        *slapd
	alice, carol, frank, erin                string
	jiraUsers, eng, backend, contractors, ws string
}

func seed(t *testing.T, s *slapd) fixture {
	t.Helper()
	c := s.admin()
	defer c.Close()
	s.seedBase(c)
	f := fixture{s: s}
	f.alice = s.person(c, "alice", "alice@corp.test", "A.Smith@Corp.test")
	f.carol = s.person(c, "carol", "carol@corp.test")
	f.frank = s.person(c, "frank", "frank@corp.test")
	f.erin = s.person(c, "erin", "erin@corp.test")
	s.person(c, "twin1", "shared@corp.test")
	s.person(c, "twin2", "shared@corp.test")
	f.backend = s.group(c, "backend", f.frank)
	f.eng = s.group(c, "eng", f.backend)
	f.jiraUsers = s.group(c, "jira-users", f.eng, f.carol, f.alice)
	s.addMember(c, f.backend, f.jiraUsers) // the cycle
	f.contractors = s.group(c, "contractors", f.carol)
	return f
}

func newDir(t *testing.T, cfg Config) *Directory {
	t.Helper()
	if cfg.BaseDN == "" {
		cfg.BaseDN = base
	}
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	return d
}

func TestLookupByEveryAddressCaseInsensitively(t *testing.T) {
	s := startSlapd(t, false)
	seed(t, s)
	d := newDir(t, Config{URLs: []string{s.url()}, BindDN: adminDN, BindPassword: adminPW, UsernameAttribute: "uid"})
	ctx := context.Background()
	for _, addr := range []string{"alice@corp.test", "a.smith@corp.test", " ALICE@CORP.TEST "} {
		p, err := d.Lookup(ctx, addr)
		if err != nil {
			t.Fatalf("%q: %v", addr, err)
		}
		if p.Username != "alice" || p.Email != "alice@corp.test" || p.DisplayName != "Alice Example" ||
			!strings.EqualFold(p.DN, "uid=alice,ou=people,"+base) || !slices.Equal(p.Addresses, []string{"alice@corp.test", "a.smith@corp.test"}) {
			t.Errorf("%q: %+v", addr, p)
		}
		if !strings.Contains(p.Source, s.url()) {
			t.Errorf("source %q does not name the server", p.Source)
		}
	}
	if _, err := d.Lookup(ctx, "nobody@corp.test"); !errors.Is(err, directory.ErrNotFound) {
		t.Errorf("nobody: %v, want ErrNotFound", err)
	}
	_, err := d.Lookup(ctx, "shared@corp.test")
	if !errors.Is(err, directory.ErrAmbiguous) || !strings.Contains(err.Error(), "twin1") || !strings.Contains(err.Error(), "twin2") {
		t.Errorf("shared address: %v, want ErrAmbiguous naming both entries", err)
	}
	// A filter-special address is escaped, not interpreted.
	if _, err := d.Lookup(ctx, "*)(uid=*"); !errors.Is(err, directory.ErrNotFound) {
		t.Errorf("injection attempt: %v, want ErrNotFound", err)
	}
}

func TestNestedGroupsWithACycle(t *testing.T) {
	s := startSlapd(t, false)
	f := seed(t, s)
	d := newDir(t, Config{URLs: []string{s.url()}, BindDN: adminDN, BindPassword: adminPW})
	ctx := context.Background()
	frank, err := d.Lookup(ctx, "frank@corp.test")
	if err != nil {
		t.Fatal(err)
	}
	g, err := d.Groups(ctx, frank)
	if err != nil {
		t.Fatal(err)
	}
	path, ok := g.Has(f.jiraUsers)
	want := []string{f.jiraUsers, f.eng, f.backend, f.frank}
	if !ok || len(path) != len(want) {
		t.Fatalf("frank in jira-users: %v %v, want path %v", ok, path, want)
	}
	for i := range want {
		if directory.NormDN(path[i]) != directory.NormDN(want[i]) {
			t.Errorf("path[%d] = %s, want %s", i, path[i], want[i])
		}
	}
	if !strings.Contains(g.How, "walk") {
		t.Errorf("OpenLDAP should be walked, How = %q", g.How)
	}
	if _, ok := g.Has(f.contractors); ok {
		t.Error("frank is not a contractor")
	}
	carol, _ := d.Lookup(ctx, "carol@corp.test")
	gc, err := d.Groups(ctx, carol)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := gc.Has(f.contractors); !ok {
		t.Error("carol is in contractors")
	}
	if p, ok := gc.Has(f.jiraUsers); !ok || len(p) != 2 {
		t.Errorf("carol is directly in jira-users: %v %v", ok, p)
	}
	erin, _ := d.Lookup(ctx, "erin@corp.test")
	ge, err := d.Groups(ctx, erin)
	if err != nil {
		t.Fatal(err)
	}
	if len(ge.Parent) != 0 {
		t.Errorf("erin is in no group, got %v", ge.Parent)
	}
}

// TestFreshGroupsSeeAChangeAtOnce: Groups keeps what it found for
// cache_ttl; FreshGroups asks the server now, nested levels included, and
// leaves the fresh answer in the cache.
func TestFreshGroupsSeeAChangeAtOnce(t *testing.T) {
	s := startSlapd(t, false)
	f := seed(t, s)
	d := newDir(t, Config{URLs: []string{s.url()}, BindDN: adminDN, BindPassword: adminPW, CacheTTL: time.Hour})
	ctx := context.Background()
	erin, err := d.Lookup(ctx, "erin@corp.test")
	if err != nil {
		t.Fatal(err)
	}
	if g, err := d.Groups(ctx, erin); err != nil || len(g.Parent) != 0 {
		t.Fatalf("erin starts in no group: %v %v", g.Parent, err)
	}
	// erin joins backend, two levels below jira-users: the cached answer
	// does not know, the fresh one does, with the whole path.
	c := s.admin()
	s.addMember(c, f.backend, f.erin)
	c.Close()
	if g, _ := d.Groups(ctx, erin); len(g.Parent) != 0 {
		t.Fatalf("the cache was not used: %v", g.Parent)
	}
	g, err := d.FreshGroups(ctx, erin)
	if err != nil {
		t.Fatal(err)
	}
	if path, ok := g.Has(f.jiraUsers); !ok || len(path) != 4 {
		t.Fatalf("fresh: erin in jira-users %v, path %v", ok, path)
	}
	if g, _ := d.Groups(ctx, erin); len(g.Parent) == 0 {
		t.Error("the fresh answer did not refresh the cache")
	}
	// Leaving a group shows at once too, even though backend's own parents
	// were cached by the walk.
	c = s.admin()
	s.addMember(c, f.eng, f.alice) // a group of names may not be empty
	req := goldap.NewModifyRequest(f.eng, nil)
	req.Delete("member", []string{f.backend})
	if err := c.Modify(req); err != nil {
		t.Fatal(err)
	}
	c.Close()
	g, err = d.FreshGroups(ctx, erin)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := g.Has(f.eng); ok {
		t.Error("fresh groups still see backend in eng")
	}
}

func TestWalkDepthIsBounded(t *testing.T) {
	s := startSlapd(t, false)
	seed(t, s)
	d := newDir(t, Config{URLs: []string{s.url()}, BindDN: adminDN, BindPassword: adminPW, MaxDepth: 2})
	ctx := context.Background()
	frank, _ := d.Lookup(ctx, "frank@corp.test")
	if _, err := d.Groups(ctx, frank); err == nil || !strings.Contains(err.Error(), "max_depth") || !fault.Is(err, fault.Permanent) {
		t.Errorf("three levels with max_depth 2: %v, want a permanent error naming max_depth", err)
	}
	// Exactly three levels fit max_depth 3.
	d3 := newDir(t, Config{URLs: []string{s.url()}, BindDN: adminDN, BindPassword: adminPW, MaxDepth: 3})
	frank, _ = d3.Lookup(ctx, "frank@corp.test")
	if g, err := d3.Groups(ctx, frank); err != nil {
		t.Errorf("three levels with max_depth 3: %v", err)
	} else if path, ok := g.Has("cn=jira-users,ou=groups," + base); !ok || len(path) != 4 {
		t.Errorf("jira-users three levels up: %v %v", ok, path)
	}
}

// A new recipient costs at most 3 round trips once the groups above it are
// known: one search for the address, one for the groups that list it.
func TestRoundTripsPerNewRecipient(t *testing.T) {
	s := startSlapd(t, false)
	f := seed(t, s)
	c := s.admin()
	var extra []string
	for i := 0; i < 20; i++ {
		dn := s.person(c, fmt.Sprintf("user%02d", i), fmt.Sprintf("user%02d@corp.test", i))
		s.addMember(c, f.backend, dn)
		extra = append(extra, dn)
	}
	c.Close()
	d := newDir(t, Config{URLs: []string{s.url()}, BindDN: adminDN, BindPassword: adminPW})
	ctx := context.Background()
	warm := func(addr string) {
		p, err := d.Lookup(ctx, addr)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := d.Groups(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	warm("frank@corp.test") // learns backend → eng → jira-users
	before := d.Stats().RoundTrips
	for i := range extra {
		warm(fmt.Sprintf("user%02d@corp.test", i))
	}
	per := float64(d.Stats().RoundTrips-before) / float64(len(extra))
	if per > 3 {
		t.Errorf("%.2f round trips per new recipient, want ≤ 3", per)
	}
	// Warm: no round trip at all.
	before = d.Stats().RoundTrips
	for i := range extra {
		warm(fmt.Sprintf("user%02d@corp.test", i))
	}
	if n := d.Stats().RoundTrips - before; n != 0 {
		t.Errorf("%d round trips with a warm cache, want 0", n)
	}
}

func TestOutageIsTemporaryAndFailoverWorks(t *testing.T) {
	s := startSlapd(t, false)
	seed(t, s)
	dead := fmt.Sprintf("ldap://127.0.0.1:%d", freePort(t))
	d := newDir(t, Config{URLs: []string{dead, s.url()}, BindDN: adminDN, BindPassword: adminPW,
		Timeout: 2 * time.Second, NegativeTTL: time.Millisecond, CacheTTL: time.Millisecond})
	ctx := context.Background()
	p, err := d.Lookup(ctx, "alice@corp.test")
	if err != nil {
		t.Fatalf("failover to the second server: %v", err)
	}
	if !strings.Contains(p.Source, s.url()) {
		t.Errorf("source %q, want the live server", p.Source)
	}
	s.stop()
	time.Sleep(5 * time.Millisecond) // past the cache TTL
	for _, addr := range []string{"alice@corp.test", "nobody@corp.test"} {
		_, err = d.Lookup(ctx, addr)
		if err == nil || errors.Is(err, directory.ErrNotFound) || !fault.Is(err, fault.Temporary) {
			t.Errorf("%s with the directory down: %v, want a temporary error", addr, err)
		}
	}
	if _, err := d.Groups(ctx, p); err == nil || !fault.Is(err, fault.Temporary) {
		t.Errorf("groups with the directory down: %v, want a temporary error", err)
	}
	s.start()
	if _, err := d.Lookup(ctx, "alice@corp.test"); err != nil {
		t.Errorf("after slapd returned: %v", err)
	}
}

func TestTLSWithCAFile(t *testing.T) {
	s := startSlapd(t, true)
	seed(t, s)
	ctx := context.Background()
	for name, cfg := range map[string]Config{
		"ldaps":    {URLs: []string{fmt.Sprintf("ldaps://127.0.0.1:%d", s.ldapsPort)}, CAFile: s.ca},
		"starttls": {URLs: []string{s.url()}, StartTLS: true, CAFile: s.ca},
	} {
		cfg.BindDN, cfg.BindPassword = adminDN, adminPW
		d := newDir(t, cfg)
		if _, err := d.Lookup(ctx, "alice@corp.test"); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	// Another CA: refused, as a temporary error (the operator fixes ca_file).
	other := filepath.Join(t.TempDir(), "other")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	otherCA, _ := makeCerts(t, other)
	d := newDir(t, Config{URLs: []string{s.url()}, StartTLS: true, CAFile: otherCA, BindDN: adminDN, BindPassword: adminPW})
	if _, err := d.Lookup(ctx, "alice@corp.test"); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("wrong CA: %v, want a certificate error", err)
	}
}

func TestWrongBindPasswordSaysSo(t *testing.T) {
	s := startSlapd(t, false)
	seed(t, s)
	d := newDir(t, Config{URLs: []string{s.url()}, BindDN: adminDN, BindPassword: "wrong"})
	_, err := d.Lookup(context.Background(), "alice@corp.test")
	if err == nil || !strings.Contains(err.Error(), "bind as "+adminDN) {
		t.Errorf("wrong password: %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{BaseDN: base}, "urls"},
		{Config{URLs: []string{"http://x"}, BaseDN: base}, "not ldap://"},
		{Config{URLs: []string{"ldap://x:389"}}, "base_dn"},
		{Config{URLs: []string{"ldap://x:389"}, BaseDN: base, Nested: "deep"}, "nested"},
		{Config{URLs: []string{"ldap://x:389"}, BaseDN: base, UserFilter: "(oops"}, "filter"},
		{Config{URLs: []string{"ldap://x:389"}, BaseDN: base, CAFile: "/nonexistent"}, "ca_file"},
	} {
		if _, err := New(c.cfg); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
}

func TestAuthenticateByUsernameOrEmail(t *testing.T) {
	s := startSlapd(t, false)
	c := s.admin()
	s.seedBase(c)
	dn := "uid=alice,ou=people," + base
	s.add(c, dn, map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {"alice"}, "cn": {"alice"}, "sn": {"Smith"},
		"displayName": {"Alice Smith"}, "mail": {"Alice@Corp.test"}, "userPassword": {"pa55word"}})
	s.add(c, "uid=twin,ou=people,"+base, map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {"twin"}, "cn": {"t"}, "sn": {"t"},
		"mail": {"twin@corp.test"}, "userPassword": {"twinpass"}})
	s.add(c, "uid=twin2,ou=people,"+base, map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {"twin2"}, "cn": {"t"}, "sn": {"t"},
		"mail": {"twin@corp.test"}, "userPassword": {"twinpass"}})
	c.Close()
	d := newDir(t, Config{URLs: []string{s.url()}, BindDN: adminDN, BindPassword: adminPW})
	ctx := context.Background()
	var first Account
	for _, login := range []string{"alice", "alice@corp.test", " ALICE "} {
		a, err := d.Authenticate(ctx, login, "pa55word", AuthOptions{})
		if err != nil {
			t.Fatalf("%q: %v", login, err)
		}
		if a.Username != "alice" || a.Email != "alice@corp.test" || a.DisplayName != "Alice Smith" || a.ID == "" || !strings.EqualFold(a.DN, dn) {
			t.Errorf("%q: %+v", login, a)
		}
		if first.ID != "" && a.ID != first.ID {
			t.Errorf("entryUUID changed between sign-ins: %s then %s", first.ID, a.ID)
		}
		first = a
	}
	// Delivery's lookup gives the same permanent id (links check it).
	if p, err := d.Lookup(ctx, "alice@corp.test"); err != nil || p.ID != first.ID {
		t.Errorf("Lookup's id %q (%v), sign-in's %q", p.ID, err, first.ID)
	}
	for _, bad := range []struct{ login, pw string }{
		{"alice", "wrong"}, {"alice", ""}, {"nobody", "pa55word"}, {"", "x"},
		{"alic*", "pa55word"}, {"twin@corp.test", "twinpass"}, // a filter wildcard is escaped; an address two people share signs nobody in
	} {
		if _, err := d.Authenticate(ctx, bad.login, bad.pw, AuthOptions{}); !errors.Is(err, ErrBadCredentials) {
			t.Errorf("%q/%q: %v, want ErrBadCredentials", bad.login, bad.pw, err)
		}
	}
	if _, err := d.Authenticate(ctx, "alice", "wrong", AuthOptions{}); func() bool {
		var wp *WrongPasswordError
		return !errors.As(err, &wp) || !strings.EqualFold(wp.DN, dn) || wp.ID != first.ID
	}() {
		t.Errorf("a wrong password names the entry (for the per-account limit): %v", err)
	}
	// A session's sign-in reads the account again by its entryUUID; a
	// deleted entry is gone.
	if a, err := d.AccountByID(ctx, first.ID, AuthOptions{}); err != nil || a.Username != "alice" || a.Email != "alice@corp.test" {
		t.Errorf("AccountByID: %+v %v", a, err)
	}
	if _, err := d.AccountByID(ctx, "00000000-0000-0000-0000-000000000000", AuthOptions{}); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("AccountByID of nobody: %v", err)
	}
	// An entry without an email cannot sign in, and says why.
	ac := s.admin()
	s.add(ac, "uid=nomail,ou=people,"+base, map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {"nomail"}, "cn": {"n"}, "sn": {"n"},
		"userPassword": {"nomailpw"}})
	ac.Close()
	var ue *UnusableError
	if _, err := d.Authenticate(ctx, "nomail", "nomailpw", AuthOptions{}); !errors.As(err, &ue) || !strings.Contains(ue.Reason, "no email") {
		t.Errorf("an entry without email: %v", err)
	}
	// The pooled connections stay bound as the service account: a lookup
	// after a person's bind still sees what the admin sees.
	if _, err := d.Lookup(ctx, "alice@corp.test"); err != nil {
		t.Errorf("lookup after a person's sign-in: %v", err)
	}
	s.stop()
	if _, err := d.Authenticate(ctx, "alice", "pa55word", AuthOptions{}); err == nil || errors.Is(err, ErrBadCredentials) {
		t.Errorf("directory down: %v, want a temporary error that is not ErrBadCredentials", err)
	}
}

// The sub-codes Active Directory (here as Samba AD sends them) gives a
// refused bind: only those sent after the password was checked say why.
func TestADRefusalReasons(t *testing.T) {
	const prefix = `LDAP Result Code 49 "Invalid Credentials": 80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data `
	for code, want := range map[string]string{"533": "disabled", "701": "expired", "532": "password has expired",
		"773": "must be changed", "52e": "", "775": "", "525": ""} {
		if got := adRefusal(errors.New(prefix + code + ", v1db1")); (want == "") != (got == "") || !strings.Contains(got, want) {
			t.Errorf("data %s: %q, want %q", code, got, want)
		}
	}
	if got := adRefusal(errors.New(`LDAP Result Code 49 "Invalid Credentials": `)); got != "" {
		t.Errorf("OpenLDAP's refusal: %q", got)
	}
}
