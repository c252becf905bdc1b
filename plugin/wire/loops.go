package wire

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/bpf"
	"github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/plugin/authz"
)

// selfReference logs the plugin's own id and the reference Docker knows it
// by (asked once Docker has finished enabling the plugin).
func selfReference(docker *Docker, id string, log *logrus.Entry) {
	if id == "" {
		return
	}
	for range 10 {
		time.Sleep(3 * time.Second)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, name, found, err := docker.Plugin(ctx, id)
		cancel()
		if err == nil && found {
			log.WithField("plugin_id", id).WithField("plugin", name).Info("plugin identity")
			return
		}
	}
}

// pruneRecords forgets, every 10 minutes, the authz records of containers
// that no longer exist.
func pruneRecords(docker *Docker, records *authz.Records, log *logrus.Entry) {
	for {
		time.Sleep(10 * time.Minute)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		live, err := docker.ContainerIDs(ctx)
		cancel()
		if err != nil {
			continue
		}
		if n, err := records.Prune(func(id string) bool { return live[id] }, 10*time.Minute); err != nil {
			log.WithError(err).Warn("prune authz records")
		} else if n > 0 {
			log.WithField("removed", n).Debug("pruned authz records")
		}
	}
}

func gcLoop(m *bpf.Manager, log *logrus.Entry) {
	for range time.Tick(30 * time.Second) {
		if n, err := m.GC(time.Now()); err != nil {
			log.WithError(err).Warn("learned-map GC failed")
		} else if n > 0 {
			log.WithField("expired", n).Debug("learned-map GC")
		}
	}
}

// repairLoop notices when something else removed the host guard of a
// network (a firewall reload flushing the nftables ruleset) and restores it.
// Meanwhile the BPF hooks still deny enrolled containers' direct
// connections; the guard adds bridge isolation, anti-spoofing and the
// redirect of not-yet-enrolled endpoints.
func repairLoop(p *plugin.Plugin, log *logrus.Entry) {
	lastErr := ""
	for range time.Tick(guardCheckEvery) {
		repaired, err := p.RepairHost()
		for _, r := range repaired {
			log.WithField("missing", r).Warn("host firewall rules of a clawker-fw network were removed by something else (a firewall reload?); restored")
		}
		// A lasting failure is logged once, not every few seconds.
		switch {
		case err != nil && err.Error() != lastErr:
			log.WithError(err).Error("checking or restoring the host firewall rules failed; `clawker-fw reload` retries")
			lastErr = err.Error()
		case err == nil && lastErr != "":
			log.Info("host firewall rules check works again")
			lastErr = ""
		}
	}
}

// guardCheckEvery is how often repairLoop checks the host guard.
const guardCheckEvery = 5 * time.Second

func httpOK(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d", url, resp.StatusCode)
	}
	return nil
}
