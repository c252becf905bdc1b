// Command clawker-fw-plugin is the process of the clawker-fw Docker managed
// plugin: network driver and authorization plugin on one socket, supervisor
// of the CoreDNS sidecar, the builtin proxy, and the admin API. The pieces
// are assembled in plugin/wire.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/internal/logsplit"
	"github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/plugin/wire"
)

func main() {
	logger := logrus.New()
	logger.SetFormatter(&logrus.JSONFormatter{})
	// dockerd relays stdout at info and stderr at error: each line goes to
	// the stream of its level and keeps its own level as a field.
	logsplit.Setup(logger, os.Stdout, os.Stderr)
	log := logrus.NewEntry(logger).WithField(plugin.FieldComponent, "main")
	s, err := wire.ReadSettings()
	if err == nil {
		logger.SetLevel(s.LogLevel)
		ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
		err = wire.Run(ctx, s, logrus.NewEntry(logger))
		stop()
	}
	if err != nil {
		log.WithError(err).Error("clawker-fw plugin stopped")
		os.Exit(1)
	}
}
