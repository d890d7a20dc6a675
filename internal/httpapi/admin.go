package httpapi

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/mmgate/mmgate/internal/fault"
)

// Setup installs mmgate in Mattermost with a system admin's token; report
// gets one line per thing looked at.
type Setup func(ctx context.Context, adminToken string, teams []string, report func(string)) (changed, unchanged int, err error)

// AdminOptions configure the admin endpoints.
type AdminOptions struct {
	// AdminToken guards /admin/* (Authorization: Bearer); "" turns them off.
	AdminToken string
	Setup      Setup
	// InstallKey signs install links (`mmgate mattermost install-link`);
	// nil turns /setup off.
	InstallKey []byte
	// UseOnce records an install link's id; false when it was used before.
	UseOnce func(ctx context.Context, id string) (bool, error)
	// Release gives a link back when its setup failed (optional).
	Release func(ctx context.Context, id string) error
	// Used reports whether an install link was used (without using it).
	Used func(ctx context.Context, id string) (bool, error)
	// CheckAdmin says whether a token is a Mattermost system admin's; the
	// link is used up only once it is.
	CheckAdmin func(ctx context.Context, adminToken string) (bool, error)
	// Secure marks the page's cookie Secure (mmgate's public URL is https).
	Secure bool
}

// Install links are JWTs (HS256) with this issuer and audience.
const (
	installIssuer   = "mmgate"
	installAudience = "mmgate-setup"
)

// InstallToken makes a signed, single-use install link token valid for ttl.
func InstallToken(key []byte, ttl time.Duration) (string, error) {
	id := make([]byte, 16)
	if _, err := rand.Read(id); err != nil {
		return "", err
	}
	now := time.Now()
	return jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.RegisteredClaims{
		Issuer: installIssuer, Audience: jwt.ClaimStrings{installAudience}, ID: base64.RawURLEncoding.EncodeToString(id),
		IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}).SignedString(key)
}

// verifyInstall checks an install token's signature, algorithm, issuer,
// audience and expiry, and returns its id.
func verifyInstall(key []byte, tok string) (string, error) {
	var c jwt.RegisteredClaims
	_, err := jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithIssuer(installIssuer),
		jwt.WithAudience(installAudience), jwt.WithExpirationRequired(), jwt.WithLeeway(5*time.Second)).
		ParseWithClaims(tok, &c, func(*jwt.Token) (any, error) { return key, nil })
	if err != nil {
		return "", err
	}
	if c.ID == "" {
		return "", errors.New("no id")
	}
	return c.ID, nil
}

// AdminRoutes are POST /admin/mattermost/setup (JSON, for automation) and
// the install link's page, GET and POST /setup.
func AdminRoutes(o AdminOptions) map[string]http.Handler {
	routes := map[string]http.Handler{}
	if o.AdminToken != "" {
		routes["POST /admin/mattermost/setup"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if tok, ok := Bearer(r); !ok || !SecretEqual(tok, o.AdminToken) {
				w.Header().Set("WWW-Authenticate", `Bearer realm="mmgate admin"`)
				WriteError(w, fault.New(fault.Unauthorized, "unauthorized", "send Authorization: Bearer <http.admin_token>"))
				return
			}
			var in struct {
				AdminToken string   `json:"admin_token"`
				Teams      []string `json:"teams"`
			}
			if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&in); err != nil || strings.TrimSpace(in.AdminToken) == "" {
				WriteError(w, fault.New(fault.Invalid, "bad_request",
					`send {"admin_token": "<a Mattermost system admin's personal access token>", "teams": ["optional"]}`))
				return
			}
			var report []string
			changed, unchanged, err := o.Setup(r.Context(), strings.TrimSpace(in.AdminToken), in.Teams, func(l string) { report = append(report, l) })
			if err != nil {
				status, code := setupFailure(err)
				WriteJSON(w, status, map[string]any{"success": false, "code": code, "message": err.Error(), "report": report})
				return
			}
			WriteJSON(w, http.StatusOK, map[string]any{"success": true, "changed": changed, "unchanged": unchanged, "report": report})
		})
	}
	if o.InstallKey != nil {
		routes["GET /setup"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tok := r.URL.Query().Get("token")
			id, err := verifyInstall(o.InstallKey, tok)
			if err != nil {
				setupPage(w, http.StatusUnauthorized, setupData{Notice: "This install link is not valid or has expired. " +
					"Ask the mmgate operator for a new one (mmgate mattermost install-link)."})
				return
			}
			if o.Used != nil {
				if used, err := o.Used(r.Context(), id); err == nil && used {
					setupPage(w, http.StatusUnauthorized, setupData{Notice: "This install link was already used. Ask the mmgate operator for a new one."})
					return
				}
			}
			csrf := randomToken()
			http.SetCookie(w, &http.Cookie{Name: "mmgate_setup_csrf", Value: csrf, Path: "/", HttpOnly: true,
				Secure: o.Secure || r.TLS != nil, SameSite: http.SameSiteStrictMode, MaxAge: 3600})
			setupPage(w, http.StatusOK, setupData{Form: true, Token: tok, CSRF: csrf})
		})
		routes["POST /setup"] = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
			_ = r.ParseForm()
			c, err := r.Cookie("mmgate_setup_csrf")
			if err != nil || subtle.ConstantTimeCompare([]byte(c.Value), []byte(r.PostForm.Get("csrf"))) != 1 {
				setupPage(w, http.StatusForbidden, setupData{Notice: "This form expired. Open the install link again."})
				return
			}
			id, err := verifyInstall(o.InstallKey, r.PostForm.Get("token"))
			if err != nil {
				setupPage(w, http.StatusUnauthorized, setupData{Notice: "This install link is not valid or has expired. " +
					"Ask the mmgate operator for a new one."})
				return
			}
			admin := strings.TrimSpace(r.PostForm.Get("admin_token"))
			if admin == "" {
				setupPage(w, http.StatusBadRequest, setupData{Form: true, Token: r.PostForm.Get("token"), CSRF: c.Value,
					Error: "Paste a personal access token of a Mattermost system admin."})
				return
			}
			if o.CheckAdmin != nil {
				ok, err := o.CheckAdmin(r.Context(), admin)
				if err != nil {
					setupPage(w, http.StatusServiceUnavailable, setupData{Form: true, Token: r.PostForm.Get("token"), CSRF: c.Value,
						Error: "Mattermost did not answer, so the token cannot be checked. Try again in a minute."})
					return
				}
				if !ok {
					setupPage(w, http.StatusUnauthorized, setupData{Form: true, Token: r.PostForm.Get("token"), CSRF: c.Value,
						Error: "Mattermost does not accept this token as a system admin's. Check it and try again."})
					return
				}
			}
			fresh, err := o.UseOnce(r.Context(), id)
			if err != nil {
				setupPage(w, http.StatusServiceUnavailable, setupData{Notice: "mmgate cannot record the install link right now. Try again in a minute."})
				return
			}
			if !fresh {
				setupPage(w, http.StatusUnauthorized, setupData{Notice: "This install link was already used. Ask the mmgate operator for a new one."})
				return
			}
			var report []string
			_, _, err = o.Setup(r.Context(), admin, nil, func(l string) { report = append(report, l) })
			if err != nil {
				notice := "Setup failed: " + err.Error() + ". Fix the cause, then ask for a new install link."
				if o.Release != nil && o.Release(context.WithoutCancel(r.Context()), id) == nil {
					notice = "Setup failed: " + err.Error() + ". Fix the cause, then open this link again."
				}
				status, _ := setupFailure(err)
				setupPage(w, status, setupData{Report: report, Notice: notice})
				return
			}
			setupPage(w, http.StatusOK, setupData{Report: report, Notice: "mmgate is installed in Mattermost."})
		})
	}
	return routes
}

// setupFailure is the status and stable code of a failed setup: the admin
// token refused, 403; Mattermost unreachable or overloaded, 503 (try
// again); anything else, 502.
func setupFailure(err error) (int, string) {
	switch {
	case fault.Is(err, fault.Unauthorized):
		return http.StatusForbidden, "admin_token_refused"
	case slices.Contains([]string{"mattermost_unavailable", "mattermost_unreachable", "mattermost_rate_limited"}, fault.CodeOf(err)):
		return http.StatusServiceUnavailable, "mattermost_unavailable"
	}
	return http.StatusBadGateway, "setup_failed"
}

func randomToken() string {
	b := make([]byte, 24)
	_, _ = rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

type setupData struct {
	Form   bool
	Token  string
	CSRF   string
	Error  string
	Notice string
	Report []string
}

var setupTmpl = template.Must(template.New("setup").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>Install mmgate in Mattermost</title>
<style>
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#1b1d22;padding:16px}
main{max-width:520px;margin:8vh auto;background:#fff;border:1px solid #c9ccd3;border-radius:12px;padding:28px}
h1{font-size:22px;margin:0 0 12px}label{display:block;font-weight:600;margin:16px 0 6px}
input[type=password]{width:100%;box-sizing:border-box;font:inherit;padding:12px;border:1px solid #c9ccd3;border-radius:8px}
button{margin-top:20px;width:100%;min-height:48px;font:inherit;font-weight:600;border:0;border-radius:8px;background:#1c58d9;color:#fff}
.error{background:#fdecec;color:#8a1111;border-radius:8px;padding:12px}ul{padding-left:20px}
input:focus,button:focus{outline:3px solid #ffbf47}
</style></head><body><main>
<h1>Install mmgate in Mattermost</h1>
{{if .Form}}
<p>mmgate will create its bots, their tokens and the <code>/mmgate</code> command. Your token is used for this
once and not stored.</p>
{{if .Error}}<p class="error" role="alert">{{.Error}}</p>{{end}}
<form method="post" action="setup">
<input type="hidden" name="token" value="{{.Token}}"><input type="hidden" name="csrf" value="{{.CSRF}}">
<label for="admin_token">A system admin's personal access token</label>
<input type="password" id="admin_token" name="admin_token" autocomplete="off" required>
<button type="submit">Install</button></form>
{{else}}
<p role="status">{{.Notice}}</p>
{{if .Report}}<ul>{{range .Report}}<li>{{.}}</li>{{end}}</ul>{{end}}
{{end}}
</main></body></html>`))

func setupPage(w http.ResponseWriter, status int, d setupData) {
	WriteHTML(w, status, "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'", setupTmpl, d)
}

// WriteHTML renders a page that holds secrets or forms (the sign-in page,
// the install page): never cached, framed, sniffed or sent as Referer,
// under the Content-Security-Policy csp.
func WriteHTML(w http.ResponseWriter, status int, csp string, t *template.Template, data any) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Content-Security-Policy", csp)
	w.WriteHeader(status)
	_ = t.Execute(w, data)
}
