package approval

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/mmgate/mmgate/internal/directory"
	"github.com/mmgate/mmgate/internal/httpapi"
	"github.com/mmgate/mmgate/internal/mattermost"
)

func newID() string {
	b := make([]byte, 15)
	_, _ = rand.Read(b)
	return strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(b))
}

// render is the post of a: the request, and its buttons while it is pending.
func (s *Service) render(a *Approval) (string, map[string]any) {
	r := a.Request
	fields := []map[string]any{
		{"title": "Requested by", "value": r.Requester, "short": true},
		{"title": "Approvals", "value": fmt.Sprintf("%d of %d", a.Approvals(), r.Required), "short": true},
	}
	if r.Reason != "" {
		fields = append(fields, map[string]any{"title": "Reason", "value": r.Reason, "short": false})
	}
	att := map[string]any{"fallback": "Approval request: " + r.What, "title": r.What, "fields": fields}
	switch a.State {
	case Pending:
		att["color"] = "#1c58d9"
		att["footer"] = "Expires " + a.ExpiresAt.Format("2006-01-02 15:04 MST")
		exp := a.ExpiresAt.Add(time.Hour)
		att["actions"] = []map[string]any{
			{"id": "approve", "type": "button", "name": "Approve", "style": "primary",
				"integration": map[string]any{"url": s.o.PublicURL + "/mattermost/actions/approval",
					"context": map[string]any{"token": s.sign(a.ID, "approve", "", exp)}}},
			{"id": "deny", "type": "button", "name": "Deny", "style": "danger",
				"integration": map[string]any{"url": s.o.PublicURL + "/mattermost/actions/approval",
					"context": map[string]any{"token": s.sign(a.ID, "deny", "", exp)}}},
		}
	case Approved:
		att["color"] = "good"
		att["footer"] = "Approved by " + s.deciders(a, "approve") + " · " + a.DecidedAt.Format("2006-01-02 15:04 MST")
	case Denied:
		att["color"] = "danger"
		footer := "Denied by " + s.deciders(a, "deny") + " · " + a.DecidedAt.Format("2006-01-02 15:04 MST")
		for _, d := range a.Decisions {
			if d.Decision == "deny" && d.Reason != "" {
				footer += " · “" + d.Reason + "”"
			}
		}
		att["footer"] = footer
	case Expired:
		att["color"] = "#8a8f98"
		att["footer"] = "Expired " + a.ExpiresAt.Format("2006-01-02 15:04 MST") + " without a decision"
	}
	msg := "**Approval request** · " + strings.ToUpper(a.State[:1]) + a.State[1:]
	return msg, map[string]any{"attachments": []any{att}, "mmgate_approval_id": a.ID}
}

func (s *Service) deciders(a *Approval, kind string) string {
	var names []string
	for _, d := range a.Decisions {
		if d.Decision == kind {
			names = append(names, "@"+d.Username)
		}
	}
	return strings.Join(names, ", ")
}

// actionRequest is what Mattermost posts when a button is clicked.
type actionRequest struct {
	UserID    string `json:"user_id"`
	UserName  string `json:"user_name"`
	PostID    string `json:"post_id"`
	ChannelID string `json:"channel_id"`
	TriggerID string `json:"trigger_id"`
	Context   struct {
		Token string `json:"token"`
	} `json:"context"`
}

// actionResponse is the answer: an update of the clicked post and/or a
// message only the clicker sees.
type actionResponse struct {
	Update        *actionUpdate `json:"update,omitempty"`
	EphemeralText string        `json:"ephemeral_text,omitempty"`
}

type actionUpdate struct {
	Message string         `json:"message"`
	Props   map[string]any `json:"props"`
}

// HandleAction serves POST /mattermost/actions/approval. It always answers
// 200 (Mattermost shows nothing otherwise) with an ephemeral reason when the
// click changes nothing.
func (s *Service) HandleAction(w http.ResponseWriter, r *http.Request) {
	var in actionRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&in); err != nil {
		writeAction(w, actionResponse{EphemeralText: "mmgate could not read this click."})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 25*time.Second)
	defer cancel()
	resp, a, err := s.click(ctx, in)
	actor := "user " + in.UserID + " (as Mattermost says; name not verified: " + in.UserName + ")"
	if err != nil {
		id := ""
		if a != nil {
			id = a.ID
		}
		s.o.Logger.Warn("approvals: click refused", "user_id", in.UserID, "post_id", in.PostID, "reason", err)
		_ = s.o.Store.audit(context.WithoutCancel(ctx), AuditEntry{At: s.o.Now(), ApprovalID: id, Actor: actor, Action: "click",
			Result: "refused", Detail: err.Error()})
		text := "Not recorded: mmgate could not check this click right now. Try again in a minute."
		var r refusal
		if errors.As(err, &r) {
			text = "Not recorded: " + err.Error()
		}
		writeAction(w, actionResponse{EphemeralText: text})
		return
	}
	writeAction(w, resp)
}

func writeAction(w http.ResponseWriter, resp actionResponse) {
	httpapi.WriteJSON(w, http.StatusOK, resp)
}

// refusal is a click that changes nothing; its text goes to the clicker.
type refusal string

func (r refusal) Error() string { return string(r) }

// click verifies a click and applies it.
func (s *Service) click(ctx context.Context, in actionRequest) (actionResponse, *Approval, error) {
	c, err := s.verify(in.Context.Token, tokenAudience)
	if err != nil {
		return actionResponse{}, nil, refusal("this button is not valid (altered or expired)")
	}
	a, err := s.o.Store.Get(ctx, c.Subject)
	if errors.Is(err, ErrNotFound) {
		return actionResponse{}, nil, refusal("the request is unknown")
	}
	if err != nil {
		// The store, not the click: the reviewer may click again.
		return actionResponse{}, nil, fmt.Errorf("reading the request: %w", err)
	}
	if err := s.checkPost(ctx, a, in.PostID); err != nil {
		return actionResponse{}, a, err
	}
	user, err := s.checkReviewer(ctx, a, in.UserID)
	if err != nil {
		return actionResponse{}, a, err
	}
	if c.Action == "deny" {
		// The reason first: a dialog, whose state is bound to this person.
		dialog := map[string]any{"callback_id": "mmgate-deny", "title": "Deny the request",
			"introduction_text": "Deny: " + truncate(a.Request.What, 200),
			"elements": []map[string]any{{"display_name": "Reason", "name": "reason", "type": "textarea",
				"placeholder": "Why is it denied? The requester sees this.", "max_length": 2000}},
			"submit_label": "Deny", "state": s.sign(a.ID, "deny", user.ID, s.o.Now().Add(15*time.Minute))}
		if err := s.o.MM.OpenDialog(ctx, in.TriggerID, s.o.PublicURL+"/mattermost/dialogs/approval", dialog); err != nil {
			return actionResponse{}, a, fmt.Errorf("mattermost did not open the reason dialog: %w", err)
		}
		return actionResponse{}, a, nil
	}
	a, err = s.decide(ctx, a.ID, user, "approve", "")
	if err != nil {
		return actionResponse{}, a, err
	}
	msg, props := s.render(a)
	resp := actionResponse{Update: &actionUpdate{Message: msg, Props: props}}
	if a.State == Pending {
		resp.EphemeralText = fmt.Sprintf("Approved by you: %d of %d approvals.", a.Approvals(), a.Request.Required)
		// The other copies show the count too.
		for _, p := range a.Posts {
			if p.PostID != in.PostID {
				if err := s.o.MM.PatchPost(ctx, p.PostID, msg, props); err != nil {
					s.o.Logger.Warn("approvals: updating a post", "approval", a.ID, "post_id", p.PostID, "err", err)
				}
			}
		}
	}
	return resp, a, nil
}

// checkPost asks Mattermost that the clicked post exists, is the bot's and
// belongs to this request.
func (s *Service) checkPost(ctx context.Context, a *Approval, postID string) error {
	known := false
	for _, p := range a.Posts {
		if p.PostID == postID {
			known = true
		}
	}
	if !known {
		return refusal("this post is not one of the request's")
	}
	botID, err := s.bot(ctx)
	if err != nil {
		return err
	}
	p, err := s.o.MM.GetPost(ctx, postID)
	if err != nil {
		if mattermost.IsNotFound(err) {
			return refusal("the post is gone")
		}
		return fmt.Errorf("mattermost did not confirm the post: %w", err)
	}
	if p.UserID != botID || p.DeleteAt != 0 || fmt.Sprint(p.Props["mmgate_approval_id"]) != a.ID {
		return refusal("the post does not belong to this request")
	}
	return nil
}

// checkReviewer asks Mattermost who clicked and decides whether they may.
func (s *Service) checkReviewer(ctx context.Context, a *Approval, userID string) (*mattermost.User, error) {
	u, err := s.user(ctx, userID)
	if err != nil {
		return nil, err
	}
	return u, s.mayDecide(ctx, a, u, &facts{})
}

// user asks Mattermost who userID is.
func (s *Service) user(ctx context.Context, userID string) (*mattermost.User, error) {
	if userID == "" {
		return nil, refusal("no user")
	}
	u, err := s.o.MM.User(ctx, userID)
	if err != nil {
		if mattermost.IsNotFound(err) {
			return nil, refusal("unknown user")
		}
		return nil, fmt.Errorf("mattermost did not confirm the user: %w", err)
	}
	return u, nil
}

// facts are what mayDecide learns about one user from the directory and
// Mattermost, asked once per call however many requests are checked.
type facts struct {
	resolved bool
	groups   []directory.Groups // of each entry the user's addresses name
	channels map[string]bool    // channel id → the user is a member
}

// groupsOf reads, at this moment (past any cache), the groups of the
// directory entries the user's addresses name: those the account proved
// with /mmgate link, then its Mattermost email.
func (s *Service) groupsOf(ctx context.Context, u *mattermost.User, f *facts) ([]directory.Groups, error) {
	if f.resolved {
		return f.groups, nil
	}
	var addrs []string
	if s.o.Links != nil {
		links, err := s.o.Links.LinksOf(ctx, u.ID)
		if err != nil {
			return nil, fmt.Errorf("reading the account's links: %w", err)
		}
		for _, l := range links {
			addrs = append(addrs, l.Email)
		}
	}
	if u.Email != "" {
		addrs = append(addrs, u.Email)
	}
	var out []directory.Groups
	for _, addr := range addrs {
		p, err := s.o.Directory.Lookup(ctx, addr)
		switch {
		case err == nil:
			gs, err := s.o.Directory.FreshGroups(ctx, p)
			if err != nil {
				return nil, fmt.Errorf("the directory did not answer: %w", err)
			}
			out = append(out, gs)
		case !errors.Is(err, directory.ErrNotFound):
			// Down is not "not a reviewer": the person may try again.
			return nil, fmt.Errorf("the directory did not answer: %w", err)
		}
	}
	f.groups, f.resolved = out, true
	return out, nil
}

// mayDecide says whether u may decide a now (nil) or why not; f keeps what
// it learns about u for the next request.
func (s *Service) mayDecide(ctx context.Context, a *Approval, u *mattermost.User, f *facts) error {
	req := strings.ToLower(strings.TrimPrefix(a.Request.Requester, "@"))
	if u.ID == a.RequesterID || strings.EqualFold(u.Username, req) || (u.Email != "" && strings.EqualFold(u.Email, req)) {
		return refusal("you asked for this: someone else must decide")
	}
	if a.State != Pending {
		return refusal("the request is already " + a.State)
	}
	if !s.o.Now().Before(a.ExpiresAt) {
		return refusal("the request has expired")
	}
	for _, id := range a.ReviewerIDs {
		if id == u.ID {
			return nil
		}
	}
	if len(a.Request.Reviewers.Groups) > 0 && s.o.Directory != nil {
		all, err := s.groupsOf(ctx, u, f)
		if err != nil {
			return err
		}
		for _, gs := range all {
			for _, g := range a.Request.Reviewers.Groups {
				if _, ok := gs.Has(g); ok {
					return nil
				}
			}
		}
	}
	if a.ChannelID != "" && len(a.Request.Reviewers.Users) == 0 && len(a.Request.Reviewers.Groups) == 0 {
		ok, known := f.channels[a.ChannelID]
		if !known {
			var err error
			if ok, err = s.o.MM.IsChannelMember(ctx, a.ChannelID, u.ID); err != nil {
				return fmt.Errorf("mattermost did not confirm the channel membership: %w", err)
			}
			if f.channels == nil {
				f.channels = map[string]bool{}
			}
			f.channels[a.ChannelID] = ok
		}
		if ok {
			return nil
		}
	}
	return refusal("you are not a reviewer of this request")
}

// decide records a decision and, when it settles the request, updates the
// posts and schedules the callback.
func (s *Service) decide(ctx context.Context, id string, u *mattermost.User, decision, reason string) (*Approval, error) {
	for attempt := 0; ; attempt++ {
		a, err := s.o.Store.Get(ctx, id)
		if err != nil {
			return nil, err
		}
		if a.State != Pending {
			return a, refusal("the request is already " + a.State)
		}
		if d := a.decisionOf(u.ID); d != nil {
			return a, refusal("you already answered (" + d.Decision + ")")
		}
		now := s.o.Now().UTC()
		a.Decisions = append(a.Decisions, Decision{UserID: u.ID, Username: u.Username, Decision: decision, Reason: reason, At: now})
		settled := false
		if decision == "deny" {
			a.State, settled = Denied, true
		} else if a.Approvals() >= a.Request.Required {
			a.State, settled = Approved, true
		}
		var cb int64
		if settled {
			a.DecidedAt = &now
			if a.Request.CallbackURL != "" {
				cb = now.Unix()
			}
		}
		err = s.o.Store.save(ctx, a, cb)
		if errors.Is(err, errConflict) && attempt < 5 {
			continue
		}
		if err != nil {
			return a, err
		}
		_ = s.o.Store.audit(ctx, AuditEntry{At: now, ApprovalID: a.ID, Actor: "@" + u.Username + " (" + u.ID + ")", Action: decision,
			Result: "recorded; request " + a.State, Detail: reason})
		if settled {
			s.announce(ctx, a)
		}
		return a, nil
	}
}

// announce updates every copy of the request and replies in its threads.
func (s *Service) announce(ctx context.Context, a *Approval) {
	msg, props := s.render(a)
	var reply string
	switch a.State {
	case Approved:
		reply = "Approved by " + s.deciders(a, "approve") + "."
	case Denied:
		reply = "Denied by " + s.deciders(a, "deny") + "."
		for _, d := range a.Decisions {
			if d.Decision == "deny" && d.Reason != "" {
				reply += " Reason: " + d.Reason
			}
		}
	case Expired:
		reply = "Expired without a decision."
	}
	for _, p := range a.Posts {
		if err := s.o.MM.PatchPost(ctx, p.PostID, msg, props); err != nil {
			s.o.Logger.Warn("approvals: updating a post", "approval", a.ID, "post_id", p.PostID, "err", err)
		}
		if _, err := s.o.MM.CreatePost(ctx, &mattermost.Post{ChannelID: p.ChannelID, RootID: p.PostID, Message: reply,
			Props: map[string]any{"mmgate_approval_id": a.ID}}); err != nil {
			s.o.Logger.Warn("approvals: replying in the thread", "approval", a.ID, "err", err)
		}
	}
}

// dialogSubmission is what Mattermost posts when the reason dialog is sent.
type dialogSubmission struct {
	State      string            `json:"state"`
	UserID     string            `json:"user_id"`
	Submission map[string]string `json:"submission"`
	Cancelled  bool              `json:"cancelled"`
}

// HandleDialog serves POST /mattermost/dialogs/approval: the reason of a
// denial. The dialog's state is a signed token naming the request and the
// person who clicked Deny; the request is checked again as for a click.
func (s *Service) HandleDialog(w http.ResponseWriter, r *http.Request) {
	var in dialogSubmission
	// Mattermost reads the answer of a 200 only: errors go in the body.
	answer := func(v any) { httpapi.WriteJSON(w, http.StatusOK, v) }
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&in); err != nil {
		answer(map[string]string{"error": "mmgate could not read the form"})
		return
	}
	if in.Cancelled {
		answer(struct{}{})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 25*time.Second)
	defer cancel()
	c, err := s.verify(in.State, dialogAudience)
	if err != nil || c.Action != "deny" || c.User == "" || c.User != in.UserID {
		_ = s.o.Store.audit(ctx, AuditEntry{At: s.o.Now(), Actor: in.UserID, Action: "deny", Result: "refused",
			Detail: "dialog state not valid for this person"})
		answer(map[string]string{"error": "This form is not valid any more: click Deny again."})
		return
	}
	reason := strings.TrimSpace(in.Submission["reason"])
	if reason == "" {
		answer(map[string]any{"errors": map[string]string{"reason": "Say why: the requester sees it."}})
		return
	}
	a, err := s.o.Store.Get(ctx, c.Subject)
	if err == nil {
		var u *mattermost.User
		if u, err = s.checkReviewer(ctx, a, in.UserID); err == nil {
			_, err = s.decide(ctx, a.ID, u, "deny", truncate(reason, 2000))
		}
	}
	if err != nil {
		_ = s.o.Store.audit(ctx, AuditEntry{At: s.o.Now(), ApprovalID: c.Subject, Actor: in.UserID, Action: "deny", Result: "refused",
			Detail: err.Error()})
		msg := "Not recorded: mmgate could not check this right now. Try again in a minute."
		var rf refusal
		if errors.As(err, &rf) {
			msg = "Not recorded: " + err.Error()
		}
		answer(map[string]string{"error": msg})
		return
	}
	answer(struct{}{})
}

// truncate cuts s to n characters (never inside one).
func truncate(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n]) + "…"
}

// ---------------------------------------------------------------- the loop

// Run expires requests and sends callbacks until ctx ends.
func (s *Service) Run(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.tick(ctx)
		}
	}
}

func (s *Service) tick(ctx context.Context) {
	now := s.o.Now()
	due, err := s.o.Store.due(ctx, now)
	if err != nil {
		s.o.Logger.Warn("approvals: reading due requests", "err", err)
		return
	}
	for _, a := range due {
		if a.State == Pending && !now.Before(a.ExpiresAt) {
			a.State = Expired
			t := now.UTC()
			a.DecidedAt = &t
			var cb int64
			if a.Request.CallbackURL != "" {
				cb = now.Unix()
			}
			if err := s.o.Store.save(ctx, a, cb); err != nil {
				continue // another replica did it
			}
			_ = s.o.Store.audit(ctx, AuditEntry{At: now, ApprovalID: a.ID, Actor: "mmgate", Action: "expire", Result: "expired"})
			s.announce(ctx, a)
		}
		if a.callbackAt > 0 && a.callbackAt <= now.Unix() {
			s.callback(ctx, a)
		}
	}
}

// callback posts the outcome to the requesting system, signed with
// HMAC-SHA256 of the timestamp and body, and retries with backoff (5 s
// doubling to 10 min, for 3 days) until it answers 2xx.
func (s *Service) callback(ctx context.Context, a *Approval) {
	now := s.o.Now()
	if ok, err := s.o.Store.leaseCallback(ctx, a, now.Add(2*time.Minute).Unix()); err != nil || !ok {
		return
	}
	secret, known := "", false
	for _, c := range s.o.Clients {
		if c.Name == a.Client {
			secret, known = c.CallbackSecret, true
			if secret == "" {
				secret = c.Key
			}
		}
	}
	if !known || secret == "" {
		// Never sign with an empty key: record why nothing is sent.
		a.Callback.LastError = "client " + a.Client + " is no longer configured: callback not sent"
		s.saveCallback(ctx, a, 0)
		_ = s.o.Store.audit(ctx, AuditEntry{At: now, ApprovalID: a.ID, Actor: "mmgate", Action: "callback", Result: "not sent",
			Detail: a.Callback.LastError})
		return
	}
	body, _ := json.Marshal(map[string]any{"id": a.ID, "state": a.State, "what": a.Request.What, "requester": a.Request.Requester,
		"decisions": a.Decisions, "decided_at": a.DecidedAt})
	ts := fmt.Sprint(now.Unix())
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "."))
	mac.Write(body)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, a.Request.CallbackURL, bytes.NewReader(body))
	var status int
	if err == nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Mmgate-Timestamp", ts)
		req.Header.Set("X-Mmgate-Signature", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		req.Header.Set("X-Mmgate-Approval", a.ID)
		var resp *http.Response
		resp, err = callbackClient.Do(req)
		if err == nil {
			status = resp.StatusCode
			resp.Body.Close()
			if status/100 != 2 {
				err = fmt.Errorf("HTTP %d", status)
			}
		} else {
			// The client sees this through GET: no network details.
			err = errors.New("no answer (connection failed or timed out)")
		}
	}
	a.Callback.Attempts++
	var next int64
	if err != nil {
		a.Callback.LastError = err.Error()
		delay := 5 * time.Second << min(a.Callback.Attempts-1, 7)
		if delay > 10*time.Minute {
			delay = 10 * time.Minute
		}
		if a.DecidedAt != nil && now.Sub(*a.DecidedAt) < 72*time.Hour {
			next = now.Add(delay).Unix()
		} else {
			a.Callback.LastError += "; gave up after 3 days"
		}
		s.o.Logger.Warn("approvals: callback failed", "approval", a.ID, "attempt", a.Callback.Attempts, "err", err)
	} else {
		t := now.UTC()
		a.Callback.DoneAt, a.Callback.LastError = &t, ""
	}
	s.saveCallback(ctx, a, next)
	result := "acknowledged"
	if err != nil {
		result = "failed: " + a.Callback.LastError
	}
	where := a.Request.CallbackURL
	if u, perr := url.Parse(where); perr == nil {
		u.RawQuery, u.User = "", nil // tokens in a query stay out of the log
		where = u.String()
	}
	_ = s.o.Store.audit(ctx, AuditEntry{At: now, ApprovalID: a.ID, Actor: "mmgate", Action: "callback", Result: result, Detail: where})
}

// callbackClient sends callbacks; it never follows a redirect (which would
// carry the signed body to another host).
var callbackClient = &http.Client{Timeout: 30 * time.Second,
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// saveCallback records a callback attempt, retrying a conflict (a click on
// the settled request, say) so that an acknowledged callback is not sent
// again when the lease runs out. Delivery is at least once: receivers
// de-duplicate by the X-Mmgate-Approval header.
func (s *Service) saveCallback(ctx context.Context, a *Approval, next int64) {
	for attempt := 0; attempt < 5; attempt++ {
		err := s.o.Store.save(ctx, a, next)
		if err == nil {
			return
		}
		if !errors.Is(err, errConflict) {
			s.o.Logger.Warn("approvals: recording the callback", "approval", a.ID, "err", err)
			return
		}
		fresh, gerr := s.o.Store.Get(ctx, a.ID)
		if gerr != nil {
			return
		}
		fresh.Callback = a.Callback
		a = fresh
	}
}

// Pending lists, as Markdown, the pending requests userID may decide and
// has not answered yet, with a link to the copy they see.
func (s *Service) Pending(ctx context.Context, userID string) (string, error) {
	as, err := s.o.Store.pending(ctx, 200)
	if err != nil {
		return "", err
	}
	if len(as) == 0 {
		return "No approval request is waiting for you.", nil
	}
	u, err := s.user(ctx, userID)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	n := 0
	f := &facts{} // the directory and Mattermost asked once, not per request
	for _, a := range as {
		if a.decisionOf(userID) != nil {
			continue
		}
		if err := s.mayDecide(ctx, a, u, f); err != nil {
			var r refusal
			if errors.As(err, &r) {
				continue
			}
			return "", err
		}
		link := ""
		for _, p := range a.Posts {
			if p.UserID == userID || (link == "" && p.UserID == "") {
				link = strings.TrimRight(s.o.SiteURL, "/") + "/_redirect/pl/" + p.PostID
			}
		}
		n++
		fmt.Fprintf(&b, "- **%s** · asked by %s · %d of %d approvals · expires %s · [open](%s)\n", a.Request.What, a.Request.Requester,
			a.Approvals(), a.Request.Required, a.ExpiresAt.Format("2006-01-02 15:04 MST"), link)
	}
	if n == 0 {
		return "No approval request is waiting for you.", nil
	}
	return fmt.Sprintf("#### %d approval request(s) waiting for you\n", n) + b.String(), nil
}
