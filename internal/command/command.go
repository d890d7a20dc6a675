// Package command owns the /mmgate slash command: Mattermost sends it to
// POST /mattermost/command with the command's token, which is checked in
// constant time against the token `mmgate mattermost setup` stored for the
// team, before anything else is read. Answers are ephemeral: only the
// person who typed the command sees them. It never trusts the user id in
// the request for more than choosing what to show that person; what only
// admins may see is checked against Mattermost's own roles.
package command

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/mmgate/mmgate/internal/httpapi"
)

// Options wire the command to the rest of mmgate.
type Options struct {
	// Token returns the stored command token of a team ("" : none).
	Token func(ctx context.Context, teamID string) (string, error)
	// Counts returns the spool's messages by state.
	Counts func(ctx context.Context) (map[string]int, error)
	// IsAdmin asks Mattermost whether the user is a system admin.
	IsAdmin func(ctx context.Context, userID string) (bool, error)
	// Pending lists (Markdown) the approvals waiting for the user; nil when
	// approvals are off.
	Pending func(ctx context.Context, userID string) (string, error)
	// Accounts answers link, unlink, subscribe and unsubscribe.
	Accounts Accounts
	Logger   *slog.Logger
}

// Accounts is what people set for their own account (account.Service).
// Each answer is the Markdown to show.
type Accounts interface {
	Link(ctx context.Context, userID string) string
	Unlink(ctx context.Context, userID string) string
	Subscribe(ctx context.Context, userID, app string) string
	Unsubscribe(ctx context.Context, userID, app string) string
}

// Response is Mattermost's slash command response.
type Response struct {
	ResponseType string `json:"response_type"`
	Text         string `json:"text"`
}

const help = "#### /mmgate\n" +
	"| Command | What it does |\n|---|---|\n" +
	"| `/mmgate help` | this list |\n" +
	"| `/mmgate status` | messages waiting, retrying and quarantined (system admins) |\n" +
	"| `/mmgate approvals` | approval requests waiting for you |\n" +
	"| `/mmgate link` / `unlink` | send mail addressed to you in the directory to this account, when its email differs |\n" +
	"| `/mmgate subscribe [APP]` / `unsubscribe APP` | receive every message of an app that allows it (no APP: list them) |\n"

// Handler serves POST /mattermost/command.
func Handler(o Options) http.Handler {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			reply(w, http.StatusBadRequest, "mmgate could not read the command.")
			return
		}
		f := r.PostForm
		want, err := o.Token(r.Context(), f.Get("team_id"))
		if err != nil {
			o.Logger.Error("command: reading the stored token", "err", err)
			// 200: Mattermost shows the text of a 200 only; anything else
			// becomes "returned response 503" for the person who typed it.
			reply(w, http.StatusOK, "mmgate cannot check this command right now; try again in a minute.")
			return
		}
		if !httpapi.SecretEqual(f.Get("token"), want) || want == "" {
			o.Logger.Warn("command: refused a call with a wrong token", "team_id", f.Get("team_id"), "remote", r.RemoteAddr)
			reply(w, http.StatusUnauthorized, "This /mmgate command is not the one mmgate installed: ask an admin to run `mmgate mattermost setup`.")
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 20*time.Second)
		defer cancel()
		words := strings.Fields(f.Get("text"))
		sub := "help"
		if len(words) > 0 {
			sub = strings.ToLower(words[0])
		}
		switch sub {
		case "help":
			reply(w, http.StatusOK, help)
		case "status":
			ok, err := o.IsAdmin(ctx, f.Get("user_id"))
			if err != nil {
				o.Logger.Error("command: asking Mattermost for the user's roles", "err", err)
				reply(w, http.StatusOK, "mmgate cannot check your roles in Mattermost right now; try again in a minute.")
				return
			}
			if !ok {
				reply(w, http.StatusOK, "`/mmgate status` is for system admins.")
				return
			}
			counts, err := o.Counts(ctx)
			if err != nil {
				o.Logger.Error("command: reading the spool", "err", err)
				reply(w, http.StatusOK, "mmgate cannot read its queue right now; try again in a minute.")
				return
			}
			reply(w, http.StatusOK, status(counts))
		case "approvals":
			if o.Pending == nil {
				reply(w, http.StatusOK, "Approvals are not configured in this mmgate.")
				return
			}
			text, err := o.Pending(ctx, f.Get("user_id"))
			if err != nil {
				o.Logger.Error("command: listing approvals", "err", err)
				reply(w, http.StatusOK, "mmgate cannot list your approvals right now; try again in a minute.")
				return
			}
			reply(w, http.StatusOK, text)
		case "link", "unlink", "subscribe", "unsubscribe":
			if o.Accounts == nil {
				reply(w, http.StatusOK, fmt.Sprintf("`/mmgate %s` is not set up in this mmgate.", sub))
				return
			}
			user, arg := f.Get("user_id"), ""
			if len(words) > 1 {
				arg = words[1]
			}
			var text string
			switch sub {
			case "link":
				text = o.Accounts.Link(ctx, user)
			case "unlink":
				text = o.Accounts.Unlink(ctx, user)
			case "subscribe":
				text = o.Accounts.Subscribe(ctx, user, arg)
			default:
				text = o.Accounts.Unsubscribe(ctx, user, arg)
			}
			reply(w, http.StatusOK, text)
		default:
			reply(w, http.StatusOK, fmt.Sprintf("mmgate does not know `%s`.\n\n%s", sub, help))
		}
	})
}

func status(counts map[string]int) string {
	var b strings.Builder
	b.WriteString("#### mmgate status\n| State | Messages |\n|---|---:|\n")
	order := []string{"queued", "retrying", "quarantined", "posted"}
	seen := map[string]bool{}
	for _, s := range order {
		fmt.Fprintf(&b, "| %s | %d |\n", s, counts[s])
		seen[s] = true
	}
	var rest []string
	for s := range counts {
		if !seen[s] {
			rest = append(rest, s)
		}
	}
	sort.Strings(rest)
	for _, s := range rest {
		fmt.Fprintf(&b, "| %s | %d |\n", s, counts[s])
	}
	if counts["quarantined"] > 0 {
		b.WriteString("\nQuarantined messages wait for an operator: `mmgate quarantine list` on the server.\n")
	}
	return b.String()
}

func reply(w http.ResponseWriter, status int, text string) {
	httpapi.WriteJSON(w, status, Response{ResponseType: "ephemeral", Text: text})
}
