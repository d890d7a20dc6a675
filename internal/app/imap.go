package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"

	"github.com/mmgate/mmgate/internal/config"
	imapintake "github.com/mmgate/mmgate/internal/intake/imap"
	"github.com/mmgate/mmgate/internal/spool"
)

// poller is a running intake that polls a source until its context ends.
type poller interface {
	// Check reports a configuration that can never work (Run would end at once).
	Check() error
	Run(ctx context.Context) error
}

// newPoller builds the IMAP poller of one configured mailbox.
func newPoller(name string, m config.IMAPMailbox, sp *spool.Spool, log *slog.Logger) (poller, error) {
	pw, err := m.Password.Resolve()
	if err != nil {
		return nil, fmt.Errorf("imap.mailboxes.%s.password: %w", name, err)
	}
	var tc *tls.Config
	if m.TLS != "none" {
		// The poller sets ServerName from the address.
		tc = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: m.InsecureSkipVerify} //nolint:gosec // an explicit, documented test setting
		if m.CAFile != "" {
			pem, err := os.ReadFile(m.CAFile)
			if err != nil {
				return nil, fmt.Errorf("imap.mailboxes.%s.ca_file: %w", name, err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("imap.mailboxes.%s.ca_file: no PEM certificate in %s", name, m.CAFile)
			}
			tc.RootCAs = pool
		}
	}
	return imapintake.New(sp, sp, imapintake.Mailbox{
		Name: name, Address: m.Address, TLS: m.TLS, TLSConfig: tc, Username: m.Username, Password: pw,
		Folder: m.Folder, MoveTo: m.MoveTo, Since: m.Since, PollInterval: m.PollInterval,
		App: m.App, Recipients: m.Recipients,
	}, log), nil
}
