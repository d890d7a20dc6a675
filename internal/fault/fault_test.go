package fault

import (
	"errors"
	"fmt"
	"net/http"
	"testing"
)

func TestRepliesByKind(t *testing.T) {
	cases := []struct {
		err  error
		smtp int
		http int
		exit int
		code string
	}{
		{errors.New("disk on fire"), 451, http.StatusServiceUnavailable, ExitTempFail, "internal"},
		{Wrap(Temporary, "spool_unavailable", "storage failed", errors.New("EIO")), 451, 503, ExitTempFail, "spool_unavailable"},
		{New(TooLarge, "too_large", "too big"), 552, 413, ExitDataErr, "too_large"},
		{New(Invalid, "bad_input", "bad"), 550, 400, ExitDataErr, "bad_input"},
		{New(Unauthorized, "bad_auth", "no"), 535, 401, ExitNoPerm, "bad_auth"},
		{fmt.Errorf("wrapped: %w", New(Permanent, "refused", "no")), 554, 422, ExitDataErr, "refused"},
	}
	for _, c := range cases {
		if got := SMTP(c.err).Code; got != c.smtp {
			t.Errorf("%v: SMTP %d, want %d", c.err, got, c.smtp)
		}
		st, body := HTTP(c.err)
		if st != c.http || body.Code != c.code || body.Success {
			t.Errorf("%v: HTTP %d %+v, want %d %s", c.err, st, body, c.http, c.code)
		}
		if got := Exit(c.err); got != c.exit {
			t.Errorf("%v: exit %d, want %d", c.err, got, c.exit)
		}
	}
	if Exit(nil) != ExitOK {
		t.Error("nil must exit 0")
	}
}

func TestHTTPBodyHidesTheCause(t *testing.T) {
	_, body := HTTP(Wrap(Temporary, "spool_unavailable", "storage failed", errors.New("/var/lib/secret/path: EIO")))
	if body.Message != "storage failed" {
		t.Errorf("cause leaked into the client message: %q", body.Message)
	}
}
