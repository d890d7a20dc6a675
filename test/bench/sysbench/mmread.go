package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// mmPost is the part of a Mattermost post the bench reads.
type mmPost struct {
	ID       string         `json:"id"`
	CreateAt int64          `json:"create_at"`
	DeleteAt int64          `json:"delete_at"`
	Props    map[string]any `json:"props"`
	FileIDs  []string       `json:"file_ids"`
	Metadata *struct {
		Files []struct {
			ID   string `json:"id"`
			Name string `json:"name"`
			Size int64  `json:"size"`
		} `json:"files"`
	} `json:"metadata"`
}

// mmReader reads a channel's posts from the real Mattermost as a user.
type mmReader struct {
	api     string // http://host:port/api/v4
	token   string
	channel string
	hc      *http.Client
}

// newMMReader takes the URL, token and channel from the environment of
// test/peers/.env (names given by the caller), so the token is never on a
// command line.
func newMMReader(urlEnv, tokenEnv, channelEnv string) (*mmReader, error) {
	base, token, ch := os.Getenv(urlEnv), os.Getenv(tokenEnv), os.Getenv(channelEnv)
	if base == "" || token == "" || ch == "" {
		return nil, fmt.Errorf("%s, %s and %s must be set (source test/peers/.env)", urlEnv, tokenEnv, channelEnv)
	}
	u, err := url.Parse(base)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("%s is not a URL", urlEnv)
	}
	api := strings.TrimSuffix(strings.TrimRight(base, "/"), "/api/v4") + "/api/v4"
	return &mmReader{api: api, token: token, channel: ch, hc: &http.Client{Timeout: 20 * time.Second}}, nil
}

// postsSince returns the channel's posts created at or after sinceMs,
// newest first, paging through /channels/{id}/posts (200 a page).
func (r *mmReader) postsSince(ctx context.Context, sinceMs int64) ([]mmPost, error) {
	var out []mmPost
	for page := 0; page < 100; page++ {
		q := url.Values{"page": {fmt.Sprint(page)}, "per_page": {"200"}}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet,
			r.api+"/channels/"+url.PathEscape(r.channel)+"/posts?"+q.Encode(), nil)
		if err != nil {
			return nil, err
		}
		req.Header.Set("Authorization", "Bearer "+r.token)
		resp, err := r.hc.Do(req)
		if err != nil {
			return nil, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		_ = resp.Body.Close()
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("GET channel posts: %d %s", resp.StatusCode, strings.TrimSpace(string(body[:min(len(body), 300)])))
		}
		var l struct {
			Order []string          `json:"order"`
			Posts map[string]mmPost `json:"posts"`
		}
		if err := json.Unmarshal(body, &l); err != nil {
			return nil, fmt.Errorf("GET channel posts: %w", err)
		}
		if len(l.Order) == 0 {
			return out, nil
		}
		older := false
		for _, id := range l.Order {
			p, ok := l.Posts[id]
			if !ok {
				continue
			}
			if p.CreateAt < sinceMs {
				older = true
				continue
			}
			out = append(out, p)
		}
		if older || len(l.Order) < 200 {
			return out, nil
		}
	}
	return out, nil
}

// propString returns a string prop.
func propString(p mmPost, key string) string {
	v, _ := p.Props[key].(string)
	return v
}
