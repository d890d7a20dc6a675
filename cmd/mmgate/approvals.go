package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/mmgate/mmgate/internal/app"
	"github.com/mmgate/mmgate/internal/approval"
)

func approvalsCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "approvals", Short: "Approval requests: ask, list, show, audit"}
	var req approval.Request
	var keyFile, apiURL string
	var wait time.Duration
	request := &cobra.Command{
		Use:   "request --api-key-file F --requester WHO --what TEXT --reviewer WHO… [--group DN…] [--channel team/channel]",
		Short: "Ask for an approval through the running instance's API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			key, err := os.ReadFile(keyFile)
			if err != nil {
				return fmt.Errorf("--api-key-file: %w", err)
			}
			if apiURL == "" {
				apiURL = "http://" + cfg.HTTP.Listen
			}
			body, _ := json.Marshal(req)
			hr, _ := http.NewRequestWithContext(cmd.Context(), http.MethodPost, strings.TrimRight(apiURL, "/")+"/api/v1/approvals", bytes.NewReader(body))
			hr.Header.Set("Content-Type", "application/json")
			hr.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
			resp, err := http.DefaultClient.Do(hr)
			if err != nil {
				return fmt.Errorf("mmgate at %s does not answer (is `mmgate serve` running?): %w", apiURL, err)
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusCreated {
				return fmt.Errorf("refused (HTTP %d): %s", resp.StatusCode, strings.TrimSpace(string(out)))
			}
			var a approval.Approval
			_ = json.Unmarshal(out, &a)
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s (posted %d times, expires %s)\n", a.ID, a.State, len(a.Posts), a.ExpiresAt.Local().Format(time.DateTime))
			if wait <= 0 {
				return nil
			}
			deadline := time.Now().Add(wait)
			for time.Now().Before(deadline) && a.State == approval.Pending {
				hr, _ := http.NewRequestWithContext(cmd.Context(), http.MethodGet, strings.TrimRight(apiURL, "/")+"/api/v1/approvals/"+a.ID+"?wait=55s", nil)
				hr.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(key)))
				resp, err := http.DefaultClient.Do(hr)
				if err != nil {
					return fmt.Errorf("mmgate at %s does not answer: %w", apiURL, err)
				}
				out, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					return fmt.Errorf("waiting for %s: HTTP %d: %s", a.ID, resp.StatusCode, strings.TrimSpace(string(out)))
				}
				if err := json.Unmarshal(out, &a); err != nil {
					return fmt.Errorf("waiting for %s: %w", a.ID, err)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", a.ID, a.State)
			return nil
		},
	}
	f := request.Flags()
	f.StringVar(&keyFile, "api-key-file", "", "file holding the client's API key (required)")
	f.StringVar(&apiURL, "api", "", "mmgate's URL (default http://HTTP_LISTEN)")
	f.StringVar(&req.Requester, "requester", "", "who asks (email or username)")
	f.StringVar(&req.What, "what", "", "what is asked for")
	f.StringVar(&req.Reason, "reason", "", "why")
	f.StringArrayVar(&req.Reviewers.Users, "reviewer", nil, "a reviewer (email or username; repeatable)")
	f.StringArrayVar(&req.Reviewers.Groups, "group", nil, "a directory group whose members may decide (repeatable)")
	f.StringVar(&req.Reviewers.Channel, "channel", "", "team/channel to post in")
	f.IntVar(&req.Required, "required", 1, "approvals needed")
	f.StringVar(&req.ExpiresIn, "expires-in", "24h", "how long the request stays open")
	f.StringVar(&req.CallbackURL, "callback-url", "", "where the outcome is posted")
	f.DurationVar(&wait, "wait", 0, "wait this long for the decision")
	_ = request.MarkFlagRequired("api-key-file")

	list := &cobra.Command{
		Use: "list", Short: "The newest approval requests", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := openApprovals(g, cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			as, err := st.List(cmd.Context(), "", 100)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tCREATED\tSTATE\tCLIENT\tREQUESTER\tAPPROVALS\tWHAT")
			for _, a := range as {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", a.ID, a.CreatedAt.Local().Format(time.DateTime), a.State, a.Client,
					a.Request.Requester, a.Approvals(), a.Request.Required, cut(a.Request.What, 60))
			}
			return tw.Flush()
		},
	}
	show := &cobra.Command{
		Use: "show ID", Short: "One approval request with its decisions and audit log", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openApprovals(g, cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			a, err := st.Get(cmd.Context(), args[0])
			if err != nil {
				return fmt.Errorf("%s: %w (mmgate approvals list shows the ids)", args[0], err)
			}
			b, _ := json.MarshalIndent(a, "", "  ")
			fmt.Fprintln(cmd.OutOrStdout(), string(b))
			return printAudit(cmd, st, a.ID)
		},
	}
	audit := &cobra.Command{
		Use: "audit [ID]", Short: "The audit log: every decision and every refused click", Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			st, err := openApprovals(g, cmd)
			if err != nil {
				return err
			}
			defer st.Close()
			id := ""
			if len(args) == 1 {
				id = args[0]
			}
			return printAudit(cmd, st, id)
		},
	}
	c.AddCommand(request, list, show, audit)
	return c
}

func openApprovals(g *globals, cmd *cobra.Command) (*approval.Store, error) {
	cfg, err := g.load()
	if err != nil {
		return nil, err
	}
	return app.OpenApprovals(cmd.Context(), cfg)
}

func printAudit(cmd *cobra.Command, st *approval.Store, id string) error {
	es, err := st.Audit(cmd.Context(), id, 1000)
	if err != nil {
		return err
	}
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "AT\tAPPROVAL\tACTOR\tACTION\tRESULT\tDETAIL")
	for _, e := range es {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.At.Local().Format("2006-01-02 15:04:05.000"), e.ApprovalID, e.Actor, e.Action, e.Result, e.Detail)
	}
	return tw.Flush()
}
