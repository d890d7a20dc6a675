package smtpintake

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"

	"github.com/emersion/go-sasl"
)

// credentials holds the configured logins. Passwords are kept as SHA-256
// digests so that every comparison is constant-time and length-independent.
type credentials struct {
	entries []credEntry
}

type credEntry struct {
	cred Credential
	hash [sha256.Size]byte
}

func newCredentials(list []Credential) (*credentials, error) {
	var problems []error
	seen := map[string]bool{}
	c := &credentials{}
	for i, cr := range list {
		if cr.Username == "" {
			problems = append(problems, fmt.Errorf("smtp intake: credentials[%d]: empty username", i))
			continue
		}
		if cr.Password == "" {
			problems = append(problems, fmt.Errorf("smtp intake: credentials[%d] (%s): empty password", i, cr.Username))
			continue
		}
		key := strings.ToLower(cr.Username)
		if seen[key] {
			problems = append(problems, fmt.Errorf("smtp intake: credentials[%d]: username %q is listed twice", i, cr.Username))
			continue
		}
		seen[key] = true
		c.entries = append(c.entries, credEntry{cred: cr, hash: sha256.Sum256([]byte(cr.Password))})
	}
	return c, errors.Join(problems...)
}

func (c *credentials) len() int { return len(c.entries) }

// check returns the credential matching username (case-insensitive) and
// password, or nil. Every entry's password digest is compared, so the time
// taken does not depend on which (if any) entry matches.
func (c *credentials) check(username, password string) *Credential {
	h := sha256.Sum256([]byte(password))
	var found *Credential
	for i := range c.entries {
		e := &c.entries[i]
		pwOK := subtle.ConstantTimeCompare(h[:], e.hash[:]) == 1
		if pwOK && strings.EqualFold(e.cred.Username, username) && found == nil {
			found = &e.cred
		}
	}
	if password == "" {
		return nil
	}
	return found
}

// authFunc verifies an authorization identity (may be empty), a username and a
// password; it returns the error to reply with.
type authFunc func(authzid, username, password string) error

// plainServer is the PLAIN mechanism (RFC 4616): one message
// "authzid NUL authcid NUL passwd". A malformed message counts as a failed
// attempt.
type plainServer struct {
	auth authFunc
	done bool
}

var _ sasl.Server = (*plainServer)(nil)

func (p *plainServer) Next(response []byte) ([]byte, bool, error) {
	if p.done {
		return nil, false, sasl.ErrUnexpectedClientResponse
	}
	if response == nil {
		// No initial response: an empty challenge asks for it.
		return []byte{}, false, nil
	}
	p.done = true
	parts := bytes.Split(response, []byte{0})
	if len(parts) != 3 {
		// Never pass on the malformed bytes: they may hold the password.
		return nil, true, p.auth("", "", "")
	}
	return nil, true, p.auth(string(parts[0]), string(parts[1]), string(parts[2]))
}

// loginServer is the (obsolete but widely used) LOGIN mechanism: the server asks
// "Username:" then "Password:". An initial response (AUTH LOGIN <b64user>) is the
// username. go-smtp does the base64 coding.
type loginServer struct {
	auth     authFunc
	state    int
	username string
}

var _ sasl.Server = (*loginServer)(nil)

const (
	loginStart = iota
	loginWantUser
	loginWantPass
	loginDone
)

func (l *loginServer) Next(response []byte) ([]byte, bool, error) {
	switch l.state {
	case loginStart:
		if response == nil {
			l.state = loginWantUser
			return []byte("Username:"), false, nil
		}
		l.username = string(response)
		l.state = loginWantPass
		return []byte("Password:"), false, nil
	case loginWantUser:
		l.username = string(response)
		l.state = loginWantPass
		return []byte("Password:"), false, nil
	case loginWantPass:
		l.state = loginDone
		return nil, true, l.auth("", l.username, string(response))
	}
	return nil, false, sasl.ErrUnexpectedClientResponse
}
