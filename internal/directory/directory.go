// Package directory owns the types shared by the address directories: a Person
// found for an email address, and the error for an address nobody has. The
// implementations live in subpackages (static/ now, ldap/ later); the relay
// owns the interface it calls.
package directory

import "errors"

// Person is who an email address belongs to.
type Person struct {
	Email       string // primary address
	Username    string // Mattermost username when known, else ""
	DisplayName string
	// Source says where the entry came from, for explanations.
	Source string
}

// ErrNotFound means no person has the address. It is final for that address
// (unlike a directory outage, which is temporary).
var ErrNotFound = errors.New("no person with this address in the directory")
