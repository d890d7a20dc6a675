// Package e2e holds mmgate's end-to-end tests: they build the real binary, run
// `mmgate serve` as a subprocess against a real Mattermost (started by
// test/peers/mattermost.sh), send mail over SMTP (Go's net/smtp and swaks) and
// read the resulting posts back through Mattermost's REST API as the
// recipients. It owns only tests and their harness; it never imports mmgate's
// internal packages, so it sees mmgate exactly as an operator does.
//
// Without MM_URL in the environment the tests skip, unless MMGATE_E2E=1, in
// which case they fail (CI must not skip silently).
package e2e
