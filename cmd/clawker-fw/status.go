package main

import (
	"bytes"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

func newStatusCmd(c *cli) *cobra.Command {
	var o output
	cmd := &cobra.Command{
		Use:   "status [flags]",
		Short: "Health of the stack, networks, endpoints and listeners",
		Args:  cobra.NoArgs,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			st, err := c.client().status()
			if err != nil {
				return err
			}
			return o.write(c.out, st, func() error { return renderStatus(c.out, st) })
		}),
	}
	addOutputFlags(cmd, &o, "status report")
	return cmd
}

// renderStatus writes the status for people: the stack's health, its
// components (aligned), each network with its endpoints (aligned), and the
// listeners.
func renderStatus(out io.Writer, st api.StatusReport) error {
	health := "healthy"
	if !st.Healthy {
		health = "UNHEALTHY"
	}
	fmt.Fprintf(out, "clawker-fw: running, %s, engine %s, generation %d\n", health, st.Engine, st.Generation)
	tw := newTable(out)
	for _, comp := range st.Components {
		h := "healthy"
		if !comp.Healthy {
			h = "UNHEALTHY"
		}
		if comp.Restarts > 0 {
			h += fmt.Sprintf(" (restarts %d)", comp.Restarts)
		}
		if comp.Detail != "" {
			h += " " + comp.Detail
		}
		fmt.Fprintf(tw, "  %s\t%s\n", comp.Name, h)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, n := range st.Networks {
		name := ""
		if n.Name != "" {
			name = " (" + n.Name + ")"
		}
		fmt.Fprintf(out, "network %s%s bridge %s subnet %s gateway %s: %d rules, %d runtime rules\n",
			shortID(n.ID), name, n.Bridge, n.Subnet, n.Gateway, n.Rules, n.Runtime)
		// The endpoint rows are aligned with each other; the lines under
		// an endpoint (rules not applied, labels ignored) stay in place.
		var rows bytes.Buffer
		tw := newTable(&rows)
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
			if ep.BypassUntil != "" && ep.Learning {
				state += ", LEARNING (allow-all, recorded) until " + ep.BypassUntil
			} else if ep.BypassUntil != "" {
				state += ", BYPASS until " + ep.BypassUntil
			}
			fmt.Fprintf(tw, "  endpoint %d\t%s\t%s:\t%d label rules, %s\n", ep.Index, ep.IP, orDash(ep.Container), ep.LabelRules, state)
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		lines := strings.SplitAfter(rows.String(), "\n")
		for i, ep := range n.Endpoints {
			fmt.Fprint(out, lines[i])
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
