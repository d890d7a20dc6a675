package ldap

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	goldap "github.com/go-ldap/ldap/v3"
)

// slapd is a real OpenLDAP server on loopback, started with the project's
// test/peers/slapd.sh.
type slapd struct {
	t         *testing.T
	dir       string
	port      int
	ldapsPort int
	pid       int
	ca        string // CA file when started with TLS
	tlsEnv    []string
}

const (
	base    = "dc=example,dc=org"
	adminDN = "cn=admin,dc=example,dc=org"
	adminPW = "secret"
)

func peersDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "test", "peers")
}

// startSlapd starts slapd, with TLS when withTLS. Without slapd installed the
// test is skipped, unless MMGATE_E2E=1 (make test), when it fails.
func startSlapd(t *testing.T, withTLS bool) *slapd {
	t.Helper()
	if _, err := exec.LookPath("slapd"); err != nil {
		if _, err2 := os.Stat("/usr/sbin/slapd"); err2 != nil {
			if os.Getenv("MMGATE_E2E") == "1" {
				t.Fatal("slapd is not installed: run test/peers/install.sh")
			}
			t.Skip("slapd not installed")
		}
	}
	s := &slapd{t: t, dir: t.TempDir(), port: freePort(t)}
	if withTLS {
		s.ldapsPort = freePort(t)
		s.ca, s.tlsEnv = makeCerts(t, s.dir)
	}
	s.start()
	t.Cleanup(s.stop)
	return s
}

func (s *slapd) start() {
	s.t.Helper()
	args := []string{filepath.Join(peersDir(), "slapd.sh"), s.dir, strconv.Itoa(s.port)}
	if s.ldapsPort != 0 {
		args = append(args, strconv.Itoa(s.ldapsPort))
	}
	cmd := exec.Command("bash", args...)
	cmd.Env = append(append(os.Environ(), "PATH="+os.Getenv("PATH")+":/usr/sbin"), s.tlsEnv...)
	out, err := cmd.Output()
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(s.dir, "slapd.log"))
		s.t.Fatalf("slapd.sh: %v\n%s", err, log)
	}
	s.pid, _ = strconv.Atoi(strings.TrimSpace(string(out)))
	if !waitPort(s.port, 10*time.Second) {
		log, _ := os.ReadFile(filepath.Join(s.dir, "slapd.log"))
		s.t.Fatalf("slapd did not listen on %d: %s", s.port, log)
	}
}

func (s *slapd) stop() {
	if s.pid == 0 {
		return
	}
	_ = syscall.Kill(s.pid, syscall.SIGTERM)
	for i := 0; i < 100; i++ {
		if syscall.Kill(s.pid, 0) != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(s.pid, syscall.SIGKILL)
	s.pid = 0
}

func (s *slapd) url() string { return fmt.Sprintf("ldap://127.0.0.1:%d", s.port) }

// admin connects as the root DN, for seeding.
func (s *slapd) admin() *goldap.Conn {
	s.t.Helper()
	c, err := goldap.DialURL(s.url())
	if err != nil {
		s.t.Fatal(err)
	}
	if err := c.Bind(adminDN, adminPW); err != nil {
		s.t.Fatal(err)
	}
	return c
}

func (s *slapd) add(c *goldap.Conn, dn string, attrs map[string][]string) {
	s.t.Helper()
	req := goldap.NewAddRequest(dn, nil)
	for k, v := range attrs {
		req.Attribute(k, v)
	}
	if err := c.Add(req); err != nil {
		s.t.Fatalf("adding %s: %v", dn, err)
	}
}

func (s *slapd) person(c *goldap.Conn, uid string, mails ...string) string {
	dn := "uid=" + uid + ",ou=people," + base
	s.add(c, dn, map[string][]string{"objectClass": {"inetOrgPerson"}, "uid": {uid}, "cn": {uid},
		"sn": {uid}, "displayName": {strings.ToUpper(uid[:1]) + uid[1:] + " Example"}, "mail": mails})
	return dn
}

func (s *slapd) group(c *goldap.Conn, cn string, members ...string) string {
	dn := "cn=" + cn + ",ou=groups," + base
	s.add(c, dn, map[string][]string{"objectClass": {"groupOfNames"}, "cn": {cn}, "member": members})
	return dn
}

func (s *slapd) addMember(c *goldap.Conn, group, member string) {
	s.t.Helper()
	req := goldap.NewModifyRequest(group, nil)
	req.Add("member", []string{member})
	if err := c.Modify(req); err != nil {
		s.t.Fatalf("adding %s to %s: %v", member, group, err)
	}
}

// seedBase creates the suffix and the two OUs.
func (s *slapd) seedBase(c *goldap.Conn) {
	s.add(c, base, map[string][]string{"objectClass": {"dcObject", "organization"}, "dc": {"example"}, "o": {"Example"}})
	s.add(c, "ou=people,"+base, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"people"}})
	s.add(c, "ou=groups,"+base, map[string][]string{"objectClass": {"organizationalUnit"}, "ou": {"groups"}})
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitPort(port int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			_ = c.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

// makeCerts writes a CA and a server certificate for 127.0.0.1; it returns
// the CA file and the environment for slapd.sh.
func makeCerts(t *testing.T, dir string) (string, []string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mmgate test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	write := func(name, typ string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caFile := write("ca.pem", "CERTIFICATE", caDER)
	cert := write("cert.pem", "CERTIFICATE", der)
	keyFile := write("key.pem", "PRIVATE KEY", keyDER)
	return caFile, []string{"TLS_CERT=" + cert, "TLS_KEY=" + keyFile}
}
