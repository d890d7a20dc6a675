package app

import (
	"errors"
	"testing"

	ldapdir "github.com/mmgate/mmgate/internal/directory/ldap"
	"github.com/mmgate/mmgate/internal/sso"
)

// A wrong password and a right one must be counted under the same account
// key, or the per-account budget never holds back the right password.
func TestLDAPErrorsKeyTheAccountLikeTheProfile(t *testing.T) {
	err := ldapError(&ldapdir.WrongPasswordError{DN: "uid=a,dc=x", ID: "uuid-a"})
	var wp sso.WrongPassword
	if !errors.As(err, &wp) || !errors.Is(err, sso.ErrBadCredentials) {
		t.Fatalf("wrong password: %v", err)
	}
	if p := ldapProfile(ldapdir.Account{ID: "uuid-a", DN: "uid=a,dc=x"}); wp.Account != p.Subject {
		t.Errorf("failures counted under %q, successes under %q", wp.Account, p.Subject)
	}
	var ae sso.AccountError
	if err := ldapError(&ldapdir.UnusableError{Reason: "no email"}); !errors.As(err, &ae) || ae.Reason != "no email" {
		t.Errorf("unusable: %v", err)
	}
	if err := ldapError(ldapdir.ErrBadCredentials); !errors.Is(err, sso.ErrBadCredentials) {
		t.Errorf("unknown login: %v", err)
	}
}
