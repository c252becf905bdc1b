package main

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/spf13/cobra"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

func newRulesCmd(c *cli) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "rules COMMAND",
		Short: "List, add and remove a network's runtime rules",
		Long: `List, add and remove a network's runtime rules. Runtime rules apply to every
container on the network, are stored durably before the command returns, and
are applied live (no data plane restarts).`,
		// A group, not a command: without a subcommand it is a usage error.
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 {
				return errors.New("rules needs a subcommand: ls, add or rm")
			}
			return fmt.Errorf("unknown rules subcommand %q (ls, add, rm)", args[0])
		},
		RunE: func(*cobra.Command, []string) error { return nil },
	}
	cmd.AddCommand(newRulesLsCmd(c), newRulesChangeCmd(c, "add"), newRulesChangeCmd(c, "rm"))
	return cmd
}

// ruleRow is what a --format template of `rules ls` is executed on.
type ruleRow struct {
	Network string // id
	Name    string // the network's name, when known
	Rule    string
}

func newRulesLsCmd(c *cli) *cobra.Command {
	var o output
	cmd := &cobra.Command{
		Use:               "ls NETWORK",
		Aliases:           []string{"list"},
		Short:             "List a network's runtime rules",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeNetworks,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			var body api.RulesResponse
			if err := c.client().call(http.MethodGet, rulesPath(args[0]), nil, &body); err != nil {
				return err
			}
			switch {
			case o.isJSON():
				return writeJSON(c.out, body)
			case o.tmpl != nil:
				for _, r := range body.Rules {
					if err := o.execute(c.out, ruleRow{Network: body.Network, Name: body.Name, Rule: r}); err != nil {
						return err
					}
				}
				return nil
			}
			tw := newTable(c.out)
			fmt.Fprintln(tw, "RULE\tNETWORK")
			for _, r := range body.Rules {
				fmt.Fprintf(tw, "%s\t%s\n", r, orDash(firstOf(body.Name, shortID(body.Network))))
			}
			return tw.Flush()
		}),
	}
	addOutputFlags(cmd, &o, "rule ({{.Rule}}, {{.Network}}, {{.Name}})")
	return cmd
}

func newRulesChangeCmd(c *cli, verb string) *cobra.Command {
	short, method, done, aliases := "Add runtime rules (durable, applied live)", http.MethodPost, "added", []string(nil)
	if verb == "rm" {
		short, method, done, aliases = "Remove runtime rules", http.MethodDelete, "removed", []string{"remove"}
	}
	return &cobra.Command{
		Use:               verb + " NETWORK RULE...",
		Aliases:           aliases,
		Short:             short,
		Args:              cobra.MinimumNArgs(2),
		ValidArgsFunction: c.completeNetworks,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			items := args[1:]
			if err := c.client().call(method, rulesPath(args[0]), api.RulesRequest{Rules: items}, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "%s: %s\n", done, strings.Join(items, ", "))
			return nil
		}),
	}
}

func firstOf(v ...string) string {
	for _, s := range v {
		if s != "" {
			return s
		}
	}
	return ""
}
