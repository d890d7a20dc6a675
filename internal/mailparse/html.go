package mailparse

import (
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/JohannesKaufmann/html-to-markdown/v2/converter"
	"github.com/JohannesKaufmann/html-to-markdown/v2/plugin/base"
	"github.com/JohannesKaufmann/html-to-markdown/v2/plugin/commonmark"
	"github.com/JohannesKaufmann/html-to-markdown/v2/plugin/strikethrough"
	"github.com/JohannesKaufmann/html-to-markdown/v2/plugin/table"
	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

var (
	convOnce sync.Once
	conv     *converter.Converter
)

func getConverter() *converter.Converter {
	convOnce.Do(func() {
		conv = converter.NewConverter(converter.WithPlugins(
			base.NewBasePlugin(),
			commonmark.NewCommonmarkPlugin(
				commonmark.WithListEndComment(false),
				commonmark.WithHorizontalRule("---"),
				commonmark.WithLinkEmptyHrefBehavior(commonmark.LinkBehaviorSkip),
				commonmark.WithLinkEmptyContentBehavior(commonmark.LinkBehaviorSkip),
			),
			strikethrough.NewStrikethroughPlugin(),
			table.NewTablePlugin(
				table.WithHeaderPromotion(true),
				table.WithSkipEmptyRows(true),
				table.WithCellPaddingBehavior(table.CellPaddingBehaviorMinimal),
				table.WithSpanCellBehavior(table.SpanBehaviorEmpty),
			),
		))
	})
	return conv
}

// Elements removed with everything inside them.
var dropTags = map[string]bool{
	"script": true, "style": true, "head": true, "title": true, "iframe": true, "frame": true,
	"frameset": true, "object": true, "embed": true, "applet": true, "form": true, "input": true,
	"button": true, "select": true, "textarea": true, "option": true, "svg": true, "math": true,
	"meta": true, "link": true, "base": true, "noscript": true, "template": true, "canvas": true,
	"audio": true, "video": true, "source": true, "track": true, "map": true, "area": true,
	"xml": true, "param": true, "dialog": true,
}

var hiddenStyleRE = regexp.MustCompile(`(?i)(display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all)`)

// imgToken marks where an inline (cid:) image was; it is plain alphanumeric
// text so the converter passes it through unchanged.
const imgToken = "MMGATEINLINEIMAGE"

var imgTokenRE = regexp.MustCompile(imgToken + `([0-9]+)X`)

// htmlSanitizer holds the state of one sanitising pass.
type htmlSanitizer struct {
	base   *url.URL // from <base href>, http(s) only
	atts   []*Attachment
	images []*Attachment // referenced inline images, by token number
	alts   []string
}

// htmlToMarkdown sanitises an HTML body and converts it to Markdown. The
// returned Markdown contains image tokens; resolveImages replaces them.
func htmlToMarkdown(src string, atts []*Attachment) (string, *htmlSanitizer) {
	s := &htmlSanitizer{atts: atts}
	doc, err := html.Parse(strings.NewReader(src))
	if err != nil {
		return "", s
	}
	s.base = findBase(doc)
	s.walk(doc)
	unwrapInlineAroundBlocks(doc)
	markQuotedHistory(doc)
	flattenLayoutTables(doc)
	md, err := getConverter().ConvertNode(doc)
	if err != nil {
		return "", s
	}
	return tidyMarkdown(cleanString(string(md))), s
}

// resolveImages replaces image tokens with ref(attachment) or a text reference.
func (s *htmlSanitizer) resolveImages(md string, ref func(*Attachment) string) string {
	if !strings.Contains(md, imgToken) {
		return md
	}
	return imgTokenRE.ReplaceAllStringFunc(md, func(tok string) string {
		n, err := strconv.Atoi(imgTokenRE.FindStringSubmatch(tok)[1])
		if err != nil || n >= len(s.images) {
			return ""
		}
		a := s.images[n]
		if ref != nil {
			return cleanString(ref(a))
		}
		return imageText(a, s.alts[n])
	})
}

// imageText is the default reference for an inline image: "[image: name]".
func imageText(a *Attachment, alt string) string {
	name := a.Filename
	if strings.TrimSpace(alt) != "" && !strings.EqualFold(strings.TrimSpace(alt), name) {
		name = strings.TrimSpace(alt) + " (" + name + ")"
	}
	return `\[image: ` + escapeInline(singleLine(name)) + `\]`
}

func attr(n *html.Node, key string) string {
	for _, a := range n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

func hasAttr(n *html.Node, key string) bool {
	for _, a := range n.Attr {
		if a.Key == key {
			return true
		}
	}
	return false
}

func setAttr(n *html.Node, key, val string) {
	for i := range n.Attr {
		if n.Attr[i].Key == key {
			n.Attr[i].Val = val
			return
		}
	}
	n.Attr = append(n.Attr, html.Attribute{Key: key, Val: val})
}

// findBase returns the first <base href> of the document when it is an
// absolute http(s) URL.
func findBase(n *html.Node) *url.URL {
	if n.Type == html.ElementNode && n.Data == "base" {
		if u, err := url.Parse(strings.TrimSpace(attr(n, "href"))); err == nil &&
			(u.Scheme == "http" || u.Scheme == "https") && u.Host != "" {
			return u
		}
		return nil
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if u := findBase(c); u != nil {
			return u
		}
	}
	return nil
}

// resolve makes a relative link absolute: against <base href> when there is
// one, and protocol-relative links ("//host/path") as https. Other relative
// links are returned unchanged (and lose their link, as they lead nowhere).
func (s *htmlSanitizer) resolve(href string) string {
	h := strings.TrimSpace(href)
	if h == "" || urlScheme(h) != "" || strings.HasPrefix(h, "#") {
		return href
	}
	if strings.HasPrefix(h, "//") {
		if len(h) > 2 && h[2] != '/' {
			scheme := "https"
			if s.base != nil {
				scheme = s.base.Scheme
			}
			return scheme + ":" + h
		}
		return href
	}
	if s.base == nil {
		return href
	}
	// Resolve by hand: url.ResolveReference would re-encode the query.
	origin := s.base.Scheme + "://" + s.base.Host
	if strings.HasPrefix(h, "/") {
		return origin + h
	}
	dir := s.base.EscapedPath()
	if i := strings.LastIndexByte(dir, '/'); i >= 0 {
		dir = dir[:i+1]
	} else {
		dir = "/"
	}
	if strings.HasPrefix(h, "?") {
		return origin + s.base.EscapedPath() + h
	}
	return origin + dir + strings.TrimPrefix(h, "./")
}

func removeAttr(n *html.Node, key string) {
	out := n.Attr[:0]
	for _, a := range n.Attr {
		if a.Key != key {
			out = append(out, a)
		}
	}
	n.Attr = out
}

// urlScheme returns the lower-case scheme of a URL the way a browser sees it
// (ASCII whitespace and control characters ignored), "" when relative.
func urlScheme(u string) string {
	var b strings.Builder
	for _, r := range u {
		if r <= ' ' || r == 0x7F {
			continue
		}
		if r == ':' {
			return strings.ToLower(b.String())
		}
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '+' || r == '-' || r == '.') {
			return ""
		}
		b.WriteRune(r)
	}
	return ""
}

func safeLinkScheme(s string) bool {
	switch s {
	case "http", "https", "mailto", "ftp":
		return true
	}
	return false
}

func textNode(s string) *html.Node { return &html.Node{Type: html.TextNode, Data: s} }

func isInsideLink(n *html.Node) bool {
	for p := n.Parent; p != nil; p = p.Parent {
		if p.Type == html.ElementNode && p.Data == "a" && hasAttr(p, "href") {
			return true
		}
	}
	return false
}

// walk sanitises the subtree below n.
func (s *htmlSanitizer) walk(n *html.Node) {
	for c := n.FirstChild; c != nil; {
		next := c.NextSibling
		switch c.Type {
		case html.CommentNode, html.DoctypeNode:
			n.RemoveChild(c)
		case html.ElementNode:
			s.element(n, c)
		}
		c = next
	}
}

func (s *htmlSanitizer) element(parent, c *html.Node) {
	name := strings.ToLower(c.Data)
	if dropTags[name] || strings.HasPrefix(name, "v:") || strings.HasPrefix(name, "w:") ||
		strings.HasPrefix(name, "m:") || hasAttr(c, "hidden") || hiddenStyleRE.MatchString(attr(c, "style")) ||
		strings.EqualFold(attr(c, "aria-hidden"), "true") && name != "img" {
		parent.RemoveChild(c)
		return
	}
	if strings.HasPrefix(name, "o:") {
		// Office namespace elements (<o:p>): keep their content only.
		s.walk(c)
		unwrap(c)
		return
	}
	switch name {
	case "a":
		href := s.resolve(attr(c, "href"))
		if !safeLinkScheme(urlScheme(href)) {
			removeAttr(c, "href")
		} else {
			setAttr(c, "href", href)
		}
		removeAttr(c, "title")
	case "img":
		s.image(parent, c)
		return
	case "br", "hr", "p", "div", "span", "table", "tr", "td", "th", "tbody", "thead", "tfoot":
	}
	// No attribute other than these survives (the converter may use them).
	keep := c.Attr[:0]
	for _, a := range c.Attr {
		switch a.Key {
		case "href", "class", "id", "style", "role", "colspan", "rowspan", "type", "align", "width", "height":
			keep = append(keep, a)
		}
	}
	c.Attr = keep
	s.walk(c)
}

// unwrap replaces n by its children.
func unwrap(n *html.Node) {
	p := n.Parent
	if p == nil {
		return
	}
	for c := n.FirstChild; c != nil; {
		next := c.NextSibling
		n.RemoveChild(c)
		p.InsertBefore(c, n)
		c = next
	}
	p.RemoveChild(n)
}

func dimension(v string) (int, bool) {
	v = strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(strings.ToLower(v)), "px"))
	n, err := strconv.Atoi(v)
	return n, err == nil
}

var styleDimRE = regexp.MustCompile(`(?i)(?:^|[;\s])(?:max-)?(width|height)\s*:\s*([0-9.]+)\s*px`)

// isIcon reports whether img is declared at most 32×32 pixels.
func isIcon(img *html.Node) bool {
	w, okw := dimension(attr(img, "width"))
	h, okh := dimension(attr(img, "height"))
	return okw && okh && w <= 32 && h <= 32
}

// isSmallImage reports whether img is declared at most 64×64 pixels (a
// remote logo, avatar or icon, not worth a link on a phone).
func isSmallImage(img *html.Node) bool {
	w, okw := dimension(attr(img, "width"))
	h, okh := dimension(attr(img, "height"))
	return okw && okh && w <= 64 && h <= 64
}

// isTrackingImage reports whether img is a tracking pixel: 1×1 or smaller.
func isTrackingImage(img *html.Node) bool {
	for _, k := range []string{"width", "height"} {
		if n, ok := dimension(attr(img, k)); ok && n <= 1 {
			return true
		}
	}
	for _, m := range styleDimRE.FindAllStringSubmatch(attr(img, "style"), -1) {
		if f, err := strconv.ParseFloat(m[2], 64); err == nil && f <= 1 {
			return true
		}
	}
	return false
}

func (s *htmlSanitizer) image(parent, img *html.Node) {
	src := strings.TrimSpace(attr(img, "src"))
	if urlScheme(src) == "" {
		src = s.resolve(src)
	}
	alt := singleLine(attr(img, "alt"))
	scheme := urlScheme(src)
	var repl *html.Node
	switch scheme {
	case "cid":
		if isIcon(img) {
			// Avatars and action icons (Jira, GitHub) carry no information.
			break
		}
		id := strings.ToLower(stripAngle(cidUnescape(src[strings.IndexByte(src, ':')+1:])))
		for _, a := range s.atts {
			if a.ContentID != "" && strings.ToLower(a.ContentID) == id {
				repl = textNode(imgToken + strconv.Itoa(len(s.images)) + "X")
				s.images = append(s.images, a)
				s.alts = append(s.alts, alt)
				break
			}
		}
		if repl == nil && alt != "" {
			repl = textNode(alt)
		}
	case "http", "https":
		if isTrackingImage(img) || strings.TrimSpace(alt) == "" || isSmallImage(img) {
			// Pixels, images without a description, logos and avatars.
			break
		}
		if isInsideLink(img) {
			repl = textNode(alt)
		} else {
			repl = &html.Node{Type: html.ElementNode, Data: "a", DataAtom: atom.A,
				Attr: []html.Attribute{{Key: "href", Val: src}}}
			repl.AppendChild(textNode(alt))
		}
	case "data":
		// Embedded images are dropped.
	default:
		if alt != "" {
			repl = textNode(alt)
		}
	}
	if repl != nil {
		parent.InsertBefore(repl, img)
	}
	parent.RemoveChild(img)
}

func hasClass(n *html.Node, class string) bool {
	for _, c := range strings.Fields(attr(n, "class")) {
		if strings.EqualFold(c, class) {
			return true
		}
	}
	return false
}

var outlookSepRE = regexp.MustCompile(`(?i)border-top\s*:\s*solid`)

// isQuoteMarker reports whether n starts a quoted reply history.
func isQuoteMarker(n *html.Node) bool {
	if n.Type != html.ElementNode || n.Data != "div" {
		return false
	}
	if hasClass(n, "gmail_quote") || hasClass(n, "gmail_quote_container") ||
		strings.EqualFold(attr(n, "id"), "divRplyFwdMsg") || strings.EqualFold(attr(n, "id"), "appendonsend") {
		return true
	}
	st := attr(n, "style")
	return outlookSepRE.MatchString(st) && strings.Contains(strings.ToLower(st), "border:none")
}

// markQuotedHistory moves a reply history (the first quote marker and
// everything after it) into a blockquote preceded by a rule.
func markQuotedHistory(doc *html.Node) {
	var marker *html.Node
	var find func(*html.Node)
	find = func(n *html.Node) {
		for c := n.FirstChild; c != nil && marker == nil; c = c.NextSibling {
			if isQuoteMarker(c) {
				marker = c
				return
			}
			find(c)
		}
	}
	find(doc)
	if marker == nil {
		return
	}
	// Climb while the marker is the last meaningful child of its parent, so
	// that the quoted text that follows the parent is included.
	for marker.Parent != nil && marker.Parent.Data != "body" && marker.Parent.Type == html.ElementNode &&
		onlyBlankAfter(marker) {
		marker = marker.Parent
	}
	parent := marker.Parent
	if parent == nil {
		return
	}
	hr := &html.Node{Type: html.ElementNode, Data: "hr", DataAtom: atom.Hr}
	parent.InsertBefore(hr, marker)
	if hasClass(marker, "gmail_quote") || hasClass(marker, "gmail_quote_container") {
		// A Gmail quote already holds its own blockquote.
		return
	}
	bq := &html.Node{Type: html.ElementNode, Data: "blockquote", DataAtom: atom.Blockquote}
	parent.InsertBefore(bq, marker)
	for c := marker; c != nil; {
		next := c.NextSibling
		parent.RemoveChild(c)
		bq.AppendChild(c)
		c = next
	}
}

func onlyBlankAfter(n *html.Node) bool {
	for c := n.NextSibling; c != nil; c = c.NextSibling {
		if c.Type == html.TextNode && strings.TrimSpace(strings.ReplaceAll(c.Data, "\u00a0", " ")) == "" {
			continue
		}
		return false
	}
	return true
}

// inlineTags are formatting elements that the converter cannot render
// around a block (a table inside <b> comes out as one bold line per row).
var inlineTags = map[string]bool{
	"b": true, "strong": true, "i": true, "em": true, "u": true, "font": true, "span": true,
	"s": true, "strike": true, "del": true, "ins": true, "small": true, "big": true, "sub": true,
	"sup": true, "code": true, "tt": true, "mark": true, "label": true, "abbr": true, "cite": true,
	"center": false,
}

var blockTags = map[string]bool{
	"table": true, "div": true, "p": true, "ul": true, "ol": true, "dl": true, "h1": true, "h2": true,
	"h3": true, "h4": true, "h5": true, "h6": true, "blockquote": true, "pre": true, "hr": true,
	"section": true, "article": true, "header": true, "footer": true, "center": true, "li": true,
}

// unwrapInlineAroundBlocks removes inline formatting elements that contain
// block elements (unclosed <b> or <font> in broken or old HTML), keeping
// their content, so that tables and paragraphs inside still convert.
func unwrapInlineAroundBlocks(n *html.Node) bool {
	hasBlock := false
	for c := n.FirstChild; c != nil; {
		next := c.NextSibling
		if c.Type == html.ElementNode {
			inner := unwrapInlineAroundBlocks(c)
			if inlineTags[c.Data] && inner {
				unwrap(c)
			}
			if inner || blockTags[c.Data] {
				hasBlock = true
			}
		}
		c = next
	}
	return hasBlock
}

var blockInCell = map[string]bool{
	"table": true, "div": true, "ul": true, "ol": true, "h1": true, "h2": true, "h3": true,
	"h4": true, "h5": true, "h6": true, "blockquote": true, "pre": true, "hr": true,
}

// flattenLayoutTables turns tables used for layout into plain blocks (one
// block per row, cells separated by spaces) and prepares data tables for the
// table plugin (line breaks in cells become spaces).
func flattenLayoutTables(doc *html.Node) {
	var tables []*html.Node
	var collect func(*html.Node)
	collect = func(n *html.Node) {
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			collect(c)
			if c.Type == html.ElementNode && c.Data == "table" {
				tables = append(tables, c) // post-order: inner tables first
			}
		}
	}
	collect(doc)
	for _, t := range tables {
		rows := tableRows(t)
		if isLayoutTable(t, rows) {
			flattenTable(t, rows)
			continue
		}
		for _, r := range rows {
			for _, cell := range cells(r) {
				inlineCell(cell)
			}
		}
	}
}

func tableRows(t *html.Node) []*html.Node {
	var rows []*html.Node
	var f func(*html.Node)
	f = func(n *html.Node) {
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			if c.Type != html.ElementNode {
				continue
			}
			switch c.Data {
			case "tr":
				rows = append(rows, c)
			case "thead", "tbody", "tfoot":
				f(c)
			}
		}
	}
	f(t)
	return rows
}

func cells(row *html.Node) []*html.Node {
	var cs []*html.Node
	for c := row.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode && (c.Data == "td" || c.Data == "th") {
			cs = append(cs, c)
		}
	}
	return cs
}

func textLen(n *html.Node) int {
	if n.Type == html.TextNode {
		return len(strings.TrimSpace(n.Data))
	}
	l := 0
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		l += textLen(c)
	}
	return l
}

func containsBlock(n *html.Node) bool {
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if c.Type == html.ElementNode && (blockInCell[c.Data] || containsBlock(c)) {
			return true
		}
	}
	return false
}

func isLayoutTable(t *html.Node, rows []*html.Node) bool {
	switch strings.ToLower(attr(t, "role")) {
	case "presentation", "none":
		return true
	}
	if len(rows) < 2 {
		return true
	}
	maxCells, multi := 0, 0
	for _, r := range rows {
		cs := cells(r)
		if len(cs) > maxCells {
			maxCells = len(cs)
		}
		if len(cs) >= 2 {
			multi++
		}
		for _, c := range cs {
			if containsBlock(c) || textLen(c) > 300 {
				return true
			}
		}
	}
	return maxCells < 2 || multi*2 < len(rows)
}

func flattenTable(t *html.Node, rows []*html.Node) {
	div := &html.Node{Type: html.ElementNode, Data: "div", DataAtom: atom.Div}
	for _, r := range rows {
		rd := &html.Node{Type: html.ElementNode, Data: "div", DataAtom: atom.Div}
		first := true
		for _, c := range cells(r) {
			if textLen(c) == 0 && !containsBlock(c) && !hasImageToken(c) {
				continue
			}
			if !first {
				rd.AppendChild(textNode("  "))
			}
			first = false
			span := &html.Node{Type: html.ElementNode, Data: "span", DataAtom: atom.Span}
			for ch := c.FirstChild; ch != nil; {
				next := ch.NextSibling
				c.RemoveChild(ch)
				span.AppendChild(ch)
				ch = next
			}
			rd.AppendChild(span)
		}
		if rd.FirstChild != nil {
			div.AppendChild(rd)
		}
	}
	if t.Parent != nil {
		t.Parent.InsertBefore(div, t)
		t.Parent.RemoveChild(t)
	}
}

func hasImageToken(n *html.Node) bool {
	if n.Type == html.TextNode {
		return strings.Contains(n.Data, imgToken)
	}
	for c := n.FirstChild; c != nil; c = c.NextSibling {
		if hasImageToken(c) {
			return true
		}
	}
	return false
}

// inlineCell keeps a data table cell on one line: <br> and paragraph
// boundaries become spaces.
func inlineCell(cell *html.Node) {
	var f func(*html.Node)
	f = func(n *html.Node) {
		for c := n.FirstChild; c != nil; {
			next := c.NextSibling
			if c.Type == html.ElementNode {
				switch c.Data {
				case "br":
					n.InsertBefore(textNode(" "), c)
					n.RemoveChild(c)
				case "p":
					f(c)
					c.Data, c.DataAtom = "span", atom.Span
					n.InsertBefore(textNode(" "), c)
				default:
					f(c)
				}
			} else if c.Type == html.TextNode {
				c.Data = collapseSpaceRE.ReplaceAllString(c.Data, " ")
			}
			c = next
		}
	}
	f(cell)
}

var (
	manyBlankRE     = regexp.MustCompile(`\n{3,}`)
	collapseSpaceRE = regexp.MustCompile(`\s+`)
)

// tidyMarkdown drops trailing whitespace and whitespace-only lines (Outlook's
// &nbsp; paragraphs) and collapses blank line runs, outside code blocks.
func tidyMarkdown(md string) string {
	lines := strings.Split(md, "\n")
	inFence := ""
	out := lines[:0]
	blank := 0
	for _, l := range lines {
		if inFence != "" {
			out = append(out, l)
			if isFenceClose(l, inFence) {
				inFence = ""
			}
			continue
		}
		if f := fenceOpen(l); f != "" {
			inFence = f
			blank = 0
			out = append(out, l)
			continue
		}
		t := strings.TrimRight(l, " \t\u00a0")
		if strings.Trim(t, " \t\u00a0\u200b") == "" {
			blank++
			if blank > 1 {
				continue
			}
			out = append(out, "")
			continue
		}
		// Quote lines made only of ">" and whitespace are blank too.
		if strings.Trim(t, "> \u00a0") == "" && strings.HasPrefix(strings.TrimSpace(t), ">") {
			t = strings.TrimRight(strings.Trim(t, " \u00a0"), " ")
			if len(out) > 0 && out[len(out)-1] == t {
				continue
			}
		}
		blank = 0
		out = append(out, t)
	}
	s := strings.Join(out, "\n")
	s = manyBlankRE.ReplaceAllString(s, "\n\n")
	return strings.Trim(s, "\n")
}
