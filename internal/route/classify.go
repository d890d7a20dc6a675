package route

import (
	"fmt"
	"mime"
	"net/mail"
	"strings"
)

// Kind says what sort of mail a message is, for loop protection: a gateway
// that posts auto-replies and bounces as ordinary mail feeds mail loops and
// floods people with noise.
type Kind string

// Kinds of mail. Tool notifications carry "Auto-Submitted: auto-generated"
// and "Precedence: bulk": they are the gateway's normal traffic (KindNormal).
const (
	KindNormal    Kind = ""
	KindAutoReply Kind = "auto-reply" // out-of-office and other automatic answers
	KindBounce    Kind = "bounce"     // delivery status notifications
	KindLoop      Kind = "loop"       // mail mmgate generated, or that went round too often
)

// LoopHeader marks mail that mmgate generated: mail that comes back with it
// is never posted. mmgate sends no mail today; whatever sends mail on its
// behalf (a reply or notification feature) must set this header.
const LoopHeader = "X-Mmgate-Loop"

// maxHops is how many Received headers a message may carry before it is
// taken for a loop (postfix's hopcount_limit is 50; real mail has < 20).
const maxHops = 50

// ClassifyInput is what Classify looks at.
type ClassifyInput struct {
	Sender     string              // envelope sender; "" is the null sender when NoEnvelope is false
	NoEnvelope bool                // the intake had no envelope (postback, IMAP)
	Subject    string              // decoded
	Header     map[string][]string // decoded top-level headers, canonical keys
}

// Classify says whether a message is an auto-reply, a bounce or a loop, and
// why; KindNormal (with an empty reason) for everything else.
func Classify(in ClassifyInput) (Kind, string) {
	h := func(name string) string {
		if v := in.Header[name]; len(v) > 0 {
			return strings.TrimSpace(v[0])
		}
		return ""
	}
	if v := h(LoopHeader); v != "" {
		return KindLoop, fmt.Sprintf("the message carries %s (%s): mmgate sent it", LoopHeader, v)
	}
	if n := len(in.Header["Received"]); n > maxHops {
		return KindLoop, fmt.Sprintf("the message has %d Received headers (a mail loop)", n)
	}

	ct, params, _ := mime.ParseMediaType(h("Content-Type"))
	report := strings.ToLower(params["report-type"])
	switch {
	case ct == "multipart/report" && report == "delivery-status":
		return KindBounce, "a delivery status notification (multipart/report; report-type=delivery-status)"
	case ct == "multipart/report" && report == "disposition-notification":
		return KindAutoReply, "a read receipt (multipart/report; report-type=disposition-notification)"
	case ct == "message/delivery-status":
		return KindBounce, "a delivery status notification (message/delivery-status)"
	}
	nullSender := !in.NoEnvelope && (in.Sender == "" || in.Sender == "<>")
	if in.NoEnvelope && h("Return-Path") == "<>" {
		nullSender = true
	}
	from := strings.ToLower(strings.Join(in.Header["From"], ","))
	if nullSender && (strings.Contains(from, "mailer-daemon") || strings.Contains(from, "postmaster@")) {
		return KindBounce, "null sender and From " + firstAddr(from) + " (a bounce)"
	}

	switch as := strings.ToLower(h("Auto-Submitted")); {
	case strings.HasPrefix(as, "auto-replied"):
		return KindAutoReply, "Auto-Submitted: " + as
	case strings.HasPrefix(as, "auto-notified"):
		return KindAutoReply, "Auto-Submitted: " + as + " (a notification about other mail)"
	}
	for _, name := range []string{"X-Autoreply", "X-Autorespond", "X-Autoresponder"} {
		if v := strings.ToLower(h(name)); v != "" && v != "no" && v != "0" && v != "false" {
			return KindAutoReply, name + ": " + v
		}
	}
	if p := strings.ToLower(h("Precedence")); p == "auto_reply" {
		return KindAutoReply, "Precedence: auto_reply"
	}
	if p := autoReplySubject(in.Subject); p != "" {
		// "Out of office" says it all; shorter prefixes ("Auto:") need a
		// second sign: Exchange's markers of its automatic replies, or a null
		// sender (an answer that must not be answered).
		if strings.HasPrefix(strings.ToLower(p), "out of office") || nullSender ||
			h("X-Auto-Response-Suppress") != "" || h("X-Ms-Exchange-Inbox-Rules-Loop") != "" {
			return KindAutoReply, fmt.Sprintf("subject starts with %q", p)
		}
	}
	return KindNormal, ""
}

// autoReplyPrefixes are subject prefixes of out-of-office and automatic
// replies in the languages our users' mail servers speak most.
var autoReplyPrefixes = []string{
	"out of office", "automatic reply:", "auto:", "autoreply:", "auto-reply:", "auto reply:",
	"abwesenheitsnotiz", "automatische antwort:", "réponse automatique", "absence du bureau",
	"respuesta automática:", "fuori sede", "risposta automatica:", "automatisch antwoord:",
	"afwezigheidsbericht", "autosvar:", "automaattinen vastaus:",
}

func autoReplySubject(subject string) string {
	subject = strings.TrimSpace(subject)
	for _, p := range autoReplyPrefixes {
		if len(subject) >= len(p) && strings.EqualFold(subject[:len(p)], p) {
			return subject[:len(p)]
		}
	}
	return ""
}

func firstAddr(s string) string {
	if l, err := mail.ParseAddressList(s); err == nil && len(l) > 0 {
		return l[0].Address
	}
	if i := strings.IndexByte(s, ','); i >= 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}
