package mailparse

import (
	"strings"
)

// RenderOptions tunes Render and Body.
type RenderOptions struct {
	// ImageRef returns the Markdown to put where an inline cid: image was; nil
	// gives a text reference such as `[image: logo.png]`. Its output is trusted
	// and inserted as is.
	ImageRef func(a *Attachment) string
	// MaxRunes is not used by Render; see Split.
	MaxRunes int
}

// Render returns the post: the subject in bold on the first line, the sender
// on the next, a blank line, then the body as safe Markdown.
func Render(m *Message, opts RenderOptions) string {
	var b strings.Builder
	subject := singleLine(m.Subject)
	if subject == "" {
		b.WriteString("**(no subject)**")
	} else {
		b.WriteString("**" + neutralizeMentions(escapeInline(subject)) + "**")
	}
	b.WriteString("\nFrom: ")
	b.WriteString(neutralizeMentions(formatAddresses(m.From)))
	b.WriteString("\n\n")
	b.WriteString(Body(m, opts))
	return cleanString(b.String())
}

// formatAddresses renders addresses as `Name <email>` for display, escaped.
func formatAddresses(as []Address) string {
	if len(as) == 0 {
		return "(unknown sender)"
	}
	parts := make([]string, 0, len(as))
	for _, a := range as {
		name := singleLine(a.Name)
		email := singleLine(a.Email)
		var addr string
		if linkRE.FindString(email) == email && email != "" && !strings.ContainsAny(email, "<>") {
			addr = "<" + email + ">"
		} else {
			addr = escapeInline(email)
		}
		switch {
		case name == "" || strings.EqualFold(name, email):
			parts = append(parts, addr)
		case email == "":
			parts = append(parts, escapeInline(name))
		default:
			parts = append(parts, escapeInline(name)+` \<`+addr+`\>`)
		}
	}
	return strings.Join(parts, ", ")
}

// Body returns the body part of Render: the message body as safe Markdown,
// followed by embedded (forwarded) messages.
func Body(m *Message, opts RenderOptions) string {
	md := renderBody(m, opts, 0)
	if strings.TrimSpace(md) == "" {
		if len(m.Attachments) > 0 {
			md = "*(no message text; see the attached files)*"
		} else {
			md = "*(empty message)*"
		}
	}
	return cleanString(md)
}

func renderBody(m *Message, opts RenderOptions, depth int) string {
	var md string
	if strings.TrimSpace(m.HTML) != "" {
		body, san := htmlToMarkdown(m.HTML, m.Attachments)
		if strings.TrimSpace(strings.ReplaceAll(body, imgToken, "")) != "" || strings.TrimSpace(m.Text) == "" {
			ref := opts.ImageRef
			if depth > 0 {
				ref = nil // the relay only uploads the outer message's files
			}
			md = san.resolveImages(neutralizeMentions(body), ref)
		}
	}
	if md == "" && strings.TrimSpace(m.Text) != "" {
		md = neutralizeMentions(textToMarkdown(m.Text))
	}
	for _, e := range m.embedded {
		var b strings.Builder
		b.WriteString(md)
		if md != "" {
			b.WriteString("\n\n")
		}
		b.WriteString("---\n**Forwarded message:** ")
		if s := singleLine(e.Subject); s != "" {
			b.WriteString(neutralizeMentions(escapeInline(s)))
		} else {
			b.WriteString("(no subject)")
		}
		b.WriteString("\nFrom: ")
		b.WriteString(neutralizeMentions(formatAddresses(e.From)))
		if inner := renderBody(e, opts, depth+1); strings.TrimSpace(inner) != "" {
			b.WriteString("\n\n")
			b.WriteString(inner)
		}
		md = b.String()
	}
	return md
}
