package main

import (
	"fmt"
	"net/http"
	"time"

	"github.com/spf13/cobra"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

func newBypassCmd(c *cli) *cobra.Command {
	var dur string
	cmd := &cobra.Command{
		Use:   "bypass CONTAINER --for DURATION",
		Short: "Allow everything through DNS and the proxy for a while (never NAT); ends by itself",
		Long: `Bypass gives a container allow-all through the firewall's DNS and proxy for
a while. The closed network still carries every flow through the proxy (no NAT,
no forwarding), and enforcement returns by itself when the time is up, across
plugin restarts.`,
		Example:           "  clawker-fw bypass agent --for 10m",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeContainers,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			var body api.BypassResponse
			if err := c.client().call(http.MethodPost, "/v1/bypass", api.BypassRequest{Container: args[0], For: dur}, &body); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "bypass for %s until %s: DNS and proxy allow everything; enforcement returns by itself\n",
				args[0], body.Until.Local().Format(time.RFC3339))
			return nil
		}),
	}
	cmd.Flags().StringVar(&dur, "for", "10m", "how long (a Go duration: 30s, 10m, 1h; at most 24h)")
	return cmd
}

// newCallCmd is a command without arguments that makes one call and
// prints its answer.
func newCallCmd(c *cli, use, short, method, path string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  cobra.NoArgs,
		RunE: runE(func(*cobra.Command, []string) error {
			return c.client().copyTo(method, path, nil, c.out)
		}),
	}
}

func newVersionCmd(c *cli) *cobra.Command {
	var o output
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Versions of the CLI and of the running plugin",
		Args:  cobra.NoArgs,
		RunE: runE(func(*cobra.Command, []string) error {
			v := struct {
				Client api.Version  `json:"client"`
				Server *api.Version `json:"server,omitempty"`
			}{Client: api.BuildVersion()}
			var server api.Version
			err := c.client().call(http.MethodGet, "/v1/version", nil, &server)
			if err == nil {
				v.Server = &server
			}
			werr := o.write(c.out, v, func() error {
				tw := newTable(c.out)
				section := func(title string, v api.Version) {
					fmt.Fprintf(tw, "%s:\n", title)
					fmt.Fprintf(tw, " Version:\t%s\n", v.Version)
					fmt.Fprintf(tw, " Git commit:\t%s\n", orDash(v.Commit))
					fmt.Fprintf(tw, " Built:\t%s\n", orDash(v.BuildTime))
					fmt.Fprintf(tw, " Go version:\t%s\n", v.GoVersion)
					fmt.Fprintf(tw, " OS/Arch:\t%s/%s\n", v.OS, v.Arch)
					if v.Engine != "" {
						fmt.Fprintf(tw, " Proxy engine:\t%s\n", v.Engine)
					}
				}
				section("Client", v.Client)
				if v.Server != nil {
					fmt.Fprintln(tw)
					section("Server (plugin)", *v.Server)
				}
				return tw.Flush()
			})
			if werr != nil {
				return werr
			}
			// Like `docker version`: the client's part is printed, and an
			// unreachable server still fails the command.
			return err
		}),
	}
	addOutputFlags(cmd, &o, "version report ({{.Client.Version}}, {{.Server.Version}})")
	return cmd
}
