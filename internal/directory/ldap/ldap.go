// Package ldap is the LDAP / Active Directory directory: it finds the person
// behind an email address and the groups that person belongs to, through
// nested groups. It owns the connections (a small pool, failover across
// servers, LDAPS or StartTLS with a CA file, bind with a password read from a
// file) and the caches (people and their groups, with a TTL; addresses nobody
// has, with a shorter one).
//
// A directory that cannot be reached answers with a temporary error, so that
// delivery waits and retries: never a "not found" that would skip or
// quarantine a recipient because the server was down.
//
// Nested groups: Active Directory resolves them itself with the in-chain
// matching rule (1.2.840.113556.1.4.1941), one paged search per person. Other
// servers (OpenLDAP returns nothing for that rule) get a breadth-first walk up
// member / uniqueMember, bounded in depth and safe against cycles, with each
// group's parents cached.
package ldap

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
	"golang.org/x/sync/singleflight"

	"github.com/mmgate/mmgate/internal/directory"
	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/metrics"
)

// InChainOID is Active Directory's LDAP_MATCHING_RULE_IN_CHAIN.
const InChainOID = "1.2.840.113556.1.4.1941"

// adCapabilityOID in the root DSE's supportedCapabilities marks Active Directory.
const adCapabilityOID = "1.2.840.113556.1.4.800"

// Nesting modes.
const (
	NestedAuto    = "auto"     // in_chain on Active Directory, else walk
	NestedInChain = "in_chain" // the server resolves nesting (AD)
	NestedWalk    = "walk"     // breadth-first walk of member / uniqueMember
)

// Config is the directory's resolved configuration.
type Config struct {
	// URLs are tried in order (ldap://host:389, ldaps://host:636); the one
	// that last worked is tried first.
	URLs []string
	// StartTLS upgrades ldap:// connections before binding.
	StartTLS bool
	// CAFile is a PEM bundle to verify the servers with ("" = system roots).
	CAFile string
	// BindDN and BindPassword authenticate; both "" binds anonymously.
	BindDN       string
	BindPassword string
	// BaseDN is where people are searched; GroupBaseDN where groups are
	// ("" = BaseDN).
	BaseDN      string
	GroupBaseDN string
	// UserFilter narrows the people searched, e.g. (objectClass=person).
	UserFilter string
	// GroupFilter says what a group is when walking nested groups.
	GroupFilter string
	// MailAttributes hold a person's addresses; proxyAddresses values are
	// matched as "smtp:ADDRESS" (any case). Default: mail and proxyAddresses
	// on Active Directory, mail elsewhere (an attribute a server does not
	// know makes OpenLDAP scan every entry).
	MailAttributes []string
	// UsernameAttribute holds the Mattermost username ("" = find the
	// Mattermost user by email).
	UsernameAttribute    string
	DisplayNameAttribute string
	// MemberAttributes name a group's members when walking.
	MemberAttributes []string
	// Nested is auto, in_chain or walk.
	Nested string
	// MaxDepth bounds the walk up nested groups.
	MaxDepth int
	// PageSize is the page size of paged searches.
	PageSize int
	// PoolSize bounds the open connections.
	PoolSize int
	// Timeout bounds connecting and each request.
	Timeout time.Duration
	// CacheTTL is how long people and their groups are kept; NegativeTTL how
	// long an address nobody has is remembered.
	CacheTTL    time.Duration
	NegativeTTL time.Duration
}

func (c *Config) defaults() {
	if c.UserFilter == "" {
		c.UserFilter = "(objectClass=*)"
	}
	if c.GroupFilter == "" {
		c.GroupFilter = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames)(objectClass=group))"
	}
	if c.DisplayNameAttribute == "" {
		c.DisplayNameAttribute = "displayName"
	}
	if len(c.MemberAttributes) == 0 {
		c.MemberAttributes = []string{"member", "uniqueMember"}
	}
	if c.Nested == "" {
		c.Nested = NestedAuto
	}
	if c.MaxDepth <= 0 {
		c.MaxDepth = 10
	}
	if c.PageSize <= 0 {
		c.PageSize = 500
	}
	if c.PoolSize <= 0 {
		c.PoolSize = 4
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	if c.CacheTTL <= 0 {
		c.CacheTTL = 10 * time.Minute
	}
	if c.NegativeTTL <= 0 {
		c.NegativeTTL = time.Minute
	}
	if c.GroupBaseDN == "" {
		c.GroupBaseDN = c.BaseDN
	}
}

// Directory is an LDAP directory. It is safe for concurrent use.
type Directory struct {
	cfg  Config
	tls  *tls.Config
	idle chan pooled
	open chan struct{} // one token per open connection

	mu        sync.Mutex
	preferred int    // index into cfg.URLs of the server that last worked
	mode      string // fixed nesting mode, "" for auto
	kindKnown bool   // the root DSE was read: ad says whether it is AD
	ad        bool

	people  *cache[personResult]
	groups  *cache[directory.Groups]
	parents *cache[[]string]
	sf      singleflight.Group

	trips atomic.Int64 // searches, binds and StartTLS sent
	dials atomic.Int64
	// bindNanos is how long a person's dial and bind take (moving average):
	// a login that names nobody waits as long.
	bindNanos atomic.Int64
}

type personResult struct {
	p   directory.Person
	err error // ErrNotFound or ErrAmbiguous
}

// New checks cfg and reads the CA file; it does not connect.
func New(cfg Config) (*Directory, error) {
	cfg.defaults()
	if len(cfg.URLs) == 0 {
		return nil, errors.New("directory.ldap.urls: at least one server is needed")
	}
	if cfg.BaseDN == "" {
		return nil, errors.New("directory.ldap.base_dn is required")
	}
	switch cfg.Nested {
	case NestedAuto, NestedInChain, NestedWalk:
	default:
		return nil, fmt.Errorf("directory.ldap.nested: %q is not auto, in_chain or walk", cfg.Nested)
	}
	for _, f := range []string{cfg.UserFilter, cfg.GroupFilter} {
		if _, err := goldap.CompileFilter(f); err != nil {
			return nil, fmt.Errorf("LDAP filter %s: %w", f, err)
		}
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if cfg.CAFile != "" {
		pem, err := os.ReadFile(cfg.CAFile)
		if err != nil {
			return nil, fmt.Errorf("directory.ldap.ca_file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("directory.ldap.ca_file %s: no PEM certificate in it", cfg.CAFile)
		}
		tc.RootCAs = pool
	}
	for _, u := range cfg.URLs {
		pu, err := url.Parse(u)
		if err != nil || (pu.Scheme != "ldap" && pu.Scheme != "ldaps") || pu.Host == "" {
			return nil, fmt.Errorf("directory.ldap.urls: %q is not ldap://host:port or ldaps://host:port", u)
		}
	}
	mode := ""
	if cfg.Nested != NestedAuto {
		mode = cfg.Nested
	}
	d := &Directory{cfg: cfg, tls: tc, mode: mode,
		idle:    make(chan pooled, cfg.PoolSize),
		open:    make(chan struct{}, cfg.PoolSize),
		people:  newCache[personResult](200_000),
		groups:  newCache[directory.Groups](200_000),
		parents: newCache[[]string](50_000),
	}
	d.bindNanos.Store(int64(20 * time.Millisecond))
	return d, nil
}

// Stats are counters for benchmarks and tests.
type Stats struct {
	RoundTrips int64 // searches (each page), binds and StartTLS
	Dials      int64 // connections opened
}

// Stats returns the counters so far.
func (d *Directory) Stats() Stats {
	return Stats{RoundTrips: d.trips.Load(), Dials: d.dials.Load()}
}

// Close closes the idle connections.
func (d *Directory) Close() error {
	for {
		select {
		case pc := <-d.idle:
			_ = pc.c.Close()
			<-d.open
		default:
			return nil
		}
	}
}

// ---------------------------------------------------------------- people

// Lookup finds the person with address email (case-insensitive) in any of
// the mail attributes. ErrNotFound and ErrAmbiguous are final for the
// address; any other error is temporary.
func (d *Directory) Lookup(ctx context.Context, email string) (directory.Person, error) {
	addr := strings.ToLower(strings.TrimSpace(email))
	if r, ok, neg := d.people.get(addr); ok {
		res := "hit"
		if neg {
			res = "negative_hit"
		}
		metrics.DirectoryCache.WithLabelValues("person", res).Inc()
		return r.p, r.err
	}
	metrics.DirectoryCache.WithLabelValues("person", "miss").Inc()
	v, err, _ := d.sf.Do("p\x00"+addr, func() (any, error) {
		r, err := d.lookup(ctx, addr)
		if err != nil {
			return nil, err
		}
		if r.err != nil {
			d.people.put(addr, r, d.cfg.NegativeTTL, true)
		} else {
			d.people.put(addr, r, d.cfg.CacheTTL, false)
		}
		return r, nil
	})
	if err != nil {
		return directory.Person{}, err
	}
	r := v.(personResult)
	return r.p, r.err
}

func (d *Directory) lookup(ctx context.Context, addr string) (personResult, error) {
	mailAttrs, err := d.mailAttributes(ctx)
	if err != nil {
		return personResult{}, err
	}
	var or strings.Builder
	or.WriteString("(|")
	esc := goldap.EscapeFilter(addr)
	for _, a := range mailAttrs {
		if strings.EqualFold(a, "proxyAddresses") {
			fmt.Fprintf(&or, "(%s=smtp:%s)", a, esc)
		} else {
			fmt.Fprintf(&or, "(%s=%s)", a, esc)
		}
	}
	or.WriteString(")")
	filter := "(&" + d.cfg.UserFilter + or.String() + ")"
	attrs := append([]string{d.cfg.DisplayNameAttribute, "cn", "memberOf", "entryUUID", "objectGUID"}, mailAttrs...)
	if d.cfg.UsernameAttribute != "" {
		attrs = append(attrs, d.cfg.UsernameAttribute)
	}
	entries, server, err := d.searchPeople(ctx, filter, attrs)
	if err != nil {
		return personResult{}, fmt.Errorf("LDAP search: %w", err)
	}
	switch len(entries) {
	case 0:
		return personResult{err: directory.ErrNotFound}, nil
	case 1:
	default:
		dns := make([]string, len(entries))
		for i, e := range entries {
			dns[i] = e.DN
		}
		return personResult{err: fmt.Errorf("%w: %s", directory.ErrAmbiguous, strings.Join(dns, "; "))}, nil
	}
	e := entries[0]
	p := directory.Person{DN: e.DN, ID: entryID(e), Source: fmt.Sprintf("LDAP %s entry %s", server, e.DN)}
	p.Addresses = addresses(e, mailAttrs)
	if len(p.Addresses) > 0 {
		p.Email = p.Addresses[0]
	} else {
		p.Email = addr
	}
	if d.cfg.UsernameAttribute != "" {
		p.Username = strings.ToLower(strings.TrimSpace(e.GetEqualFoldAttributeValue(d.cfg.UsernameAttribute)))
	}
	p.DisplayName = e.GetEqualFoldAttributeValue(d.cfg.DisplayNameAttribute)
	if p.DisplayName == "" {
		p.DisplayName = e.GetEqualFoldAttributeValue("cn")
	}
	p.MemberOf = e.GetEqualFoldAttributeValues("memberOf")
	return personResult{p: p}, nil
}

// addresses are an entry's email addresses, lower-cased, in the order of
// attrs: proxyAddresses values count as "smtp:ADDRESS" (any case; the
// upper-case SMTP: primary first), other types (x500:, sip:) not at all.
func addresses(e *goldap.Entry, attrs []string) []string {
	var out []string
	add := func(v string) {
		if v = strings.ToLower(strings.TrimSpace(v)); v != "" && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	for _, a := range attrs {
		vals := e.GetEqualFoldAttributeValues(a)
		if !strings.EqualFold(a, "proxyAddresses") {
			for _, v := range vals {
				add(v)
			}
			continue
		}
		for _, primary := range []bool{true, false} {
			for _, v := range vals {
				typ, rest, ok := strings.Cut(v, ":")
				if ok && strings.EqualFold(typ, "smtp") && (typ == "SMTP") == primary {
					add(rest)
				}
			}
		}
	}
	return out
}

// searchPeople finds at most two people matching filter (two are enough
// to know an answer is ambiguous) and names the server that answered.
func (d *Directory) searchPeople(ctx context.Context, filter string, attrs []string) ([]*goldap.Entry, string, error) {
	var server string
	var entries []*goldap.Entry
	err := d.do(ctx, func(c *goldap.Conn, srv string) error {
		server = srv
		res, err := d.search(c, goldap.NewSearchRequest(d.cfg.BaseDN, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases,
			2, int(d.cfg.Timeout/time.Second), false, filter, attrs, nil))
		// A size limit of 2 that is hit still returns the two entries.
		if err != nil && !goldap.IsErrorWithCode(err, goldap.LDAPResultSizeLimitExceeded) {
			return err
		}
		if res != nil {
			entries = res.Entries
		}
		return nil
	})
	return entries, server, err
}

// ---------------------------------------------------------------- groups

// Groups returns every group p belongs to, directly or through nested
// groups, with the path to each.
func (d *Directory) Groups(ctx context.Context, p directory.Person) (directory.Groups, error) {
	return d.groupsOf(ctx, p, false)
}

// FreshGroups is Groups read from the server now, past the caches (which it
// refreshes): for decisions that must see a change at once, such as whether
// the person clicking Approve is still in a reviewers' group.
func (d *Directory) FreshGroups(ctx context.Context, p directory.Person) (directory.Groups, error) {
	return d.groupsOf(ctx, p, true)
}

func (d *Directory) groupsOf(ctx context.Context, p directory.Person, fresh bool) (directory.Groups, error) {
	if p.DN == "" {
		return directory.Groups{}, errors.New("the person has no DN: groups need an LDAP entry")
	}
	key := directory.NormDN(p.DN)
	flight := "g\x00" + key
	if fresh {
		flight = "gf\x00" + key
	} else if g, ok, _ := d.groups.get(key); ok {
		metrics.DirectoryCache.WithLabelValues("groups", "hit").Inc()
		return g, nil
	} else {
		metrics.DirectoryCache.WithLabelValues("groups", "miss").Inc()
	}
	v, err, _ := d.sf.Do(flight, func() (any, error) {
		mode, err := d.nestingMode(ctx)
		if err != nil {
			return nil, err
		}
		var g directory.Groups
		if mode == NestedInChain {
			g, err = d.inChain(ctx, p)
		} else {
			g, err = d.walk(ctx, p, fresh)
		}
		if err != nil {
			return nil, err
		}
		d.groups.put(key, g, d.cfg.CacheTTL, false)
		return g, nil
	})
	if err != nil {
		return directory.Groups{}, err
	}
	return v.(directory.Groups), nil
}

// mailAttributes are the configured ones, or the server kind's default.
func (d *Directory) mailAttributes(ctx context.Context) ([]string, error) {
	if len(d.cfg.MailAttributes) > 0 {
		return d.cfg.MailAttributes, nil
	}
	ad, err := d.isAD(ctx)
	if err != nil {
		return nil, err
	}
	if ad {
		return []string{"mail", "proxyAddresses"}, nil
	}
	return []string{"mail"}, nil
}

// nestingMode settles auto from the server kind.
func (d *Directory) nestingMode(ctx context.Context) (string, error) {
	if d.mode != "" {
		return d.mode, nil
	}
	ad, err := d.isAD(ctx)
	if err != nil {
		return "", err
	}
	if ad {
		return NestedInChain, nil
	}
	return NestedWalk, nil
}

// isAD asks the root DSE once whether the server is Active Directory.
func (d *Directory) isAD(ctx context.Context) (bool, error) {
	d.mu.Lock()
	known, ad := d.kindKnown, d.ad
	d.mu.Unlock()
	if known {
		return ad, nil
	}
	var caps []string
	err := d.do(ctx, func(c *goldap.Conn, _ string) error {
		res, err := d.search(c, goldap.NewSearchRequest("", goldap.ScopeBaseObject, goldap.NeverDerefAliases,
			0, int(d.cfg.Timeout/time.Second), false, "(objectClass=*)", []string{"supportedCapabilities"}, nil))
		if err != nil {
			return err
		}
		if len(res.Entries) > 0 {
			caps = res.Entries[0].GetEqualFoldAttributeValues("supportedCapabilities")
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("reading the LDAP root DSE to tell Active Directory from other servers: %w", err)
	}
	ad = slices.Contains(caps, adCapabilityOID)
	d.mu.Lock()
	d.kindKnown, d.ad = true, ad
	d.mu.Unlock()
	return ad, nil
}

// inChain asks Active Directory for every group p is in, nested or not, in
// one paged search; the groups' memberOf values rebuild the paths.
func (d *Directory) inChain(ctx context.Context, p directory.Person) (directory.Groups, error) {
	filter := fmt.Sprintf("(&%s(member:%s:=%s))", d.cfg.GroupFilter, InChainOID, goldap.EscapeFilter(p.DN))
	var entries []*goldap.Entry
	err := d.do(ctx, func(c *goldap.Conn, _ string) error {
		var err error
		entries, err = d.pagedSearch(c, d.cfg.GroupBaseDN, filter, []string{"memberOf"})
		return err
	})
	if err != nil {
		return directory.Groups{}, fmt.Errorf("LDAP in-chain group search for %s: %w", p.DN, err)
	}
	g := directory.Groups{Parent: map[string]string{}, Names: map[string]string{},
		How: "Active Directory's in-chain rule (" + InChainOID + ")"}
	in := map[string]*goldap.Entry{}
	for _, e := range entries {
		k := directory.NormDN(e.DN)
		in[k] = e
		g.Names[k] = e.DN
	}
	person := directory.NormDN(p.DN)
	g.Names[person] = p.DN
	var frontier []string
	for _, m := range p.MemberOf {
		if k := directory.NormDN(m); in[k] != nil {
			if _, seen := g.Parent[k]; !seen {
				g.Parent[k] = person
				frontier = append(frontier, k)
			}
		}
	}
	for len(frontier) > 0 {
		var next []string
		for _, k := range frontier {
			for _, m := range in[k].GetEqualFoldAttributeValues("memberOf") {
				pk := directory.NormDN(m)
				if _, seen := g.Parent[pk]; seen || in[pk] == nil {
					continue
				}
				g.Parent[pk] = k
				next = append(next, pk)
			}
		}
		frontier = next
	}
	// Groups the server counted but whose path memberOf does not show (a
	// primary group): a member all the same.
	for k := range in {
		if _, ok := g.Parent[k]; !ok {
			g.Parent[k] = person
		}
	}
	return g, nil
}

// walk goes up from p through the groups that list it as a member, level
// by level, each group's parents cached (read again when fresh).
func (d *Directory) walk(ctx context.Context, p directory.Person, fresh bool) (directory.Groups, error) {
	person := directory.NormDN(p.DN)
	g := directory.Groups{Parent: map[string]string{}, Names: map[string]string{person: p.DN}}
	direct, err := d.groupsListing(ctx, p.DN)
	if err != nil {
		return directory.Groups{}, err
	}
	var frontier []string
	for _, dn := range direct {
		k := directory.NormDN(dn)
		if _, seen := g.Parent[k]; seen || k == person {
			continue
		}
		g.Parent[k], g.Names[k] = person, dn
		frontier = append(frontier, k)
	}
	depth := 1
	for len(frontier) > 0 {
		var next []string
		for _, k := range frontier {
			var parents []string
			ok := false
			if !fresh {
				parents, ok, _ = d.parents.get(k)
			}
			if !ok {
				parents, err = d.groupsListing(ctx, g.Names[k])
				if err != nil {
					return directory.Groups{}, err
				}
				d.parents.put(k, parents, d.cfg.CacheTTL, false)
			}
			for _, dn := range parents {
				pk := directory.NormDN(dn)
				if _, seen := g.Parent[pk]; seen || pk == person {
					continue // a cycle, or a group reached another way first
				}
				g.Parent[pk], g.Names[pk] = k, dn
				next = append(next, pk)
			}
		}
		if len(next) > 0 && depth >= d.cfg.MaxDepth {
			// Final for this message: retrying cannot help until the
			// configuration or the groups change.
			return directory.Groups{}, fault.New(fault.Permanent, "directory_depth", fmt.Sprintf(
				"groups of %s nest deeper than directory.ldap.max_depth (%d levels): a deny group further up could not be seen; raise max_depth or flatten the groups",
				p.DN, d.cfg.MaxDepth))
		}
		frontier = next
		depth++
	}
	g.How = fmt.Sprintf("a walk up %s (%d level(s))", strings.Join(d.cfg.MemberAttributes, " / "), depth-1)
	if len(g.Parent) == 0 {
		g.How = fmt.Sprintf("a search of %s: in no group", strings.Join(d.cfg.MemberAttributes, " / "))
	}
	return g, nil
}

// groupsListing returns the DNs of the groups that list dn as a member.
func (d *Directory) groupsListing(ctx context.Context, dn string) ([]string, error) {
	var or strings.Builder
	esc := goldap.EscapeFilter(dn)
	or.WriteString("(|")
	for _, a := range d.cfg.MemberAttributes {
		fmt.Fprintf(&or, "(%s=%s)", a, esc)
	}
	or.WriteString(")")
	filter := "(&" + d.cfg.GroupFilter + or.String() + ")"
	var out []string
	err := d.do(ctx, func(c *goldap.Conn, _ string) error {
		entries, err := d.pagedSearch(c, d.cfg.GroupBaseDN, filter, []string{"1.1"})
		if err != nil {
			return err
		}
		out = out[:0]
		for _, e := range entries {
			out = append(out, e.DN)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("LDAP search for the groups of %s: %w", dn, err)
	}
	return out, nil
}

// ---------------------------------------------------------------- requests

// search sends one search and counts the round trip.
func (d *Directory) search(c *goldap.Conn, req *goldap.SearchRequest) (*goldap.SearchResult, error) {
	d.trips.Add(1)
	res, err := c.Search(req)
	count("search", err)
	return res, err
}

// pagedSearch pages through a subtree search, one round trip per page.
func (d *Directory) pagedSearch(c *goldap.Conn, base, filter string, attrs []string) ([]*goldap.Entry, error) {
	paging := goldap.NewControlPaging(uint32(d.cfg.PageSize))
	var out []*goldap.Entry
	for {
		req := goldap.NewSearchRequest(base, goldap.ScopeWholeSubtree, goldap.NeverDerefAliases, 0,
			int(d.cfg.Timeout/time.Second), false, filter, attrs, []goldap.Control{paging})
		res, err := d.search(c, req)
		if err != nil {
			if goldap.IsErrorWithCode(err, goldap.LDAPResultNoSuchObject) {
				return nil, fmt.Errorf("base %s does not exist: %w", base, err)
			}
			return nil, err
		}
		out = append(out, res.Entries...)
		ctl, _ := goldap.FindControl(res.Controls, goldap.ControlTypePaging).(*goldap.ControlPaging)
		if ctl == nil || len(ctl.Cookie) == 0 {
			return out, nil
		}
		paging.SetCookie(ctl.Cookie)
	}
}

func count(op string, err error) {
	res := "ok"
	if err != nil {
		res = "error"
	}
	metrics.LDAPRequests.WithLabelValues(op, res).Inc()
}

// do runs fn on a pooled connection. A connection that failed at the
// network level is dropped and fn runs once more on a fresh one (which may
// be another server); other errors are fn's answer.
func (d *Directory) do(ctx context.Context, fn func(c *goldap.Conn, server string) error) error {
	var last error
	for attempt := 0; attempt < 2; attempt++ {
		pc, err := d.get(ctx)
		if err != nil {
			return fault.Wrap(fault.Temporary, "directory_unavailable", "LDAP directory unavailable", err)
		}
		err = fn(pc.c, pc.server)
		if err != nil && connBroken(err) {
			d.drop(pc)
			last = err
			continue
		}
		d.put(pc)
		if err != nil {
			return fault.Wrap(fault.Temporary, "directory_error", "LDAP request failed", err)
		}
		return nil
	}
	return fault.Wrap(fault.Temporary, "directory_unavailable", "LDAP directory unavailable", last)
}

type pooled struct {
	c      *goldap.Conn
	server string
}

// connBroken reports a failure of the connection rather than of the request.
func connBroken(err error) bool {
	return goldap.IsErrorWithCode(err, goldap.ErrorNetwork) || goldap.IsErrorWithCode(err, goldap.LDAPResultServerDown) ||
		goldap.IsErrorWithCode(err, goldap.LDAPResultUnavailable) || goldap.IsErrorWithCode(err, goldap.LDAPResultBusy) ||
		goldap.IsErrorWithCode(err, goldap.LDAPResultTimeout) || errors.Is(err, net.ErrClosed)
}

func (d *Directory) get(ctx context.Context) (pooled, error) {
	for {
		var pc pooled
		select {
		case pc = <-d.idle:
		default:
			select {
			case pc = <-d.idle:
			case d.open <- struct{}{}:
				c, srv, err := d.dial()
				if err != nil {
					<-d.open
					return pooled{}, err
				}
				return pooled{c: c, server: srv}, nil
			case <-ctx.Done():
				return pooled{}, ctx.Err()
			}
		}
		if !pc.c.IsClosing() {
			return pc, nil
		}
		d.drop(pc)
	}
}

func (d *Directory) put(pc pooled) {
	if pc.c.IsClosing() {
		d.drop(pc)
		return
	}
	select {
	case d.idle <- pc:
	default:
		d.drop(pc)
	}
}

func (d *Directory) drop(pc pooled) {
	_ = pc.c.Close()
	<-d.open
}

// dial connects to the first server that answers, starting with the one
// that last worked, and binds.
func (d *Directory) dial() (*goldap.Conn, string, error) {
	d.mu.Lock()
	start := d.preferred
	d.mu.Unlock()
	var errs []string
	for i := range d.cfg.URLs {
		idx := (start + i) % len(d.cfg.URLs)
		u := d.cfg.URLs[idx]
		c, err := d.dialOne(u)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", u, err))
			continue
		}
		d.mu.Lock()
		d.preferred = idx
		d.mu.Unlock()
		return c, u, nil
	}
	return nil, "", fmt.Errorf("no LDAP server answered: %s", strings.Join(errs, "; "))
}

func (d *Directory) dialOne(u string) (*goldap.Conn, error) {
	pu, _ := url.Parse(u)
	tc := d.tls.Clone()
	tc.ServerName = pu.Hostname()
	d.dials.Add(1)
	c, err := goldap.DialURL(u, goldap.DialWithDialer(&net.Dialer{Timeout: d.cfg.Timeout}), goldap.DialWithTLSConfig(tc))
	count("connect", err)
	if err != nil {
		return nil, err
	}
	c.SetTimeout(d.cfg.Timeout)
	if d.cfg.StartTLS && pu.Scheme == "ldap" {
		d.trips.Add(1)
		err := c.StartTLS(tc)
		count("starttls", err)
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("StartTLS: %w", err)
		}
	}
	if d.cfg.BindDN != "" {
		d.trips.Add(1)
		err := c.Bind(d.cfg.BindDN, d.cfg.BindPassword)
		count("bind", err)
		if err != nil {
			_ = c.Close()
			return nil, fmt.Errorf("bind as %s: %w", d.cfg.BindDN, err)
		}
	}
	return c, nil
}

// ---------------------------------------------------------------- cache

type cacheEntry[V any] struct {
	v   V
	exp time.Time
	neg bool
}

// cache is a map with per-entry expiry and a size bound (when full, expired
// entries go first, then everything: a cold cache is slower, never wrong).
type cache[V any] struct {
	mu  sync.Mutex
	m   map[string]cacheEntry[V]
	max int
}

func newCache[V any](max int) *cache[V] {
	return &cache[V]{m: map[string]cacheEntry[V]{}, max: max}
}

func (c *cache[V]) get(k string) (v V, ok, neg bool) {
	c.mu.Lock()
	e, ok := c.m[k]
	c.mu.Unlock()
	if !ok || time.Now().After(e.exp) {
		return v, false, false
	}
	return e.v, true, e.neg
}

func (c *cache[V]) put(k string, v V, ttl time.Duration, neg bool) {
	now := time.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.m) >= c.max {
		for k, e := range c.m {
			if now.After(e.exp) {
				delete(c.m, k)
			}
		}
		if len(c.m) >= c.max {
			clear(c.m)
		}
	}
	c.m[k] = cacheEntry[V]{v: v, exp: now.Add(ttl), neg: neg}
}
