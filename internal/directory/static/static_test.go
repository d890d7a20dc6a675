package static

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mmgate/mmgate/internal/directory"
)

func load(t *testing.T, body string) (*Directory, error) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "users.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return Load(p)
}

func TestLookupByAddressAndAlias(t *testing.T) {
	d, err := load(t, "users:\n  - email: Alice@Corp.test\n    aliases: [a.smith@corp.test]\n    username: alice\n  - email: bob@corp.test\n")
	if err != nil {
		t.Fatal(err)
	}
	for _, addr := range []string{"alice@corp.test", "A.SMITH@corp.test", " alice@CORP.test "} {
		p, err := d.Lookup(context.Background(), addr)
		if err != nil || p.Username != "alice" || p.Email != "alice@corp.test" {
			t.Errorf("%q: %+v %v", addr, p, err)
		}
	}
	if p, err := d.Lookup(context.Background(), "bob@corp.test"); err != nil || p.Username != "" {
		t.Errorf("bob: %+v %v", p, err)
	}
	if _, err := d.Lookup(context.Background(), "carol@corp.test"); !errors.Is(err, directory.ErrNotFound) {
		t.Errorf("carol: want ErrNotFound, got %v", err)
	}
}

func TestBadFilesAreRefusedWithTheReason(t *testing.T) {
	for body, want := range map[string]string{
		"users:\n  - email: nope\n": "not an address",
		"users:\n  - email: a@x.test\n  - email: b@x.test\n    aliases: [A@x.test]\n": "listed twice",
		"users:\n  - mail: a@x.test\n": "mail",
	} {
		if _, err := load(t, body); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: want error with %q, got %v", body, want, err)
		}
	}
}
