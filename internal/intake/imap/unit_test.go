package imapintake

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/mmgate/mmgate/internal/spool"
)

// The spool is what the lead wires in.
var (
	_ Store = (*spool.Spool)(nil)
	_ State = (*spool.Spool)(nil)
)

func TestExactReaderWholeLiteral(t *testing.T) {
	data := strings.Repeat("0123456789", 1000)
	r := &exactReader{r: iotest.OneByteReader(strings.NewReader(data)), left: int64(len(data))}
	got, err := io.ReadAll(r)
	if err != nil || string(got) != data {
		t.Fatalf("ReadAll = %d bytes, %v; want %d bytes, nil", len(got), err, len(data))
	}
}

// imapclient reports a connection that ends inside a literal as a plain
// io.EOF; the store must see an error, not a complete message.
func TestExactReaderShortLiteral(t *testing.T) {
	r := &exactReader{r: strings.NewReader("only part"), left: 100}
	got, err := io.ReadAll(r)
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("err = %v, want io.ErrUnexpectedEOF", err)
	}
	if string(got) != "only part" {
		t.Fatalf("got %q", got)
	}
}

// Bytes past the literal's size are never passed on.
func TestExactReaderStopsAtSize(t *testing.T) {
	r := &exactReader{r: strings.NewReader("abcdefgh"), left: 3}
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "abc" {
		t.Fatalf("ReadAll = %q, %v", got, err)
	}
}

func TestNewDefaults(t *testing.T) {
	p := New(newFakeStore(), newFakeState(), Mailbox{Name: "x", Address: "h:993"}, nil)
	if p.mb.TLS != "imaps" || p.mb.Folder != "INBOX" || p.mb.PollInterval != time.Minute {
		t.Fatalf("defaults: tls %q folder %q interval %v", p.mb.TLS, p.mb.Folder, p.mb.PollInterval)
	}
}

// A Mailbox that can never work is reported at once instead of retried.
func TestRunRejectsInvalidMailbox(t *testing.T) {
	for name, mb := range map[string]Mailbox{
		"tls":     {Name: "x", Address: "127.0.0.1:1", TLS: "ssl"},
		"address": {Name: "x", Address: "no-port"},
		"since":   {Name: "x", Address: "127.0.0.1:1", Since: "yesterday"},
		"move_to": {Name: "x", Address: "127.0.0.1:1", Folder: "INBOX", MoveTo: "INBOX"},
		"name":    {Address: "127.0.0.1:1"},
	} {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			defer cancel()
			err := New(newFakeStore(), newFakeState(), mb, nil).Run(ctx)
			if err == nil || ctx.Err() != nil {
				t.Fatalf("Run = %v (ctx %v), want an immediate error", err, ctx.Err())
			}
		})
	}
}

// With the server unreachable Run keeps retrying and returns nil once ctx is
// done.
func TestRunUnreachableReturnsOnCancel(t *testing.T) {
	port := freePort(t) // nothing listens there any more
	store := newFakeStore()
	r := startPoller(t, store, newFakeState(), Mailbox{
		Name: "down", Address: "127.0.0.1:" + strconv.Itoa(port), TLS: "none", Username: "u", Password: "p",
	})
	waitFor(t, "a connection failure logged", func() bool {
		return strings.Contains(r.logw.String(), "mailbox unavailable")
	})
	r.assertRunning()
	r.stop()
}
