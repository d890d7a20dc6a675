// Command mmgate is the mmgate binary: flags and subcommands, turned into a
// configuration and handed to internal/app. Nothing else lives here.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/mmgate/mmgate/internal/app"
	"github.com/mmgate/mmgate/internal/config"
	"github.com/mmgate/mmgate/internal/fault"
)

// version is set with -ldflags "-X main.version=…".
var version = "dev"

func main() {
	os.Exit(run(os.Args[1:]))
}

// exitError carries an exit code out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }

func run(args []string) int {
	root := newRoot()
	root.SetArgs(args)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "mmgate:", err)
		var ee *exitError
		if errors.As(err, &ee) {
			return ee.code
		}
		return 1
	}
	return 0
}

type globals struct {
	configPath string
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "mmgate",
		Short:         "mmgate turns email from tools into Mattermost messages",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringVarP(&g.configPath, "config", "c", os.Getenv("MMGATE_CONFIG"),
		"configuration file (YAML); MMGATE_* environment variables override it")
	root.AddCommand(serveCmd(g), configCmd(g), versionCmd(), queueCmd(g), quarantineCmd(g), deliverCmd(g), explainCmd(g), ssoCmd(g), mattermostCmd(g), approvalsCmd(g), accountsCmd(g))
	return root
}

// load reads and validates the whole configuration (serve).
func (g *globals) load() (config.Config, error) {
	return g.read(config.Config.Validate)
}

// loadLite reads the configuration and validates only what locating the
// spool needs: for commands (deliver, queue and quarantine administration)
// run by users who cannot read the bot tokens.
func (g *globals) loadLite() (config.Config, error) {
	return g.read(config.Config.ValidateStorage)
}

// read loads the configuration file (-c, MMGATE_CONFIG, or ./mmgate.yaml)
// with the environment, then runs validate.
func (g *globals) read(validate func(config.Config) error) (config.Config, error) {
	path := g.configPath
	if path == "" {
		if _, err := os.Stat("mmgate.yaml"); err == nil {
			path = "mmgate.yaml"
		}
	}
	cfg, err := config.Load(path, os.Environ())
	if err != nil {
		return cfg, &exitError{fault.ExitConfigErr, fmt.Errorf("%w\n(run `mmgate config check` for every problem, or `mmgate config init` for an example)", err)}
	}
	if err := validate(cfg); err != nil {
		return cfg, &exitError{fault.ExitConfigErr, fmt.Errorf("configuration has problems:\n%w\n(fix them, then run `mmgate config check -c %s`)", err, orDefault(path))}
	}
	return cfg, nil
}

func orDefault(p string) string {
	if p == "" {
		return "FILE"
	}
	return p
}

func serveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "serve",
		Short: "Run the SMTP intake, the relay workers and the HTTP endpoints",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := g.load()
			if err != nil {
				return err
			}
			log := app.NewLogger(cfg.Log)
			// Libraries that log through slog's default (zitadel/oidc's
			// provider) then write in the configured format and level.
			slog.SetDefault(log)
			srv, err := app.Start(cmd.Context(), cfg, log)
			if err != nil {
				return err
			}
			<-cmd.Context().Done()
			log.Info("signal received, shutting down")
			srv.Stop(context.Background())
			return nil
		},
	}
}

func configCmd(g *globals) *cobra.Command {
	c := &cobra.Command{Use: "config", Short: "Write or check a configuration"}
	c.AddCommand(&cobra.Command{
		Use:   "init",
		Short: "Print a commented example configuration",
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprint(cmd.OutOrStdout(), config.Example)
			return err
		},
	}, &cobra.Command{
		Use:   "check",
		Short: "Check a configuration and print every problem with its key path",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(g.configPath, os.Environ())
			var decoded config.Problems
			if errors.As(err, &decoded) {
				// Check what did decode too, so that every problem shows at once.
				err = decoded.Merge(cfg.Validate())
			} else if err == nil {
				err = cfg.Validate()
			}
			if err != nil {
				var ps config.Problems
				if errors.As(err, &ps) {
					fmt.Fprintf(cmd.OutOrStdout(), "%d problem(s):\n", len(ps))
					for _, p := range ps {
						fmt.Fprintf(cmd.OutOrStdout(), "  %s\n", p)
					}
					return &exitError{fault.ExitConfigErr, errors.New("the configuration is not valid")}
				}
				return &exitError{fault.ExitConfigErr, err}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "configuration OK: %d app(s), SMTP on %s, Mattermost at %s\n",
				len(cfg.Apps), cfg.SMTP.Listen, cfg.Mattermost.URL)
			return nil
		},
	})
	return c
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version",
		Run: func(cmd *cobra.Command, _ []string) {
			v := version
			if bi, ok := debug.ReadBuildInfo(); ok && v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
				v = bi.Main.Version
			}
			fmt.Fprintf(cmd.OutOrStdout(), "mmgate %s\n", v)
		},
	}
}
