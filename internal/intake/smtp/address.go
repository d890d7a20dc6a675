package smtpintake

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"unicode/utf8"
)

// splitAddress splits local@domain at the last '@'.
func splitAddress(addr string) (local, domain string, ok bool) {
	i := strings.LastIndexByte(addr, '@')
	if i <= 0 || i == len(addr)-1 {
		return "", "", false
	}
	return addr[:i], addr[i+1:], true
}

// validAddress is a tolerant syntax check of a mailbox as go-smtp hands it over
// (quotes of a quoted local part already removed): valid UTF-8, no control
// characters, a non-empty local part and a syntactically valid domain or address
// literal. Non-ASCII is accepted with or without SMTPUTF8.
func validAddress(addr string) bool {
	if len(addr) > 512 || !utf8.ValidString(addr) {
		return false
	}
	local, domain, ok := splitAddress(addr)
	if !ok || len(local) > 256 {
		return false
	}
	for _, r := range local {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return validDomain(domain)
}

// validDomain accepts dot-separated labels of letters, digits, '-', '_' and
// non-ASCII (U-labels), or an address literal [IPv4] / [IPv6:...].
func validDomain(d string) bool {
	if d == "" || len(d) > 255 || !utf8.ValidString(d) {
		return false
	}
	if d[0] == '[' {
		if d[len(d)-1] != ']' {
			return false
		}
		lit := d[1 : len(d)-1]
		if v6, ok := cutPrefixFold(lit, "IPv6:"); ok {
			ip := net.ParseIP(v6)
			return ip != nil && strings.Contains(v6, ":")
		}
		ip := net.ParseIP(lit)
		return ip != nil && ip.To4() != nil && !strings.Contains(lit, ":")
	}
	for _, label := range strings.Split(d, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for _, r := range label {
			switch {
			case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			case r >= 0x80 && r != utf8.RuneError:
			default:
				return false
			}
		}
	}
	return true
}

func cutPrefixFold(s, prefix string) (string, bool) {
	if len(s) < len(prefix) || !strings.EqualFold(s[:len(prefix)], prefix) {
		return "", false
	}
	return s[len(prefix):], true
}

// domainSet is the accepted recipient domains: exact names and "*." subdomain
// patterns, compared case-insensitively.
type domainSet struct {
	exact    map[string]bool
	suffixes []string // ".corp.example" for "*.corp.example"
}

func normDomain(d string) string {
	return strings.ToLower(strings.TrimSuffix(strings.TrimSpace(d), "."))
}

func newDomainSet(list []string) (domainSet, error) {
	ds := domainSet{exact: map[string]bool{}}
	var problems []error
	if len(list) == 0 {
		problems = append(problems, errors.New("smtp intake: no recipient domains configured (Domains); refusing to start an intake that accepts nothing"))
	}
	for i, raw := range list {
		d := normDomain(raw)
		if rest, ok := strings.CutPrefix(d, "*."); ok {
			if !validDomain(rest) || strings.Contains(rest, "*") || rest[0] == '[' {
				problems = append(problems, fmt.Errorf("smtp intake: domains[%d]: %q is not a valid subdomain pattern", i, raw))
				continue
			}
			ds.suffixes = append(ds.suffixes, "."+rest)
			continue
		}
		if !validDomain(d) {
			problems = append(problems, fmt.Errorf("smtp intake: domains[%d]: %q is not a valid domain", i, raw))
			continue
		}
		ds.exact[d] = true
	}
	return ds, errors.Join(problems...)
}

// match reports whether mail for domain d is accepted.
func (ds domainSet) match(d string) bool {
	d = normDomain(d)
	if d == "" {
		return false
	}
	if ds.exact[d] {
		return true
	}
	for _, suf := range ds.suffixes {
		if len(d) > len(suf) && strings.HasSuffix(d, suf) {
			return true
		}
	}
	return false
}
