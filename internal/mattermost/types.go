package mattermost

import (
	"crypto/sha256"
	"encoding/base32"
	"io"
	"strings"
)

// Limits of a Mattermost server (server/public/model/post.go).
const (
	// DefaultMaxPostRunes is PostMessageMaxRunesV2, the default message limit.
	DefaultMaxPostRunes = 16383
	// MaxFilesPerPost is the most file ids one post takes: file_ids is capped
	// at 300 runes of JSON, 10 ids of 26 characters.
	MaxFilesPerPost = 10
)

// User is the part of a Mattermost user mmgate reads.
type User struct {
	ID        string `json:"id"`
	Username  string `json:"username"`
	Email     string `json:"email"`
	FirstName string `json:"first_name"`
	LastName  string `json:"last_name"`
	Nickname  string `json:"nickname"`
	IsBot     bool   `json:"is_bot"`
	DeleteAt  int64  `json:"delete_at"`
	// Roles is space-separated ("system_user system_admin").
	Roles string `json:"roles"`
}

// IsSystemAdmin reports the system_admin role.
func (u *User) IsSystemAdmin() bool {
	for _, r := range strings.Fields(u.Roles) {
		if r == "system_admin" {
			return true
		}
	}
	return false
}

// Channel is the part of a Mattermost channel mmgate reads.
type Channel struct {
	ID          string `json:"id"`
	TeamID      string `json:"team_id"`
	Name        string `json:"name"`
	DisplayName string `json:"display_name"`
	// Type is "O" (open), "P" (private), "D" (direct) or "G" (group).
	Type string `json:"type"`
}

// FileInfo describes an uploaded file.
type FileInfo struct {
	ID       string `json:"id"`
	Name     string `json:"name"`
	MimeType string `json:"mime_type"`
	Size     int64  `json:"size"`
	// PostID is set once a post references the file.
	PostID string `json:"post_id,omitempty"`
}

// PostMetadata is the part of a post's server-computed metadata mmgate reads.
type PostMetadata struct {
	Files []FileInfo `json:"files,omitempty"`
}

// Post is a Mattermost post. CreatePost sends only ChannelID, RootID, Message,
// FileIDs, Props and PendingPostID; the other fields are filled by the server.
type Post struct {
	ID        string         `json:"id,omitempty"`
	ChannelID string         `json:"channel_id"`
	RootID    string         `json:"root_id,omitempty"`
	Message   string         `json:"message"`
	FileIDs   []string       `json:"file_ids,omitempty"`
	Props     map[string]any `json:"props,omitempty"`
	UserID    string         `json:"user_id,omitempty"`
	CreateAt  int64          `json:"create_at,omitempty"`
	// DeleteAt is non-zero for a deleted post (ChannelPostsSince returns them).
	DeleteAt int64 `json:"delete_at,omitempty"`
	// Type is "" for a normal post, "system_…" for system messages.
	Type string `json:"type,omitempty"`
	// PendingPostID makes a repeated CreatePost return the first post within
	// 30 s; see the package documentation for its exact semantics.
	PendingPostID string        `json:"pending_post_id,omitempty"`
	Metadata      *PostMetadata `json:"metadata,omitempty"`
}

// Upload is one file to upload. Open is called once per attempt, so a retry
// can re-read it; the content is streamed, never buffered whole.
type Upload struct {
	Name string
	// Size is the expected length; when > 0 the upload fails if Open yields a
	// different number of bytes (a truncated blob must not become an
	// attachment).
	Size int64
	Open func() (io.ReadCloser, error)
}

// PendingPostID derives a deterministic pending_post_id from the parts that
// identify one post (for example spool message id, channel id, part number).
// The server's deduplication key is global, not per user or channel, so the
// result is namespaced ("mmgate:") and collision-resistant (SHA-256, 160 bits
// in base32).
func PendingPostID(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		// Length-prefix each part so ("ab","c") and ("a","bc") differ.
		var n [8]byte
		l := uint64(len(p))
		for i := range n {
			n[i] = byte(l >> (8 * i))
		}
		h.Write(n[:])
		h.Write([]byte(p))
	}
	sum := h.Sum(nil)
	enc := base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:20])
	return "mmgate:" + strings.ToLower(enc)
}
