package mailparse

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"os"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/mmgate/mmgate/internal/fault"
)

// Address is one mailbox from an address header.
type Address struct {
	Name  string // display name, decoded; "" if none
	Email string // as given, trimmed
}

// Attachment is one non-body part of a message.
type Attachment struct {
	Filename    string // sanitised, never empty
	ContentType string // e.g. "image/png"
	ContentID   string // without <>, "" if none
	Inline      bool   // referenced from the HTML body by cid:
	Size        int64  // decoded size in bytes
	// Open returns the decoded content; it may be called several times.
	Open func() (io.ReadCloser, error)
}

// Message is a parsed mail.
type Message struct {
	Subject            string // decoded, NUL-free, single line
	From               []Address
	To, Cc             []Address
	ReplyTo            []Address
	Date               time.Time // zero when missing or unparseable
	MessageID          string    // without <>; generated when missing
	MessageIDGenerated bool
	InReplyTo          []string // ids without <>
	References         []string
	Header             map[string][]string // top-level headers, canonical keys, decoded values
	Text               string              // text/plain body ("" if none)
	HTML               string              // text/html body ("" if none)
	Attachments        []*Attachment       // in document order
	Warnings           []string

	embedded []*Message    // parsed message/rfc822 parts, rendered after the body
	segments []bodySegment // the body parts in document order
	spills   []*spillBuf   // spill buffers to remove on Close
}

// Options tunes Parse. The zero value is usable.
type Options struct {
	SpillDir       string // where large decoded parts are written (default os.TempDir())
	SpillThreshold int64  // parts larger than this go to a file (default 1 MiB)
	MaxBodyBytes   int64  // cap on the text/html body kept in memory (default 4 MiB)
	Logger         *slog.Logger
}

const (
	defaultSpillThreshold = 1 << 20
	defaultMaxBodyBytes   = 4 << 20
	maxWarnings           = 50
	maxParts              = 5000
	maxDepth              = 64 // multipart nesting
	maxMessageDepth       = 3  // message/rfc822 nesting rendered inline
)

// Parse reads one RFC 5322 message, streaming. It is tolerant: malformed input
// yields a Message with Warnings; it fails only when nothing usable can be read
// (fault.Invalid) or a spill file cannot be written (fault.Temporary). The
// caller must Close the Message to remove spill files.
func Parse(r io.Reader, opts Options) (*Message, error) {
	return parse(r, opts, 0)
}

func parse(r io.Reader, opts Options, msgDepth int) (*Message, error) {
	if opts.SpillDir == "" {
		opts.SpillDir = os.TempDir()
	}
	if opts.SpillThreshold <= 0 {
		opts.SpillThreshold = defaultSpillThreshold
	}
	if opts.MaxBodyBytes <= 0 {
		opts.MaxBodyBytes = defaultMaxBodyBytes
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	p := &parser{opts: opts, msg: &Message{}, msgDepth: msgDepth}
	err := p.run(r)
	if err != nil {
		_ = p.msg.Close()
		return nil, err
	}
	if len(p.msg.Warnings) > 0 {
		opts.Logger.Debug("mailparse: message parsed with warnings",
			"message_id", p.msg.MessageID, "warnings", len(p.msg.Warnings))
	}
	return p.msg, nil
}

// Close removes the spill files of m and of its embedded messages.
func (m *Message) Close() error {
	if m == nil {
		return nil
	}
	var errs []error
	for _, s := range m.spills {
		if err := s.remove(); err != nil {
			errs = append(errs, err)
		}
	}
	for _, e := range m.embedded {
		if err := e.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

type parser struct {
	opts     Options
	msg      *Message
	msgDepth int
	parts    int
	seen     int64 // bytes read from the input
	text     strings.Builder
	html     strings.Builder
	warnMore int
	altCtx   altCtx // the multipart/alternative the current part belongs to
	altCount int
	// charsets are the labels tried for raw 8-bit header bytes: the
	// top-level Content-Type charset, then the charsets of the body parts.
	charsets []string
}

// addCharset records a charset label as a fallback for raw 8-bit headers.
func (p *parser) addCharset(label string) {
	label = strings.TrimSpace(label)
	if label == "" || len(p.charsets) >= 4 {
		return
	}
	for _, c := range p.charsets {
		if strings.EqualFold(c, label) {
			return
		}
	}
	p.charsets = append(p.charsets, label)
}

// altCtx locates a part below its nearest multipart/alternative ancestor:
// id numbers the alternative (0: none), child is the index of the
// alternative's child that holds the part.
type altCtx struct{ id, child int }

// bodySegment is one inline text/plain or text/html part. Render shows every
// segment, except that of the children of one multipart/alternative only the
// best one is shown.
type bodySegment struct {
	html bool
	text string
	alt  altCtx
}

type countingReader struct {
	r io.Reader
	n *int64
}

func (c countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	*c.n += int64(n)
	return n, err
}

func (p *parser) warn(format string, args ...any) {
	if len(p.msg.Warnings) >= maxWarnings {
		p.warnMore++
		return
	}
	p.msg.Warnings = append(p.msg.Warnings, cleanString(fmt.Sprintf(format, args...)))
}

func (p *parser) run(r io.Reader) error {
	// The raw message's hash names a message without a Message-ID; one
	// with it is not hashed past the header.
	sum := &hashSink{h: sha256.New()}
	src := countingReader{r: io.TeeReader(r, sum), n: &p.seen}
	br := getReader(src)
	defer putReader(br)
	if peek, _ := br.Peek(readBufSize); bytes.IndexByte(peek, '\n') < 0 && bytes.IndexByte(peek, '\r') >= 0 {
		// Classic Mac OS line endings (CR only): translate them.
		p.warn("the message uses CR-only line endings")
		br = getReader(crReader{br})
		defer putReader(br)
	}

	h, leftover, err := readHeader(br, true, p.warn)
	if err != nil {
		return fault.Wrap(fault.Temporary, "read_failed", "reading the message failed", err)
	}
	sum.off = messageIDOf(h) != ""
	body := br
	if leftover != nil {
		if len(h) == 0 {
			p.warn("no header found: the whole message is treated as text")
		} else {
			p.warn("no blank line between header and body")
		}
		body = getReader(io.MultiReader(bytes.NewReader(leftover), br))
		defer putReader(body)
	}
	if err := p.entity(h, body, "", "text/plain", 0); err != nil {
		return err
	}
	// Read everything (hashed when there is no Message-ID), including what
	// no part consumed.
	if _, err := io.Copy(io.Discard, br); err != nil {
		return fault.Wrap(fault.Temporary, "read_failed", "reading the message failed", err)
	}
	if p.seen == 0 {
		return fault.New(fault.Invalid, "empty_message", "the message is empty")
	}
	m := p.msg
	if _, tp := parseParams(h.Get("Content-Type"), func(string, ...any) {}); tp["charset"] != "" {
		p.charsets = append([]string{tp["charset"]}, p.charsets...)
	}
	m.Text = p.text.String()
	m.HTML = p.html.String()
	if len(h) == 0 && strings.TrimSpace(m.Text) == "" && len(m.Attachments) == 0 {
		return fault.New(fault.Invalid, "unreadable_message", "the message has neither a header nor text")
	}
	p.fillHeader(h, func() string { return hex.EncodeToString(sum.h.Sum(nil)) })
	markInline(m)
	if p.warnMore > 0 {
		m.Warnings = append(m.Warnings, fmt.Sprintf("%d more warnings not shown", p.warnMore))
	}
	return nil
}

// hashSink hashes what is written to it until it is turned off.
type hashSink struct {
	h   hash.Hash
	off bool
}

func (s *hashSink) Write(b []byte) (int, error) {
	if !s.off {
		s.h.Write(b)
	}
	return len(b), nil
}

// messageIDOf is the Message-ID of a header, "" when it has none usable.
func messageIDOf(h header) string {
	if ids := parseIDs(h.Get("Message-ID")); len(ids) > 0 {
		return ids[0]
	}
	if v := stripAngle(unfold(h.Get("Message-ID"))); v != "" && !strings.ContainsAny(v, " \t") {
		return cleanString(v)
	}
	return ""
}

// fillHeader sets the header fields of the message; digest (the raw
// message's hash) is called only when the header has no Message-ID.
func (p *parser) fillHeader(h header, digest func() string) {
	m := p.msg
	m.Header = make(map[string][]string, len(h))
	cs := p.charsets
	for _, f := range h {
		k := canonicalKey(f.Name)
		m.Header[k] = append(m.Header[k], headerText(f.Value, k+" header", cs, func(string, ...any) {}))
	}
	m.Subject = singleLine(stripInvisible(headerText(h.Get("Subject"), "subject", cs, p.warn)))
	m.From = parseAddressList(h.Get("From"), "From", cs, p.warn)
	m.To = parseAddressList(strings.Join(h.Values("To"), ", "), "To", cs, p.warn)
	m.Cc = parseAddressList(strings.Join(h.Values("Cc"), ", "), "Cc", cs, p.warn)
	m.ReplyTo = parseAddressList(h.Get("Reply-To"), "Reply-To", cs, p.warn)
	if d := h.Get("Date"); d != "" {
		t, ok := parseDate(d)
		if !ok {
			p.warn("unparseable Date header %q", truncateForWarning(d))
		}
		m.Date = t
	}
	if m.MessageID = messageIDOf(h); m.MessageID == "" {
		m.MessageID = digest()[:32] + "@mmgate.generated"
		m.MessageIDGenerated = true
	}
	m.InReplyTo = parseIDs(h.Get("In-Reply-To"))
	m.References = parseIDs(strings.Join(h.Values("References"), " "))
}

func partName(path string) string {
	if path == "" {
		return "the message body"
	}
	return "part " + path
}

func childPath(parent string, i int) string {
	if parent == "" {
		return strconv.Itoa(i)
	}
	return parent + "." + strconv.Itoa(i)
}

// entity handles one MIME entity (the message itself or a part).
func (p *parser) entity(h header, body *bufio.Reader, path, defaultCT string, depth int) error {
	ct, params := parseParams(h.Get("Content-Type"), p.warn)
	if ct == "" {
		ct = defaultCT
	} else if !strings.Contains(ct, "/") {
		p.warn("invalid Content-Type %q in %s: treated as %s", truncateForWarning(ct), partName(path), defaultCT)
		ct = defaultCT
	}
	if !strings.HasPrefix(ct, "multipart/") {
		leafPath := path
		if leafPath == "" {
			leafPath = "1"
		}
		return p.leaf(h, ct, params, body, leafPath)
	}
	boundary := params["boundary"]
	if boundary == "" {
		if boundary = guessBoundary(body); boundary == "" {
			p.warn("%s in %s has no boundary: treated as text", ct, partName(path))
			return p.leaf(h, "text/plain", params, body, childPath(path, 1))
		}
		p.warn("%s in %s has no boundary parameter: boundary %q taken from the body", ct, partName(path), truncateForWarning(boundary))
	}
	if depth >= maxDepth {
		p.warn("multipart nesting deeper than %d in %s: kept as an attachment", maxDepth, partName(path))
		return p.leaf(h, "application/octet-stream", params, body, childPath(path, 1))
	}
	childDefault := "text/plain"
	if ct == "multipart/digest" {
		childDefault = "message/rfc822"
	}
	mr := newMultipartReader(body, boundary)
	isAlt := ct == "multipart/alternative"
	outerAlt := p.altCtx
	defer func() { p.altCtx = outerAlt }()
	altID := 0
	if isAlt {
		p.altCount++
		altID = p.altCount
	}
	for i := 1; ; i++ {
		if isAlt {
			p.altCtx = altCtx{id: altID, child: i}
		}
		pr, err := mr.NextPart()
		if err != nil {
			return fault.Wrap(fault.Temporary, "read_failed", "reading the message failed", err)
		}
		if pr == nil {
			break
		}
		p.parts++
		if p.parts > maxParts {
			p.warn("more than %d MIME parts: the rest ignored", maxParts)
			break
		}
		if err := p.part(pr, childPath(path, i), childDefault, depth+1); err != nil {
			return err
		}
	}
	switch {
	case mr.parts == 0:
		p.warn("boundary of %s in %s never found: its content is treated as text", ct, partName(path))
		pre := mr.preamble
		if err := p.leaf(nil, "text/plain", map[string]string{"charset": params["charset"]}, bufio.NewReader(bytes.NewReader(pre)), childPath(path, 1)); err != nil {
			return err
		}
	case mr.state == stateEOF:
		p.warn("closing boundary of %s in %s missing", ct, partName(path))
	}
	if err := mr.Drain(); err != nil {
		return fault.Wrap(fault.Temporary, "read_failed", "reading the message failed", err)
	}
	return nil
}

// part reads the header of one part of a multipart, then the part.
func (p *parser) part(pr io.Reader, path, defaultType string, depth int) error {
	pbr := getReader(pr)
	defer putReader(pbr)
	ph, leftover, err := readHeader(pbr, false, p.warn)
	if err != nil {
		return fault.Wrap(fault.Temporary, "read_failed", "reading the message failed", err)
	}
	body := pbr
	if leftover != nil {
		if len(ph) > 0 {
			p.warn("no blank line between header and body in %s", partName(path))
		}
		body = getReader(io.MultiReader(bytes.NewReader(leftover), pbr))
		defer putReader(body)
	}
	return p.entity(ph, body, path, defaultType, depth)
}

// leaf decodes one leaf part into the body or an attachment.
func (p *parser) leaf(h header, ct string, params map[string]string, body io.Reader, path string) error {
	var r io.Reader = body
	cte := strings.ToLower(strings.TrimSpace(unfold(h.Get("Content-Transfer-Encoding"))))
	var b64 *b64Reader
	var qp *qpReader
	switch cte {
	case "base64":
		b64 = newB64Reader(body)
		defer b64.release()
		r = b64
	case "quoted-printable":
		qp = newQPReader(body)
		defer qp.release()
		r = qp
	case "", "7bit", "8bit", "binary", "7-bit", "8-bit":
	default:
		p.warn("unknown Content-Transfer-Encoding %q in %s: content kept as is", truncateForWarning(cte), partName(path))
	}
	disp, dparams := parseParams(h.Get("Content-Disposition"), p.warn)
	filename := dparams["filename"]
	if filename == "" {
		filename = params["name"]
	}
	if !utf8.ValidString(filename) {
		filename = decodeRawHeader([]byte(filename), "the file name of "+partName(path),
			append([]string{params["charset"]}, p.charsets...), p.warn)
	}
	cid := stripAngle(unfold(h.Get("Content-ID")))
	isText := ct == "text/plain" || ct == "text/html"
	bodyPart := isText && disp != "attachment" && strings.TrimSpace(filename) == ""
	isMessage := ct == "message/rfc822" || ct == "message/global"

	sb := &spillBuf{dir: p.opts.SpillDir, threshold: p.opts.SpillThreshold}
	var w io.Writer = sb
	discard := p.msgDepth > 0 && !bodyPart && !isMessage
	if discard {
		// Attachments of embedded messages stay inside the .eml.
		w = &countWriter{}
	}
	cb := copyBufs.Get().(*[]byte)
	_, err := io.CopyBuffer(w, r, *cb)
	copyBufs.Put(cb)
	if err != nil {
		_ = sb.remove()
		if sb.path != "" || isSpillErr(err) {
			return fault.Wrap(fault.Temporary, "spill_failed", "storing a message part failed", err)
		}
		return fault.Wrap(fault.Temporary, "read_failed", "reading the message failed", err)
	}
	if err := sb.finish(); err != nil {
		_ = sb.remove()
		return fault.Wrap(fault.Temporary, "spill_failed", "storing a message part failed", err)
	}
	if b64 != nil && (b64.noise > 0 || b64.dropped > 0) {
		p.warn("malformed base64 in %s: %d stray bytes skipped", partName(path), b64.noise+b64.dropped)
	}
	if qp != nil && qp.broken > 0 {
		p.warn("malformed quoted-printable in %s: %d escapes kept as is", partName(path), qp.broken)
	}

	if bodyPart {
		raw, err := sb.head(p.opts.MaxBodyBytes)
		if err != nil {
			_ = sb.remove()
			return fault.Wrap(fault.Temporary, "spill_failed", "reading a stored message part failed", err)
		}
		label := params["charset"]
		if label == "" && ct == "text/html" {
			label = htmlMetaCharset(raw)
		}
		p.addCharset(label)
		truncated := sb.size > p.opts.MaxBodyBytes
		if truncated {
			raw = trimPartialRune(raw)
		}
		s := normalizeNewlines(decodeCharset(raw, label, partName(path), p.warn))
		if ct == "text/plain" && strings.EqualFold(params["format"], "flowed") {
			s = unflow(s, strings.EqualFold(params["delsp"], "yes"))
		}
		if ct == "text/plain" && p.msgDepth == 0 {
			s = p.extractUU(s, path)
		}
		dst := &p.text
		if ct == "text/html" {
			dst = &p.html
		}
		if dst.Len() > 0 && strings.TrimSpace(s) != "" {
			dst.WriteString("\n\n")
		}
		dst.WriteString(s)
		if strings.TrimSpace(s) != "" {
			p.msg.segments = append(p.msg.segments, bodySegment{html: ct == "text/html", text: s, alt: p.altCtx})
		}
		if !truncated {
			_ = sb.remove()
			return nil
		}
		p.warn("%s body in %s is larger than %d bytes: truncated in the post, kept whole as an attachment",
			ct, partName(path), p.opts.MaxBodyBytes)
	}
	if discard {
		return nil
	}
	a := &Attachment{
		Filename:    sanitizeFilename(filename, ct, len(p.msg.Attachments)+1),
		ContentType: ct,
		ContentID:   cleanString(cid),
		Size:        sb.size,
		Open:        sb.open,
	}
	p.msg.Attachments = append(p.msg.Attachments, a)
	p.msg.spills = append(p.msg.spills, sb)
	if isMessage {
		if strings.TrimSpace(filename) == "" {
			a.Filename = sanitizeFilename("", ct, len(p.msg.Attachments))
		}
		if sb.size <= p.opts.MaxBodyBytes && p.msgDepth < maxMessageDepth {
			rc, err := sb.open()
			if err != nil {
				return fault.Wrap(fault.Temporary, "spill_failed", "reading a stored message part failed", err)
			}
			inner, err := parse(rc, p.opts, p.msgDepth+1)
			_ = rc.Close()
			if err == nil {
				p.msg.embedded = append(p.msg.embedded, inner)
				if strings.TrimSpace(filename) == "" && inner.Subject != "" {
					a.Filename = sanitizeFilename(inner.Subject+".eml", ct, len(p.msg.Attachments))
				}
			} else if fault.KindOf(err) == fault.Temporary {
				return err
			}
		}
	}
	return nil
}

type countWriter struct{ n int64 }

func (c *countWriter) Write(b []byte) (int, error) { c.n += int64(len(b)); return len(b), nil }

func isSpillErr(err error) bool {
	var pe *os.PathError
	return errors.As(err, &pe)
}

func trimPartialRune(b []byte) []byte {
	// Drop up to 3 bytes of an incomplete trailing UTF-8 sequence.
	for i := 0; i < 3 && len(b) > 0; i++ {
		r, size := utf8.DecodeLastRune(b)
		if r != utf8.RuneError || size != 1 {
			break
		}
		if b[len(b)-1] < 0x80 {
			break
		}
		b = b[:len(b)-1]
	}
	return b
}

func normalizeNewlines(s string) string {
	if !strings.Contains(s, "\r") {
		return s
	}
	s = strings.ReplaceAll(s, "\r\n", "\n")
	return strings.ReplaceAll(s, "\r", "\n")
}

var extByType = map[string]string{
	"application/json": ".json", "application/msword": ".doc", "application/ms-tnef": ".dat",
	"application/octet-stream": ".bin", "application/pdf": ".pdf", "application/pgp-signature": ".asc",
	"application/pkcs7-signature": ".p7s", "application/x-pkcs7-signature": ".p7s",
	"application/vnd.ms-excel": ".xls", "application/vnd.ms-powerpoint": ".ppt",
	"application/vnd.openxmlformats-officedocument.wordprocessingml.document":   ".docx",
	"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet":         ".xlsx",
	"application/vnd.openxmlformats-officedocument.presentationml.presentation": ".pptx",
	"application/xml": ".xml", "application/zip": ".zip", "application/gzip": ".gz",
	"application/x-gzip": ".gz", "application/ics": ".ics",
	"image/png": ".png", "image/jpeg": ".jpg", "image/jpg": ".jpg", "image/gif": ".gif", "image/webp": ".webp",
	"image/bmp": ".bmp", "image/svg+xml": ".svg", "image/tiff": ".tif",
	"text/plain": ".txt", "text/html": ".html", "text/csv": ".csv", "text/calendar": ".ics",
	"text/markdown": ".md", "text/xml": ".xml", "text/rfc822-headers": ".txt", "text/x-vcard": ".vcf",
	"text/vcard": ".vcf", "message/rfc822": ".eml", "message/global": ".eml",
	"message/delivery-status": ".txt", "message/disposition-notification": ".txt",
	"audio/mpeg": ".mp3", "video/mp4": ".mp4",
}

// typeByExt maps a file extension to a content type (the inverse of extByType,
// independent of the system's MIME tables so results are reproducible).
var typeByExt = func() map[string]string {
	m := map[string]string{".jpeg": "image/jpeg", ".htm": "text/html", ".log": "text/plain"}
	for ct, ext := range extByType {
		if cur, ok := m[ext]; !ok || ct < cur && !strings.HasPrefix(ct, "application/x-") && ct != "image/jpg" {
			m[ext] = ct
		}
	}
	m[".jpg"], m[".ics"], m[".txt"], m[".eml"] = "image/jpeg", "text/calendar", "text/plain", "message/rfc822"
	m[".gz"], m[".p7s"], m[".xml"], m[".vcf"] = "application/gzip", "application/pkcs7-signature", "application/xml", "text/vcard"
	return m
}()

// sanitizeFilename returns a file name without path, control or reserved
// characters, never empty: "attachment-N.ext" (ext from the content type) when
// there is no usable name, "winmail.dat" and "invite.ics" for TNEF and calendars.
func sanitizeFilename(name, ct string, n int) string {
	name = stripInvisible(cleanString(name))
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		if base := strings.TrimSpace(name[i+1:]); base != "" {
			name = base
		} else {
			name = strings.NewReplacer("/", "_", `\`, "_").Replace(name)
		}
	}
	name = strings.Map(func(r rune) rune {
		switch {
		case r < 0x20, r == 0x7F, r >= 0x80 && r < 0xA0, r == '\u2028', r == '\u2029', r == '\uFEFF':
			return -1
		case strings.ContainsRune(`<>:"|?*`, r):
			return '_'
		case unicode.IsSpace(r):
			return ' '
		case unicode.Is(unicode.Cf, r): // bidi overrides and other invisible formatting
			return -1
		}
		return r
	}, name)
	name = strings.Trim(singleLine(name), " .")
	if len(name) > 200 {
		ext := path.Ext(name)
		if len(ext) > 16 || !utf8.ValidString(ext) {
			ext = ""
		}
		cut := 200 - len(ext)
		for cut > 0 && !utf8.RuneStart(name[cut]) {
			cut--
		}
		name = name[:cut] + ext
	}
	if name != "" {
		return name
	}
	switch ct {
	case "application/ms-tnef", "application/vnd.ms-tnef":
		return "winmail.dat"
	case "text/calendar", "application/ics":
		return "invite.ics"
	}
	ext, ok := extByType[ct]
	if !ok {
		ext = ".bin"
	}
	if ct == "message/rfc822" || ct == "message/global" {
		return "message-" + strconv.Itoa(n) + ext
	}
	return "attachment-" + strconv.Itoa(n) + ext
}

var cidRefRE = regexp.MustCompile(`(?i)cid:([^"'\s>)]+)`)

// markInline sets Attachment.Inline for parts the HTML body refers to by cid:.
func markInline(m *Message) {
	if m.HTML == "" || len(m.Attachments) == 0 {
		return
	}
	refs := map[string]bool{}
	for _, mm := range cidRefRE.FindAllStringSubmatch(m.HTML, -1) {
		refs[strings.ToLower(cidUnescape(mm[1]))] = true
	}
	for _, a := range m.Attachments {
		if a.ContentID != "" && refs[strings.ToLower(a.ContentID)] {
			a.Inline = true
		}
	}
}

// cidUnescape undoes URL escaping in a cid: reference (RFC 2392).
func cidUnescape(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	return string(percentDecode(s))
}

// unflow joins the soft line breaks of format=flowed text (RFC 3676): a line
// ending in a space continues on the next line. Quoted lines are left alone.
func unflow(s string, delsp bool) string {
	lines := strings.Split(s, "\n")
	var b strings.Builder
	b.Grow(len(s))
	for i, l := range lines {
		if strings.HasPrefix(l, " ") {
			l = l[1:] // space-stuffing
		}
		soft := strings.HasSuffix(l, " ") && l != "-- " && !strings.HasPrefix(l, ">") &&
			i+1 < len(lines) && !strings.HasPrefix(lines[i+1], ">")
		if soft && delsp {
			l = l[:len(l)-1]
		}
		b.WriteString(l)
		if !soft && i+1 < len(lines) {
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// crReader turns CR line endings into LF (for CR-only messages).
type crReader struct{ r io.Reader }

func (c crReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	for i := range b[:n] {
		if b[i] == '\r' {
			b[i] = '\n'
		}
	}
	return n, err
}

// guessBoundary looks at the start of a multipart body that has no boundary
// parameter for a delimiter line ("--something") followed by a header line
// or a blank line, and returns the boundary, or "".
func guessBoundary(body *bufio.Reader) string {
	peek, _ := body.Peek(readBufSize)
	lines := strings.Split(strings.ReplaceAll(string(peek), "\r\n", "\n"), "\n")
	for i, l := range lines {
		if i+1 >= len(lines) || i > 200 {
			break
		}
		l = strings.TrimRight(l, " \t")
		if !strings.HasPrefix(l, "--") || len(l) < 3 || len(l) > 72 || strings.HasSuffix(l, "--") && len(l) > 4 {
			continue
		}
		b := l[2:]
		if strings.TrimLeft(b, "-") == "" {
			continue // a rule made of dashes
		}
		next := lines[i+1]
		if _, _, ok := headerLineName([]byte(next)); ok || strings.TrimSpace(next) == "" {
			return b
		}
	}
	return ""
}

var uuBeginRE = regexp.MustCompile(`(?m)^begin [0-7]{3,4} ([^\n]+)\n`)

// extractUU moves uuencoded files ("begin 644 name" ... "end") from a text
// body into attachments. A block that does not decode cleanly stays text.
func (p *parser) extractUU(s, path string) string {
	if !strings.Contains(s, "begin ") {
		return s
	}
	var out strings.Builder
	rest := s
	for {
		loc := uuBeginRE.FindStringSubmatchIndex(rest)
		if loc == nil {
			break
		}
		name := strings.TrimSpace(rest[loc[2]:loc[3]])
		data, n, ok := decodeUUBlock(rest[loc[1]:])
		if !ok {
			out.WriteString(rest[:loc[1]])
			rest = rest[loc[1]:]
			continue
		}
		out.WriteString(rest[:loc[0]])
		rest = rest[loc[1]+n:]
		sb := &spillBuf{dir: p.opts.SpillDir, threshold: p.opts.SpillThreshold}
		if _, err := sb.Write(data); err != nil {
			_ = sb.remove()
			p.warn("uuencoded file in %s could not be stored", partName(path))
			continue
		}
		if err := sb.finish(); err != nil {
			_ = sb.remove()
			p.warn("uuencoded file in %s could not be stored", partName(path))
			continue
		}
		ct := typeByExt[strings.ToLower(path2ext(name))]
		if ct == "" {
			ct = "application/octet-stream"
		}
		p.msg.Attachments = append(p.msg.Attachments, &Attachment{
			Filename:    sanitizeFilename(name, ct, len(p.msg.Attachments)+1),
			ContentType: ct,
			Size:        sb.size,
			Open:        sb.open,
		})
		p.msg.spills = append(p.msg.spills, sb)
	}
	out.WriteString(rest)
	return out.String()
}

func path2ext(name string) string { return path.Ext(strings.ReplaceAll(name, "\\", "/")) }

// decodeUUBlock decodes uuencoded lines up to and including "end"; n is the
// number of bytes of s consumed.
func decodeUUBlock(s string) (data []byte, n int, ok bool) {
	for n < len(s) {
		end := strings.IndexByte(s[n:], '\n')
		line := s[n:]
		if end >= 0 {
			line = s[n : n+end]
			n += end + 1
		} else {
			n = len(s)
		}
		line = strings.TrimRight(line, " \r")
		if line == "end" {
			return data, n, true
		}
		if line == "" || line == "`" {
			continue
		}
		cnt := int(line[0]-' ') & 63
		if line[0] < ' ' || line[0] > '`' {
			return nil, 0, false
		}
		var chunk []byte
		for i := 1; i+3 < len(line)+3 && len(chunk) < cnt; i += 4 {
			var q [4]byte
			for k := 0; k < 4; k++ {
				c := byte('`')
				if i+k < len(line) {
					c = line[i+k]
				}
				if c < ' ' || c > '`' {
					return nil, 0, false
				}
				q[k] = (c - ' ') & 63
			}
			chunk = append(chunk, q[0]<<2|q[1]>>4, q[1]<<4|q[2]>>2, q[2]<<6|q[3])
		}
		if len(chunk) < cnt {
			return nil, 0, false
		}
		data = append(data, chunk[:cnt]...)
		if len(data) > 8<<20 {
			return nil, 0, false
		}
	}
	return nil, 0, false
}
