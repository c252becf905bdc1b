package main

import (
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

func newExplainCmd(c *cli) *cobra.Command {
	var o output
	var method string
	cmd := &cobra.Command{
		Use:   "explain CONTAINER DESTINATION",
		Short: "What the firewall would decide for a destination, and why (sends nothing)",
		Long: `Explain runs the container's effective policy (network options, its labels and
the network's runtime rules) on a destination without sending anything, and
prints the verdict, the rule that decided with where it came from, and for a
denied destination the smallest rule that would allow it.

DESTINATION is a URL (https://api.example.com/v1/x, http://host/path), a rule
item (tcp://db:5432, ssh://github.com, udp://ntp.example.com:123), an address
with a port (10.1.2.3:443) or a plain name (https on 443, as in a rule).`,
		Example: `  clawker-fw explain agent https://api.github.com/repos/x
  clawker-fw explain agent tcp://db.internal:5432
  clawker-fw explain agent 10.1.2.3:443 --format json`,
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: c.completeContainers,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			var ex api.ExplainResponse
			req := api.ExplainRequest{Container: args[0], Destination: args[1], Method: method}
			if err := c.client().call(http.MethodPost, "/v1/explain", req, &ex); err != nil {
				return err
			}
			return o.write(c.out, ex, func() error { return renderExplain(c.out, ex) })
		}),
	}
	cmd.Flags().StringVarP(&method, "method", "X", "", "HTTP method for path rules (default GET)")
	addOutputFlags(cmd, &o, "explanation")
	return cmd
}

// describeFlow renders the flow explain decided on: "https api.example.com
// port 443/tcp, GET /v1/x".
func describeFlow(f api.ExplainFlow) string {
	dst := firstOf(f.Name, f.Addr)
	s := fmt.Sprintf("%s %s port %d/%s", f.Proto, dst, f.Port, f.L4)
	if f.Path != "" {
		s += fmt.Sprintf(", %s %s", firstOf(f.Method, "GET"), f.Path)
	}
	return s
}

// describeRule renders a rule with its origin: `api.example.com (label
// clawker.allow="api.example.com")`.
func describeRule(r *api.ExplainRule) string {
	if r == nil {
		return "none"
	}
	var s string
	if r.Origin == api.OriginRuntime {
		s = fmt.Sprintf("%s (runtime rule of the network)", r.Rule)
	} else {
		s = fmt.Sprintf("%s (%s %s=%s)", r.Rule, r.Origin, r.Key, strconv.Quote(r.Item))
	}
	if r.Path != "" {
		s += ", " + r.Path
	}
	return s
}

// renderExplain writes an explanation for people, as aligned key/value
// lines.
func renderExplain(out io.Writer, ex api.ExplainResponse) error {
	tw := newTable(out)
	container := firstOf(ex.Container, shortID(ex.ContainerID))
	if ex.Container != "" && ex.ContainerID != "" {
		container += " (" + shortID(ex.ContainerID) + ")"
	}
	network := shortID(ex.Network)
	if ex.NetworkName != "" {
		network = ex.NetworkName + " (" + network + ")"
	}
	fmt.Fprintf(tw, "container\t%s on network %s, generation %d\n", container, network, ex.Generation)
	fmt.Fprintf(tw, "destination\t%s\n", describeFlow(ex.Flow))
	verdict := "DENIED (" + ex.Reason + ")"
	if ex.Allowed {
		verdict = "ALLOWED"
		if ex.Mode != "" {
			verdict += " (" + ex.Mode + ")"
		}
	}
	fmt.Fprintf(tw, "verdict\t%s\n", verdict)
	fmt.Fprintf(tw, "why\t%s\n", ex.Detail)
	fmt.Fprintf(tw, "rule\t%s\n", describeRule(ex.Rule))
	if f := ex.Fix; f != nil {
		key := "to allow it"
		for _, w := range [][2]string{
			{f.Label, "(this container, at docker run)"},
			{f.Option, "(every container of the network, at docker network create)"},
			{f.Command, "(every container of the network, now)"},
		} {
			if w[0] != "" {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", key, w[0], w[1])
				key = ""
			}
		}
		if f.Note != "" {
			fmt.Fprintf(tw, "note\t%s\n", f.Note)
		}
	}
	for _, n := range ex.Notes {
		fmt.Fprintf(tw, "note\t%s\n", n)
	}
	return tw.Flush()
}
