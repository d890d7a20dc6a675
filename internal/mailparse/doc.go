// Package mailparse owns the translation of one raw RFC 5322 message into a
// Message (decoded headers, text and HTML bodies, attachments) and the rendering
// of that Message as safe Mattermost Markdown.
//
// It is pure: bytes in, values out. It must never touch the network, the spool
// or Mattermost, never log message content or secrets, and never render mail
// content as Markdown it was not: every string that comes from a mail is escaped,
// mentions are neutralised and remote images are never rendered as images.
//
// # Parsing
//
// Parse streams the message once. The MIME tree is walked by a tolerant streaming
// reader of its own (boundaries are matched line by line, a missing closing
// boundary ends the part at the end of its parent, a missing header/body blank
// line is tolerated). Every leaf part is transfer-decoded (tolerant base64 and
// quoted-printable decoders) straight into a spill buffer that stays in memory up
// to Options.SpillThreshold and continues in a file under Options.SpillDir
// beyond it, so peak memory does not grow with the size of attachments and small
// and large messages follow the same code path. enmime's own part decoding holds
// whole parts in memory and guesses charsets with chardet, so it is not used:
// only its tolerant media type parser (mediatype.Parse) is. Header parameters,
// RFC 2231 parameters (continuations and any charset) and RFC 2047 encoded
// words are decoded here, through the WHATWG
// Encoding Standard label mapping (golang.org/x/text/encoding/htmlindex) with an
// IANA fallback: us-ascii and iso-8859-1 mean windows-1252, shift_jis means
// windows-31j, gb2312 means GBK. A part labelled us-ascii, iso-8859-1 or
// windows-1252 (or not labelled) whose bytes are valid UTF-8 is decoded as UTF-8
// (labels lie, and that is by far the most common lie). An unknown label is a
// Warning and the part is decoded as UTF-8 with invalid bytes replaced.
//
// Body parts: the first inline text/plain part is Message.Text and the first
// inline text/html part is Message.HTML; further inline text parts of the same
// kind (Apple Mail's text, image, text) are appended. Everything else is an
// Attachment, in document order: real attachments, inline images, text/calendar
// invites (.ics), application/ms-tnef (winmail.dat) and message/rfc822 parts.
// uuencoded files in a plain text body ("begin 644 name" ... "end") are moved
// to attachments when they decode cleanly.
//
// Malformed mail: a multipart without a boundary parameter gets the boundary
// of the first "--token" line of its body that is followed by a header or a
// blank line; a part that ends with its parent (closing boundary missing)
// loses its last line ending, as it would have before a delimiter; CR-only
// messages (classic Mac OS) are read as if the CRs were LFs; nesting up to 64
// multipart levels is walked (deeper content becomes one attachment).
// Raw 8-bit bytes in headers that are not valid UTF-8 are decoded with the
// top-level Content-Type charset, else the charset of the first body part,
// else windows-1252 (every byte maps, so accents survive); raw ISO-2022-JP
// escapes are recognised. The same goes for raw 8-bit file names. UTF-7
// (unknown to the Encoding Standard) is decoded by a small decoder of its own.
// Bidi embedding, override and isolate controls (U+202A–U+202E,
// U+2066–U+2069) are removed from every string; subjects, display names and
// file names also lose zero-width characters (not the joiner used by emoji).
//
// A nested message/rfc822 part is kept as an .eml attachment and, when it is not
// larger than MaxBodyBytes, also parsed and rendered inline after the body
// (its subject, sender and body, below a "Forwarded message" line) so that a
// forwarded-as-attachment mail never looks empty.
//
// # Rendering
//
// Render produces "**subject**", "From: name <email>" and the body. To and Cc are
// left out: the post is a direct message to the recipient, and phones have little
// room. Attachments are not listed (the relay uploads them), only inline images
// are referenced where they were.
//
// The body is rendered from every inline text part in document order, except
// that of the children of one multipart/alternative only one is shown: the
// last one holding HTML with text, else the last one with plain text. So a
// mixed text part followed by an HTML part shows both, and an alternative
// whose HTML holds only images falls back to its text. HTML is sanitised before conversion (see html.go): scripts, styles,
// forms, frames and other active content are removed, unsafe links lose their
// URL, remote images become links (tracking pixels disappear), cid: images go
// through RenderOptions.ImageRef, remote images declared at most 64×64 pixels
// (logos, avatars) are dropped, relative links are resolved against
// <base href> (ServiceNow) and protocol-relative ones as https, inline
// formatting wrapped around blocks (an unclosed <b> before a table) is
// unwrapped so the blocks still convert, Outlook's conditional comments and Office
// namespaces are dropped, layout tables are flattened and quoted reply history
// (Gmail's div.gmail_quote, Outlook's #divRplyFwdMsg or border-top separator,
// blockquote type=cite) is kept but turned into a Markdown blockquote after a
// rule, so it reads as secondary and Mattermost folds long posts anyway.
//
// Plain text is escaped character by character (URLs are left untouched so that
// they stay clickable). Blocks of text that are clearly preformatted are put in
// a fenced code block instead; the heuristic (isPreformatted) is: at least two
// lines in a blank-line separated block and either half of its lines contain an
// inner run of 3+ spaces or a tab (aligned columns), or it contains ASCII table
// rules (+---+, |...|), box drawing characters, or stack trace lines
// ("\tat ...", "  File \"...\", line N", "Traceback", "goroutine N [").
//
// Mentions never notify: an @ that starts a word gets U+200B after it, in the
// subject, the sender and the body, outside URLs.
package mailparse
