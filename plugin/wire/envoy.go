package wire

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/plugin/supervisor"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/builtin"
	"github.com/clawker-fw/clawker-fw/proxy/ca"
	"github.com/clawker-fw/clawker-fw/proxy/envoy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// envoyPlane feeds the Envoy sidecar over xDS; the builtin engine keeps
// serving the transparent and CA listeners, which Envoy does not translate.
type envoyPlane struct {
	builtin *builtin.Engine
	xds     *envoy.Server
}

func (e envoyPlane) Apply(snap *policy.Snapshot, m *model.Model) error {
	own := *m
	own.Listeners = nil
	for _, l := range m.Listeners {
		if l.Kind == model.KindTransparent || l.Kind == model.KindCA {
			own.Listeners = append(own.Listeners, l)
		}
	}
	if err := e.builtin.Apply(snap, &own); err != nil {
		return err
	}
	return e.xds.Update(snap, m)
}

// startEnvoy starts the xDS server and the supervised Envoy sidecar. The
// Envoy engine is validated in Go only (no envoy binary exists on the
// project's machines): see proxy/envoy/README.md.
func startEnvoy(s Settings, bin string, engine *builtin.Engine, authority *ca.CA, log *logrus.Entry) (plugin.DataPlane, *supervisor.Process, error) {
	dir := filepath.Join(s.StateDir, "envoy")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create envoy dir: %w", err)
	}
	addr := "unix://" + filepath.Join(dir, "xds.sock")
	srv, err := envoy.NewServer(context.Background(), envoy.ServerConfig{Address: addr, Log: log.WithField(plugin.FieldComponent, "xds"),
		Options: envoy.Options{Certs: authority, AllowPrivateUpstreams: len(s.AllowPrivate) > 0}})
	if err != nil {
		return nil, nil, err
	}
	bopts := envoy.BootstrapOptions{XDSAddress: addr}
	boot, err := envoy.Bootstrap(bopts)
	if err != nil {
		return nil, nil, err
	}
	bootPath := filepath.Join(dir, "bootstrap.json")
	if err := os.WriteFile(bootPath, boot, 0o600); err != nil {
		return nil, nil, fmt.Errorf("write envoy bootstrap: %w", err)
	}
	cmd := envoy.Command(context.Background(), bin, bootPath, 0, bopts)
	proc := supervisor.Start(supervisor.Spec{Name: "envoy", Path: cmd.Path, Args: cmd.Args[1:]}, log.WithField(plugin.FieldComponent, "envoy"))
	return envoyPlane{builtin: engine, xds: srv}, proc, nil
}
