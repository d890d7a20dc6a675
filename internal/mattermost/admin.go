package mattermost

import (
	"bytes"
	"context"
	"mime/multipart"
	"net/http"
	"net/url"
)

// The calls below need a system admin's token: `mmgate mattermost setup`
// uses them to provision bots, tokens and the slash command.

// Bot is a Mattermost bot account.
type Bot struct {
	UserID      string `json:"user_id"`
	Username    string `json:"username"`
	DisplayName string `json:"display_name"`
	Description string `json:"description"`
	DeleteAt    int64  `json:"delete_at"`
}

// Team is the part of a team mmgate reads.
type Team struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	DisplayName string `json:"display_name"`
}

// Command is a custom slash command.
type Command struct {
	ID               string `json:"id,omitempty"`
	TeamID           string `json:"team_id"`
	Trigger          string `json:"trigger"`
	Method           string `json:"method"`
	URL              string `json:"url"`
	DisplayName      string `json:"display_name"`
	Description      string `json:"description"`
	AutoComplete     bool   `json:"auto_complete"`
	AutoCompleteDesc string `json:"auto_complete_desc"`
	AutoCompleteHint string `json:"auto_complete_hint"`
	Username         string `json:"username,omitempty"`
	Token            string `json:"token,omitempty"`
	DeleteAt         int64  `json:"delete_at,omitempty"`
}

// Config returns the server configuration (GET /config).
func (c *Client) Config(ctx context.Context) (map[string]any, error) {
	var out map[string]any
	if err := c.getJSON(ctx, "get config", "/config", nil, 8<<20, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// PatchConfig changes the given settings only (PUT /config/patch).
func (c *Client) PatchConfig(ctx context.Context, patch map[string]any) error {
	return c.sendJSON(ctx, "patch config", http.MethodPut, "/config/patch", patch, nil)
}

// Bot returns a bot, disabled ones included (GET /bots/{id}).
func (c *Client) Bot(ctx context.Context, userID string) (*Bot, error) {
	var b Bot
	if err := c.getJSON(ctx, "get bot", "/bots/"+seg(userID), url.Values{"include_deleted": {"true"}}, 0, &b); err != nil {
		return nil, err
	}
	return &b, nil
}

// CreateBot creates a bot (POST /bots).
func (c *Client) CreateBot(ctx context.Context, b Bot) (*Bot, error) {
	var out Bot
	in := map[string]string{"username": b.Username, "display_name": b.DisplayName, "description": b.Description}
	if err := c.sendJSON(ctx, "create bot", http.MethodPost, "/bots", in, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// PatchBot changes a bot's display name and description (PUT /bots/{id}).
func (c *Client) PatchBot(ctx context.Context, userID, displayName, description string) error {
	in := map[string]string{"display_name": displayName, "description": description}
	return c.sendJSON(ctx, "patch bot", http.MethodPut, "/bots/"+seg(userID), in, nil)
}

// EnableBot enables a disabled bot (POST /bots/{id}/enable).
func (c *Client) EnableBot(ctx context.Context, userID string) error {
	return c.sendJSON(ctx, "enable bot", http.MethodPost, "/bots/"+seg(userID)+"/enable", nil, nil)
}

// SetProfileImage sets a user's (or bot's) picture (POST /users/{id}/image).
func (c *Client) SetProfileImage(ctx context.Context, userID, name string, image []byte) error {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	fw, err := mw.CreateFormFile("image", name)
	if err != nil {
		return err
	}
	_, _ = fw.Write(image)
	_ = mw.Close()
	return c.do(ctx, request{op: "set profile image", method: http.MethodPost, path: "/users/" + seg(userID) + "/image",
		body: &body, contentType: mw.FormDataContentType()})
}

// CreateAccessToken creates a personal access token for a user or bot
// (POST /users/{id}/tokens) and returns it.
func (c *Client) CreateAccessToken(ctx context.Context, userID, description string) (string, error) {
	var out struct {
		Token string `json:"token"`
	}
	if err := c.sendJSON(ctx, "create access token", http.MethodPost, "/users/"+seg(userID)+"/tokens",
		map[string]string{"description": description}, &out); err != nil {
		return "", err
	}
	return out.Token, nil
}

// Teams lists the teams (GET /teams; all of them for a system admin).
func (c *Client) Teams(ctx context.Context) ([]Team, error) {
	var out []Team
	if err := c.getJSON(ctx, "list teams", "/teams", url.Values{"per_page": {"200"}}, 0, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// TeamByName looks a team up (GET /teams/name/{name}).
func (c *Client) TeamByName(ctx context.Context, name string) (*Team, error) {
	var t Team
	if err := c.getJSON(ctx, "team by name", "/teams/name/"+seg(name), nil, 0, &t); err != nil {
		return nil, err
	}
	return &t, nil
}

// AddTeamMember adds a user to a team (POST /teams/{id}/members); a
// member already there is fine.
func (c *Client) AddTeamMember(ctx context.Context, teamID, userID string) error {
	return c.sendJSON(ctx, "add team member", http.MethodPost, "/teams/"+seg(teamID)+"/members",
		map[string]string{"team_id": teamID, "user_id": userID}, nil)
}

// Commands lists a team's custom slash commands (GET /commands).
func (c *Client) Commands(ctx context.Context, teamID string) ([]Command, error) {
	var out []Command
	if err := c.getJSON(ctx, "list commands", "/commands", url.Values{"team_id": {teamID}, "custom_only": {"true"}}, 0, &out); err != nil {
		return nil, err
	}
	return out, nil
}

// CreateCommand creates a slash command (POST /commands).
func (c *Client) CreateCommand(ctx context.Context, cmd Command) (*Command, error) {
	var out Command
	if err := c.sendJSON(ctx, "create command", http.MethodPost, "/commands", cmd, &out); err != nil {
		return nil, err
	}
	return &out, nil
}

// UpdateCommand replaces a slash command's settings (PUT /commands/{id});
// its token stays.
func (c *Client) UpdateCommand(ctx context.Context, cmd Command) (*Command, error) {
	var out Command
	if err := c.sendJSON(ctx, "update command", http.MethodPut, "/commands/"+seg(cmd.ID), cmd, &out); err != nil {
		return nil, err
	}
	return &out, nil
}
