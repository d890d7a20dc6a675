package relay

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/mmgate/mmgate/internal/mailparse"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/spool"
)

// MaxFilesPerPost is Mattermost's cap on file ids in one post.
const MaxFilesPerPost = mattermost.MaxFilesPerPost

// runeMargin keeps room under the post limit for a continuation line.
const runeMargin = 64

// part is one post of a message in one destination.
type part struct {
	name    string // ledger part: body/0, body/1, files/1 …
	message string
	files   []*mailparse.Attachment
}

// plan cuts a message into its posts. It is deterministic for the same
// message and limits, so that a retry after a crash plans the same parts.
func plan(m *mailparse.Message, maxRunes int, maxAttachment int64) []part {
	text := mailparse.Render(m, mailparse.RenderOptions{})
	var files, skipped []*mailparse.Attachment
	for _, a := range m.Attachments {
		if maxAttachment > 0 && a.Size > maxAttachment {
			skipped = append(skipped, a)
			continue
		}
		files = append(files, a)
	}
	// Inline images first: they belong with the text that refers to them.
	sort.SliceStable(files, func(i, j int) bool { return files[i].Inline && !files[j].Inline })
	if len(skipped) > 0 {
		var b strings.Builder
		b.WriteString("\n\n")
		for _, a := range skipped {
			fmt.Fprintf(&b, "_(attachment %s, %s, not attached: over this app's size limit)_\n", escapeInline(a.Filename), humanSize(a.Size))
		}
		text += strings.TrimRight(b.String(), "\n")
	}
	chunks := mailparse.Split(text, maxRunes-runeMargin)
	if len(chunks) == 0 {
		chunks = []string{""}
	}
	if len(chunks) > 1 {
		full := mailparse.Body(m, mailparse.RenderOptions{})
		files = append(files, &mailparse.Attachment{
			Filename: "message.md", ContentType: "text/markdown; charset=utf-8", Size: int64(len(full)),
			Open: func() (io.ReadCloser, error) { return io.NopCloser(strings.NewReader(full)), nil },
		})
	}
	var batches [][]*mailparse.Attachment
	for len(files) > 0 {
		n := min(MaxFilesPerPost, len(files))
		batches = append(batches, files[:n])
		files = files[n:]
	}
	parts := []part{{name: firstPart, message: chunks[0]}}
	if len(batches) > 0 {
		parts[0].files = batches[0]
	}
	for i := 1; i < len(chunks); i++ {
		parts = append(parts, part{name: fmt.Sprintf("body/%d", i),
			message: fmt.Sprintf("_(continued, part %d of %d)_\n\n%s", i+1, len(chunks), chunks[i])})
	}
	for j := 1; j < len(batches); j++ {
		parts = append(parts, part{name: fmt.Sprintf("files/%d", j),
			message: fmt.Sprintf("_Attachments, continued (%d of %d)_", j+1, len(batches)), files: batches[j]})
	}
	return parts
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

// firstPart is the part every post plan starts with.
const firstPart = "body/0"

// ledgerRead is the ledger of one destination as the delivery claim read it,
// just before the destination's first part, whose intent the claim recorded.
type ledgerRead struct{ entries []spool.LedgerEntry }

func (l *ledgerRead) get(part string) (spool.LedgerEntry, bool) {
	for _, e := range l.entries {
		if e.Part == part {
			return e, true
		}
	}
	return spool.LedgerEntry{}, false
}

// deliver posts every part of m into d that the ledger does not have yet.
// pre, when the delivery claim read the ledger, stands for the first
// part's lookup; later parts read it again (attempts can overlap).
func (r *Relay) deliver(ctx context.Context, at *attempt, app *App, msg spool.Message, m *mailparse.Message, d destination, pre *ledgerRead, note func(string, string, ...any)) error {
	parts := plan(m, r.maxRunes(ctx, app), app.MaxAttachmentBytes)
	from := ""
	if len(m.From) > 0 {
		from = m.From[0].Email
	}
	rootID := ""
	for i, p := range parts {
		if i > 0 {
			pre = nil
		}
		postID, err := r.postPart(ctx, at, app, msg, m, d, p, pre, rootID, from, note)
		if err != nil {
			return err
		}
		if p.name == firstPart {
			rootID = postID
		}
		note("posted", "%s %s → post %s", d.label, p.name, postID)
	}
	return nil
}

func partKey(msgID, dest, part string) string { return msgID + "/" + dest + "/" + part }

func (r *Relay) postPart(ctx context.Context, at *attempt, app *App, msg spool.Message, m *mailparse.Message, d destination, p part, pre *ledgerRead, rootID, from string, note func(string, string, ...any)) (string, error) {
	sp := r.o.Spool
	// Read even on a first attempt, right before the part: attempts can
	// overlap (a rescued stuck job, an operator's Retry during a delivery),
	// and the other one may have posted this part meanwhile.
	var (
		e     spool.LedgerEntry
		found bool
	)
	if pre != nil {
		e, found = pre.get(p.name)
	} else {
		var err error
		if e, found, err = sp.LedgerGet(ctx, msg.ID, d.key, p.name); err != nil {
			return "", fmt.Errorf("reading ledger: %w", err)
		}
	}
	if found && e.PostID != "" {
		return e.PostID, nil
	}
	key := partKey(msg.ID, d.key, p.name)
	if found && !e.IntentAt.IsZero() {
		// A previous attempt may have posted without recording it.
		posts, err := app.Client.ChannelPostsSince(ctx, d.channelID, e.IntentAt.Add(-2*time.Minute))
		if err != nil {
			return "", err
		}
		for _, q := range posts {
			if v, _ := q.Props[PropPart].(string); v == key {
				if err := sp.LedgerDone(ctx, msg.ID, d.key, p.name, q.ID); err != nil {
					return "", fmt.Errorf("recording post: %w", err)
				}
				note("reconciled", "%s %s was already posted as %s", d.label, p.name, q.ID)
				return q.ID, nil
			}
		}
	}
	var fileIDs []string
	if len(p.files) > 0 {
		ups := make([]mattermost.Upload, len(p.files))
		for i, a := range p.files {
			ups[i] = mattermost.Upload{Name: a.Filename, Size: a.Size, Open: a.Open}
		}
		infos, err := app.Client.UploadFiles(ctx, d.channelID, ups)
		if err != nil {
			return "", err
		}
		for _, fi := range infos {
			fileIDs = append(fileIDs, fi.ID)
		}
	}
	if pre == nil {
		// The attempt's earlier posts are recorded before this one's
		// intent (the claim recorded the first part's).
		if err := r.recordPosts(ctx, msg.ID, at); err != nil {
			return "", err
		}
		if err := sp.LedgerIntent(ctx, msg.ID, d.key, p.name, d.channelID); err != nil {
			return "", fmt.Errorf("recording intent: %w", err)
		}
	}
	post := &mattermost.Post{ChannelID: d.channelID, RootID: rootID, Message: p.message, FileIDs: fileIDs,
		Props:         map[string]any{PropSpoolID: msg.ID, PropPart: key, PropMessageID: m.MessageID, PropFrom: from},
		PendingPostID: mattermost.PendingPostID(key)}
	got, err := app.Client.CreatePost(ctx, post)
	if err != nil {
		return "", err
	}
	// Recorded before the attempt's next intent, or with its outcome. Until
	// then (or should neither commit) the intent lets the next attempt
	// find the post.
	at.posts = append(at.posts, spool.Post{Dest: d.key, Part: p.name, PostID: got.ID})
	return got.ID, nil
}

// recordPosts records the attempt's posts the ledger does not have yet; on
// an error, the rest go with the outcome.
func (r *Relay) recordPosts(ctx context.Context, msgID string, at *attempt) error {
	for len(at.posts) > 0 {
		q := at.posts[0]
		if err := r.o.Spool.LedgerDone(ctx, msgID, q.Dest, q.Part, q.PostID); err != nil {
			return fmt.Errorf("recording post %s: %w", q.PostID, err)
		}
		at.posts = at.posts[1:]
	}
	return nil
}

// escapeInline makes a file name safe inside a Markdown sentence.
func escapeInline(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune("\\`*_[]<>|~", r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
