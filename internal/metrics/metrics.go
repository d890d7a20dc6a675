// Package metrics owns mmgate's Prometheus collectors. It is a leaf: every other
// package may record into it, and httpapi serves it at /metrics. Label values are
// bounded sets (intake names, configured app names, SMTP codes, reason codes):
// never a message id, an address or free text.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Registry holds every mmgate collector; serve it with promhttp.HandlerFor.
var Registry = prometheus.NewRegistry()

var (
	// Received counts messages durably stored, by intake and app ("" when the
	// app is decided later by the relay).
	Received = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmgate_messages_received_total",
		Help: "Messages durably stored in the spool, by intake and app.",
	}, []string{"intake", "app"})
	// Posted counts messages whose every destination got its posts.
	Posted = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmgate_messages_posted_total",
		Help: "Messages posted to all their destinations, by app.",
	}, []string{"app"})
	// Duplicates counts messages that needed no post: every destination had
	// already received the same mail (same Message-ID) from another message.
	Duplicates = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmgate_messages_duplicate_total",
		Help: "Messages not posted because each destination already had the same mail, by app.",
	}, []string{"app"})
	// Quarantined counts messages set aside for an operator, by app and reason code.
	Quarantined = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmgate_messages_quarantined_total",
		Help: "Messages quarantined, by app and reason code.",
	}, []string{"app", "reason"})
	// Retries counts delivery attempts that ended in a retry.
	Retries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmgate_delivery_retries_total",
		Help: "Delivery attempts that will be retried, by app.",
	}, []string{"app"})
	// SpoolMessages is the number of messages in the spool by state; set by the
	// spool collector at scrape time.
	SpoolMessages = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "mmgate_spool_messages",
		Help: "Messages in the spool by state (queued, retrying, posted, quarantined).",
	}, []string{"state"})
	// SMTPSessions counts SMTP connections accepted.
	SMTPSessions = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mmgate_smtp_sessions_total",
		Help: "SMTP sessions opened.",
	})
	// SMTPReplies counts SMTP replies sent at the end of a command, by code.
	SMTPReplies = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmgate_smtp_replies_total",
		Help: "SMTP replies by reply code (250, 451, 535, 550, 552, ...).",
	}, []string{"code"})
	// DeliveryLatency is the time from durable storage to the last post of a message.
	DeliveryLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "mmgate_delivery_latency_seconds",
		Help:    "Time from the message being stored to being posted in Mattermost.",
		Buckets: []float64{0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600},
	}, []string{"app"})
	// MattermostRequests counts REST calls to Mattermost by operation and status
	// ("error" for network failures).
	MattermostRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmgate_mattermost_requests_total",
		Help: "Mattermost REST calls by operation and HTTP status.",
	}, []string{"op", "status"})
	// LDAPRequests counts round trips to the LDAP directory by operation
	// (connect, bind, starttls, search) and result ("ok" or "error").
	LDAPRequests = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmgate_ldap_requests_total",
		Help: "Round trips to the LDAP directory by operation and result.",
	}, []string{"op", "result"})
	// DirectoryCache counts directory cache lookups by kind (person, groups)
	// and result (hit, negative_hit, miss).
	DirectoryCache = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmgate_directory_cache_total",
		Help: "Directory cache lookups by kind and result.",
	}, []string{"kind", "result"})
	// RecipientsSkipped counts recipients a message was not posted to, by reason.
	RecipientsSkipped = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mmgate_recipients_skipped_total",
		Help: "Recipients skipped by policy or because they have no Mattermost user, by app and reason.",
	}, []string{"app", "reason"})
)

// register fills Registry once, at package initialisation.
func register() bool {
	Registry.MustRegister(Received, Posted, Duplicates, Quarantined, Retries, SpoolMessages,
		SMTPSessions, SMTPReplies, DeliveryLatency, MattermostRequests, LDAPRequests, DirectoryCache, RecipientsSkipped,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return true
}

var registered = register()
