package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

// timeFormat is how denials show their time: full date, milliseconds and
// the zone (local time).
const timeFormat = "2006-01-02T15:04:05.000Z07:00"

func newDenialsCmd(c *cli) *cobra.Command {
	var o output
	var follow bool
	var container, network, since string
	cmd := &cobra.Command{
		Use:   "denials [flags]",
		Short: "Recent denials, each with what would allow it",
		Long: `Recent denials (the plugin keeps the last 500) of DNS, the proxy and the
socket hooks, oldest first, each with the rule that would allow it.`,
		Example: `  clawker-fw denials --container agent --since 10m
  clawker-fw denials -f --network agents
  clawker-fw denials --format '{{.Time}} {{.Destination}}'`,
		Args:              cobra.NoArgs,
		ValidArgsFunction: cobra.NoFileCompletions,
		RunE: runE(func(cmd *cobra.Command, _ []string) error {
			q := url.Values{}
			if container != "" {
				q.Set(api.DenialsContainer, container)
			}
			if network != "" {
				q.Set(api.DenialsNetwork, network)
			}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				q.Set(api.DenialsSince, t.UTC().Format(time.RFC3339Nano))
			}
			if follow {
				q.Set(api.DenialsFollow, "1")
			}
			path := "/v1/denials"
			if len(q) > 0 {
				path += "?" + q.Encode()
			}
			resp, err := c.client().do(http.MethodGet, path, nil)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			return renderDenials(c.out, resp.Body, &o, follow)
		}),
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new denials")
	cmd.Flags().StringVar(&container, "container", "", "only this container's denials (name, id or id prefix)")
	cmd.Flags().StringVar(&network, "network", "", "only denials on this network (name, id or id prefix)")
	cmd.Flags().StringVar(&since, "since", "", "only denials since a time: a duration before now (10m, 1h30m), an RFC 3339 time or a Unix timestamp")
	addOutputFlags(cmd, &o, "denial")
	_ = cmd.RegisterFlagCompletionFunc("container", c.completeContainers)
	_ = cmd.RegisterFlagCompletionFunc("network", c.completeNetworks)
	return cmd
}

// parseSince reads --since as Docker does: a Go duration before now, an
// RFC 3339 time (or a date and time without zone, taken as local), or a
// Unix timestamp with optional fraction.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: a duration is counted back from now and must not be negative", s)
		}
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	if f, err := strconv.ParseFloat(s, 64); err == nil && f >= 0 && f < math.MaxInt32*4 {
		sec, frac := math.Modf(f)
		return time.Unix(int64(sec), int64(frac*1e9)), nil
	}
	return time.Time{}, fmt.Errorf("--since %q: want a duration (10m), an RFC 3339 time (2026-12-06T10:00:00Z) or a Unix timestamp", s)
}

// denialRow renders the cells of one denial for people.
func denialRow(d api.Denial) []string {
	who := d.Container
	if who == "" {
		who = fmt.Sprintf("endpoint %d", d.Index)
	}
	dst := d.Destination
	if d.Port != 0 {
		dst = fmt.Sprintf("%s:%d", dst, d.Port)
	}
	network := d.NetworkName
	if network == "" {
		network = shortID(d.Network)
	}
	return []string{d.Time.Local().Format(timeFormat), d.Source, who, orDash(network), dst, d.Reason, orDash(d.Fix)}
}

var denialHeader = []string{"TIME", "SOURCE", "CONTAINER", "NETWORK", "DESTINATION", "REASON", "FIX"}

// followWidths are the column widths of a followed table: its rows are
// printed as they come, so they cannot be aligned on each other.
var followWidths = []int{len(timeFormat) + 1, 6, 20, 16, 30, 24}

// renderDenials reads newline-delimited denials from r and writes them in
// the chosen format, each at once when following.
func renderDenials(out io.Writer, r io.Reader, o *output, follow bool) error {
	tw := newTable(out)
	row := func(cells []string) {
		if !follow {
			fmt.Fprintln(tw, strings.Join(cells, "\t"))
			return
		}
		var b strings.Builder
		for i, cell := range cells {
			if i < len(followWidths) {
				fmt.Fprintf(&b, "%-*s ", followWidths[i], cell)
				continue
			}
			b.WriteString(cell)
		}
		fmt.Fprintln(out, strings.TrimRight(b.String(), " "))
	}
	table := !o.isJSON() && o.tmpl == nil
	if table {
		row(denialHeader)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		var d api.Denial
		if json.Unmarshal(sc.Bytes(), &d) != nil {
			continue
		}
		switch {
		case o.isJSON():
			if err := writeJSON(out, d); err != nil {
				return err
			}
		case o.tmpl != nil:
			if err := o.execute(out, d); err != nil {
				return err
			}
		default:
			row(denialRow(d))
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	return tw.Flush()
}
