package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/spool"
)

type counts map[spool.State]int

func (c counts) Counts(context.Context) (map[spool.State]int, error) { return c, nil }

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

func TestReadinessReportsEachCheck(t *testing.T) {
	var calls atomic.Int32
	fail := true
	h := New(Options{CacheFor: time.Nanosecond, Checks: map[string]Check{
		"spool": func(context.Context) error { calls.Add(1); return nil },
		"mattermost:jira": func(context.Context) error {
			if fail {
				return errors.New("401 invalid token")
			}
			return nil
		},
	}})
	code, body := get(t, h, "/readyz")
	var got struct {
		Status string            `json:"status"`
		Checks map[string]string `json:"checks"`
	}
	if err := json.Unmarshal([]byte(body), &got); err != nil {
		t.Fatal(err)
	}
	if code != 503 || got.Status != "not_ready" || got.Checks["spool"] != "ok" || !strings.Contains(got.Checks["mattermost:jira"], "401") {
		t.Fatalf("%d %s", code, body)
	}
	fail = false
	time.Sleep(time.Millisecond)
	if code, body := get(t, h, "/readyz"); code != 200 || !strings.Contains(body, `"ready"`) {
		t.Fatalf("%d %s", code, body)
	}
	if calls.Load() != 2 {
		t.Errorf("checks ran %d times, want 2", calls.Load())
	}
}

func TestReadinessIsCached(t *testing.T) {
	var calls atomic.Int32
	h := New(Options{CacheFor: time.Hour, Checks: map[string]Check{"x": func(context.Context) error { calls.Add(1); return nil }}})
	for i := 0; i < 5; i++ {
		get(t, h, "/readyz")
	}
	if calls.Load() != 1 {
		t.Errorf("check ran %d times behind a cache", calls.Load())
	}
}

func TestHealthMetricsAndErrors(t *testing.T) {
	h := New(Options{Spool: counts{spool.StateQuarantined: 3}})
	if code, _ := get(t, h, "/healthz"); code != 200 {
		t.Errorf("healthz %d", code)
	}
	code, body := get(t, h, "/metrics")
	if code != 200 || !strings.Contains(body, `mmgate_spool_messages{state="quarantined"} 3`) {
		t.Errorf("metrics %d: spool gauge missing", code)
	}
	code, body = get(t, h, "/nope")
	if code != 404 || !strings.Contains(body, `"code":"not_found"`) {
		t.Errorf("unknown path: %d %s", code, body)
	}
}
