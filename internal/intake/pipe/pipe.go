// Package pipe owns the pipe intake: `mmgate deliver` reads one message on
// its standard input (as postfix's pipe transport, a .forward file or
// procmail run it) and stores it in the running instance's spool through a
// local Unix socket that `mmgate serve` listens on. Whoever may write to the
// socket may store mail: its permissions (pipe.socket_mode, pipe.socket_group)
// are the access control.
//
// The server side (Handler, Listen) only stores, like every intake: it never
// parses, routes or posts. The client side (Deliver) reports the outcome as a
// fault kind, which `mmgate deliver` turns into a sysexits code: 0 stored;
// 75 (EX_TEMPFAIL) when the instance is unreachable or storage failed, so that
// postfix keeps the mail and retries; 65 (EX_DATAERR) only for input that can
// never be accepted (empty, or over the size limit).
package pipe

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/user"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/httpapi"
	"github.com/mmgate/mmgate/internal/intake/postback"
	"github.com/mmgate/mmgate/internal/spool"
)

// Path is the route of the deliver endpoint on the socket.
const Path = "POST /v1/deliver"

// Params are a delivery's envelope as `mmgate deliver` got it.
type Params struct {
	App        string   // --app: the source app ("" = routed by sender and rules)
	Sender     string   // --sender
	HasSender  bool     // --sender was given (an empty one is the null sender)
	Recipients []string // --recipient and positional arguments
}

// Handler returns the socket's HTTP handler.
func Handler(store postback.Store, maxBytes int64, log *slog.Logger) http.Handler {
	if log == nil {
		log = slog.Default()
	}
	mux := http.NewServeMux()
	mux.HandleFunc(Path, func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		env := spool.Envelope{Intake: "pipe", App: q.Get("app"), Recipients: q["rcpt"], RemoteAddr: "local"}
		if env.Recipients == nil {
			env.Recipients = []string{}
		}
		if q.Has("sender") {
			env.Sender = q.Get("sender")
		} else {
			env.NoEnvelope = true
		}
		id, err := postback.StoreBody(r, store, env, maxBytes)
		if err != nil {
			if fault.Is(err, fault.Temporary) {
				log.Error("pipe: message not stored", "err", err)
			} else {
				log.Warn("pipe: message refused", "code", fault.CodeOf(err), "err", err)
			}
			postback.Refuse(w, r, err)
			return
		}
		log.Info("pipe: stored", "id", id, "app", env.App, "recipients", len(env.Recipients))
		httpapi.WriteJSON(w, http.StatusOK, map[string]any{"success": true, "id": id})
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		postback.Refuse(w, r, fault.New(fault.NotFound, "not_found", "no such endpoint"))
	})
	return mux
}

// Listen creates the Unix socket at path with the given permissions and,
// when group is not "", that group. A stale socket left by a dead instance
// is replaced; a socket another instance answers on is an error.
func Listen(path string, mode os.FileMode, group string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("pipe.socket: %s exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			_ = c.Close()
			return nil, fmt.Errorf("pipe.socket: another mmgate is serving %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("pipe.socket: removing the stale socket: %w", err)
		}
	}
	gid := -1
	if group != "" {
		g, err := user.LookupGroup(group)
		if err != nil {
			return nil, fmt.Errorf("pipe.socket_group: %w", err)
		}
		if gid, err = strconv.Atoi(g.Gid); err != nil {
			return nil, fmt.Errorf("pipe.socket_group: %s has gid %q", group, g.Gid)
		}
	}
	// Create the socket with no permissions for others, then set the mode:
	// nobody can connect in between with the umask's wider bits.
	old := syscall.Umask(0o177)
	l, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("pipe.socket: %w", err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			_ = l.Close()
			return nil, fmt.Errorf("pipe.socket_group: %w", err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("pipe.socket_mode: %w", err)
	}
	return l, nil
}

// Deliver sends body to the instance listening on socket and returns the
// spool id. Errors carry a fault kind: Temporary when the instance cannot
// be reached or could not store the message (retry later), Invalid or
// TooLarge when the message can never be accepted.
func Deliver(ctx context.Context, socket string, p Params, body io.Reader) (string, error) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
		ResponseHeaderTimeout: 5 * time.Minute,
	}
	defer tr.CloseIdleConnections()
	q := url.Values{}
	if p.App != "" {
		q.Set("app", p.App)
	}
	if p.HasSender {
		q.Set("sender", p.Sender)
	}
	for _, r := range p.Recipients {
		q["rcpt"] = append(q["rcpt"], r)
	}
	in := &inputReader{r: body}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://mmgate/v1/deliver?"+q.Encode(), in)
	if err != nil {
		return "", fault.Wrap(fault.Temporary, "bad_request", "building the request", err)
	}
	req.Header.Set("Content-Type", "message/rfc822")
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if in.err != nil && !errors.Is(in.err, io.EOF) {
		if resp != nil {
			_ = resp.Body.Close()
		}
		return "", fault.Wrap(fault.Temporary, "input_read_failed", "reading the message from standard input failed", in.err)
	}
	if err != nil {
		return "", fault.Wrap(fault.Temporary, "instance_unreachable",
			fmt.Sprintf("cannot reach mmgate at %s (is `mmgate serve` running, and may this user write to the socket?)", socket), err)
	}
	defer func() { _ = resp.Body.Close() }()
	var out struct {
		Success bool   `json:"success"`
		ID      string `json:"id"`
		Code    string `json:"code"`
		Message string `json:"message"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&out); err != nil {
		return "", fault.Wrap(fault.Temporary, "bad_answer", fmt.Sprintf("mmgate answered %s without a readable body", resp.Status), err)
	}
	if resp.StatusCode == http.StatusOK && out.Success && out.ID != "" {
		return out.ID, nil
	}
	kind := fault.Temporary
	switch resp.StatusCode {
	case http.StatusBadRequest:
		kind = fault.Invalid
	case http.StatusRequestEntityTooLarge:
		kind = fault.TooLarge
	case http.StatusUnprocessableEntity:
		kind = fault.Permanent
	}
	msg := strings.TrimSpace(out.Message)
	if msg == "" {
		msg = resp.Status
	}
	return "", fault.New(kind, out.Code, msg)
}

// inputReader remembers the error of the message's source, so that a
// failing standard input is not taken for an unreachable instance.
type inputReader struct {
	r   io.Reader
	err error
}

func (i *inputReader) Read(p []byte) (int, error) {
	n, err := i.r.Read(p)
	if err != nil {
		i.err = err
	}
	return n, err
}
