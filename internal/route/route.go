// Package route decides which source app a message comes from, and says why.
// It is pure: it reads the envelope and parsed headers, never the network, and
// each decision carries a sentence an operator can read in `mmgate queue show`.
//
// Order of precedence: an SMTP login bound to an app (authenticated, so it
// cannot be overridden by what the message claims), then the explicit rules in
// configured order, then the envelope sender patterns ({app}-svc@…).
package route

import (
	"fmt"
	"net/textproto"
	"path"
	"regexp"
	"sort"
	"strings"

	"github.com/mmgate/mmgate/internal/config"
)

// Input is what a routing decision looks at.
type Input struct {
	App        string              // app fixed by the intake (SMTP login), may be ""
	AuthUser   string              // SMTP AUTH identity, may be ""
	Sender     string              // envelope sender
	SenderFrom string              // where Sender came from when not the envelope ("Return-Path"); "" = the envelope
	From       []string            // header From addresses
	Recipients []string            // envelope recipients
	Subject    string              // decoded subject
	Header     map[string][]string // decoded top-level headers, canonical keys
}

// Decision is the chosen app and the reason.
type Decision struct {
	App string
	Why string
}

type rule struct {
	app     string
	from    string
	to      string
	subject *regexp.Regexp
	header  map[string]*regexp.Regexp
}

type pattern struct {
	re  *regexp.Regexp
	src string
	app string // "" when the pattern has {app}
}

// Router holds the compiled routing configuration.
type Router struct {
	apps     map[string]bool
	rules    []rule
	patterns []pattern
}

// New compiles the routing part of cfg. cfg must have passed Validate.
func New(cfg config.Config) (*Router, error) {
	r := &Router{apps: map[string]bool{}}
	for n := range cfg.Apps {
		r.apps[n] = true
	}
	for i, cr := range cfg.Routing.Rules {
		ru := rule{app: cr.App, from: strings.ToLower(cr.From), to: strings.ToLower(cr.To), header: map[string]*regexp.Regexp{}}
		if cr.Subject != "" {
			re, err := regexp.Compile(cr.Subject)
			if err != nil {
				return nil, fmt.Errorf("routing.rules[%d].subject: %w", i, err)
			}
			ru.subject = re
		}
		for h, v := range cr.Header {
			re, err := regexp.Compile(v)
			if err != nil {
				return nil, fmt.Errorf("routing.rules[%d].header.%s: %w", i, h, err)
			}
			ru.header[textproto.CanonicalMIMEHeaderKey(h)] = re
		}
		r.rules = append(r.rules, ru)
	}
	for _, p := range cfg.Routing.SenderPatterns {
		re, err := compilePattern(p, true)
		if err != nil {
			return nil, err
		}
		r.patterns = append(r.patterns, pattern{re: re, src: p})
	}
	names := make([]string, 0, len(cfg.Apps))
	for n := range cfg.Apps {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, s := range cfg.Apps[n].Senders {
			re, err := compilePattern(strings.ReplaceAll(s, "{app}", n), false)
			if err != nil {
				return nil, err
			}
			r.patterns = append(r.patterns, pattern{re: re, src: s, app: n})
		}
	}
	return r, nil
}

// compilePattern turns "{app}-svc@*" into a case-insensitive anchored regexp
// whose group "app" captures the app name.
func compilePattern(p string, withApp bool) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("(?i)^")
	for i := 0; i < len(p); i++ {
		switch {
		case withApp && strings.HasPrefix(p[i:], "{app}"):
			b.WriteString(`(?P<app>[a-z0-9][a-z0-9_-]*?)`)
			i += len("{app}") - 1
		case p[i] == '*':
			b.WriteString(`.*`)
		case p[i] == '?':
			b.WriteString(`.`)
		default:
			b.WriteString(regexp.QuoteMeta(p[i : i+1]))
		}
	}
	b.WriteString("$")
	re, err := regexp.Compile(b.String())
	if err != nil {
		return nil, fmt.Errorf("sender pattern %q: %w", p, err)
	}
	return re, nil
}

// ErrUnknownSource is the reason text used when no app matches.
const ErrUnknownSource = "unknown source"

// Identify decides the app. ok is false when nothing matched; Why then says
// what was tried, for the quarantine reason.
func (r *Router) Identify(in Input) (Decision, bool) {
	if in.App != "" {
		if r.apps[in.App] {
			return Decision{App: in.App, Why: fmt.Sprintf("SMTP login %q belongs to app %s", in.AuthUser, in.App)}, true
		}
		return Decision{Why: fmt.Sprintf("SMTP login %q names app %q, which is not configured", in.AuthUser, in.App)}, false
	}
	for i, ru := range r.rules {
		if why, ok := ru.match(in); ok {
			return Decision{App: ru.app, Why: fmt.Sprintf("routing.rules[%d] matched (%s)", i, why)}, true
		}
	}
	sender := strings.ToLower(strings.TrimSpace(in.Sender))
	if sender != "" {
		for _, p := range r.patterns {
			m := p.re.FindStringSubmatch(sender)
			if m == nil {
				continue
			}
			app := p.app
			if app == "" {
				app = strings.ToLower(m[p.re.SubexpIndex("app")])
			}
			if r.apps[app] {
				return Decision{App: app, Why: fmt.Sprintf("%s %s matches %q", in.senderSource(), sender, p.src)}, true
			}
		}
	}
	who := sender
	if who == "" {
		who = "<> (null sender)"
	}
	return Decision{Why: fmt.Sprintf("%s: no SMTP login of an app, no routing rule matched, and %s %s matches no sender pattern of a configured app", ErrUnknownSource, in.senderSource(), who)}, false
}

// senderSource names where Sender came from, for explanations.
func (in Input) senderSource() string {
	if in.SenderFrom != "" {
		return in.SenderFrom
	}
	return "envelope sender"
}

func (ru rule) match(in Input) (string, bool) {
	var why []string
	if ru.from != "" {
		ok := false
		for _, f := range append([]string{in.Sender}, in.From...) {
			if m, _ := path.Match(ru.from, strings.ToLower(f)); m {
				ok, why = true, append(why, "from "+f)
				break
			}
		}
		if !ok {
			return "", false
		}
	}
	if ru.to != "" {
		ok := false
		for _, t := range in.Recipients {
			if m, _ := path.Match(ru.to, strings.ToLower(t)); m {
				ok, why = true, append(why, "to "+t)
				break
			}
		}
		if !ok {
			return "", false
		}
	}
	if ru.subject != nil {
		if !ru.subject.MatchString(in.Subject) {
			return "", false
		}
		why = append(why, "subject")
	}
	for h, re := range ru.header {
		ok := false
		for _, v := range in.Header[h] {
			if re.MatchString(v) {
				ok = true
				break
			}
		}
		if !ok {
			return "", false
		}
		why = append(why, "header "+h)
	}
	return strings.Join(why, ", "), true
}
