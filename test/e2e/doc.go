// Package e2e holds mmgate's end-to-end tests: they build the real binary, run
// `mmgate serve` as a subprocess against a real Mattermost (started by
// test/peers/mattermost.sh), send mail over SMTP (Go's net/smtp and swaks) and
// read the resulting posts back through Mattermost's REST API as the
// recipients. It owns only tests and their harness; it never imports mmgate's
// internal packages, so it sees mmgate exactly as an operator does.
//
// Without MM_URL in the environment the tests skip, unless MMGATE_E2E=1, in
// which case they fail (CI must not skip silently).
//
// The fault tests prove the guarantees under failure and print one summary
// line each: TestChaosNothingLostNothingDuplicated (5,000 messages through
// SMTP, pipe and postback while mmgate is SIGKILLed and Mattermost stopped;
// MMGATE_CHAOS_MESSAGES and MMGATE_CHAOS_RATE tune it),
// TestStorageFailureAcknowledgesNothing (data_dir on a tmpfs made read-only,
// then full), TestReplicasShareTheWork (two replicas on a real PostgreSQL and
// versitygw, one killed) and TestLostPostAnswerInBusyChannel (a proxy loses
// the answer to a post). They need root (mounts, PostgreSQL).
package e2e
