// Command clawker-fw is the host-side admin CLI of the clawker-fw Docker
// plugin. It talks to the plugin's admin API on a unix socket in the
// plugin's state directory.
//
//	clawker-fw status
//	clawker-fw rules ls|add|rm NETWORK [RULE...]
//	clawker-fw denials [-f]
//	clawker-fw bypass CONTAINER --for 10m
//	clawker-fw ca | rotate-ca | reload
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

const usage = `usage: clawker-fw [--socket PATH] COMMAND

commands:
  status                        health of the stack, networks, endpoints, listeners
  rules ls NETWORK              runtime rules of a network
  rules add NETWORK RULE...     add runtime rules (durable, applied live)
  rules rm NETWORK RULE...      remove runtime rules
  denials [-f]                  recent denials (-f: follow)
  bypass CONTAINER --for DUR    allow-all through DNS and proxy for DUR (e.g. 10m)
  ca                            print the CA certificate (PEM)
  rotate-ca                     replace the CA (new leaf certificates)
  reload                        regenerate everything from the store (break-glass)

NETWORK is a network id (or a unique id prefix). RULE uses the label syntax:
  github.com  .npmjs.org  ssh://github.com  tcp://db.example.test:5432  10.1.0.0/16
`

// remediation maps the admin API's stable reasons to what the user should do.
var remediation = map[string]string{
	api.ReasonNotRunning:        "the plugin is not running: check `docker plugin ls` and `docker plugin enable clawker-fw`",
	api.ReasonInvalidRule:       "fix the rule (syntax: [proto://]dst[:port|:lo-hi]); nothing was changed",
	api.ReasonRuleNotFound:      "list the network's runtime rules with `clawker-fw rules ls NETWORK`; nothing was changed",
	api.ReasonNetworkNotFound:   "use the network id from `docker network ls --filter driver=clawker-fw:latest --no-trunc`",
	api.ReasonContainerGone:     "the container is not running on a clawker-fw network; check `docker ps`",
	api.ReasonStoreWriteFailed:  "the plugin could not write its state (disk full or read-only?); nothing was changed",
	api.ReasonInvalidRequest:    "check the command's arguments; nothing was changed",
	api.ReasonConfigRegenFailed: "the change is saved but not fully applied: run `clawker-fw reload`, then check `clawker-fw status` and the plugin log",
	api.ReasonSidecarRestart:    "the change is saved; a sidecar failed to restart: check `clawker-fw status`",
	api.ReasonStackUnhealthy:    "the change is saved but the stack is unhealthy: check `clawker-fw status` and the plugin log",
	api.ReasonRouteSyncFailed:   "the change is saved but BPF routes did not sync: run `clawker-fw reload`",
	api.ReasonPortLimit:         "a network's rules may need at most 512 listener ports (one per port of each tcp/udp/ssh rule): narrow the port ranges; nothing was changed",
	api.ReasonPortsExhausted:    "the shared pool of listener ports is nearly used up: remove rules with port ranges (here or on other networks); nothing was changed",
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("clawker-fw", flag.ContinueOnError)
	fs.SetOutput(stderr)
	sock := fs.String("socket", envOr("CLAWKER_ADMIN_SOCKET", "/var/lib/clawker-fw/admin.sock"), "admin API socket")
	fs.Usage = func() { fmt.Fprint(stderr, usage) }
	if err := fs.Parse(args); err != nil {
		return 2
	}
	c := newClient(*sock)
	rest := fs.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch rest[0] {
	case "status":
		err = c.status(stdout)
	case "rules":
		err = c.rules(rest[1:], stdout)
	case "denials":
		follow := len(rest) > 1 && (rest[1] == "-f" || rest[1] == "--follow")
		err = c.denials(follow, stdout)
	case "bypass":
		err = c.bypass(rest[1:], stdout)
	case "ca":
		err = c.get("/v1/ca", stdout)
	case "rotate-ca":
		err = c.post("/v1/ca/rotate", nil, stdout)
	case "reload":
		err = c.post("/v1/reload", nil, stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "clawker-fw: unknown command %q\n%s", rest[0], usage)
		return 2
	}
	if err != nil {
		fmt.Fprintln(stderr, "clawker-fw:", err)
		var ae *apiError
		if errors.As(err, &ae) {
			if fix, ok := remediation[ae.Reason]; ok {
				fmt.Fprintln(stderr, "  what to do:", fix)
			}
		}
		return 1
	}
	return 0
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

type client struct {
	http *http.Client
	sock string
}

func newClient(sock string) *client {
	return &client{sock: sock, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}}
}

type apiError struct{ api.APIError }

func (e *apiError) Error() string { return fmt.Sprintf("%s (%s)", e.Message, e.Reason) }

func (c *client) do(method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://clawker-fw"+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &apiError{api.APIError{Message: fmt.Sprintf("reach the plugin at %s: %v", c.sock, err), Reason: api.ReasonNotRunning}}
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var ae api.APIError
		raw, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(raw, &ae) != nil || ae.Reason == "" {
			return nil, fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(raw)))
		}
		return nil, &apiError{ae}
	}
	return resp, nil
}

func (c *client) get(path string, out io.Writer) error {
	return c.copyTo(http.MethodGet, path, nil, out)
}

func (c *client) post(path string, body any, out io.Writer) error {
	return c.copyTo(http.MethodPost, path, body, out)
}

// copyTo makes a call and copies the answer's body to out.
func (c *client) copyTo(method, path string, body any, out io.Writer) error {
	resp, err := c.do(method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(out, resp.Body)
	return err
}

func (c *client) status(out io.Writer) error {
	resp, err := c.do(http.MethodGet, "/v1/status", nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var st api.StatusReport
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return err
	}
	health := "healthy"
	if !st.Healthy {
		health = "UNHEALTHY"
	}
	fmt.Fprintf(out, "clawker-fw: running, %s, engine %s, generation %d\n", health, st.Engine, st.Generation)
	for _, comp := range st.Components {
		h := "healthy"
		if !comp.Healthy {
			h = "UNHEALTHY"
		}
		fmt.Fprintf(out, "  %-10s %s", comp.Name, h)
		if comp.Restarts > 0 {
			fmt.Fprintf(out, " (restarts %d)", comp.Restarts)
		}
		if comp.Detail != "" {
			fmt.Fprintf(out, " %s", comp.Detail)
		}
		fmt.Fprintln(out)
	}
	for _, n := range st.Networks {
		fmt.Fprintf(out, "network %s bridge %s subnet %s gateway %s: %d rules, %d runtime rules\n",
			n.ID[:min(12, len(n.ID))], n.Bridge, n.Subnet, n.Gateway, n.Rules, n.Runtime)
		for _, ep := range n.Endpoints {
			state := "enrolled"
			switch {
			case ep.LabelError != "":
				state = "NO EGRESS: " + ep.LabelError
			case ep.Pending:
				state = "pending"
			case !ep.Enrolled:
				state = "not enrolled"
			}
			if ep.BypassUntil != "" {
				state += ", BYPASS until " + ep.BypassUntil
			}
			fmt.Fprintf(out, "  endpoint %d %s %s: %d label rules, %s\n", ep.Index, ep.IP, ep.Container, ep.LabelRules, state)
			for _, f := range ep.Failures {
				fmt.Fprintf(out, "    NOT APPLIED: %s\n", f)
			}
			for _, l := range ep.IgnoredLabels {
				fmt.Fprintf(out, "    ignored label %s\n", l)
			}
		}
	}
	if len(st.Listeners) > 0 {
		fmt.Fprintf(out, "listeners: %s\n", strings.Join(st.Listeners, ", "))
	}
	return nil
}

func (c *client) rules(args []string, out io.Writer) error {
	if len(args) < 2 {
		return errors.New("usage: clawker-fw rules ls|add|rm NETWORK [RULE...]")
	}
	verb, network, items := args[0], args[1], args[2:]
	path := "/v1/networks/" + network + "/rules"
	switch verb {
	case "ls":
		resp, err := c.do(http.MethodGet, path, nil)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		var body api.RulesResponse
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			return err
		}
		for _, r := range body.Rules {
			fmt.Fprintln(out, r)
		}
		return nil
	case "add", "rm":
		if len(items) == 0 {
			return fmt.Errorf("usage: clawker-fw rules %s NETWORK RULE...", verb)
		}
		method := http.MethodPost
		if verb == "rm" {
			method = http.MethodDelete
		}
		resp, err := c.do(method, path, api.RulesRequest{Rules: items})
		if err != nil {
			return err
		}
		resp.Body.Close()
		fmt.Fprintf(out, "%s: %s\n", map[string]string{"add": "added", "rm": "removed"}[verb], strings.Join(items, ", "))
		return nil
	}
	return fmt.Errorf("unknown rules verb %q (ls, add, rm)", verb)
}

func (c *client) denials(follow bool, out io.Writer) error {
	path := "/v1/denials"
	if follow {
		path += "?follow=1"
	}
	resp, err := c.do(http.MethodGet, path, nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var d api.Denial
		if json.Unmarshal(sc.Bytes(), &d) != nil {
			continue
		}
		who := d.Container
		if who == "" {
			who = fmt.Sprintf("endpoint %d", d.Index)
		}
		dst := d.Destination
		if d.Port != 0 {
			dst = fmt.Sprintf("%s:%d", dst, d.Port)
		}
		fmt.Fprintf(out, "%s %-5s %s -> %s: %s", d.Time.Local().Format(time.TimeOnly), d.Source, who, dst, d.Reason)
		if d.Fix != "" {
			fmt.Fprintf(out, "; %s", d.Fix)
		}
		fmt.Fprintln(out)
	}
	return sc.Err()
}

func (c *client) bypass(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bypass", flag.ContinueOnError)
	dur := fs.String("for", "10m", "how long")
	var container string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		container, args = args[0], args[1:]
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if container == "" && fs.NArg() > 0 {
		container = fs.Arg(0)
	}
	if container == "" {
		return errors.New("usage: clawker-fw bypass CONTAINER --for 10m")
	}
	resp, err := c.do(http.MethodPost, "/v1/bypass", api.BypassRequest{Container: container, For: *dur})
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var body api.BypassResponse
	_ = json.NewDecoder(resp.Body).Decode(&body)
	fmt.Fprintf(out, "bypass for %s until %s: DNS and proxy allow everything; enforcement returns by itself\n", container, body.Until.Local().Format(time.RFC3339))
	return nil
}
