package relay

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/mmgate/mmgate/internal/mailparse"
	"github.com/mmgate/mmgate/internal/spool"
)

// Explanation is what the relay would do with a message, found by the same
// code that delivers it, without posting anything.
type Explanation struct {
	raw io.Reader
	// Events are the decisions, in order: the same lines a delivery writes
	// into the message's history.
	Events []spool.Event
	// Outcome is what the delivery would end with: posted, quarantined (with
	// the reason) or retried (the directory or Mattermost is unreachable).
	Outcome spool.Outcome
	// Destinations are where the posts would go (@user, ~team/channel).
	Destinations []string
	// Skipped are the recipients that would get no post, with the reason.
	Skipped []string
	// Posts are the rendered posts, the same for every destination.
	Posts []ExplainedPost
}

// ExplainedPost is one post of the message.
type ExplainedPost struct {
	Part    string
	Message string
	Files   []string // name and size of each attached file
}

// Explain runs the delivery of raw with envelope env up to the point of
// posting: parse, app, recipients with their directory entries and group
// decisions, Mattermost users, and the rendered posts.
func (r *Relay) Explain(ctx context.Context, raw io.Reader, env spool.Envelope) *Explanation {
	ex := &Explanation{raw: raw}
	note := func(kind, format string, a ...any) {
		ex.Events = append(ex.Events, spool.Event{At: time.Now(), Kind: kind, Detail: fmt.Sprintf(format, a...)})
	}
	ex.Outcome = r.handle(ctx, spool.Message{ID: "explain", Envelope: env}, &attempt{}, note, ex)
	return ex
}

func (ex *Explanation) explainPosts(ctx context.Context, r *Relay, app *App, m *mailparse.Message, dests []destination, unresolved []string) {
	for _, d := range dests {
		ex.Destinations = append(ex.Destinations, d.label)
	}
	ex.Skipped = unresolved
	for _, p := range plan(m, r.maxRunes(ctx, app), app.MaxAttachmentBytes) {
		ep := ExplainedPost{Part: p.name, Message: p.message}
		for _, f := range p.files {
			ep.Files = append(ep.Files, fmt.Sprintf("%s (%s)", f.Filename, humanSize(f.Size)))
		}
		ex.Posts = append(ex.Posts, ep)
	}
}
