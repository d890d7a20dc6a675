// Package directory owns the types shared by the address directories: a Person
// found for an email address, the groups a person belongs to (with the path
// through nested groups, for explanations), and the errors for an address
// nobody has or several people share. The implementations live in
// subpackages (static/, ldap/); the relay owns the interfaces it calls.
package directory

import (
	"errors"
	"strings"
)

// Person is who an email address belongs to.
type Person struct {
	Email       string // primary address
	Username    string // Mattermost username when known, else ""
	DisplayName string
	DN          string // distinguished name in an LDAP directory, else ""
	// ID is the entry's permanent id in an LDAP directory (entryUUID, or
	// objectGUID as hex), else "".
	ID string
	// Addresses are every address the entry has (the primary first).
	Addresses []string
	// MemberOf are the groups the entry itself lists (memberOf), when the
	// directory keeps them; nested groups are found by Groups.
	MemberOf []string
	// Source says where the entry came from, for explanations.
	Source string
}

// ErrNotFound means no person has the address. It is final for that address
// (unlike a directory outage, which is temporary).
var ErrNotFound = errors.New("no person with this address in the directory")

// ErrAmbiguous means several entries have the address: delivering to any of
// them could reach the wrong person, so the address is skipped. It is final
// until the directory is fixed.
var ErrAmbiguous = errors.New("several directory entries have this address")

// Groups are the groups a person belongs to, directly or through nested
// groups, keyed by normalized DN (see NormDN).
type Groups struct {
	// Parent maps each group to the group or person it was reached from:
	// following it from a group ends at the person's DN.
	Parent map[string]string
	// Names keeps each group's DN as the directory spelled it.
	Names map[string]string
	// How says how nesting was resolved, for explanations.
	How string
}

// Has reports whether the person belongs to group (a DN), and the path from
// the group down to the person: [group, …, direct group, person].
func (g Groups) Has(group string) ([]string, bool) {
	k := NormDN(group)
	if _, ok := g.Parent[k]; !ok {
		return nil, false
	}
	path := []string{g.name(k)}
	seen := map[string]bool{k: true}
	for {
		p := g.Parent[k]
		path = append(path, g.name(p))
		if _, isGroup := g.Parent[p]; !isGroup || seen[p] {
			return path, true
		}
		seen[p] = true
		k = p
	}
}

func (g Groups) name(k string) string {
	if n, ok := g.Names[k]; ok {
		return n
	}
	return k
}

// NormDN is the form of a DN used to compare DNs: attribute types and values
// lowercased, without spaces around separators. It is not meant to be sent
// back to a server.
func NormDN(dn string) string {
	var b strings.Builder
	b.Grow(len(dn))
	for i, part := range splitDN(dn) {
		if i > 0 {
			b.WriteByte(',')
		}
		t, v, _ := strings.Cut(part, "=")
		b.WriteString(strings.ToLower(strings.TrimSpace(t)))
		b.WriteByte('=')
		b.WriteString(strings.ToLower(strings.TrimSpace(v)))
	}
	return b.String()
}

// splitDN splits at commas that are not escaped.
func splitDN(dn string) []string {
	var out []string
	start, esc := 0, false
	for i := 0; i < len(dn); i++ {
		switch {
		case esc:
			esc = false
		case dn[i] == '\\':
			esc = true
		case dn[i] == ',':
			out = append(out, dn[start:i])
			start = i + 1
		}
	}
	return append(out, dn[start:])
}
