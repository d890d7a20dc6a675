package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	ldapdir "github.com/mmgate/mmgate/internal/directory/ldap"
)

// cmdLDAPRoute is figure 6: it seeds a real slapd with N people in nested
// groups, then routes messages of R recipients through the LDAP directory
// as the relay does (address → person → groups → allow and deny decision).
// It prints the round trips per new recipient (cold) and the messages
// routed per second with a warm cache.
func cmdLDAPRoute(args []string) error {
	fs := flag.NewFlagSet("ldaproute", flag.ExitOnError)
	url := fs.String("url", "", "slapd URL (ldap://127.0.0.1:PORT), suffix dc=example,dc=org, admin password secret")
	users := fs.Int("users", 10000, "people in the directory")
	rcpts := fs.Int("rcpts", 50, "recipients per message")
	msgs := fs.Int("messages", 2000, "messages routed with a warm cache")
	_ = fs.Parse(args)
	const base = "dc=example,dc=org"
	c, err := goldap.DialURL(*url)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Bind("cn=admin,"+base, "secret"); err != nil {
		return err
	}
	add := func(dn string, attrs map[string][]string) error {
		req := goldap.NewAddRequest(dn, nil)
		for k, v := range attrs {
			req.Attribute(k, v)
		}
		return c.Add(req)
	}
	t0 := time.Now()
	for _, e := range []struct {
		dn    string
		attrs map[string][]string
	}{
		{base, map[string][]string{"objectClass": {"dcObject", "organization"}, "dc": {"example"}, "o": {"Example"}}},
		{"ou=people," + base, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"people"}}},
		{"ou=groups," + base, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"groups"}}},
	} {
		if err := add(e.dn, e.attrs); err != nil {
			return fmt.Errorf("seeding %s: %w", e.dn, err)
		}
	}
	// 20 teams of people; teams in 4 departments; departments in the allow
	// group (three levels); every 50th person also in the deny group.
	const teams, depts = 20, 4
	teamMembers := make([][]string, teams)
	var denied []string
	for i := 0; i < *users; i++ {
		uid := fmt.Sprintf("user%05d", i)
		dn := "uid=" + uid + ",ou=people," + base
		if err := add(dn, map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {uid}, "cn": {uid}, "sn": {uid},
			"mail": {uid + "@corp.test"}}); err != nil {
			return fmt.Errorf("seeding %s: %w", dn, err)
		}
		teamMembers[i%teams] = append(teamMembers[i%teams], dn)
		if i%50 == 0 {
			denied = append(denied, dn)
		}
	}
	group := func(cn string, members []string) (string, error) {
		dn := "cn=" + cn + ",ou=groups," + base
		return dn, add(dn, map[string][]string{"objectClass": {"groupOfNames"}, "cn": {cn}, "member": members})
	}
	deptMembers := make([][]string, depts)
	for t := 0; t < teams; t++ {
		dn, err := group(fmt.Sprintf("team%02d", t), teamMembers[t])
		if err != nil {
			return err
		}
		deptMembers[t%depts] = append(deptMembers[t%depts], dn)
	}
	var deptDNs []string
	for d := 0; d < depts; d++ {
		dn, err := group(fmt.Sprintf("dept%d", d), deptMembers[d])
		if err != nil {
			return err
		}
		deptDNs = append(deptDNs, dn)
	}
	allow, err := group("jira-users", deptDNs)
	if err != nil {
		return err
	}
	deny, err := group("contractors", denied)
	if err != nil {
		return err
	}
	fmt.Printf("seeded %d people in %d teams, %d departments, an allow and a deny group in %.1f s\n",
		*users, teams, depts, time.Since(t0).Seconds())

	d, err := ldapdir.New(ldapdir.Config{URLs: []string{*url}, BindDN: "cn=admin," + base, BindPassword: "secret",
		BaseDN: base, UsernameAttribute: "uid", CacheTTL: time.Hour})
	if err != nil {
		return err
	}
	defer d.Close()
	ctx := context.Background()
	allowed := 0
	route := func(addr string) error {
		p, err := d.Lookup(ctx, addr)
		if err != nil {
			return fmt.Errorf("%s: %w", addr, err)
		}
		g, err := d.Groups(ctx, p)
		if err != nil {
			return err
		}
		if _, in := g.Has(deny); in {
			return nil
		}
		if _, in := g.Has(allow); in {
			allowed++
		}
		return nil
	}
	// Cold: every person once, as new recipients arrive.
	t1 := time.Now()
	for i := 0; i < *users; i++ {
		if err := route(fmt.Sprintf("user%05d@corp.test", i)); err != nil {
			return err
		}
	}
	coldSecs := time.Since(t1).Seconds()
	st := d.Stats()
	perNew := float64(st.RoundTrips) / float64(*users)
	fmt.Printf("cold: %d new recipients in %.2f s, %d LDAP round trips (%d connections): %.2f round trips per new recipient; %d allowed\n",
		*users, coldSecs, st.RoundTrips, st.Dials, perNew, allowed)
	// Warm: messages of R random recipients.
	rng := rand.New(rand.NewPCG(1, 2))
	before := d.Stats().RoundTrips
	t2 := time.Now()
	for m := 0; m < *msgs; m++ {
		for r := 0; r < *rcpts; r++ {
			if err := route(fmt.Sprintf("user%05d@corp.test", rng.IntN(*users))); err != nil {
				return err
			}
		}
	}
	warmSecs := time.Since(t2).Seconds()
	rate := float64(*msgs) / warmSecs
	fmt.Printf("warm: %d messages of %d recipients in %.3f s: %.0f messages/s routed, %d LDAP round trips\n",
		*msgs, *rcpts, warmSecs, rate, d.Stats().RoundTrips-before)
	fmt.Printf("RESULT warm_rate=%.0f trips_per_new=%.2f\n", rate, perNew)
	return nil
}
