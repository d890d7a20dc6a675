// Package provision installs mmgate in a Mattermost site from a system
// admin's token: it turns on what mmgate needs (bot accounts, personal
// access tokens, custom slash commands, outgoing calls to mmgate's address),
// creates or updates one bot per source app (name, display name,
// description, icon, team membership), keeps each bot's access token in
// mmgate's secret store, and creates or updates the /mmgate slash command in
// each team, keeping its token too. Running it again changes nothing that
// is already right, and says so. The admin token is used for this run only
// and never stored or logged.
package provision

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/mattermost"
	"github.com/mmgate/mmgate/internal/secrets"
)

// Admin is what setup needs of Mattermost, with a system admin's token.
type Admin interface {
	Config(ctx context.Context) (map[string]any, error)
	PatchConfig(ctx context.Context, patch map[string]any) error
	UserByUsername(ctx context.Context, username string) (*mattermost.User, error)
	Bot(ctx context.Context, userID string) (*mattermost.Bot, error)
	CreateBot(ctx context.Context, b mattermost.Bot) (*mattermost.Bot, error)
	PatchBot(ctx context.Context, userID, displayName, description string) error
	EnableBot(ctx context.Context, userID string) error
	SetProfileImage(ctx context.Context, userID, name string, image []byte) error
	CreateAccessToken(ctx context.Context, userID, description string) (string, error)
	Teams(ctx context.Context) ([]mattermost.Team, error)
	TeamByName(ctx context.Context, name string) (*mattermost.Team, error)
	AddTeamMember(ctx context.Context, teamID, userID string) error
	Commands(ctx context.Context, teamID string) ([]mattermost.Command, error)
	CreateCommand(ctx context.Context, c mattermost.Command) (*mattermost.Command, error)
	UpdateCommand(ctx context.Context, c mattermost.Command) (*mattermost.Command, error)
}

// Secrets is where tokens are kept.
type Secrets interface {
	Get(ctx context.Context, name string) (string, error)
	Put(ctx context.Context, name, value string) error
}

// TokenCheck says whether token still signs in as userID.
type TokenCheck func(ctx context.Context, token, userID string) (bool, error)

// App is one source app's bot.
type App struct {
	Name string // the app's name in the configuration
	// External apps have their own bot_token in the configuration: setup
	// leaves their bot alone.
	External    bool
	Username    string // the bot's username
	DisplayName string
	Description string
	Icon        []byte // PNG or JPEG; nil leaves the picture alone
	IconName    string
}

// Options say what to install.
type Options struct {
	Admin   Admin
	Secrets Secrets
	Check   TokenCheck
	Apps    []App
	// Teams are team names to install /mmgate in (empty: every team).
	Teams []string
	// CommandURL is where Mattermost sends /mmgate (mmgate's public URL +
	// /mattermost/command); "" installs no command.
	CommandURL string
	// Report receives one line per thing looked at.
	Report func(line string)
}

// Secret names in the store.
const (
	BotTokenPrefix     = "bot_token/"
	CommandTokenPrefix = "command_token/"
	iconPrefix         = "bot_icon_sha256/"
)

// Result counts what changed.
type Result struct{ Changed, Unchanged int }

// Run installs mmgate.
func Run(ctx context.Context, o Options) (Result, error) {
	var res Result
	say := func(changed bool, format string, a ...any) {
		if changed {
			res.Changed++
		} else {
			res.Unchanged++
		}
		if o.Report != nil {
			o.Report(fmt.Sprintf(format, a...))
		}
	}
	if err := settings(ctx, o, say); err != nil {
		return res, err
	}
	teams, err := targetTeams(ctx, o)
	if err != nil {
		return res, err
	}
	for _, a := range o.Apps {
		if a.External {
			say(false, "app %s: has its own apps.%s.bot_token; its bot is left alone", a.Name, a.Name)
			continue
		}
		if err := bot(ctx, o, a, teams, say); err != nil {
			return res, fmt.Errorf("app %s: %w", a.Name, err)
		}
	}
	if o.CommandURL != "" {
		for _, t := range teams {
			if err := command(ctx, o, t, say); err != nil {
				return res, fmt.Errorf("team %s: %w", t.Name, err)
			}
		}
	}
	return res, nil
}

// settings turns on bot accounts, personal access tokens, custom slash
// commands, and outgoing calls to mmgate's own (internal) address.
func settings(ctx context.Context, o Options, say func(bool, string, ...any)) error {
	cfg, err := o.Admin.Config(ctx)
	if mattermost.IsUnauthorized(err) || mattermost.IsForbidden(err) {
		return fault.Wrap(fault.Unauthorized, "admin_token_refused",
			"Mattermost does not accept the token as a system admin's personal access token", err)
	}
	if err != nil {
		return fmt.Errorf("reading the Mattermost configuration: %w", err)
	}
	ss, _ := cfg["ServiceSettings"].(map[string]any)
	patch := map[string]any{}
	var turned []string
	for _, key := range []string{"EnableBotAccountCreation", "EnableUserAccessTokens"} {
		if v, _ := ss[key].(bool); !v {
			patch[key] = true
			turned = append(turned, key)
		}
	}
	if o.CommandURL != "" {
		if v, _ := ss["EnableCommands"].(bool); !v {
			patch["EnableCommands"] = true
			turned = append(turned, "EnableCommands")
		}
		// Mattermost refuses to call private and loopback addresses unless
		// they are listed: mmgate's must be for /mmgate and the buttons.
		if u, err := url.Parse(o.CommandURL); err == nil && internal(u.Hostname()) {
			list, _ := ss["AllowedUntrustedInternalConnections"].(string)
			hosts := strings.Fields(strings.ReplaceAll(list, ",", " "))
			if !slices.Contains(hosts, u.Hostname()) {
				patch["AllowedUntrustedInternalConnections"] = strings.TrimSpace(list + " " + u.Hostname())
				turned = append(turned, "AllowedUntrustedInternalConnections += "+u.Hostname())
			}
		}
	}
	if len(patch) == 0 {
		say(false, "settings: bot accounts, access tokens and slash commands already on")
		return nil
	}
	if err := o.Admin.PatchConfig(ctx, map[string]any{"ServiceSettings": patch}); err != nil {
		return fmt.Errorf("turning on %s: %w", strings.Join(turned, ", "), err)
	}
	say(true, "settings: turned on %s", strings.Join(turned, ", "))
	return nil
}

// internal reports a host Mattermost treats as untrusted-internal.
func internal(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	if ip == nil {
		ips, err := net.LookupIP(host)
		if err != nil || len(ips) == 0 {
			return false
		}
		ip = ips[0]
	}
	return ip.IsLoopback() || ip.IsPrivate() || ip.IsLinkLocalUnicast() || ip.IsUnspecified()
}

func targetTeams(ctx context.Context, o Options) ([]mattermost.Team, error) {
	if len(o.Teams) == 0 {
		ts, err := o.Admin.Teams(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing teams: %w", err)
		}
		return ts, nil
	}
	var out []mattermost.Team
	for _, name := range o.Teams {
		t, err := o.Admin.TeamByName(ctx, name)
		if err != nil {
			if mattermost.IsNotFound(err) {
				return nil, fmt.Errorf("there is no team named %q in Mattermost (mattermost.setup.teams)", name)
			}
			return nil, fmt.Errorf("team %q: %w", name, err)
		}
		out = append(out, *t)
	}
	return out, nil
}

func bot(ctx context.Context, o Options, a App, teams []mattermost.Team, say func(bool, string, ...any)) error {
	u, err := o.Admin.UserByUsername(ctx, a.Username)
	var b *mattermost.Bot
	switch {
	case mattermost.IsNotFound(err):
		b, err = o.Admin.CreateBot(ctx, mattermost.Bot{Username: a.Username, DisplayName: a.DisplayName, Description: a.Description})
		if err != nil {
			return fmt.Errorf("creating bot @%s: %w", a.Username, err)
		}
		say(true, "bot @%s: created for app %s", a.Username, a.Name)
	case err != nil:
		return fmt.Errorf("looking up @%s: %w", a.Username, err)
	case !u.IsBot:
		return fmt.Errorf("@%s is a person, not a bot: choose another apps.%s.bot_username", a.Username, a.Name)
	default:
		if b, err = o.Admin.Bot(ctx, u.ID); err != nil {
			return fmt.Errorf("reading bot @%s: %w", a.Username, err)
		}
		changed := false
		if b.DeleteAt != 0 {
			if err := o.Admin.EnableBot(ctx, b.UserID); err != nil {
				return fmt.Errorf("enabling bot @%s: %w", a.Username, err)
			}
			say(true, "bot @%s: enabled again", a.Username)
			changed = true
		}
		if b.DisplayName != a.DisplayName || b.Description != a.Description {
			if err := o.Admin.PatchBot(ctx, b.UserID, a.DisplayName, a.Description); err != nil {
				return fmt.Errorf("updating bot @%s: %w", a.Username, err)
			}
			say(true, "bot @%s: display name and description updated", a.Username)
			changed = true
		}
		if !changed {
			say(false, "bot @%s: already there", a.Username)
		}
	}
	if len(a.Icon) > 0 {
		sum := sha256.Sum256(a.Icon)
		h := hex.EncodeToString(sum[:])
		if old, _ := o.Secrets.Get(ctx, iconPrefix+a.Username); old != h {
			if err := o.Admin.SetProfileImage(ctx, b.UserID, a.IconName, a.Icon); err != nil {
				return fmt.Errorf("setting the icon of @%s: %w", a.Username, err)
			}
			if err := o.Secrets.Put(ctx, iconPrefix+a.Username, h); err != nil {
				return err
			}
			say(true, "bot @%s: icon set", a.Username)
		} else {
			say(false, "bot @%s: icon unchanged", a.Username)
		}
	}
	for _, t := range teams {
		if err := o.Admin.AddTeamMember(ctx, t.ID, b.UserID); err != nil {
			return fmt.Errorf("adding @%s to team %s: %w", a.Username, t.Name, err)
		}
	}
	name := BotTokenPrefix + a.Name
	if tok, err := o.Secrets.Get(ctx, name); err == nil {
		ok, err := o.Check(ctx, tok, b.UserID)
		if err != nil {
			return fmt.Errorf("checking the stored token of @%s: %w", a.Username, err)
		}
		if ok {
			say(false, "bot @%s: access token in the secret store still valid", a.Username)
			return nil
		}
	} else if !errors.Is(err, secrets.ErrNotFound) {
		return err
	}
	tok, err := o.Admin.CreateAccessToken(ctx, b.UserID, "mmgate (app "+a.Name+")")
	if err != nil {
		return fmt.Errorf("creating an access token for @%s: %w", a.Username, err)
	}
	if err := o.Secrets.Put(ctx, name, tok); err != nil {
		return err
	}
	say(true, "bot @%s: new access token stored in the secret store", a.Username)
	return nil
}

// commandSpec is the /mmgate command as setup installs it.
func commandSpec(teamID, u string) mattermost.Command {
	return mattermost.Command{TeamID: teamID, Trigger: "mmgate", Method: "P", URL: u, DisplayName: "mmgate",
		Description: "mmgate: mail and approvals", AutoComplete: true,
		AutoCompleteDesc: "Your approvals, subscriptions and mmgate's status",
		AutoCompleteHint: "help | status | approvals | link | unlink | subscribe APP | unsubscribe APP"}
}

func command(ctx context.Context, o Options, t mattermost.Team, say func(bool, string, ...any)) error {
	want := commandSpec(t.ID, o.CommandURL)
	cmds, err := o.Admin.Commands(ctx, t.ID)
	if err != nil {
		return fmt.Errorf("listing slash commands: %w", err)
	}
	var have *mattermost.Command
	for i := range cmds {
		if cmds[i].Trigger == want.Trigger && cmds[i].DeleteAt == 0 {
			have = &cmds[i]
			break
		}
	}
	var tok string
	switch {
	case have == nil:
		c, err := o.Admin.CreateCommand(ctx, want)
		if err != nil {
			return fmt.Errorf("creating /mmgate: %w", err)
		}
		tok = c.Token
		say(true, "team %s: /mmgate created", t.Name)
	case have.URL != want.URL || have.Method != want.Method || have.AutoCompleteHint != want.AutoCompleteHint ||
		have.Description != want.Description || have.DisplayName != want.DisplayName ||
		have.AutoCompleteDesc != want.AutoCompleteDesc || !have.AutoComplete:
		upd := *have
		upd.URL, upd.Method, upd.Description, upd.DisplayName = want.URL, want.Method, want.Description, want.DisplayName
		upd.AutoComplete, upd.AutoCompleteDesc, upd.AutoCompleteHint = true, want.AutoCompleteDesc, want.AutoCompleteHint
		c, err := o.Admin.UpdateCommand(ctx, upd)
		if err != nil {
			return fmt.Errorf("updating /mmgate: %w", err)
		}
		tok = c.Token
		say(true, "team %s: /mmgate updated (now %s)", t.Name, want.URL)
	default:
		tok = have.Token
		say(false, "team %s: /mmgate already there", t.Name)
	}
	if tok == "" {
		return errors.New("mattermost returned no token for /mmgate")
	}
	name := CommandTokenPrefix + t.ID
	if old, _ := o.Secrets.Get(ctx, name); old != tok {
		if err := o.Secrets.Put(ctx, name, tok); err != nil {
			return err
		}
		say(true, "team %s: /mmgate's token stored in the secret store", t.Name)
	}
	return nil
}
