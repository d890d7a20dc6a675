package ldap

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	goldap "github.com/go-ldap/ldap/v3"

	"github.com/mmgate/mmgate/internal/fault"
)

// ErrBadCredentials means the login names nobody, names more than one
// person, or the password is wrong. The three are deliberately one error
// (and take about as long): the sign-in page must not tell a guesser which
// usernames exist.
var ErrBadCredentials = errors.New("wrong username or password")

// WrongPasswordError is ErrBadCredentials for a login that names one
// entry, so that failures can be counted per account whatever name was
// typed. ID is the entry's permanent id (as Account.ID).
type WrongPasswordError struct{ DN, ID string }

func (e *WrongPasswordError) Error() string        { return "wrong password for " + e.DN }
func (e *WrongPasswordError) Is(target error) bool { return target == ErrBadCredentials }

// UnusableError is an entry that exists but cannot sign in; Reason says why
// in words for the person.
type UnusableError struct{ Reason string }

func (e *UnusableError) Error() string { return e.Reason }

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

// adDisabled is userAccountControl's ACCOUNTDISABLE bit.
const adDisabled = 0x2

// authAttrs are the attributes sign-in uses, settled for the server kind.
type authAttrs struct {
	ad    bool
	login []string // compared with what the person types
	user  string   // the username
	mail  []string // the addresses, primary first
	want  []string // every attribute to read
}

// authSetup resolves the attributes for the server kind.
func (d *Directory) authSetup(ctx context.Context, o AuthOptions) (authAttrs, error) {
	ad, err := d.isAD(ctx)
	if err != nil {
		return authAttrs{}, err
	}
	at := authAttrs{ad: ad, login: o.LoginAttributes, user: o.UsernameAttribute}
	if len(at.login) == 0 {
		at.login = []string{"uid", "mail"}
		if ad {
			at.login = []string{"sAMAccountName", "userPrincipalName", "mail"}
		}
	}
	if at.user == "" {
		at.user = "uid"
		if ad {
			at.user = "sAMAccountName"
		}
	}
	if at.mail, err = d.mailAttributes(ctx); err != nil {
		return authAttrs{}, err
	}
	at.want = append([]string{"entryUUID", "objectGUID", "userAccountControl", at.user, d.cfg.DisplayNameAttribute, "cn"}, at.mail...)
	return at, nil
}

// Authenticate finds the one person whose login attributes equal login and
// binds as them with password on a connection of its own (never a pooled
// one, which stays bound as the service account). ErrBadCredentials (or
// *WrongPasswordError) for a wrong login or password, *UnusableError for an
// entry that cannot sign in; any other error is the directory's fault and
// temporary.
func (d *Directory) Authenticate(ctx context.Context, login, password string, o AuthOptions) (Account, error) {
	login = strings.TrimSpace(login)
	// An empty password is an "unauthenticated bind" (RFC 4513 §5.1.2) that
	// many servers answer with success: never send one.
	if login == "" || password == "" {
		return Account{}, ErrBadCredentials
	}
	at, err := d.authSetup(ctx, o)
	if err != nil {
		return Account{}, err
	}
	var or strings.Builder
	or.WriteString("(|")
	for _, a := range at.login {
		fmt.Fprintf(&or, "(%s=%s)", a, goldap.EscapeFilter(login))
	}
	or.WriteString(")")
	entries, _, err := d.searchPeople(ctx, "(&"+d.cfg.UserFilter+or.String()+")", at.want)
	if err != nil {
		return Account{}, fmt.Errorf("LDAP search for the login: %w", err)
	}
	if len(entries) != 1 {
		// As long as a bind would have taken: the answer's timing must not
		// tell that the login names nobody.
		select {
		case <-time.After(time.Duration(d.bindNanos.Load())):
		case <-ctx.Done():
		}
		return Account{}, ErrBadCredentials
	}
	e := entries[0]
	start := time.Now()
	c, _, err := d.dial()
	if err != nil {
		return Account{}, fault.Wrap(fault.Temporary, "directory_unavailable", "LDAP directory unavailable", err)
	}
	defer func() { _ = c.Close() }()
	d.trips.Add(1)
	err = c.Bind(e.DN, password)
	count("user_bind", err)
	d.noteBind(time.Since(start))
	if goldap.IsErrorWithCode(err, goldap.LDAPResultInvalidCredentials) {
		if reason := adRefusal(err); reason != "" {
			return Account{}, &UnusableError{Reason: reason}
		}
		return Account{}, &WrongPasswordError{DN: e.DN, ID: entryID(e)}
	}
	if err != nil {
		return Account{}, fault.Wrap(fault.Temporary, "directory_error", "LDAP bind as the person failed", err)
	}
	return d.account(e, at)
}

// noteBind keeps a moving average of how long dial and bind take.
func (d *Directory) noteBind(took time.Duration) {
	old := d.bindNanos.Load()
	if old == 0 {
		d.bindNanos.Store(int64(took))
		return
	}
	d.bindNanos.Store(old + (int64(took)-old)/8)
}

// AccountByID reads an account again by its permanent id (Account.ID), for
// a sign-in from a session: ErrBadCredentials when the entry is gone,
// *UnusableError when it is disabled or lost its email.
func (d *Directory) AccountByID(ctx context.Context, id string, o AuthOptions) (Account, error) {
	at, err := d.authSetup(ctx, o)
	if err != nil {
		return Account{}, err
	}
	var filter string
	if at.ad {
		raw, err := hex.DecodeString(id)
		if err != nil || len(raw) != 16 {
			return Account{}, ErrBadCredentials
		}
		var esc strings.Builder
		for _, b := range raw {
			fmt.Fprintf(&esc, `\%02x`, b)
		}
		filter = "(objectGUID=" + esc.String() + ")"
	} else {
		filter = "(entryUUID=" + goldap.EscapeFilter(id) + ")"
	}
	entries, _, err := d.searchPeople(ctx, "(&"+d.cfg.UserFilter+filter+")", at.want)
	if err != nil {
		return Account{}, fmt.Errorf("LDAP search for the account: %w", err)
	}
	if len(entries) != 1 {
		return Account{}, ErrBadCredentials
	}
	return d.account(entries[0], at)
}

// adRefusal is why Active Directory (or Samba AD) refused a bind whose
// password was right: its "data NNN" sub-code, which it sends only once the
// password is checked (a wrong one is 52e). "" for anything else, a wrong
// password included.
func adRefusal(err error) string {
	msg := err.Error()
	i := strings.Index(msg, ", data ")
	if i < 0 {
		return ""
	}
	code, _, _ := strings.Cut(msg[i+len(", data "):], ",")
	switch strings.TrimSpace(code) {
	case "533":
		return "the account is disabled in the directory"
	case "701":
		return "the account has expired in the directory"
	case "532":
		return "the password has expired: change it, then sign in again"
	case "773":
		return "the password must be changed before signing in: change it, then sign in again"
	}
	return ""
}

// account reads a person's entry after a successful bind or lookup.
func (d *Directory) account(e *goldap.Entry, at authAttrs) (Account, error) {
	userAttr := at.user
	if uac, err := strconv.ParseInt(e.GetEqualFoldAttributeValue("userAccountControl"), 10, 64); err == nil && uac&adDisabled != 0 {
		return Account{}, &UnusableError{Reason: "the account is disabled in the directory"}
	}
	a := Account{DN: e.DN, ID: entryID(e), Username: strings.ToLower(strings.TrimSpace(e.GetEqualFoldAttributeValue(userAttr)))}
	if a.ID == "" {
		return Account{}, &UnusableError{Reason: "the directory entry has neither entryUUID nor objectGUID, so it cannot be given a permanent identity"}
	}
	if addrs := addresses(e, at.mail); len(addrs) > 0 {
		a.Email = addrs[0]
	}
	if a.Email == "" {
		return Account{}, &UnusableError{Reason: "the directory entry has no email address, which Mattermost needs"}
	}
	if a.Username == "" {
		return Account{}, &UnusableError{Reason: "the directory entry has no " + userAttr + " to use as the username"}
	}
	a.DisplayName = e.GetEqualFoldAttributeValue(d.cfg.DisplayNameAttribute)
	if a.DisplayName == "" {
		a.DisplayName = e.GetEqualFoldAttributeValue("cn")
	}
	return a, nil
}

// entryID is an entry's permanent id: entryUUID, or objectGUID as hex.
func entryID(e *goldap.Entry) string {
	if id := e.GetEqualFoldAttributeValue("entryUUID"); id != "" {
		return strings.ToLower(id)
	}
	if raw := e.GetEqualFoldRawAttributeValue("objectGUID"); len(raw) > 0 {
		return hex.EncodeToString(raw)
	}
	return ""
}
