package ldap

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/mmgate/mmgate/internal/fault"
)

// ErrBadCredentials means the login names nobody, names more than one
// person, or the password is wrong. The three are deliberately one error:
// the sign-in page must not tell a guesser which usernames exist.
var ErrBadCredentials = errors.New("wrong username or password")

// Account is a person who proved their password.
type Account struct {
	// ID is the entry's permanent identifier: entryUUID (OpenLDAP, RFC 4530)
	// or objectGUID (Active Directory, as hex). It survives renames and
	// moves; the DN does not.
	ID          string
	DN          string
	Username    string
	Email       string
	DisplayName string
}

// AuthOptions say how a login is matched and which attribute is the username.
type AuthOptions struct {
	// LoginAttributes are compared with what the person typed (default uid
	// and mail; sAMAccountName, userPrincipalName and mail on AD).
	LoginAttributes []string
	// UsernameAttribute is the username handed on (default uid;
	// sAMAccountName on AD).
	UsernameAttribute string
}

// Authenticate finds the one person whose login attributes equal login and
// binds as them with password on a connection of its own (never a pooled
// one, which stays bound as the service account). ErrBadCredentials for a
// wrong login or password; any other error is the directory's fault and
// temporary.
func (d *Directory) Authenticate(ctx context.Context, login, password string, o AuthOptions) (Account, error) {
	login = strings.TrimSpace(login)
	// An empty password is an "unauthenticated bind" (RFC 4513 §5.1.2) that
	// many servers answer with success: never send one.
	if login == "" || password == "" {
		return Account{}, ErrBadCredentials
	}
	ad, err := d.isAD(ctx)
	if err != nil {
		return Account{}, err
	}
	attrs := o.LoginAttributes
	if len(attrs) == 0 {
		attrs = []string{"uid", "mail"}
		if ad {
			attrs = []string{"sAMAccountName", "userPrincipalName", "mail"}
		}
	}
	userAttr := o.UsernameAttribute
	if userAttr == "" {
		userAttr = "uid"
		if ad {
			userAttr = "sAMAccountName"
		}
	}
	mailAttrs, err := d.mailAttributes(ctx)
	if err != nil {
		return Account{}, err
	}
	var or strings.Builder
	or.WriteString("(|")
	for _, a := range attrs {
		fmt.Fprintf(&or, "(%s=%s)", a, goldap.EscapeFilter(login))
	}
	or.WriteString(")")
	filter := "(&" + d.cfg.UserFilter + or.String() + ")"
	want := append([]string{"entryUUID", "objectGUID", userAttr, d.cfg.DisplayNameAttribute, "cn"}, mailAttrs...)
	entries, _, err := d.searchPeople(ctx, filter, want)
	if err != nil {
		return Account{}, fmt.Errorf("LDAP search for the login: %w", err)
	}
	if len(entries) != 1 {
		return Account{}, ErrBadCredentials
	}
	e := entries[0]
	c, _, err := d.dial()
	if err != nil {
		return Account{}, fault.Wrap(fault.Temporary, "directory_unavailable", "LDAP directory unavailable", err)
	}
	defer func() { _ = c.Close() }()
	d.trips.Add(1)
	err = c.Bind(e.DN, password)
	count("user_bind", err)
	if goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
		return Account{}, ErrBadCredentials
	}
	if err != nil {
		return Account{}, fault.Wrap(fault.Temporary, "directory_error", "LDAP bind as the person failed", err)
	}
	a := Account{DN: e.DN, Username: strings.ToLower(strings.TrimSpace(e.GetEqualFoldAttributeValue(userAttr)))}
	if id := e.GetEqualFoldAttributeValue("entryUUID"); id != "" {
		a.ID = strings.ToLower(id)
	} else if raw := e.GetEqualFoldRawAttributeValue("objectGUID"); len(raw) > 0 {
		a.ID = hex.EncodeToString(raw)
	}
	if a.ID == "" {
		return Account{}, fault.New(fault.Permanent, "directory_no_uuid",
			"the LDAP entry has neither entryUUID nor objectGUID: a person cannot be given a stable identity")
	}
	for _, m := range mailAttrs {
		for _, v := range e.GetEqualFoldAttributeValues(m) {
			if strings.EqualFold(m, "proxyAddresses") {
				typ, rest, ok := strings.Cut(v, ":")
				if !ok || typ != "SMTP" { // the primary address is the upper-case one
					continue
				}
				v = rest
			}
			if v = strings.ToLower(strings.TrimSpace(v)); v != "" && a.Email == "" {
				a.Email = v
			}
		}
	}
	a.DisplayName = e.GetEqualFoldAttributeValue(d.cfg.DisplayNameAttribute)
	if a.DisplayName == "" {
		a.DisplayName = e.GetEqualFoldAttributeValue("cn")
	}
	return a, nil
}
