package sso

import (
	"embed"
	"html/template"
	"net/http"
	"strings"

	"github.com/mmgate/mmgate/internal/httpapi"
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
	// No form-action: browsers apply it to the redirects after the sign-in
	// form too, and those end at the client (Mattermost), another origin.
	httpapi.WriteHTML(w, status, "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' https: data:; frame-ancestors 'none'", pageTmpl, d)
}
