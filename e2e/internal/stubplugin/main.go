// Command stubplugin stands in for clawker-fw-plugin in the harness's own
// tests of InstallPlugin: it answers Docker's plugin handshake on the
// socket the project's config.json declares and writes what it sees (its
// settable env, the files the settable mounts bring in, whether the Docker
// socket answers) to /var/lib/clawker-fw/stub-report.json. It is not a
// network driver.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

const (
	socketPath = "/run/docker/plugins/clawker-fw.sock"
	reportPath = "/var/lib/clawker-fw/stub-report.json"
	// authzLogPath gets one "METHOD URI" line per authorization request.
	authzLogPath = "/var/lib/clawker-fw/stub-authz.log"
)

// Report is what the stub writes.
type Report struct {
	Env        map[string]string `json:"env"`
	NetnsDir   bool              `json:"netns_dir"`
	TestCA     bool              `json:"test_ca"`
	DockerPing string            `json:"docker_ping"`
	BPFFS      bool              `json:"bpffs"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "stubplugin: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	rep := Report{Env: map[string]string{}}
	for _, kv := range os.Environ() {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "CLAWKER_") {
			rep.Env[k] = v
		}
	}
	if fi, err := os.Stat("/var/run/docker/netns"); err == nil && fi.IsDir() {
		rep.NetnsDir = true
	}
	if _, err := os.Stat("/var/lib/clawker-fw/test-ca.crt"); err == nil {
		rep.TestCA = true
	}
	if _, err := os.Stat("/sys/fs/bpf"); err == nil {
		rep.BPFFS = true
	}
	rep.DockerPing = ping()
	b, err := json.Marshal(rep)
	if err != nil {
		return err
	}
	if err := os.WriteFile(reportPath, b, 0o644); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	_ = os.Remove(socketPath)
	ln, err := net.Listen("unix", socketPath)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/Plugin.Activate", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1+json")
		fmt.Fprint(w, `{"Implements":["NetworkDriver","authz"]}`)
	})
	mux.HandleFunc("/NetworkDriver.GetCapabilities", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"Scope":"local"}`)
	})
	mux.HandleFunc("/AuthZPlugin.AuthZReq", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ RequestMethod, RequestURI string }
		_ = json.NewDecoder(r.Body).Decode(&req)
		if f, err := os.OpenFile(authzLogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
			fmt.Fprintf(f, "%s %s\n", req.RequestMethod, req.RequestURI)
			f.Close()
		}
		fmt.Fprint(w, `{"Allow":true}`)
	})
	mux.HandleFunc("/AuthZPlugin.AuthZRes", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprint(w, `{"Allow":true}`)
	})
	return (&http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}).Serve(ln)
}

// ping calls the Docker API through the mounted socket. The daemon is busy
// enabling this plugin, but /_ping does not wait for that.
func ping() string {
	client := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", "/var/run/docker.sock")
		},
	}}
	resp, err := client.Get("http://docker/_ping")
	if err != nil {
		return "error: " + err.Error()
	}
	defer resp.Body.Close()
	return resp.Status
}
