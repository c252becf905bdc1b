// Command clawker-fw is the host-side admin CLI of the clawker-fw Docker
// plugin. It talks to the plugin's admin API on a unix socket in the
// plugin's state directory and links nothing of the project but the API's
// wire types (plugin/api): what needs the policy (explain) or Docker
// (network and container names) is answered by the plugin.
//
//	clawker-fw status
//	clawker-fw rules ls|add|rm NETWORK [RULE...]
//	clawker-fw denials [-f] [--container C] [--network N] [--since 10m]
//	clawker-fw explain CONTAINER DESTINATION
//	clawker-fw bypass CONTAINER --for 10m
//	clawker-fw ca | rotate-ca | reload | version | completion
//
// It behaves like Docker's CLI (cobra): flags go anywhere after the
// command, --help works on every command and exits 0, an unknown flag or a
// wrong number of arguments fails with the command's usage (exit 2), and
// failed calls exit 1 with what to do.
package main

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

// defaultSocket is the admin API socket on the host (the plugin's state
// mount).
const defaultSocket = "/var/lib/clawker-fw/admin.sock"

// remediation maps the admin API's stable reasons to what the user should do.
var remediation = map[string]string{
	api.ReasonNotRunning:        "the plugin is not running: check `docker plugin ls` and `docker plugin enable clawker-fw:latest`",
	api.ReasonInvalidRule:       "fix the rule (syntax: [proto://]dst[:port|:lo-hi]); nothing was changed",
	api.ReasonRuleNotFound:      "list the network's runtime rules with `clawker-fw rules ls NETWORK`; nothing was changed",
	api.ReasonNetworkNotFound:   "name a clawker-fw network by name or id: `docker network ls --filter driver=clawker-fw:latest`",
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

// Exit codes.
const (
	exitOK    = 0
	exitError = 1 // the call failed
	exitUsage = 2 // the command line is wrong
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// runError marks an error returned by a command's run: the command line
// was fine, the call failed. Every other error of Execute is a usage error.
type runError struct{ err error }

func (e runError) Error() string { return e.err.Error() }
func (e runError) Unwrap() error { return e.err }

// runE adapts a command body so its errors count as failed calls.
func runE(f func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := f(cmd, args); err != nil {
			return runError{err}
		}
		return nil
	}
}

// cli holds what every command shares.
type cli struct {
	socket string
	out    io.Writer
	errOut io.Writer
}

func (c *cli) client() *client { return newClient(c.socket) }

func run(args []string, stdout, stderr io.Writer) int {
	c := &cli{out: stdout, errOut: stderr}
	root := newRoot(c)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	if len(args) == 0 {
		fmt.Fprint(stderr, root.UsageString())
		return exitUsage
	}
	cmd, err := root.ExecuteC()
	if err == nil {
		return exitOK
	}
	var re runError
	if !errors.As(err, &re) {
		// Docker's manners: the error, the command's usage, where to read more.
		fmt.Fprintf(stderr, "clawker-fw: %v\n", err)
		if cmd != nil {
			fmt.Fprintf(stderr, "Usage:  %s\n", cmd.UseLine())
			fmt.Fprintf(stderr, "See '%s --help'.\n", cmd.CommandPath())
		}
		return exitUsage
	}
	fmt.Fprintln(stderr, "clawker-fw:", re.err)
	var ae *apiError
	if errors.As(err, &ae) {
		if fix, ok := remediation[ae.Reason]; ok {
			fmt.Fprintln(stderr, "  what to do:", fix)
		}
	}
	return exitError
}

func newRoot(c *cli) *cobra.Command {
	root := &cobra.Command{
		Use:   "clawker-fw",
		Short: "Admin CLI of the clawker-fw Docker plugin (egress firewall for containers)",
		Long: `Admin CLI of the clawker-fw Docker plugin (egress firewall for containers).

It talks to the plugin's admin API on a unix socket (--socket, or
CLAWKER_ADMIN_SOCKET). NETWORK is a clawker-fw network's name, id or unique
id prefix; CONTAINER a container's name, id or unique id prefix (resolved as
Docker resolves them). RULE uses the label syntax:
  github.com  .npmjs.org  http://example.com  ssh://github.com
  tcp://db.example.test:5432  10.1.0.0/16  (or a clawker.rules JSON object)`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		DisableAutoGenTag: true,
	}
	root.PersistentFlags().StringVar(&c.socket, "socket", envOr("CLAWKER_ADMIN_SOCKET", defaultSocket), "admin API socket of the plugin")
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error { return err })
	root.AddCommand(
		newStatusCmd(c),
		newRulesCmd(c),
		newDenialsCmd(c),
		newExplainCmd(c),
		newBypassCmd(c),
		newLearnCmd(c),
		newCallCmd(c, "ca", "Print the CA certificate (PEM) that inspected TLS is signed with", http.MethodGet, "/v1/ca"),
		newCallCmd(c, "rotate-ca", "Replace the CA (new leaf certificates)", http.MethodPost, "/v1/ca/rotate"),
		newCallCmd(c, "reload", "Regenerate everything from the store (break-glass)", http.MethodPost, "/v1/reload"),
		newVersionCmd(c),
	)
	return root
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

// completeNetworks completes NETWORK arguments with the clawker-fw
// networks' names (ids when a name is unknown).
func (c *cli) completeNetworks(_ *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return c.complete(args, toComplete, func(st api.StatusReport) (names []string) {
		for _, n := range st.Networks {
			name := n.Name
			if name == "" {
				name = n.ID
			}
			names = append(names, name)
		}
		return names
	})
}

// completeContainers completes a first CONTAINER argument with the names
// of the containers on clawker-fw networks.
func (c *cli) completeContainers(_ *cobra.Command, args []string, toComplete string) ([]cobra.Completion, cobra.ShellCompDirective) {
	return c.complete(args, toComplete, func(st api.StatusReport) (names []string) {
		for _, n := range st.Networks {
			for _, ep := range n.Endpoints {
				if ep.Container != "" {
					names = append(names, ep.Container)
				}
			}
		}
		return names
	})
}

// complete completes a first argument with the names of the plugin's
// status that start with toComplete.
func (c *cli) complete(args []string, toComplete string, names func(api.StatusReport) []string) ([]cobra.Completion, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	st, err := c.client().status()
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	var out []cobra.Completion
	for _, name := range names(st) {
		if strings.HasPrefix(name, toComplete) {
			out = append(out, name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}
