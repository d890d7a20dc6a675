package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/mmgate/mmgate/internal/app"
	"github.com/mmgate/mmgate/internal/relay"
	"github.com/mmgate/mmgate/internal/spool"
)

func explainCmd(g *globals) *cobra.Command {
	var sender, appName string
	var rcpts []string
	c := &cobra.Command{
		Use:   "explain FILE.eml",
		Short: "Show what mmgate would do with a message, without posting it",
		Long: `Explain runs a message through the same code that delivers it, up to the
point of posting: which app and why, each recipient's directory entry, each
allow and deny group decision with its path through nested groups, the
Mattermost user, and the rendered posts. It reads the directory and looks
users up in Mattermost; it posts nothing and creates no channel.

Without --sender the message is taken as one without an envelope (a polled
mailbox, a postback): the sender is its Return-Path header, as delivery does.
Without --rcpt, the recipients come from the headers as for a polled mailbox.
Use - as FILE to read the message from stdin.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			var raw []byte
			if args[0] == "-" {
				raw, err = io.ReadAll(cmd.InOrStdin())
			} else {
				raw, err = os.ReadFile(args[0])
			}
			if err != nil {
				return fmt.Errorf("reading the message: %w", err)
			}
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			rel, err := app.NewExplainer(cfg, log)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			env := spool.Envelope{Intake: "explain", Sender: sender, Recipients: rcpts, App: appName}
			if appName != "" {
				env.AuthIdentity = appName
			}
			if sender == "" {
				// As for a polled mailbox: the relay reads the Return-Path.
				env.NoEnvelope = true
				fmt.Fprintln(w, "Sender:      the Return-Path header, as for mail without an envelope (--sender overrides)")
			} else {
				fmt.Fprintf(w, "Sender:      %s\n", sender)
			}
			if len(rcpts) == 0 {
				fmt.Fprintln(w, "Recipients:  from the headers (--rcpt overrides)")
			} else {
				fmt.Fprintf(w, "Recipients:  %s\n", strings.Join(rcpts, ", "))
			}
			ex := rel.Explain(cmd.Context(), bytes.NewReader(raw), env)
			printExplanation(w, ex)
			return nil
		},
	}
	c.Flags().StringVar(&sender, "sender", "", "envelope sender (MAIL FROM)")
	c.Flags().StringArrayVar(&rcpts, "rcpt", nil, "envelope recipient (RCPT TO); repeat for several")
	c.Flags().StringVar(&appName, "app", "", "as if sent with this app's SMTP login")
	return c
}

func printExplanation(w io.Writer, ex *relay.Explanation) {
	fmt.Fprintln(w, "\nDecisions:")
	for _, e := range ex.Events {
		fmt.Fprintf(w, "  %-10s %s\n", e.Kind, e.Detail)
	}
	fmt.Fprintln(w)
	switch ex.Outcome.Kind {
	case spool.OutcomePosted:
		fmt.Fprintf(w, "Outcome:     posted to %s\n", strings.Join(ex.Destinations, ", "))
	case spool.OutcomeQuarantine:
		fmt.Fprintf(w, "Outcome:     quarantined (%s): %s\n", ex.Outcome.Code, ex.Outcome.Reason)
		if len(ex.Destinations) > 0 {
			fmt.Fprintf(w, "             after posting to %s\n", strings.Join(ex.Destinations, ", "))
		}
	case spool.OutcomeRetry:
		fmt.Fprintf(w, "Outcome:     retried later: %s\n", ex.Outcome.Reason)
	}
	if len(ex.Posts) == 0 {
		return
	}
	fmt.Fprintln(w, "\nPosts (the same in every destination):")
	for _, p := range ex.Posts {
		fmt.Fprintf(w, "--- %s", p.Part)
		if len(p.Files) > 0 {
			fmt.Fprintf(w, ", files: %s", strings.Join(p.Files, ", "))
		}
		fmt.Fprintln(w, " ---")
		fmt.Fprintln(w, p.Message)
	}
}
