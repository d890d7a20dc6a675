package sso

import (
	"embed"
	"encoding/json"
	"html/template"
	"io"
	"net/http"
	"strings"
)

//go:embed templates/page.html
var templates embed.FS

var pageTmpl = template.Must(template.ParseFS(templates, "templates/page.html"))

// pageData is what the one page template shows: the sign-in form, the
// sign-out form, or a notice.
type pageData struct {
	Org       string
	Initial   string
	LogoURL   string
	Form      bool
	Logout    bool
	RequestID string
	CSRF      string
	Login     string
	Error     string
	Notice    string
}

func (b *Bridge) page(w http.ResponseWriter, _ *http.Request, status int, d pageData) {
	d.Org, d.LogoURL = b.o.Organization, b.o.LogoURL
	if r := []rune(strings.TrimSpace(d.Org)); len(r) > 0 {
		d.Initial = strings.ToUpper(string(r[0]))
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("X-Content-Type-Options", "nosniff")
	// No form-action: browsers apply it to the redirects after the sign-in
	// form too, and those end at the client (Mattermost), another origin.
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https: data:; frame-ancestors 'none'")
	w.WriteHeader(status)
	_ = pageTmpl.Execute(w, d)
}

func jsonEncode(w io.Writer, v any) error { return json.NewEncoder(w).Encode(v) }
