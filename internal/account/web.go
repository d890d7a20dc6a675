package account

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"strings"
	"time"

	"github.com/mmgate/mmgate/internal/httpapi"
)

// The link page. /mmgate link gives the person /link/{code}. That page
// sets a cookie holding a fresh state and the code, and sends the browser
// to the sign-in bridge (a password, not an old session). The bridge sends
// it back to /link/callback with its own code and the state: the state must
// match the cookie (the sign-in is this browser's), the bridge's code names
// the person. The page then asks to confirm, naming both sides; the form
// carries a ticket signed over the identity and the link code, so that the
// POST needs this browser's cookie and the ticket, and cannot name anyone
// else. Confirming uses the link code up and records the link.

const linkCookie = "mmgate_link"

// Routes are the link page's endpoints (nil when linking is off).
func (s *Service) Routes() map[string]http.Handler {
	if s.o.Bridge == nil {
		return nil
	}
	return map[string]http.Handler{
		"GET /link/{code}":    http.HandlerFunc(s.start),
		"GET " + CallbackPath: http.HandlerFunc(s.callback),
		"POST /link/confirm":  http.HandlerFunc(s.confirm),
	}
}

func (s *Service) secure() bool { return strings.HasPrefix(s.o.Issuer, "https://") }

// cookieName is linkCookie, with the __Secure- prefix over https (a
// sibling domain then cannot plant one).
func (s *Service) cookieName() string {
	if s.secure() {
		return "__Secure-" + linkCookie
	}
	return linkCookie
}

func (s *Service) setCookie(w http.ResponseWriter, value string, maxAge time.Duration) {
	c := &http.Cookie{Name: s.cookieName(), Value: value, Path: "/link/", HttpOnly: true, Secure: s.secure(),
		SameSite: http.SameSiteLaxMode, MaxAge: int(maxAge / time.Second)}
	if maxAge < 0 {
		c.MaxAge = -1
	}
	http.SetCookie(w, c)
}

// flow reads the cookie: the state and the link code.
func (s *Service) flow(r *http.Request) (state, code string, ok bool) {
	c, err := r.Cookie(s.cookieName())
	if err != nil {
		return "", "", false
	}
	state, code, ok = strings.Cut(c.Value, ".")
	return state, code, ok && state != "" && code != ""
}

// pending reads whom an unused link code is for, or answers the page.
func (s *Service) pending(w http.ResponseWriter, r *http.Request, code string) (Pending, bool) {
	p, err := s.o.Store.PeekCode(r.Context(), code)
	if errors.Is(err, ErrNotFound) {
		s.page(w, http.StatusNotFound, linkData{Notice: "This link has expired or was already used. Type “/mmgate link” in Mattermost for a new one."})
		return p, false
	}
	if err != nil {
		s.o.Logger.Error("accounts: reading a link code", "err", err)
		s.page(w, http.StatusServiceUnavailable, linkData{Notice: "mmgate cannot read this link right now. Try again in a minute."})
		return p, false
	}
	return p, true
}

func (s *Service) start(w http.ResponseWriter, r *http.Request) {
	code := r.PathValue("code")
	p, ok := s.pending(w, r, code)
	if !ok {
		return
	}
	b := make([]byte, 18)
	_, _ = rand.Read(b)
	state := base64.RawURLEncoding.EncodeToString(b)
	s.setCookie(w, state+"."+code, s.o.CodeTTL)
	s.o.Logger.Info("accounts: link page opened; signing in", "user", p.Username)
	http.Redirect(w, r, s.authorizeURL(state), http.StatusSeeOther)
}

// ticket is what the confirmation form carries.
type ticket struct {
	Email   string `json:"email"`
	Subject string `json:"sub"`
	Expires int64  `json:"exp"`
}

func (s *Service) mac(payload, code string) []byte {
	m := hmac.New(sha256.New, s.o.Key)
	m.Write([]byte("mmgate link ticket\x00"))
	m.Write([]byte(payload))
	m.Write([]byte{0})
	m.Write([]byte(code))
	return m.Sum(nil)
}

func (s *Service) sign(t ticket, code string) string {
	b, _ := json.Marshal(t)
	payload := base64.RawURLEncoding.EncodeToString(b)
	return payload + "." + base64.RawURLEncoding.EncodeToString(s.mac(payload, code))
}

func (s *Service) verify(v, code string) (ticket, bool) {
	payload, sig, ok := strings.Cut(v, ".")
	if !ok {
		return ticket{}, false
	}
	got, err := base64.RawURLEncoding.DecodeString(sig)
	if err != nil || !hmac.Equal(got, s.mac(payload, code)) {
		return ticket{}, false
	}
	b, err := base64.RawURLEncoding.DecodeString(payload)
	var t ticket
	if err != nil || json.Unmarshal(b, &t) != nil || time.Now().Unix() > t.Expires || t.Email == "" {
		return ticket{}, false
	}
	return t, true
}

func (s *Service) callback(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	state, code, ok := s.flow(r)
	if !ok || !httpapi.SecretEqual(q.Get("state"), state) {
		s.page(w, http.StatusBadRequest, linkData{Notice: "This sign-in was not started in this browser, or took too long. " +
			"Open the link from “/mmgate link” again, in the browser you sign in with."})
		return
	}
	if e := q.Get("error"); e != "" {
		s.page(w, http.StatusUnauthorized, linkData{Notice: "You did not sign in, so nothing was linked. Open the link from “/mmgate link” to try again."})
		return
	}
	p, ok := s.pending(w, r, code)
	if !ok {
		return
	}
	id, err := s.o.Bridge.Redeem(r.Context(), ClientID, s.o.Issuer+CallbackPath, q.Get("code"))
	if err != nil {
		s.o.Logger.Warn("accounts: the sign-in's code was refused", "err", err)
		s.page(w, http.StatusUnauthorized, linkData{Notice: "This sign-in is not valid any more. Open the link from “/mmgate link” again."})
		return
	}
	if strings.TrimSpace(id.Email) == "" {
		s.page(w, http.StatusUnprocessableEntity, linkData{Notice: "Your directory account has no email address, so there is nothing to link. Ask your directory's administrators."})
		return
	}
	t := ticket{Email: strings.ToLower(id.Email), Subject: id.Subject, Expires: time.Now().Add(s.o.CodeTTL).Unix()}
	d := linkData{Form: true, Ticket: s.sign(t, code), Email: t.Email, Name: id.Name, Username: p.Username}
	// Name the Mattermost account fully: a look-alike username is not enough.
	if u, err := s.o.Users.User(r.Context(), p.UserID); err == nil {
		d.Account = strings.TrimSpace(strings.TrimSpace(u.FirstName+" "+u.LastName) + ", " + u.Email)
		d.Account = strings.TrimPrefix(d.Account, ", ")
	}
	s.page(w, http.StatusOK, d)
}

func (s *Service) confirm(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 16<<10)
	_, code, ok := s.flow(r)
	if !ok || r.ParseForm() != nil {
		s.page(w, http.StatusBadRequest, linkData{Notice: "This form was not sent from the page mmgate showed in this browser. " +
			"Open the link from “/mmgate link” again."})
		return
	}
	t, ok := s.verify(r.PostForm.Get("ticket"), code)
	if !ok {
		s.page(w, http.StatusBadRequest, linkData{Notice: "This confirmation is not valid, or took too long. Open the link from “/mmgate link” again."})
		return
	}
	s.setCookie(w, "", -1)
	if r.PostForm.Get("action") != "link" {
		s.page(w, http.StatusOK, linkData{Notice: "Nothing was linked. You can close this page."})
		return
	}
	l, err := s.o.Store.LinkWithCode(r.Context(), code, Link{Email: t.Email, Subject: t.Subject})
	if errors.Is(err, ErrNotFound) {
		s.page(w, http.StatusNotFound, linkData{Notice: "This link has expired or was already used. Type “/mmgate link” in Mattermost for a new one."})
		return
	}
	if err != nil {
		s.o.Logger.Error("accounts: recording a link", "err", err)
		s.page(w, http.StatusServiceUnavailable, linkData{Notice: "mmgate cannot record the link right now. Try again in a minute."})
		return
	}
	s.o.Logger.Info("accounts: linked", "email", l.Email, "user", l.Username, "subject", l.Subject)
	s.tell(r.Context(), l)
	s.page(w, http.StatusOK, linkData{Done: true, Email: l.Email, Username: l.Username})
}

// tell sends the news of a link to the account that now gets the mail, to
// the account with that email (if another), and to the account that had
// the link before: someone tricked into confirming hears of it.
func (s *Service) tell(ctx context.Context, l Linked) {
	if s.o.Notify == nil {
		return
	}
	ctx = context.WithoutCancel(ctx)
	send := func(userID, text string) {
		if err := s.o.Notify(ctx, userID, text); err != nil {
			s.o.Logger.Warn("accounts: telling someone about a link", "user_id", userID, "err", err)
		}
	}
	send(l.UserID, fmt.Sprintf("Mail addressed to %s in the directory now comes to you here (`/mmgate link`). `/mmgate unlink` undoes it.", l.Email))
	warn := fmt.Sprintf("Mail addressed to %s now goes to @%s: someone signed in to mmgate as %s on %s UTC and linked it there. "+
		"If that was not you, change your directory password and ask your Mattermost admin to run `mmgate accounts unlink %s`.",
		l.Email, l.Username, l.Email, l.Created.UTC().Format("2006-01-02 15:04"), l.Email)
	told := map[string]bool{l.UserID: true}
	if l.Previous != nil {
		told[l.Previous.UserID] = true
		send(l.Previous.UserID, warn)
	}
	if u, err := s.o.Users.UserByEmail(ctx, l.Email); err == nil && !told[u.ID] {
		send(u.ID, warn)
	}
}

type linkData struct {
	Form     bool
	Done     bool
	Ticket   string
	Email    string
	Name     string
	Username string
	Account  string // the Mattermost account's name and email
	Notice   string
}

var linkTmpl = template.Must(template.New("link").Parse(`<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex"><title>Link your Mattermost account</title>
<style>
:root{color-scheme:light dark}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f4f5f7;color:#1b1d22;padding:16px}
main{max-width:520px;margin:8vh auto;background:#fff;border:1px solid #c9ccd3;border-radius:12px;padding:28px}
h1{font-size:22px;margin:0 0 12px}
button{margin-top:12px;width:100%;min-height:48px;font:inherit;font-weight:600;border:0;border-radius:8px;background:#1c58d9;color:#fff}
button.secondary{background:transparent;color:#1c58d9;border:1px solid #1c58d9}
button:focus{outline:3px solid #ffbf47}
@media (prefers-color-scheme:dark){body{background:#16181d;color:#e8e9ec}main{background:#1f2229;border-color:#3a3e48}
button.secondary{color:#8fb1ff;border-color:#8fb1ff}}
</style></head><body><main>
<h1>Link your Mattermost account</h1>
{{if .Form}}
<p>You signed in as <strong>{{if .Name}}{{.Name}} ({{.Email}}){{else}}{{.Email}}{{end}}</strong>.</p>
<p>Mail addressed to <strong>{{.Email}}</strong> will go to the Mattermost account <strong>@{{.Username}}</strong>{{if .Account}}
({{.Account}}){{end}}. Only confirm if @{{.Username}} is your own account: whoever has it will read your mail.</p>
<form method="post" action="/link/confirm">
<input type="hidden" name="ticket" value="{{.Ticket}}">
<button type="submit" name="action" value="link">Link to @{{.Username}}</button>
<button type="submit" name="action" value="cancel" class="secondary">Cancel</button></form>
{{else if .Done}}
<p role="status">Linked. Mail addressed to <strong>{{.Email}}</strong> now reaches <strong>@{{.Username}}</strong> in Mattermost.
<code>/mmgate unlink</code> undoes it. You can close this page.</p>
{{else}}
<p role="status">{{.Notice}}</p>
{{end}}
</main></body></html>`))

func (s *Service) page(w http.ResponseWriter, status int, d linkData) {
	httpapi.WriteHTML(w, status, "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'", linkTmpl, d)
}
