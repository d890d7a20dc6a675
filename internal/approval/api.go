package approval

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/httpapi"
)

// Routes are the approvals API and the endpoints Mattermost calls.
func (s *Service) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"POST /api/v1/approvals":            http.HandlerFunc(s.apiCreate),
		"GET /api/v1/approvals/{id}":        http.HandlerFunc(s.apiGet),
		"POST /mattermost/actions/approval": http.HandlerFunc(s.HandleAction),
		"POST /mattermost/dialogs/approval": http.HandlerFunc(s.HandleDialog),
	}
}

// authenticate returns the client: Authorization: Bearer KEY, or Bearer
// JWT (HS256 with the client's key, iss = the client's name, exp at most 5
// minutes ahead).
func (s *Service) authenticate(r *http.Request) (string, error) {
	tok, ok := httpapi.Bearer(r)
	if !ok {
		return "", fault.New(fault.Unauthorized, "unauthorized", "send Authorization: Bearer <API key or JWT>")
	}
	if strings.Count(tok, ".") == 2 {
		var c jwt.RegisteredClaims
		_, err := jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithExpirationRequired(), jwt.WithTimeFunc(s.o.Now)).
			ParseWithClaims(tok, &c, func(t *jwt.Token) (any, error) {
				iss, _ := t.Claims.GetIssuer()
				for _, cl := range s.o.Clients {
					if cl.Name == iss {
						return []byte(cl.Key), nil
					}
				}
				return nil, errors.New("unknown issuer")
			})
		if err == nil && c.ExpiresAt.Sub(s.o.Now()) <= 5*time.Minute {
			return c.Issuer, nil
		}
		return "", fault.New(fault.Unauthorized, "unauthorized", "the JWT is not valid: HS256 with your key, iss = your client name, exp within 5 minutes")
	}
	for _, cl := range s.o.Clients {
		if httpapi.SecretEqual(tok, cl.Key) {
			return cl.Name, nil
		}
	}
	return "", fault.New(fault.Unauthorized, "unauthorized", "unknown API key")
}

func (s *Service) apiCreate(w http.ResponseWriter, r *http.Request) {
	client, err := s.authenticate(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var req Request
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		httpapi.WriteError(w, fault.New(fault.Invalid, "bad_request", "the body is not a valid approval request: "+err.Error()))
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), time.Minute)
	defer cancel()
	a, err := s.Create(ctx, client, req)
	var inv InvalidError
	if errors.As(err, &inv) {
		httpapi.WriteError(w, fault.New(fault.Invalid, "invalid_request", inv.Msg))
		return
	}
	if err != nil {
		// Mattermost's refusals keep their kind (and a message fit for the
		// client); anything else is temporary.
		s.o.Logger.Error("approvals: creating a request", "client", client, "err", err)
		httpapi.WriteError(w, err)
		return
	}
	httpapi.WriteJSON(w, http.StatusCreated, a)
}

// apiGet returns a request; ?wait=30s waits (at most 60 s) for a decision.
func (s *Service) apiGet(w http.ResponseWriter, r *http.Request) {
	client, err := s.authenticate(r)
	if err != nil {
		httpapi.WriteError(w, err)
		return
	}
	var wait time.Duration
	if v := r.URL.Query().Get("wait"); v != "" {
		if wait, err = time.ParseDuration(v); err != nil || wait < 0 {
			httpapi.WriteError(w, fault.New(fault.Invalid, "bad_request", "wait must be a duration such as 30s"))
			return
		}
		wait = min(wait, time.Minute)
	}
	deadline := time.Now().Add(wait)
	for {
		a, err := s.o.Store.Get(r.Context(), r.PathValue("id"))
		if errors.Is(err, ErrNotFound) || (err == nil && a.Client != client) {
			httpapi.WriteError(w, fault.New(fault.NotFound, "not_found", "no such approval request"))
			return
		}
		if err != nil {
			httpapi.WriteError(w, err)
			return
		}
		if a.State != Pending || !time.Now().Before(deadline) {
			httpapi.WriteJSON(w, http.StatusOK, a)
			return
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(500 * time.Millisecond):
		}
	}
}
