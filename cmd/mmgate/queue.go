package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mmgate/mmgate/internal/app"
	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/spool"
)

// withSpool opens the configured spool for administration (no workers), so
// the commands work whether or not `mmgate serve` is running on the same data.
func (g *globals) withSpool(ctx context.Context, fn func(*spool.Spool) error) error {
	cfg, err := g.loadLite()
	if err != nil {
		return err
	}
	// Administration prints its own results; only problems are logged.
	lc := cfg.Log
	if lc.Level != "debug" {
		lc.Level = "warn"
	}
	sp, err := app.OpenSpool(ctx, cfg, nil, app.NewLogger(lc))
	if err != nil {
		return &exitError{fault.ExitTempFail, fmt.Errorf("opening the spool at %s: %w", cfg.SpoolPath(), err)}
	}
	defer func() { _ = sp.Close() }()
	if err := fn(sp); err != nil {
		switch fault.KindOf(err) {
		case fault.NotFound:
			return &exitError{fault.ExitDataErr, fmt.Errorf("%w (list ids with `mmgate queue list` or `mmgate quarantine list`)", err)}
		case fault.Conflict:
			return &exitError{fault.ExitDataErr, err}
		}
		return err
	}
	return nil
}

func queueCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "queue", Short: "Inspect and act on messages waiting for delivery"}
	var all bool
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List queued and retrying messages (--all: every state)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withSpool(cmd.Context(), func(sp *spool.Spool) error {
				f := spool.ListFilter{States: []spool.State{spool.StateQueued, spool.StateRetrying}, Limit: limit}
				if all {
					f.States = nil
				}
				ms, err := sp.List(cmd.Context(), f)
				if err != nil {
					return err
				}
				printList(cmd.OutOrStdout(), ms, false)
				return nil
			})
		},
	}
	list.Flags().BoolVar(&all, "all", false, "list messages in every state")
	list.Flags().IntVar(&limit, "limit", 100, "at most this many, newest first")
	var olderThan time.Duration
	purge := &cobra.Command{
		Use:   "purge",
		Short: "Remove the raw mail of posted messages older than --older-than (default: the retention)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("older-than") {
				olderThan = cfg.Spool.Retention
			}
			return g.withSpool(cmd.Context(), func(sp *spool.Spool) error {
				n, err := sp.PurgePosted(cmd.Context(), olderThan)
				if err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "purged the raw mail of %d posted message(s) older than %s\n", n, olderThan)
				return nil
			})
		},
	}
	purge.Flags().DurationVar(&olderThan, "older-than", 0, "age of posted messages to purge (e.g. 24h)")
	c.AddCommand(list, showCmd(g, "Show a message with its whole history"),
		&cobra.Command{
			Use:   "retry ID",
			Short: "Try a queued or retrying message again now",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return g.withSpool(cmd.Context(), func(sp *spool.Spool) error {
					if err := sp.Retry(cmd.Context(), args[0]); err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s will be retried now\n", args[0])
					return nil
				})
			},
		}, purge)
	return c
}

func quarantineCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "quarantine", Short: "Inspect, release or delete quarantined messages"}
	var limit int
	list := &cobra.Command{
		Use:   "list",
		Short: "List quarantined messages with their reasons",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return g.withSpool(cmd.Context(), func(sp *spool.Spool) error {
				ms, err := sp.List(cmd.Context(), spool.ListFilter{States: []spool.State{spool.StateQuarantined}, Limit: limit})
				if err != nil {
					return err
				}
				printList(cmd.OutOrStdout(), ms, true)
				return nil
			})
		},
	}
	list.Flags().IntVar(&limit, "limit", 100, "at most this many, newest first")
	var note string
	release := &cobra.Command{
		Use:   "release ID",
		Short: "Queue a quarantined message for delivery again (after fixing the cause)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withSpool(cmd.Context(), func(sp *spool.Spool) error {
				if err := sp.Release(cmd.Context(), args[0], note); err != nil {
					return err
				}
				fmt.Fprintf(cmd.OutOrStdout(), "%s released: it will be delivered by the running mmgate (parts already posted are not posted again)\n", args[0])
				return nil
			})
		},
	}
	release.Flags().StringVar(&note, "note", "", "why it was released (kept in the history)")
	c.AddCommand(list, showCmd(g, "Show a quarantined message with its reason and history"), release,
		&cobra.Command{
			Use:   "delete ID",
			Short: "Delete a quarantined message and its raw mail for good",
			Args:  cobra.ExactArgs(1),
			RunE: func(cmd *cobra.Command, args []string) error {
				return g.withSpool(cmd.Context(), func(sp *spool.Spool) error {
					if err := sp.Delete(cmd.Context(), args[0]); err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s deleted\n", args[0])
					return nil
				})
			},
		})
	return c
}

func showCmd(g *globals, short string) *cobra.Command {
	return &cobra.Command{
		Use:   "show ID",
		Short: short,
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return g.withSpool(cmd.Context(), func(sp *spool.Spool) error {
				m, events, err := sp.Get(cmd.Context(), args[0])
				if err != nil {
					return err
				}
				ledger, err := sp.LedgerList(cmd.Context(), m.ID)
				if err != nil {
					return err
				}
				printShow(cmd.OutOrStdout(), m, events, ledger)
				return nil
			})
		},
	}
}

func printList(w io.Writer, ms []spool.Message, reasons bool) {
	if len(ms) == 0 {
		fmt.Fprintln(w, "no messages")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	if reasons {
		fmt.Fprintln(tw, "ID\tRECEIVED\tAPP\tFROM\tSUBJECT\tREASON")
	} else {
		fmt.Fprintln(tw, "ID\tRECEIVED\tSTATE\tAPP\tATTEMPTS\tNEXT TRY\tSUBJECT\tLAST ERROR")
	}
	for _, m := range ms {
		if reasons {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", m.ID, m.ReceivedAt.Local().Format(time.DateTime), dash(m.App),
				dash(m.Envelope.Sender), cut(m.Subject, 40), cut(m.Reason, 80))
			continue
		}
		next := "-"
		if m.State == spool.StateRetrying && !m.NextTry.IsZero() {
			next = m.NextTry.Local().Format(time.TimeOnly)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", m.ID, m.ReceivedAt.Local().Format(time.DateTime), m.State,
			dash(m.App), m.Attempt, next, cut(m.Subject, 40), cut(m.LastError, 60))
	}
	_ = tw.Flush()
}

func printShow(w io.Writer, m spool.Message, events []spool.Event, ledger []spool.LedgerEntry) {
	fmt.Fprintf(w, "ID:          %s\n", m.ID)
	fmt.Fprintf(w, "State:       %s\n", m.State)
	if m.Reason != "" {
		fmt.Fprintf(w, "Reason:      %s\n", m.Reason)
	}
	if m.LastError != "" {
		fmt.Fprintf(w, "Last error:  %s\n", m.LastError)
	}
	if m.State == spool.StateRetrying && !m.NextTry.IsZero() {
		fmt.Fprintf(w, "Next try:    %s\n", m.NextTry.Local().Format(time.RFC3339))
	}
	fmt.Fprintf(w, "Received:    %s via %s from %s\n", m.ReceivedAt.Local().Format(time.RFC3339), m.Envelope.Intake, dash(m.Envelope.RemoteAddr))
	fmt.Fprintf(w, "Sender:      %s\n", dash(m.Envelope.Sender))
	fmt.Fprintf(w, "Recipients:  %s\n", strings.Join(m.Envelope.Recipients, ", "))
	if m.Envelope.AuthIdentity != "" {
		fmt.Fprintf(w, "SMTP login:  %s\n", m.Envelope.AuthIdentity)
	}
	fmt.Fprintf(w, "App:         %s\n", dash(m.App))
	fmt.Fprintf(w, "Subject:     %s\n", dash(m.Subject))
	fmt.Fprintf(w, "Message-ID:  %s\n", dash(m.MessageID))
	fmt.Fprintf(w, "Size:        %d bytes%s\n", m.Size, map[bool]string{true: " (raw mail purged)"}[m.BodyPurged])
	fmt.Fprintf(w, "Attempts:    %d\n", m.Attempt)
	fmt.Fprintln(w, "\nHistory:")
	for _, e := range events {
		fmt.Fprintf(w, "  %s  %-12s %s\n", e.At.Local().Format("2006-01-02 15:04:05.000"), e.Kind, e.Detail)
	}
	fmt.Fprintln(w, "\nPosts:")
	if len(ledger) == 0 {
		switch m.State {
		case spool.StatePosted:
			fmt.Fprintln(w, "  none: every destination already had this mail (see the duplicate lines above)")
		case spool.StateQuarantined:
			fmt.Fprintln(w, "  none")
		default:
			fmt.Fprintln(w, "  none yet")
		}
	}
	for _, l := range ledger {
		post := l.PostID
		if post == "" {
			post = "(attempted " + l.IntentAt.Local().Format(time.TimeOnly) + ", not confirmed)"
		}
		fmt.Fprintf(w, "  %-32s %-10s %s\n", l.Dest, l.Part, post)
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func cut(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}
