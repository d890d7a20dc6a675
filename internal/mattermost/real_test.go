package mattermost

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mmgate/mmgate/internal/fault"
)

// realEnv reads the variables printed by `bash test/peers/mattermost.sh env`,
// skipping the test when MM_URL is unset.
func realEnv(t *testing.T, keys ...string) map[string]string {
	t.Helper()
	if os.Getenv("MM_URL") == "" {
		t.Skip("MM_URL unset: no real Mattermost; start one with test/peers/mattermost.sh and export `mattermost.sh env`")
	}
	env := map[string]string{"MM_URL": os.Getenv("MM_URL")}
	for _, k := range keys {
		v := os.Getenv(k)
		if v == "" {
			t.Fatalf("MM_URL is set but %s is not", k)
		}
		env[k] = v
	}
	return env
}

func randHex(t *testing.T) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func TestRealMattermost(t *testing.T) {
	env := realEnv(t, "MM_BOT_TOKEN", "MM_BOT_ID", "MM_USER_TOKEN", "MM_USER_ID", "MM_USER_USERNAME")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bot := New(env["MM_URL"], env["MM_BOT_TOKEN"], Options{})
	alice := New(env["MM_URL"], env["MM_USER_TOKEN"], Options{})

	if err := bot.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}

	me, err := bot.Me(ctx)
	if err != nil {
		t.Fatalf("Me: %v", err)
	}
	if me.ID != env["MM_BOT_ID"] || !me.IsBot {
		t.Fatalf("Me = %+v, want bot %s", me, env["MM_BOT_ID"])
	}

	user, err := bot.UserByUsername(ctx, env["MM_USER_USERNAME"])
	if err != nil {
		t.Fatalf("UserByUsername: %v", err)
	}
	if user.ID != env["MM_USER_ID"] || user.IsBot || user.DeleteAt != 0 {
		t.Fatalf("UserByUsername = %+v", user)
	}

	t.Run("UserByEmail", func(t *testing.T) {
		cfg, err := bot.ClientConfig(ctx)
		if err != nil {
			t.Fatal(err)
		}
		byMail, err := bot.UserByEmail(ctx, user.Email)
		if cfg["ShowEmailAddress"] == "true" {
			if err != nil || byMail.ID != user.ID {
				t.Fatalf("ShowEmailAddress=true: bot could not read %s by e-mail: %v", user.Email, err)
			}
			t.Logf("bot reads users by e-mail (ShowEmailAddress=true, the default)")
		} else {
			var ae *APIError
			if !errors.As(err, &ae) || ae.Status != 403 || ae.ID != "api.user.get_user_by_email.permissions.app_error" {
				t.Fatalf("ShowEmailAddress=%q: want 403, got %v", cfg["ShowEmailAddress"], err)
			}
			t.Logf("bot may NOT read users by e-mail: %v", err)
		}
		_, err = bot.UserByEmail(ctx, "nobody-"+randHex(t)+"+tag@example.invalid")
		if fault.KindOf(err) != fault.NotFound || Retryable(err) {
			t.Errorf("unknown address: kind=%v err=%v", fault.KindOf(err), err)
		}
	})

	dm, err := bot.DirectChannel(ctx, me.ID, user.ID)
	if err != nil {
		t.Fatalf("DirectChannel: %v", err)
	}
	if dm.Type != "D" || (os.Getenv("MM_DM_CHANNEL_ID") != "" && dm.ID != os.Getenv("MM_DM_CHANNEL_ID")) {
		t.Fatalf("DirectChannel = %+v", dm)
	}

	if team := os.Getenv("MM_TEAM"); team != "" {
		ch, err := alice.ChannelByName(ctx, team, "town-square")
		if err != nil {
			t.Errorf("ChannelByName: %v", err)
		} else if ch.Type != "O" || (os.Getenv("MM_TOWN_SQUARE_ID") != "" && ch.ID != os.Getenv("MM_TOWN_SQUARE_ID")) {
			t.Errorf("ChannelByName = %+v", ch)
		}
	}

	n, err := bot.MaxPostRunes(ctx)
	if err != nil || n != 16383 {
		t.Errorf("MaxPostRunes = %d, %v; want 16383", n, err)
	}

	start := time.Now().Add(-2 * time.Second)              // tolerate a little clock skew
	big := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	files := []Upload{
		{Name: "report é.txt", Size: 12, Open: func() (io.ReadCloser, error) {
			return io.NopCloser(strings.NewReader("hello, world")), nil
		}},
		{Name: "blob.bin", Size: int64(len(big)), Open: func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(big)), nil
		}},
	}
	infos, err := bot.UploadFiles(ctx, dm.ID, files)
	if err != nil {
		t.Fatalf("UploadFiles: %v", err)
	}
	if len(infos) != 2 || infos[0].Name != "report é.txt" || infos[0].Size != 12 ||
		infos[1].Name != "blob.bin" || infos[1].Size != int64(len(big)) {
		t.Fatalf("UploadFiles = %+v", infos)
	}

	key := "real-" + randHex(t)
	msg := "mmgate client test " + key + " — ünïcode"
	created, err := bot.CreatePost(ctx, &Post{
		ChannelID: dm.ID, Message: msg, FileIDs: []string{infos[0].ID, infos[1].ID},
		Props:         map[string]any{"mmgate_key": key, "mmgate": map[string]any{"part": 1.0}},
		PendingPostID: PendingPostID(key, dm.ID, "0"),
	})
	if err != nil {
		t.Fatalf("CreatePost: %v", err)
	}
	if created.ID == "" || created.UserID != me.ID || created.ChannelID != dm.ID {
		t.Fatalf("CreatePost = %+v", created)
	}

	t.Run("ReadBackAsRecipient", func(t *testing.T) {
		p, err := alice.GetPost(ctx, created.ID)
		if err != nil {
			t.Fatal(err)
		}
		if p.Message != msg || p.UserID != me.ID {
			t.Errorf("message/user = %q/%s", p.Message, p.UserID)
		}
		got := slices.Clone(p.FileIDs)
		slices.Sort(got)
		want := []string{infos[0].ID, infos[1].ID}
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("file ids = %v, want %v", p.FileIDs, want)
		}
		if p.Props["mmgate_key"] != key || p.Props["from_bot"] != "true" {
			t.Errorf("props = %v", p.Props)
		}
		if nested, _ := p.Props["mmgate"].(map[string]any); nested["part"] != 1.0 {
			t.Errorf("nested prop = %v", p.Props["mmgate"])
		}
		if p.Metadata == nil || len(p.Metadata.Files) != 2 {
			t.Errorf("metadata files = %+v", p.Metadata)
		}
		if p.PendingPostID != "" {
			t.Logf("note: pending_post_id is stored: %q", p.PendingPostID)
		}
	})

	t.Run("ChannelPostsSince", func(t *testing.T) {
		posts, err := alice.ChannelPostsSince(ctx, dm.ID, start)
		if err != nil {
			t.Fatal(err)
		}
		found := false
		for i, p := range posts {
			if i > 0 && posts[i-1].CreateAt > p.CreateAt {
				t.Errorf("not in create order at %d", i)
			}
			if p.CreateAt < start.UnixMilli() {
				t.Errorf("post %s created before since", p.ID)
			}
			found = found || (p.ID == created.ID && p.Props["mmgate_key"] == key)
		}
		if !found {
			t.Errorf("post %s not among %d posts since %v", created.ID, len(posts), start)
		}
	})

	t.Run("Thread", func(t *testing.T) {
		reply, err := bot.CreatePost(ctx, &Post{ChannelID: dm.ID, RootID: created.ID, Message: "reply " + key})
		if err != nil {
			t.Fatal(err)
		}
		thread, err := alice.PostThread(ctx, created.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(thread) != 2 || thread[0].ID != created.ID || thread[1].ID != reply.ID || thread[1].RootID != created.ID {
			t.Errorf("thread = %+v", thread)
		}
	})

	t.Run("TooLong", func(t *testing.T) {
		_, err := bot.CreatePost(ctx, &Post{ChannelID: dm.ID, Message: strings.Repeat("é", n+1)})
		var ae *APIError
		if !errors.As(err, &ae) {
			t.Fatalf("want APIError, got %v", err)
		}
		if ae.Status != 400 || (ae.ID != "model.post.is_valid.message_length.app_error" && ae.ID != "model.post.is_valid.msg.app_error") {
			t.Errorf("APIError = %+v", ae)
		}
		if Retryable(err) || fault.KindOf(err) != fault.Invalid {
			t.Errorf("too long: retryable=%v kind=%v", Retryable(err), fault.KindOf(err))
		}
		t.Logf("over-long post: %v", ae)
		// Exactly at the limit is accepted.
		if _, err := bot.CreatePost(ctx, &Post{ChannelID: dm.ID, Message: strings.Repeat("é", n)}); err != nil {
			t.Errorf("post of exactly %d runes: %v", n, err)
		}
	})

	t.Run("PendingPostIDDeduplicates", func(t *testing.T) {
		pending := PendingPostID("dedup", key)
		first, err := bot.CreatePost(ctx, &Post{ChannelID: dm.ID, Message: "first " + key, PendingPostID: pending})
		if err != nil {
			t.Fatal(err)
		}
		second, err := bot.CreatePost(ctx, &Post{ChannelID: dm.ID, Message: "second " + key, PendingPostID: pending})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("first: id=%s pending=%q; repeat: id=%s message=%q pending=%q",
			first.ID, first.PendingPostID, second.ID, second.Message, second.PendingPostID)
		if second.ID != first.ID || second.Message != "first "+key {
			t.Errorf("repeat with the same pending_post_id made a new post: %s vs %s", second.ID, first.ID)
		}
		posts, err := bot.ChannelPostsSince(ctx, dm.ID, start)
		if err != nil {
			t.Fatal(err)
		}
		count := 0
		for _, p := range posts {
			if strings.HasSuffix(p.Message, " "+key) && (strings.HasPrefix(p.Message, "first ") || strings.HasPrefix(p.Message, "second ")) {
				count++
			}
		}
		if count != 1 {
			t.Errorf("%d posts in the channel for one pending_post_id", count)
		}
	})

	t.Run("DeletedPostsSince", func(t *testing.T) {
		p, err := bot.CreatePost(ctx, &Post{ChannelID: dm.ID, Message: "to delete " + key})
		if err != nil {
			t.Fatal(err)
		}
		if err := bot.do(ctx, request{op: "delete post", method: "DELETE", path: "/posts/" + seg(p.ID)}); err != nil {
			t.Fatal(err)
		}
		posts, err := bot.ChannelPostsSince(ctx, dm.ID, start)
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range posts {
			if q.ID == p.ID {
				if q.DeleteAt == 0 {
					t.Errorf("deleted post listed without delete_at: %+v", q)
				}
				return
			}
		}
		t.Errorf("deleted post %s not listed by ChannelPostsSince", p.ID)
	})

	t.Run("Errors", func(t *testing.T) {
		_, err := New(env["MM_URL"], "not-a-valid-token", Options{}).Me(ctx)
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status != 401 || fault.KindOf(err) != fault.Unauthorized || Retryable(err) {
			t.Errorf("bad token: %v", err)
		}
		_, err = bot.GetPost(ctx, "abcdefghijklmnopqrstuvwxyz")
		if Retryable(err) || err == nil {
			t.Errorf("unknown post: %v", err)
		}
		t.Logf("unknown post: kind=%v %v", fault.KindOf(err), err)
	})
}

// TestRealPendingPostIDWindow measures the deduplication window (about 30 s
// after the first create); it runs only with MM_SLOW=1.
func TestRealPendingPostIDWindow(t *testing.T) {
	env := realEnv(t, "MM_BOT_TOKEN", "MM_USER_ID")
	if os.Getenv("MM_SLOW") != "1" {
		t.Skip("takes 35 s: set MM_SLOW=1")
	}
	ctx := context.Background()
	bot := New(env["MM_URL"], env["MM_BOT_TOKEN"], Options{})
	me, err := bot.Me(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dm, err := bot.DirectChannel(ctx, me.ID, env["MM_USER_ID"])
	if err != nil {
		t.Fatal(err)
	}
	pending := PendingPostID("window", randHex(t))
	post := func(msg string) *Post {
		p, err := bot.CreatePost(ctx, &Post{ChannelID: dm.ID, Message: msg, PendingPostID: pending})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	first := post("window 0 s")
	time.Sleep(25 * time.Second)
	if p := post("window 25 s"); p.ID != first.ID {
		t.Errorf("at 25 s a new post was made")
	}
	time.Sleep(8 * time.Second)
	if p := post("window 33 s"); p.ID == first.ID {
		t.Errorf("at 33 s the repeat was still deduplicated")
	} else {
		t.Logf("after 33 s the same pending_post_id created a second post %s", p.ID)
	}
}
