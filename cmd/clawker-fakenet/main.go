// Command clawker-fakenet is the fake internet of clawker-fw's end-to-end
// tests: authoritative DNS for the test zone, HTTPS/HTTP with a test CA, TCP
// echo servers and an optional sshd, recording every connection and query.
// It is meant to run inside the network namespace the e2e harness creates
// (e2e/harness); see package e2e/fakenet for the configuration.
//
//	clawker-fakenet -config fakenet.json
//
// It prints "fakenet ready" on stdout once every service is bound, and exits
// on SIGTERM/SIGINT.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/clawker-fw/clawker-fw/e2e/fakenet"
)

func main() {
	configPath := flag.String("config", "", "JSON config file (see package e2e/fakenet)")
	flag.Parse()
	if *configPath == "" {
		fmt.Fprintln(os.Stderr, "clawker-fakenet: -config is required")
		os.Exit(2)
	}
	if err := run(*configPath); err != nil {
		fmt.Fprintf(os.Stderr, "clawker-fakenet: %v\n", err)
		os.Exit(1)
	}
}

func run(configPath string) error {
	cfg, err := fakenet.LoadConfig(configPath)
	if err != nil {
		return err
	}
	srv, err := fakenet.New(cfg)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := srv.Start(); err != nil {
		return err
	}
	defer srv.Close()
	fmt.Println("fakenet ready")
	select {
	case <-ctx.Done():
		return nil
	case err := <-srv.Errors():
		return err
	}
}
