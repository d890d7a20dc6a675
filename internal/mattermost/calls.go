package mattermost

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mmgate/mmgate/internal/fault"
)

// Me returns the user the token belongs to (GET /users/me).
func (c *Client) Me(ctx context.Context) (*User, error) {
	var u User
	if err := c.getJSON(ctx, "me", "/users/me", nil, 0, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// User returns a user by id (GET /users/{id}).
func (c *Client) User(ctx context.Context, id string) (*User, error) {
	var u User
	if err := c.getJSON(ctx, "get user", "/users/"+seg(id), nil, 0, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// UserByEmail looks a user up by e-mail address (GET /users/email/{email}).
// Mattermost answers 403 "api.user.get_user_by_email.permissions.app_error"
// when PrivacySettings.ShowEmailAddress is off and the caller is no system
// admin, and 404 when nobody has the address.
func (c *Client) UserByEmail(ctx context.Context, email string) (*User, error) {
	if email == "" {
		return nil, fault.New(fault.Invalid, "mattermost_request", "empty e-mail address")
	}
	var u User
	if err := c.getJSON(ctx, "user by email", "/users/email/"+seg(email), nil, 0, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// UserByUsername looks a user up by user name (GET /users/username/{name}).
func (c *Client) UserByUsername(ctx context.Context, username string) (*User, error) {
	if username == "" {
		return nil, fault.New(fault.Invalid, "mattermost_request", "empty user name")
	}
	var u User
	if err := c.getJSON(ctx, "user by username", "/users/username/"+seg(username), nil, 0, &u); err != nil {
		return nil, err
	}
	return &u, nil
}

// DirectChannel returns the direct channel of two users, creating it if needed
// (POST /channels/direct).
func (c *Client) DirectChannel(ctx context.Context, userA, userB string) (*Channel, error) {
	if userA == "" || userB == "" {
		return nil, fault.New(fault.Invalid, "mattermost_request", "direct channel needs two user ids")
	}
	var ch Channel
	if err := c.sendJSON(ctx, "direct channel", http.MethodPost, "/channels/direct", []string{userA, userB}, &ch); err != nil {
		return nil, err
	}
	if ch.ID == "" {
		return nil, faultOf(&DecodeError{Op: "direct channel", Status: http.StatusCreated, Err: errors.New("channel without id")})
	}
	return &ch, nil
}

// ChannelByName returns a team's channel by their names
// (GET /teams/name/{team}/channels/name/{channel}).
func (c *Client) ChannelByName(ctx context.Context, team, channel string) (*Channel, error) {
	if team == "" || channel == "" {
		return nil, fault.New(fault.Invalid, "mattermost_request", "empty team or channel name")
	}
	var ch Channel
	path := "/teams/name/" + seg(team) + "/channels/name/" + seg(channel)
	if err := c.getJSON(ctx, "channel by name", path, nil, 0, &ch); err != nil {
		return nil, err
	}
	return &ch, nil
}

// createPostBody is what CreatePost sends: never an id, user or metadata.
type createPostBody struct {
	ChannelID     string         `json:"channel_id"`
	RootID        string         `json:"root_id,omitempty"`
	Message       string         `json:"message"`
	FileIDs       []string       `json:"file_ids,omitempty"`
	Props         map[string]any `json:"props,omitempty"`
	PendingPostID string         `json:"pending_post_id,omitempty"`
}

// CreatePost creates a post (POST /posts) and returns it as stored. Only
// ChannelID, RootID, Message, FileIDs, Props and PendingPostID of p are sent.
// More than MaxFilesPerPost file ids fail before any request.
func (c *Client) CreatePost(ctx context.Context, p *Post) (*Post, error) {
	if p == nil || p.ChannelID == "" {
		return nil, fault.New(fault.Invalid, "mattermost_request", "post without channel")
	}
	if len(p.FileIDs) > MaxFilesPerPost {
		return nil, fault.New(fault.Invalid, "mattermost_too_many_files",
			fmt.Sprintf("a post takes at most %d files, got %d", MaxFilesPerPost, len(p.FileIDs)))
	}
	in := createPostBody{ChannelID: p.ChannelID, RootID: p.RootID, Message: p.Message,
		FileIDs: p.FileIDs, Props: p.Props, PendingPostID: p.PendingPostID}
	var out Post
	if err := c.sendJSON(ctx, "create post", http.MethodPost, "/posts", in, &out); err != nil {
		return nil, err
	}
	if out.ID == "" {
		return nil, faultOf(&DecodeError{Op: "create post", Status: http.StatusCreated, Err: errors.New("post without id")})
	}
	return &out, nil
}

// GetPost returns one post (GET /posts/{id}).
func (c *Client) GetPost(ctx context.Context, id string) (*Post, error) {
	if id == "" {
		return nil, fault.New(fault.Invalid, "mattermost_request", "empty post id")
	}
	var p Post
	if err := c.getJSON(ctx, "get post", "/posts/"+seg(id), nil, 0, &p); err != nil {
		return nil, err
	}
	return &p, nil
}

// postList is Mattermost's PostList.
type postList struct {
	Order []string        `json:"order"`
	Posts map[string]Post `json:"posts"`
}

// sorted returns the posts in create order (ties by id).
func (l *postList) sorted(keep func(*Post) bool) []Post {
	out := make([]Post, 0, len(l.Posts))
	for id, p := range l.Posts {
		if p.ID == "" {
			p.ID = id
		}
		if keep == nil || keep(&p) {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].CreateAt != out[j].CreateAt {
			return out[i].CreateAt < out[j].CreateAt
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// ChannelPostsSince returns the channel's posts created at or after since, in
// create order (GET /channels/{id}/posts?since=ms). Deleted posts are included
// (DeleteAt != 0), replies too, but not the older roots of those replies.
//
// The since= answer stops at sinceCap posts changed since that time, and
// which ones is up to the database (in practice the oldest): in a busy
// channel the post looked for may be left out. When the answer is that long,
// or empty, the channel is also read page by page from its newest post back
// to since (GET /channels/{id}/posts?before=…, which leaves out deleted posts).
func (c *Client) ChannelPostsSince(ctx context.Context, channelID string, since time.Time) ([]Post, error) {
	if channelID == "" {
		return nil, fault.New(fault.Invalid, "mattermost_request", "empty channel id")
	}
	ms := since.UnixMilli()
	// The server compares UpdateAt > since: ask from one millisecond earlier.
	q := url.Values{"since": {strconv.FormatInt(max(ms-1, 1), 10)}, "skipFetchThreads": {"true"}}
	var l postList
	if err := c.getJSON(ctx, "channel posts since", "/channels/"+seg(channelID)+"/posts", q, maxListBody, &l); err != nil {
		return nil, err
	}
	// An empty answer is checked too: the server answers since= from a
	// per-channel cache of the last post time, which was seen to answer empty
	// right after posts were made (mmgate's end-to-end suite, Mattermost 11.4).
	if len(l.Order) >= sinceCap || len(l.Order) == 0 {
		if err := c.pagePostsSince(ctx, channelID, ms, &l); err != nil {
			return nil, err
		}
	}
	return l.sorted(func(p *Post) bool { return p.CreateAt >= ms }), nil
}

const (
	// sinceCap is the LIMIT of the server's since= query (GetPostsSince).
	sinceCap = 1000
	// pagePosts is the page size when reading a channel back in time, and
	// maxPostPages bounds that reading (50,000 posts).
	pagePosts    = 200
	maxPostPages = 250
)

// pagePostsSince adds to l the channel's posts from the newest back to the
// first one created before ms, a page at a time.
func (c *Client) pagePostsSince(ctx context.Context, channelID string, ms int64, l *postList) error {
	if l.Posts == nil {
		l.Posts = map[string]Post{}
	}
	before := ""
	for range maxPostPages {
		q := url.Values{"per_page": {strconv.Itoa(pagePosts)}, "skipFetchThreads": {"true"}}
		if before != "" {
			q.Set("before", before)
		}
		var page postList
		if err := c.getJSON(ctx, "channel posts page", "/channels/"+seg(channelID)+"/posts", q, maxListBody, &page); err != nil {
			return err
		}
		for id, p := range page.Posts {
			if _, ok := l.Posts[id]; !ok {
				l.Posts[id] = p
			}
		}
		if len(page.Order) < pagePosts {
			return nil
		}
		// The order is newest first: its last post is the oldest of the page.
		last := page.Order[len(page.Order)-1]
		if p, ok := page.Posts[last]; !ok || p.CreateAt < ms || last == before {
			return nil
		}
		before = last
	}
	// Retrying reads more posts each time, never fewer: an operator must look.
	return fault.New(fault.Permanent, "reconcile_too_many_posts", fmt.Sprintf("mattermost: channel %s has more than %d posts since %s: cannot tell whether this part was already posted",
		channelID, pagePosts*maxPostPages, time.UnixMilli(ms).UTC().Format(time.RFC3339)))
}

// PostThread returns the root post and every reply of postID's thread, in
// create order (GET /posts/{id}/thread).
func (c *Client) PostThread(ctx context.Context, postID string) ([]Post, error) {
	if postID == "" {
		return nil, fault.New(fault.Invalid, "mattermost_request", "empty post id")
	}
	var l postList
	if err := c.getJSON(ctx, "post thread", "/posts/"+seg(postID)+"/thread", nil, maxListBody, &l); err != nil {
		return nil, err
	}
	return l.sorted(nil), nil
}

// ClientConfig returns the server's client configuration
// (GET /config/client?format=old), e.g. "MaxPostSize", "MaxFileSize",
// "Version". With a token it is the full client config, not the limited one.
func (c *Client) ClientConfig(ctx context.Context) (map[string]string, error) {
	var m map[string]string
	if err := c.getJSON(ctx, "client config", "/config/client", url.Values{"format": {"old"}}, 0, &m); err != nil {
		return nil, err
	}
	return m, nil
}

// MaxPostRunes returns the longest message, in runes, the server accepts: the
// client config's "MaxPostSize" (which the server derives from its database
// column), cached for 10 minutes. When the config has no usable value it
// returns DefaultMaxPostRunes; when the call fails it returns
// DefaultMaxPostRunes and the error.
func (c *Client) MaxPostRunes(ctx context.Context) (int, error) {
	c.mu.Lock()
	if c.maxRunes > 0 && time.Since(c.maxRunesAge) < maxRunesTTL {
		n := c.maxRunes
		c.mu.Unlock()
		return n, nil
	}
	c.mu.Unlock()
	cfg, err := c.ClientConfig(ctx)
	if err != nil {
		return DefaultMaxPostRunes, err
	}
	n, perr := strconv.Atoi(strings.TrimSpace(cfg["MaxPostSize"]))
	if perr != nil || n <= 0 {
		n = DefaultMaxPostRunes
	}
	c.mu.Lock()
	c.maxRunes, c.maxRunesAge = n, time.Now()
	c.mu.Unlock()
	return n, nil
}

// Ping checks that the server answers and reports itself healthy
// (GET /system/ping).
func (c *Client) Ping(ctx context.Context) error {
	var st struct {
		Status string `json:"status"`
	}
	if err := c.getJSON(ctx, "ping", "/system/ping", nil, 0, &st); err != nil {
		return err
	}
	if !strings.EqualFold(st.Status, "OK") {
		return faultOf(&DecodeError{Op: "ping", Status: http.StatusOK, Err: fmt.Errorf("status %q", st.Status)})
	}
	return nil
}

// PatchPost replaces a post's message and props (PUT /posts/{id}/patch).
func (c *Client) PatchPost(ctx context.Context, id, message string, props map[string]any) error {
	return c.sendJSON(ctx, "patch post", http.MethodPut, "/posts/"+seg(id)+"/patch",
		map[string]any{"message": message, "props": props}, nil)
}

// OpenDialog opens an interactive dialog for the person whose click gave
// triggerID (POST /actions/dialogs/open).
func (c *Client) OpenDialog(ctx context.Context, triggerID, url string, dialog map[string]any) error {
	return c.sendJSON(ctx, "open dialog", http.MethodPost, "/actions/dialogs/open",
		map[string]any{"trigger_id": triggerID, "url": url, "dialog": dialog}, nil)
}

// IsChannelMember reports whether userID is in the channel
// (GET /channels/{id}/members/{user_id}).
func (c *Client) IsChannelMember(ctx context.Context, channelID, userID string) (bool, error) {
	err := c.getJSON(ctx, "channel member", "/channels/"+seg(channelID)+"/members/"+seg(userID), nil, 0, nil)
	if IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// DeletePost deletes a post (DELETE /posts/{id}).
func (c *Client) DeletePost(ctx context.Context, id string) error {
	return c.do(ctx, request{op: "delete post", method: http.MethodDelete, path: "/posts/" + seg(id)})
}
