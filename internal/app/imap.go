package app

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/mmgate/mmgate/internal/config"
	"github.com/mmgate/mmgate/internal/spool"
)

// poller is a running intake that polls a source until its context ends.
type poller interface {
	Run(ctx context.Context) error
}

// newPoller builds the IMAP poller of one mailbox (wired when the IMAP intake lands).
func newPoller(name string, m config.IMAPMailbox, sp *spool.Spool, log *slog.Logger) (poller, error) {
	_, _, _ = m, sp, log
	return nil, fmt.Errorf("imap.mailboxes.%s: the IMAP intake is not built in yet", name)
}
