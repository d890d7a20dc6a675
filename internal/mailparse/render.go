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
	ref := opts.ImageRef
	if depth > 0 {
		ref = nil // the relay only uploads the outer message's files
	}
	var md string
	if len(m.segments) > 0 {
		md = renderSegments(m, ref)
	} else {
		md = renderTextOrHTML(m.Text, m.HTML, m.Attachments, ref)
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

// renderTextOrHTML renders from the HTML when it has any text, else from the
// plain text.
func renderTextOrHTML(text, htm string, atts []*Attachment, ref func(*Attachment) string) string {
	if strings.TrimSpace(htm) != "" {
		body, san := htmlToMarkdown(htm, atts)
		if strings.TrimSpace(strings.ReplaceAll(body, imgToken, "")) != "" || strings.TrimSpace(text) == "" {
			return san.resolveImages(neutralizeMentions(body), ref)
		}
	}
	if strings.TrimSpace(text) != "" {
		return neutralizeMentions(textToMarkdown(text))
	}
	return ""
}

// renderSegments renders the body parts in document order. Of the children of
// a multipart/alternative only one is shown: the last one with HTML that has
// text, else the last one with plain text, else the last one.
func renderSegments(m *Message, ref func(*Attachment) string) string {
	var out []string
	done := map[int]bool{}
	for i, sg := range m.segments {
		if sg.alt.id == 0 {
			if r, _ := renderSegment(sg, m.Attachments, ref); r != "" {
				out = append(out, r)
			}
			continue
		}
		if done[sg.alt.id] {
			continue
		}
		done[sg.alt.id] = true
		// The segments of this alternative, grouped by child, rendered.
		type child struct {
			idx      int
			rendered []string
			html     bool // has HTML with text
			any      bool
		}
		var children []*child
		for _, s2 := range m.segments[i:] {
			if s2.alt.id != sg.alt.id {
				continue
			}
			if len(children) == 0 || children[len(children)-1].idx != s2.alt.child {
				children = append(children, &child{idx: s2.alt.child})
			}
			c := children[len(children)-1]
			r, hasText := renderSegment(s2, m.Attachments, ref)
			if r == "" {
				continue
			}
			c.rendered = append(c.rendered, r)
			c.any = true
			if s2.html && hasText {
				c.html = true
			}
		}
		var best *child
		for _, c := range children {
			if c.html {
				best = c
			}
		}
		if best == nil {
			for _, c := range children {
				if c.any {
					best = c
				}
			}
		}
		if best != nil {
			out = append(out, best.rendered...)
		}
	}
	return strings.Join(out, "\n\n")
}

// renderSegment renders one body part; hasText is false when an HTML part
// holds nothing but images.
func renderSegment(sg bodySegment, atts []*Attachment, ref func(*Attachment) string) (md string, hasText bool) {
	if sg.html {
		body, san := htmlToMarkdown(sg.text, atts)
		hasText = strings.TrimSpace(strings.ReplaceAll(body, imgToken, "")) != ""
		if !hasText && !strings.Contains(body, imgToken) {
			return "", false
		}
		return san.resolveImages(neutralizeMentions(body), ref), hasText
	}
	md = neutralizeMentions(textToMarkdown(sg.text))
	return md, strings.TrimSpace(md) != ""
}
