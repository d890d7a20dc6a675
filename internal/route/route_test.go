package route

import (
	"strings"
	"testing"

	"github.com/mmgate/mmgate/internal/config"
)

func router(t *testing.T) *Router {
	t.Helper()
	c := config.Default()
	c.Apps = map[string]config.App{
		"jira":   {},
		"splunk": {Senders: []string{"alerts@splunk.corp.test"}},
		"cron":   {},
	}
	c.Routing.Rules = []config.Rule{
		{App: "cron", Subject: `^Cron <`, From: "root@*"},
		{App: "splunk", Header: map[string]string{"x-splunk-alert": ".+"}},
	}
	r, err := New(c)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestIdentify(t *testing.T) {
	r := router(t)
	cases := []struct {
		name string
		in   Input
		app  string
		why  string
	}{
		{"login wins over sender", Input{App: "jira", AuthUser: "jira", Sender: "splunk-svc@x.test"}, "jira", "SMTP login"},
		{"dash pattern", Input{Sender: "Jira-Svc@Corp.Test"}, "jira", "matches \"{app}-svc@*\""},
		{"no-dash pattern", Input{Sender: "cronsvc@host.test"}, "cron", "{app}svc@*"},
		{"app sender list", Input{Sender: "alerts@splunk.corp.test"}, "splunk", "alerts@splunk.corp.test"},
		{"rule on subject and from", Input{Sender: "root@db1.test", Subject: "Cron <root@db1> backup"}, "cron", "routing.rules[0]"},
		{"rule on header", Input{Sender: "x@y.test", Header: map[string][]string{"X-Splunk-Alert": {"disk"}}}, "splunk", "routing.rules[1]"},
		{"pattern for an unconfigured app", Input{Sender: "gitlab-svc@corp.test"}, "", "unknown source"},
		{"null sender", Input{Sender: ""}, "", "null sender"},
		{"login of a removed app", Input{App: "old", AuthUser: "old"}, "", "not configured"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, ok := r.Identify(c.in)
			if d.App != c.app || ok != (c.app != "") {
				t.Fatalf("got %q ok=%v (%s), want %q", d.App, ok, d.Why, c.app)
			}
			if !strings.Contains(d.Why, c.why) {
				t.Fatalf("why %q does not mention %q", d.Why, c.why)
			}
		})
	}
}

func TestPatternDoesNotMatchAcrossAt(t *testing.T) {
	r := router(t)
	if d, ok := r.Identify(Input{Sender: "jira-svc-evil@x.test"}); ok && d.App == "jira" {
		t.Fatalf("jira-svc-evil must not be jira: %s", d.Why)
	}
}
