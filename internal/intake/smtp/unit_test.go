package smtpintake

import (
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/mmgate/mmgate/internal/fault"
)

func TestValidAddress(t *testing.T) {
	good := []string{"a@corp.example", "first.last+tag@sub.corp.example", "jürgen@corp.example", "x@bücher.example",
		"john doe@corp.example", "a@[192.0.2.1]", "a@[IPv6:2001:db8::1]", "a@host_name.example", "a@localhost"}
	bad := []string{"", "a", "@corp.example", "a@", "a@corp..example", "a@.corp.example", "a@-x.example", "a@x-.example",
		"a@corp.example.", "a@[192.0.2.1", "a@[300.0.0.1]", "a@[IPv6:192.0.2.1]", "a@[2001:db8::1]", "a\x00b@corp.example",
		"a@corp\x7f.example", "a@co!rp.example", "a@\xff.example", strings.Repeat("l", 300) + "@corp.example",
		"a@" + strings.Repeat("x", 64) + ".example"}
	for _, a := range good {
		if !validAddress(a) {
			t.Errorf("validAddress(%q) = false", a)
		}
	}
	for _, a := range bad {
		if validAddress(a) {
			t.Errorf("validAddress(%q) = true", a)
		}
	}
}

func TestDomainSet(t *testing.T) {
	ds, err := newDomainSet([]string{"Corp.Example", "*.Apps.Example.", "bücher.example"})
	if err != nil {
		t.Fatal(err)
	}
	yes := []string{"corp.example", "CORP.EXAMPLE", "jira.apps.example", "a.b.apps.example", "BÜCHER.example"}
	no := []string{"", "apps.example", "xcorp.example", "corp.example.evil", "sub.corp.example", "evilapps.example", "[192.0.2.1]"}
	for _, d := range yes {
		if !ds.match(d) {
			t.Errorf("match(%q) = false", d)
		}
	}
	for _, d := range no {
		if ds.match(d) {
			t.Errorf("match(%q) = true", d)
		}
	}
	for _, bad := range [][]string{nil, {"*"}, {"*.*.x"}, {"a b"}, {"x.*.y"}, {"*.[1.2.3.4]"}, {""}} {
		if _, err := newDomainSet(bad); err == nil {
			t.Errorf("newDomainSet(%q) accepted", bad)
		}
	}
}

func TestCredentials(t *testing.T) {
	c, err := newCredentials([]Credential{{"jira", "pw1", "jira"}, {"Relay", "pw2", ""}})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.check("JIRA", "pw1"); got == nil || got.App != "jira" || got.Username != "jira" {
		t.Errorf("check(JIRA) = %+v", got)
	}
	if got := c.check("relay", "pw2"); got == nil || got.Username != "Relay" {
		t.Errorf("check(relay) = %+v", got)
	}
	for _, tc := range [][2]string{{"jira", "pw2"}, {"jira", "PW1"}, {"jira", ""}, {"", ""}, {"nobody", "pw1"}, {"jira", "pw1 "}} {
		if got := c.check(tc[0], tc[1]); got != nil {
			t.Errorf("check(%q, %q) = %+v", tc[0], tc[1], got)
		}
	}
}

func TestSASLServers(t *testing.T) {
	type call struct{ authzid, user, pass string }
	var got []call
	auth := func(z, u, p string) error {
		got = append(got, call{z, u, p})
		if u == "u" && p == "p" {
			return nil
		}
		return errAuthFailed
	}
	// PLAIN without initial response asks with an empty challenge.
	p := &plainServer{auth: auth}
	if ch, done, err := p.Next(nil); len(ch) != 0 || ch == nil || done || err != nil {
		t.Fatalf("PLAIN first step: %q %v %v", ch, done, err)
	}
	if _, done, err := p.Next([]byte("z\x00u\x00p")); !done || err != nil {
		t.Fatalf("PLAIN: %v %v", done, err)
	}
	// Malformed PLAIN never passes its bytes on (they may hold the password).
	p = &plainServer{auth: auth}
	if _, _, err := p.Next([]byte("u\x00secret")); err == nil {
		t.Fatal("malformed PLAIN accepted")
	}
	if got[1] != (call{}) {
		t.Errorf("malformed PLAIN passed %+v", got[1])
	}
	// LOGIN, with and without initial response.
	l := &loginServer{auth: auth}
	if ch, done, _ := l.Next(nil); string(ch) != "Username:" || done {
		t.Fatalf("LOGIN step 1: %q", ch)
	}
	if ch, done, _ := l.Next([]byte("u")); string(ch) != "Password:" || done {
		t.Fatalf("LOGIN step 2: %q", ch)
	}
	if _, done, err := l.Next([]byte("p")); !done || err != nil {
		t.Fatalf("LOGIN step 3: %v %v", done, err)
	}
	if _, _, err := l.Next([]byte("again")); err == nil {
		t.Fatal("LOGIN accepted a response after completion")
	}
	l = &loginServer{auth: auth}
	if ch, _, _ := l.Next([]byte("u")); string(ch) != "Password:" {
		t.Fatalf("LOGIN with initial response: %q", ch)
	}
	if _, done, err := l.Next([]byte("bad")); !done || err == nil {
		t.Fatalf("LOGIN bad password: %v %v", done, err)
	}
}

func TestCRLFReader(t *testing.T) {
	cases := map[string]string{
		"":                              "",
		"a":                             "a",
		"a\n":                           "a\r\n",
		"a\r\n":                         "a\r\n",
		"\n\n":                          "\r\n\r\n",
		"a\rb":                          "a\rb",
		"a\r\rb\r\n\n":                  "a\r\rb\r\n\r\n",
		"x\r\ny\nz\r\n\r\n\n":           "x\r\ny\r\nz\r\n\r\n\r\n",
		strings.Repeat("line\n", 10000): strings.Repeat("line\r\n", 10000),
	}
	for in, want := range cases {
		for name, r := range map[string]io.Reader{
			"whole":   strings.NewReader(in),
			"onebyte": iotest.OneByteReader(strings.NewReader(in)),
			"half":    iotest.HalfReader(strings.NewReader(in)),
		} {
			got, err := io.ReadAll(newCRLFReader(r))
			if err != nil || string(got) != want {
				t.Errorf("%s %.40q: got %.40q, %v; want %.40q", name, in, got, err, want)
			}
		}
	}
	// Errors pass through after the data read so far.
	boom := errors.New("boom")
	got, err := io.ReadAll(newCRLFReader(io.MultiReader(strings.NewReader("a\n"), iotest.ErrReader(boom))))
	if !errors.Is(err, boom) || string(got) != "a\r\n" {
		t.Errorf("error case: %q %v", got, err)
	}
}

func TestBodyReaderStickyError(t *testing.T) {
	b := &bodyReader{r: io.MultiReader(strings.NewReader("abc"), iotest.ErrReader(smtp.ErrDataTooLarge), strings.NewReader("more"))}
	data, err := io.ReadAll(b)
	if string(data) != "abc" || !errors.Is(err, smtp.ErrDataTooLarge) {
		t.Fatalf("ReadAll = %q, %v", data, err)
	}
	if n, err := b.Read(make([]byte, 10)); n != 0 || !errors.Is(err, smtp.ErrDataTooLarge) {
		t.Fatalf("read after error = %d, %v", n, err)
	}
	if b.eof || b.n != 3 {
		t.Fatalf("eof=%v n=%d", b.eof, b.n)
	}
	if k := fault.KindOf(classifyReadError(b.err)); k != fault.TooLarge {
		t.Errorf("too large classified as %v", k)
	}
	if k := fault.KindOf(classifyReadError(smtp.ErrTooLongLine)); k != fault.TooLarge {
		t.Errorf("too long line classified as %v", k)
	}
	if k := fault.KindOf(classifyReadError(io.ErrUnexpectedEOF)); k != fault.Temporary {
		t.Errorf("EOF classified as %v", k)
	}
}

func TestReceivedHeader(t *testing.T) {
	now := time.Date(2026, 3, 4, 5, 6, 7, 0, time.FixedZone("", 3600))
	h := string(receivedHeader(receivedInfo{
		helo:   "evil\r\nX-Injected: yes (x); <y>",
		remote: &net.TCPAddr{IP: net.ParseIP("2001:db8::5"), Port: 25},
		by:     "mx.test", tls: &tlsInfo{version: "TLSv1.3", cipher: "TLS_AES_128_GCM_SHA256"},
		authed: true, recipients: []string{"a@corp.example"}, now: now,
	}))
	want := "Received: from evil??X-Injected:?yes??x???" + "?y?" + " ([IPv6:2001:db8::5])\r\n" +
		"\t(using TLSv1.3 with cipher TLS_AES_128_GCM_SHA256)\r\n" +
		"\tby mx.test (mmgate) with ESMTPSA\r\n" +
		"\tfor <a@corp.example>;\r\n" +
		"\tWed, 04 Mar 2026 05:06:07 +0100\r\n"
	if h != want {
		t.Errorf("got\n%q\nwant\n%q", h, want)
	}
	// Exactly one header: every line break is followed by folding white space.
	if strings.Count(h, "\r\n") != strings.Count(h, "\r\n\t")+1 {
		t.Errorf("header is not one folded field: %q", h)
	}
	h = string(receivedHeader(receivedInfo{helo: "", remote: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1)}, by: "mx",
		recipients: []string{"a@x", "b@x"}, utf8: true, now: now}))
	if !strings.HasPrefix(h, "Received: from unknown ([192.0.2.1])\r\n\tby mx (mmgate) with UTF8SMTP;\r\n") {
		t.Errorf("got %q", h)
	}
	if bytes.Contains([]byte(h), []byte("for <")) {
		t.Errorf("multi-recipient header names a recipient: %q", h)
	}
}
