package main

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mmgate/mmgate/internal/account"
	"github.com/mmgate/mmgate/internal/app"
)

func accountsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "accounts", Short: "Links and subscriptions people made with /mmgate link and /mmgate subscribe"}
	open := func(cmd *cobra.Command) (*account.Store, error) {
		cfg, err := g.load()
		if err != nil {
			return nil, err
		}
		return app.OpenAccounts(cmd.Context(), cfg)
	}
	links := &cobra.Command{
		Use: "links", Short: "Every directory address linked to a Mattermost account", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := open(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			ls, err := st.Links(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "EMAIL\tMATTERMOST USER\tUSER ID\tSIGNED IN AS\tLINKED")
			for _, l := range ls {
				fmt.Fprintf(tw, "%s\t@%s\t%s\t%s\t%s\n", l.Email, l.Username, l.UserID, l.Subject, l.Created.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
	unlink := &cobra.Command{
		Use: "unlink EMAIL", Short: "Remove the link of a directory address: its mail goes to the account with that email again",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			gone, err := st.RemoveLink(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if !gone {
				return fmt.Errorf("%s is not linked: `mmgate accounts links` lists the links", args[0])
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unlinked %s (running instances see it within 10 seconds)\n", args[0])
			return nil
		},
	}
	subs := &cobra.Command{
		Use: "subscriptions", Short: "Every subscription to an app", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := open(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			ss, err := st.Subscriptions(cmd.Context())
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "APP\tMATTERMOST USER\tUSER ID\tGROUPS CHECKED FOR\tSUBSCRIBED")
			for _, s := range ss {
				fmt.Fprintf(tw, "%s\t@%s\t%s\t%s\t%s\n", s.App, s.Username, s.UserID, s.Email, s.Created.Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
	unsubscribe := &cobra.Command{
		Use: "unsubscribe APP USER_ID", Short: "End a subscription (the user id from `mmgate accounts subscriptions`)",
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := open(cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			gone, err := st.Unsubscribe(cmd.Context(), args[0], args[1])
			if err != nil {
				return err
			}
			if !gone {
				return fmt.Errorf("user %s is not subscribed to %s: `mmgate accounts subscriptions` lists them", args[1], args[0])
			}
			fmt.Fprintf(cmd.OutOrStdout(), "unsubscribed %s from %s\n", args[1], args[0])
			return nil
		},
	}
	c.AddCommand(links, unlink, subs, unsubscribe)
	return c
}
