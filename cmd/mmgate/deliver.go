package main

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/mmgate/mmgate/internal/fault"
	"github.com/mmgate/mmgate/internal/intake/pipe"
)

// deliverCmd is the pipe intake's client: postfix's pipe transport, .forward
// and procmail run it with one message on standard input.
func deliverCmd(g *globals) *cobra.Command {
	var (
		p      pipe.Params
		socket string
	)
	c := &cobra.Command{
		Use:   "deliver [--app NAME] [--sender S] [--recipient R]... [-- R...]",
		Short: "Store one message read on standard input in the running instance (postfix pipe transport)",
		Long: `deliver reads one RFC 822 message on standard input and stores it in the
running mmgate through its local socket (pipe.socket). Exit codes follow
sysexits, as postfix's pipe transport expects: 0 stored; 75 (EX_TEMPFAIL) the
instance is unreachable or could not store it, so the sender keeps the mail
and retries; 65 (EX_DATAERR) the message can never be accepted (empty, too
large). Without --sender the envelope is unknown: the relay takes the sender
from Return-Path and, without recipients, the recipients from the header.

postfix master.cf:
  mmgate unix - n n - 10 pipe flags=Rq user=mmgate null_sender=
    argv=/usr/local/bin/mmgate deliver -c /etc/mmgate/mmgate.yaml --sender ${sender} -- ${recipient}`,
		RunE: func(cmd *cobra.Command, args []string) error {
			p.HasSender = cmd.Flags().Changed("sender")
			p.Recipients = append(p.Recipients, args...)
			if socket == "" {
				cfg, err := g.loadLite()
				if err != nil {
					// A configuration the pipe user cannot read is an
					// operator's problem: keep the mail queued.
					return &exitError{fault.ExitTempFail, err}
				}
				socket = cfg.PipeSocket()
				if socket == "" {
					return &exitError{fault.ExitTempFail, fmt.Errorf("pipe.socket is \"-\" in the configuration: the running instance has no socket to deliver to")}
				}
			}
			id, err := pipe.Deliver(cmd.Context(), socket, p, cmd.InOrStdin())
			if err != nil {
				code := fault.Exit(err)
				hint := "the message stays with the sender, who will retry"
				if code == fault.ExitDataErr {
					hint = "the message can never be accepted"
				}
				return &exitError{code, fmt.Errorf("%w (%s)", err, hint)}
			}
			if v, _ := cmd.Flags().GetBool("verbose"); v {
				fmt.Fprintf(cmd.OutOrStdout(), "stored as %s\n", id)
			}
			return nil
		},
	}
	// A wrong argv in master.cf must not bounce mail (postfix bounces on any
	// status that is not a sysexits one): keep it queued and say why.
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{fault.ExitTempFail, fmt.Errorf("%w (check the command line, e.g. the pipe transport's argv in master.cf; the message stays with the sender)", err)}
	})
	c.Flags().StringVar(&p.App, "app", "", "the source app (default: found by the sender and routing rules)")
	c.Flags().StringVar(&p.Sender, "sender", "", "the envelope sender (postfix: ${sender}; empty for the null sender)")
	c.Flags().StringArrayVar(&p.Recipients, "recipient", nil, "an envelope recipient (repeatable; arguments after -- are recipients too)")
	c.Flags().StringVar(&socket, "socket", "", "the instance's socket (default: pipe.socket of the configuration)")
	c.Flags().BoolP("verbose", "v", false, "print the spool id")
	return c
}
