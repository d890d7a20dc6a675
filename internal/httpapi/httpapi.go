// Package httpapi owns mmgate's HTTP surface: health (/healthz), readiness
// (/readyz), Prometheus metrics (/metrics), and the JSON error format of every
// endpoint. It holds no business logic: handlers call the interfaces given to it.
package httpapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/metrics"
	"github.com/mmgate/mmgate/internal/spool"
)

// Check is one readiness check: nil means ready.
type Check func(ctx context.Context) error

// Counter reports spool counts for the metrics gauge.
type Counter interface {
	Counts(ctx context.Context) (map[spool.State]int, error)
}

// Options configures the handler.
type Options struct {
	// Checks run on /readyz, by name (e.g. "spool", "mattermost:jira").
	Checks map[string]Check
	// Spool feeds the mmgate_spool_messages gauge at scrape time (optional).
	Spool Counter
	// Routes are further endpoints by ServeMux pattern (the postback intake).
	Routes map[string]http.Handler
	// CacheFor keeps readiness results this long (default 5s) so that probes
	// do not hammer Mattermost.
	CacheFor time.Duration
}

// New returns the HTTP handler.
func New(o Options) http.Handler {
	if o.CacheFor == 0 {
		o.CacheFor = 5 * time.Second
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		WriteJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	rc := &readiness{o: o}
	mux.HandleFunc("GET /readyz", rc.serve)
	prom := promhttp.HandlerFor(metrics.Registry, promhttp.HandlerOpts{})
	mux.HandleFunc("GET /metrics", func(w http.ResponseWriter, r *http.Request) {
		if o.Spool != nil {
			ctx, cancel := context.WithTimeout(r.Context(), 3*time.Second)
			counts, err := o.Spool.Counts(ctx)
			cancel()
			if err == nil {
				for _, s := range []spool.State{spool.StateQueued, spool.StateRetrying, spool.StatePosted, spool.StateQuarantined} {
					metrics.SpoolMessages.WithLabelValues(string(s)).Set(float64(counts[s]))
				}
			}
		}
		prom.ServeHTTP(w, r)
	})
	for pattern, h := range o.Routes {
		mux.Handle(pattern, h)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		WriteError(w, fault.New(fault.NotFound, "not_found", "no such endpoint"))
	})
	return mux
}

type readiness struct {
	o    Options
	mu   sync.Mutex
	at   time.Time
	code int
	body map[string]any
}

func (rc *readiness) serve(w http.ResponseWriter, r *http.Request) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if time.Since(rc.at) > rc.o.CacheFor || rc.body == nil {
		ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
		defer cancel()
		names := make([]string, 0, len(rc.o.Checks))
		for n := range rc.o.Checks {
			names = append(names, n)
		}
		sort.Strings(names)
		type result struct {
			name string
			err  error
		}
		res := make(chan result, len(names))
		for _, n := range names {
			go func(n string) { res <- result{n, rc.o.Checks[n](ctx)} }(n)
		}
		checks := map[string]string{}
		code := http.StatusOK
		for range names {
			x := <-res
			if x.err != nil {
				checks[x.name] = x.err.Error()
				code = http.StatusServiceUnavailable
			} else {
				checks[x.name] = "ok"
			}
		}
		status := "ready"
		if code != http.StatusOK {
			status = "not_ready"
		}
		rc.code, rc.body, rc.at = code, map[string]any{"status": status, "checks": checks}, time.Now()
	}
	WriteJSON(w, rc.code, rc.body)
}

// WriteJSON writes v as JSON with status.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// Bearer returns the token of an "Authorization: Bearer TOKEN" header.
func Bearer(r *http.Request) (string, bool) {
	scheme, tok, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	tok = strings.TrimSpace(tok)
	return tok, ok && strings.EqualFold(scheme, "bearer") && tok != ""
}

// SecretEqual compares two secrets in constant time; it hashes them first,
// so that not even their lengths leak.
func SecretEqual(a, b string) bool {
	x, y := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(x[:], y[:]) == 1
}

// WriteError writes err as the standard JSON error with a stable code.
func WriteError(w http.ResponseWriter, err error) {
	status, body := fault.HTTP(err)
	WriteJSON(w, status, body)
}
