package ldap

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"testing"

	ber "github.com/go-asn1-ber/asn1-ber"
	goldap "github.com/go-ldap/ldap/v3"
)

// TestRecordActiveDirectory captures testdata/ad-inchain.json from a real
// Active Directory domain controller (or Samba's AD DC) through a recording
// proxy, running the same Lookup and Groups as TestActiveDirectoryInChain.
// It runs only when asked:
//
//	MMGATE_RECORD_AD=ldap://127.0.0.1:389 MMGATE_RECORD_AD_BIND='CN=svc-mmgate,OU=Service Accounts,DC=corp,DC=test' \
//	MMGATE_RECORD_AD_PASSWORD=… go test -run TestRecordActiveDirectory ./internal/directory/ldap
func TestRecordActiveDirectory(t *testing.T) {
	server := os.Getenv("MMGATE_RECORD_AD")
	if server == "" {
		t.Skip("set MMGATE_RECORD_AD to record an exchange with a domain controller")
	}
	up, err := net.Dial("tcp", server[len("ldap://"):])
	if err != nil {
		t.Fatal(err)
	}
	_ = up.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type entry struct {
		DN    string              `json:"dn"`
		Attrs map[string][]string `json:"attrs"`
	}
	type step struct {
		Op       string  `json:"op"`
		DN       string  `json:"dn,omitempty"`
		Password string  `json:"password,omitempty"`
		Base     string  `json:"base"`
		Scope    int64   `json:"scope"`
		Filter   string  `json:"filter,omitempty"`
		Paged    bool    `json:"paged,omitempty"`
		Entries  []entry `json:"entries,omitempty"`
	}
	var mu sync.Mutex
	var steps []*step
	byID := map[int64]*step{}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", server[len("ldap://"):])
			if err != nil {
				t.Error(err)
				return
			}
			go func() { // client → server
				defer s.Close()
				for {
					p, err := ber.ReadPacket(c)
					if err != nil {
						return
					}
					id := p.Children[0].Value.(int64)
					op := p.Children[1]
					mu.Lock()
					switch op.Tag {
					case goldap.ApplicationBindRequest:
						st := &step{Op: "bind", DN: op.Children[1].Data.String(), Password: op.Children[2].Data.String()}
						steps = append(steps, st)
						byID[id] = st
					case goldap.ApplicationSearchRequest:
						f, _ := goldap.DecompileFilter(op.Children[6])
						st := &step{Op: "search", Base: op.Children[0].Data.String(), Scope: op.Children[1].Value.(int64), Filter: f,
							Paged: len(p.Children) > 2}
						steps = append(steps, st)
						byID[id] = st
					}
					mu.Unlock()
					if _, err := s.Write(p.Bytes()); err != nil {
						return
					}
				}
			}()
			go func() { // server → client
				defer c.Close()
				for {
					p, err := ber.ReadPacket(s)
					if err != nil {
						return
					}
					id := p.Children[0].Value.(int64)
					op := p.Children[1]
					if op.Tag == goldap.ApplicationSearchResultEntry {
						e := entry{DN: op.Children[0].Data.String(), Attrs: map[string][]string{}}
						for _, a := range op.Children[1].Children {
							name := a.Children[0].Data.String()
							for _, v := range a.Children[1].Children {
								e.Attrs[name] = append(e.Attrs[name], v.Data.String())
							}
						}
						mu.Lock()
						if st := byID[id]; st != nil {
							st.Entries = append(st.Entries, e)
						}
						mu.Unlock()
					}
					if _, err := c.Write(p.Bytes()); err != nil {
						return
					}
				}
			}()
		}
	}()
	d := newDir(t, Config{URLs: []string{"ldap://" + l.Addr().String()}, BaseDN: os.Getenv("MMGATE_RECORD_AD_BASE"),
		GroupBaseDN: os.Getenv("MMGATE_RECORD_AD_GROUPS"), BindDN: os.Getenv("MMGATE_RECORD_AD_BIND"),
		BindPassword: os.Getenv("MMGATE_RECORD_AD_PASSWORD"), UserFilter: "(&(objectCategory=person)(objectClass=user))",
		GroupFilter: "(objectClass=group)", UsernameAttribute: "sAMAccountName", PoolSize: 1})
	ctx := context.Background()
	p, err := d.Lookup(ctx, os.Getenv("MMGATE_RECORD_AD_ADDRESS"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Groups(ctx, p); err != nil {
		t.Fatal(err)
	}
	_ = d.Close()
	mu.Lock()
	defer mu.Unlock()
	out := map[string]any{"about": os.Getenv("MMGATE_RECORD_AD_ABOUT"), "steps": steps}
	b, _ := json.MarshalIndent(out, "", " ")
	f, err := os.Create("testdata/ad-inchain.json")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	_, _ = io.WriteString(f, string(b)+"\n")
	t.Logf("recorded %d steps", len(steps))
}

// TestLiveActiveDirectory runs the sign-in path (Authenticate, AccountByID
// by objectGUID) against a live domain controller when one is given, as
// for TestRecordActiveDirectory plus MMGATE_TEST_AD_LOGIN and _USER_PASSWORD.
func TestLiveActiveDirectory(t *testing.T) {
	server := os.Getenv("MMGATE_RECORD_AD")
	if server == "" || os.Getenv("MMGATE_TEST_AD_LOGIN") == "" {
		t.Skip("set MMGATE_RECORD_AD and MMGATE_TEST_AD_LOGIN to sign in against a domain controller")
	}
	d := newDir(t, Config{URLs: []string{server}, BaseDN: os.Getenv("MMGATE_RECORD_AD_BASE"),
		BindDN: os.Getenv("MMGATE_RECORD_AD_BIND"), BindPassword: os.Getenv("MMGATE_RECORD_AD_PASSWORD"),
		UserFilter: "(&(objectCategory=person)(objectClass=user))"})
	ctx := context.Background()
	a, err := d.Authenticate(ctx, os.Getenv("MMGATE_TEST_AD_LOGIN"), os.Getenv("MMGATE_TEST_AD_USER_PASSWORD"), AuthOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(a.ID) != 32 || a.Email == "" || a.Username == "" {
		t.Errorf("account: %+v (ID should be objectGUID as hex)", a)
	}
	b, err := d.AccountByID(ctx, a.ID, AuthOptions{})
	if err != nil || b.DN != a.DN {
		t.Errorf("AccountByID(objectGUID): %+v %v", b, err)
	}
	if _, err := d.Authenticate(ctx, os.Getenv("MMGATE_TEST_AD_LOGIN"), "wrong", AuthOptions{}); !errors.Is(err, ErrBadCredentials) {
		t.Errorf("wrong password: %v", err)
	}
	t.Logf("signed in: %+v", a)
}
