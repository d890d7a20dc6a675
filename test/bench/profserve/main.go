// Command profserve is `mmgate serve` with Go's profiler attached, for
// `BENCH_PROFILE=1 make bench`: it loads and validates the same configuration,
// starts the same internal/app server in-process, and serves net/http/pprof
// (CPU, heap, block and mutex profiles) on a separate loopback address. It is
// a measuring tool only: it never changes what mmgate does, and never listens
// for pprof anywhere but the address it is given (127.0.0.1 by default).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	_ "net/http/pprof" // the profiler, on DefaultServeMux
	"os"
	"os/signal"
	"runtime"
	"syscall"
	"time"

	"github.com/mmgate/mmgate/internal/app"
	"github.com/mmgate/mmgate/internal/config"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "profserve:", err)
		os.Exit(1)
	}
}

func run() error {
	cfgPath := flag.String("c", "", "mmgate configuration file")
	pprofAddr := flag.String("pprof", "127.0.0.1:0", "loopback address for /debug/pprof/")
	flag.Parse()
	if host, _, err := net.SplitHostPort(*pprofAddr); err != nil || (host != "127.0.0.1" && host != "localhost" && host != "::1") {
		return fmt.Errorf("-pprof must be a loopback host:port, got %q", *pprofAddr)
	}
	cfg, err := config.Load(*cfgPath, os.Environ())
	if err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	// Sample contention too: where the intake waits is the question.
	runtime.SetBlockProfileRate(int(100 * time.Microsecond))
	runtime.SetMutexProfileFraction(10)

	l, err := net.Listen("tcp", *pprofAddr)
	if err != nil {
		return err
	}
	ps := &http.Server{Handler: http.DefaultServeMux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := ps.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "profserve: pprof server:", err)
		}
	}()
	fmt.Printf("pprof on http://%s/debug/pprof/\n", l.Addr())

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	log := app.NewLogger(cfg.Log)
	srv, err := app.Start(ctx, cfg, log)
	if err != nil {
		return err
	}
	<-ctx.Done()
	srv.Stop(context.Background())
	_ = ps.Close()
	return nil
}
