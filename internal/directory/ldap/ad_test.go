package ldap

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
	goldap "github.com/go-ldap/ldap/v3"
)

type recorded struct {
	Steps []struct {
		Op       string `json:"op"`
		DN       string `json:"dn"`
		Password string `json:"password"`
		Base     string `json:"base"`
		Scope    int64  `json:"scope"`
		Filter   string `json:"filter"`
		Paged    bool   `json:"paged"`
		Entries  []struct {
			DN    string              `json:"dn"`
			Attrs map[string][]string `json:"attrs"`
		} `json:"entries"`
	} `json:"steps"`
}

// replay serves the recorded exchange on loopback, in order; any other
// request fails the test.
func replay(t *testing.T, file string) (url string, done func() int) {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var rec recorded
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	next := 0
	go func() {
		for {
			conn, err := l.Accept()
			if err != nil {
				return
			}
			go func(conn net.Conn) {
				defer conn.Close()
				for {
					p, err := ber.ReadPacket(conn)
					if err != nil {
						return
					}
					id := p.Children[0].Value.(int64)
					op := p.Children[1]
					mu.Lock()
					if op.Tag == goldap.ApplicationUnbindRequest {
						mu.Unlock()
						return
					}
					if next >= len(rec.Steps) {
						mu.Unlock()
						t.Errorf("request beyond the recording: tag %d", op.Tag)
						return
					}
					st := rec.Steps[next]
					next++
					mu.Unlock()
					switch op.Tag {
					case goldap.ApplicationBindRequest:
						dn := op.Children[1].Data.String()
						pw := op.Children[2].Data.String()
						if st.Op != "bind" || dn != st.DN || pw != st.Password {
							t.Errorf("step %d: got bind as %q, recording has %s %q", next, dn, st.Op, st.DN)
						}
						write(conn, id, result(goldap.ApplicationBindResponse, 0))
					case goldap.ApplicationSearchRequest:
						baseDN := op.Children[0].Data.String()
						scope := op.Children[1].Value.(int64)
						filter, err := goldap.DecompileFilter(op.Children[6])
						if err != nil {
							t.Errorf("step %d: filter: %v", next, err)
						}
						if st.Op != "search" || baseDN != st.Base || scope != st.Scope || filter != st.Filter {
							t.Errorf("step %d: got search base %q scope %d filter %s\nrecording has %s base %q scope %d filter %s",
								next, baseDN, scope, filter, st.Op, st.Base, st.Scope, st.Filter)
						}
						paged := len(p.Children) > 2
						if paged != st.Paged {
							t.Errorf("step %d: paged control sent: %v, recording has %v", next, paged, st.Paged)
						}
						for _, e := range st.Entries {
							entry := ber.Encode(ber.ClassApplication, ber.TypeConstructed, goldap.ApplicationSearchResultEntry, nil, "entry")
							entry.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, e.DN, "dn"))
							attrs := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "attrs")
							for k, vs := range e.Attrs {
								a := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "attr")
								a.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, k, "type"))
								set := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSet, nil, "vals")
								for _, v := range vs {
									set.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, v, "val"))
								}
								a.AppendChild(set)
								attrs.AppendChild(a)
							}
							entry.AppendChild(attrs)
							write(conn, id, entry)
						}
						write(conn, id, result(goldap.ApplicationSearchResultDone, 0))
					default:
						t.Errorf("step %d: unexpected request tag %d", next, op.Tag)
						return
					}
				}
			}(conn)
		}
	}()
	t.Cleanup(func() { _ = l.Close() })
	return "ldap://" + l.Addr().String(), func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(rec.Steps) - next
	}
}

func result(tag ber.Tag, code int64) *ber.Packet {
	r := ber.Encode(ber.ClassApplication, ber.TypeConstructed, tag, nil, "result")
	r.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagEnumerated, code, "code"))
	r.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", "matched"))
	r.AppendChild(ber.NewString(ber.ClassUniversal, ber.TypePrimitive, ber.TagOctetString, "", "diag"))
	return r
}

func write(conn net.Conn, id int64, op *ber.Packet) {
	p := ber.Encode(ber.ClassUniversal, ber.TypeConstructed, ber.TagSequence, nil, "msg")
	p.AppendChild(ber.NewInteger(ber.ClassUniversal, ber.TypePrimitive, ber.TagInteger, id, "id"))
	p.AppendChild(op)
	_, _ = conn.Write(p.Bytes())
}

// TestActiveDirectoryInChain replays an exchange captured from a real AD
// domain controller (Samba's; see the file's "about" and
// TestRecordActiveDirectory): the address found through proxyAddresses, AD
// recognised from its root DSE, and every nested group in one in-chain
// search, with paths rebuilt from memberOf.
func TestActiveDirectoryInChain(t *testing.T) {
	url, left := replay(t, "testdata/ad-inchain.json")
	d := newDir(t, Config{URLs: []string{url}, BaseDN: "DC=corp,DC=test", GroupBaseDN: "OU=Groups,DC=corp,DC=test",
		BindDN: "CN=svc-mmgate,OU=Service Accounts,DC=corp,DC=test", BindPassword: "Svc-Passw0rd!",
		UserFilter: "(&(objectCategory=person)(objectClass=user))", GroupFilter: "(objectClass=group)",
		UsernameAttribute: "sAMAccountName", PoolSize: 1})
	ctx := context.Background()
	p, err := d.Lookup(ctx, "F.Jones@corp.test")
	if err != nil {
		t.Fatal(err)
	}
	if p.Username != "fjones" || p.Email != "frank.jones@corp.test" || p.DisplayName != "Frank Jones" {
		t.Errorf("person: %+v", p)
	}
	if fmt.Sprint(p.Addresses) != "[frank.jones@corp.test f.jones@corp.test]" {
		t.Errorf("addresses %v: the X500 proxy address is not an email address", p.Addresses)
	}
	g, err := d.Groups(ctx, p)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(g.How, InChainOID) {
		t.Errorf("How = %q, want the in-chain rule", g.How)
	}
	path, ok := g.Has("cn=jira users,ou=groups,dc=corp,dc=test")
	want := "CN=Jira Users,OU=Groups,DC=corp,DC=test > CN=Engineering,OU=Groups,DC=corp,DC=test > CN=Backend,OU=Groups,DC=corp,DC=test > CN=Frank Jones,OU=Staff,DC=corp,DC=test"
	if !ok || strings.Join(path, " > ") != want {
		t.Errorf("path to Jira Users: %v %q", ok, strings.Join(path, " > "))
	}
	if path, ok := g.Has("CN=Backend,OU=Groups,DC=corp,DC=test"); !ok || len(path) != 2 {
		t.Errorf("Backend (direct): %v %v", ok, path)
	}
	if _, ok := g.Has("CN=Contractors,OU=Groups,DC=corp,DC=test"); ok {
		t.Error("not a contractor")
	}
	if n := left(); n != 0 {
		t.Errorf("%d recorded step(s) not requested", n)
	}
	// Cached: nothing more is asked (the recording would fail the test).
	if _, err := d.Groups(ctx, p); err != nil {
		t.Error(err)
	}
	if _, err := d.Lookup(ctx, "f.jones@corp.test"); err != nil {
		t.Error(err)
	}
}
