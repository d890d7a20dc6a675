package route

import (
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	hdr := func(kv ...string) map[string][]string {
		m := map[string][]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			m[kv[i]] = append(m[kv[i]], kv[i+1])
		}
		return m
	}
	received := make([]string, 51)
	for i := range received {
		received[i] = "from a by b"
	}
	tests := []struct {
		name string
		in   ClassifyInput
		want Kind
	}{
		{"tool notification: auto-generated and bulk are normal traffic", ClassifyInput{Sender: "jira-svc@corp.test", Subject: "[JIRA] PROJ-1 updated",
			Header: hdr("Auto-Submitted", "auto-generated", "Precedence", "bulk", "From", "jira@corp.test")}, KindNormal},
		{"plain mail", ClassifyInput{Sender: "alice@corp.test", Subject: "hello", Header: hdr("From", "alice@corp.test")}, KindNormal},
		{"Auto-Submitted: auto-replied", ClassifyInput{Sender: "bob@corp.test", Subject: "Re: report",
			Header: hdr("Auto-Submitted", "auto-replied (vacation)")}, KindAutoReply},
		{"Exchange out of office", ClassifyInput{Sender: "bob@corp.test", Subject: "Automatic reply: deploy finished",
			Header: hdr("X-Auto-Response-Suppress", "All", "X-Ms-Exchange-Inbox-Rules-Loop", "bob@corp.test")}, KindAutoReply},
		{"Out of Office subject alone", ClassifyInput{Sender: "bob@corp.test", Subject: "Out of Office: backup report"}, KindAutoReply},
		{"Auto: subject without a second sign is normal", ClassifyInput{Sender: "jenkins-svc@corp.test", Subject: "Auto: nightly build passed"}, KindNormal},
		{"X-Autoreply: yes", ClassifyInput{Sender: "c@corp.test", Subject: "x", Header: hdr("X-Autoreply", "yes")}, KindAutoReply},
		{"Precedence: auto_reply", ClassifyInput{Sender: "c@corp.test", Subject: "x", Header: hdr("Precedence", "auto_reply")}, KindAutoReply},
		{"read receipt", ClassifyInput{Sender: "c@corp.test", Subject: "Read: x",
			Header: hdr("Content-Type", `multipart/report; report-type=disposition-notification; boundary="b"`)}, KindAutoReply},
		{"DSN with null sender", ClassifyInput{Sender: "", Subject: "Undelivered Mail Returned to Sender",
			Header: hdr("Content-Type", `multipart/report; report-type="delivery-status"; boundary="x"`, "From", "MAILER-DAEMON@mx.corp.test")}, KindBounce},
		{"DSN arriving by IMAP", ClassifyInput{NoEnvelope: true, Subject: "Delivery Status Notification (Failure)",
			Header: hdr("Content-Type", `multipart/report; report-type=delivery-status; boundary="x"`)}, KindBounce},
		{"null sender from MAILER-DAEMON without a report", ClassifyInput{Sender: "", Subject: "failure notice",
			Header: hdr("From", "MAILER-DAEMON@mx.corp.test")}, KindBounce},
		{"null sender tool notification is normal", ClassifyInput{Sender: "", Subject: "Backup job finished",
			Header: hdr("From", "veeam@corp.test")}, KindNormal},
		{"IMAP mail has no envelope: an empty sender is not null", ClassifyInput{NoEnvelope: true, Subject: "failure notice",
			Header: hdr("From", "MAILER-DAEMON@mx.corp.test")}, KindNormal},
		{"IMAP bounce with Return-Path <>", ClassifyInput{NoEnvelope: true, Subject: "failure notice",
			Header: hdr("From", "MAILER-DAEMON@mx.corp.test", "Return-Path", "<>")}, KindBounce},
		{"mmgate's own mail", ClassifyInput{Sender: "mmgate@corp.test", Subject: "x", Header: hdr(LoopHeader, "mmgate.corp.test")}, KindLoop},
		{"too many hops", ClassifyInput{Sender: "a@corp.test", Subject: "x", Header: map[string][]string{"Received": received}}, KindLoop},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, why := Classify(tc.in)
			if got != tc.want {
				t.Fatalf("Classify = %q (%s), want %q", got, why, tc.want)
			}
			if (got == KindNormal) != (why == "") {
				t.Errorf("kind %q with reason %q: a reason is given exactly when the kind is not normal", got, why)
			}
			if got != KindNormal && strings.TrimSpace(why) == "" {
				t.Error("no reason")
			}
		})
	}
}

// The reason names the bounce's sender even when its display name has a comma.
func TestBounceReasonNamesTheSender(t *testing.T) {
	kind, why := Classify(ClassifyInput{Sender: "", Subject: "failure notice",
		Header: map[string][]string{"From": {`"Mail Delivery, System" <MAILER-DAEMON@mx.corp.test>`}}})
	if kind != KindBounce || !strings.Contains(why, "mailer-daemon@mx.corp.test") {
		t.Errorf("%s: %q", kind, why)
	}
}
