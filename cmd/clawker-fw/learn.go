package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

// learnLong is learn's help: what it does, what it means, what it misses.
const learnLong = `Learn puts a container in learn mode for a while: it is allowed everything
through the firewall's DNS and proxy, exactly as under bypass (the closed
network still carries every flow through the proxy: no NAT, no forwarding;
enforcement returns by itself when the time is up, across plugin restarts),
and every flow is recorded with its name, port and protocol, and for HTTP the
firewall can read (plain HTTP, or TLS on a network with clawker.tls.inspect=all)
the method and path prefix of each request.

At the end (or on 'clawker-fw learn stop CONTAINER') it prints the smallest
rule set that allows what was recorded, as container labels, as network
options and as a clawker.rules JSON list (with path rules where requests were
seen), and writes it to a file. Sibling names become a wildcard only where that
is safe: never at or directly under a public suffix (.com, .co.uk, .github.io,
.s3.amazonaws.com, ... from the public suffix list, private section included).

Learn mode lets the agent write its own policy: every flow it made while
learning is in the rules, including those it should not have made. Review
every rule before applying it. Learn mode does not see UDP other than DNS (not
carried under bypass or learn), paths inside TLS the network does not inspect,
what travels inside an allowed tcp/ssh stream or WebSocket, or anything the
agent did not do while learning.

'clawker-fw learn check FILE CONTAINER' replays the recorded flows of FILE
against its clawker.rules (edited or not) as the container's labels on its
network's current rules, and lists the flows that would be denied.`

func newLearnCmd(c *cli) *cobra.Command {
	var dur, file string
	var detach bool
	cmd := &cobra.Command{
		Use:   "learn CONTAINER [--for DURATION] [-o FILE]",
		Short: "Record a container's flows under allow-all (like bypass) and propose rules",
		Long:  learnLong,
		Example: `  clawker-fw learn agent --for 10m -o agent-rules.json
  clawker-fw learn stop agent
  clawker-fw learn check agent-rules.json agent`,
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeContainers,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			container := args[0]
			var rep api.LearnReport
			if err := c.client().call(http.MethodPost, "/v1/learn", api.LearnRequest{Container: container, For: dur}, &rep); err != nil {
				return err
			}
			fmt.Fprintf(c.out, "learning %s until %s: DNS and proxy allow everything and every flow is recorded; enforcement returns by itself\n",
				container, rep.Until.Local().Format(time.RFC3339))
			fmt.Fprintf(c.out, "WARNING: %s\n", learnWarningOf(rep))
			if detach {
				fmt.Fprintf(c.out, "stop it and get the rules with: clawker-fw learn stop %s\n", container)
				return nil
			}
			fmt.Fprintf(c.out, "waiting for the end (Ctrl-C stops learning now)...\n")
			rep, err := c.waitLearn(container)
			if err != nil {
				return err
			}
			return c.finishLearn(rep, container, file)
		}),
	}
	cmd.Flags().StringVar(&dur, "for", "10m", "how long (a Go duration: 30s, 10m, 1h; at most 24h)")
	cmd.Flags().StringVarP(&file, "output", "o", "", "file to write the rules and the recorded flows to (default clawker-learn-CONTAINER.json)")
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "start learning and return (get the rules with learn stop or learn show)")
	cmd.AddCommand(newLearnStopCmd(c), newLearnShowCmd(c), newLearnCheckCmd(c))
	return cmd
}

// waitLearn waits for the session's end; an interrupt stops it first.
func (c *cli) waitLearn(container string) (api.LearnReport, error) {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sig)
	type result struct {
		rep api.LearnReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		var rep api.LearnReport
		err := c.client().call(http.MethodGet, "/v1/learn/"+url.PathEscape(container)+"?wait=1", nil, &rep)
		done <- result{rep, err}
	}()
	select {
	case r := <-done:
		return r.rep, r.err
	case <-sig:
		fmt.Fprintln(c.errOut, "interrupted: stopping learning")
		var rep api.LearnReport
		return rep, c.client().call(http.MethodPost, "/v1/learn/"+url.PathEscape(container)+"/stop", nil, &rep)
	}
}

func newLearnStopCmd(c *cli) *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:               "stop CONTAINER [-o FILE]",
		Short:             "End a container's learning now (enforcement returns), print and write the rules",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeContainers,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			var rep api.LearnReport
			if err := c.client().call(http.MethodPost, "/v1/learn/"+url.PathEscape(args[0])+"/stop", nil, &rep); err != nil {
				return err
			}
			return c.finishLearn(rep, args[0], file)
		}),
	}
	cmd.Flags().StringVarP(&file, "output", "o", "", "file to write the rules and the recorded flows to (default clawker-learn-CONTAINER.json)")
	return cmd
}

func newLearnShowCmd(c *cli) *cobra.Command {
	var o output
	cmd := &cobra.Command{
		Use:               "show CONTAINER",
		Short:             "Print what a container's latest learning recorded so far and the rules it proposes",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: c.completeContainers,
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			var rep api.LearnReport
			if err := c.client().call(http.MethodGet, "/v1/learn/"+url.PathEscape(args[0]), nil, &rep); err != nil {
				return err
			}
			return o.write(c.out, rep, func() error { renderLearn(c.out, rep); return nil })
		}),
	}
	addOutputFlags(cmd, &o, "report")
	return cmd
}

func newLearnCheckCmd(c *cli) *cobra.Command {
	var o output
	cmd := &cobra.Command{
		Use:   "check FILE CONTAINER",
		Short: "Replay the flows recorded in FILE against its rules (no traffic); list what would be denied",
		Long: `Check replays the flows recorded in a learn file against the file's
clawker.rules (edit them first if you like) as if they were CONTAINER's labels,
on its network's current option and runtime rules, and lists every flow those
rules would deny. It sends no traffic. Exit status 1 when any flow would be
denied.`,
		Args: cobra.ExactArgs(2),
		RunE: runE(func(cmd *cobra.Command, args []string) error {
			raw, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			var rep api.LearnReport
			if err := json.Unmarshal(raw, &rep); err != nil {
				return fmt.Errorf("%s is no learn file: %w", args[0], err)
			}
			req := api.LearnCheckRequest{Container: args[1], Rules: rep.Rules.Rules, Flows: rep.Flows}
			var resp api.LearnCheckResponse
			if err := c.client().call(http.MethodPost, "/v1/learn/check", req, &resp); err != nil {
				return err
			}
			if err := o.write(c.out, resp, func() error { renderCheck(c.out, resp, args[0]); return nil }); err != nil {
				return err
			}
			if len(resp.Denied) > 0 {
				return fmt.Errorf("%d of %d recorded flows would be denied by the rules of %s", len(resp.Denied), resp.Checked, args[0])
			}
			return nil
		}),
	}
	addOutputFlags(cmd, &o, "result")
	return cmd
}

// finishLearn prints the report and writes it to file.
func (c *cli) finishLearn(rep api.LearnReport, container, file string) error {
	renderLearn(c.out, rep)
	if file == "" {
		file = "clawker-learn-" + safeFileName(container) + ".json"
	}
	raw, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(file, append(raw, '\n'), 0o644); err != nil {
		return fmt.Errorf("write the rules: %w", err)
	}
	fmt.Fprintf(c.out, "\nwritten to %s; replay the flows against its clawker.rules with: clawker-fw learn check %s %s\n", file, file, container)
	return nil
}

func learnWarningOf(rep api.LearnReport) string {
	if len(rep.Warnings) > 0 {
		return rep.Warnings[0]
	}
	return "learn mode lets the agent write its own policy; review each rule before applying it"
}

// renderLearn prints a learn report for people.
func renderLearn(w io.Writer, rep api.LearnReport) {
	state := "ended " + rep.Ended.Local().Format(time.RFC3339)
	if rep.Active {
		state = "learning until " + rep.Until.Local().Format(time.RFC3339)
	}
	fmt.Fprintf(w, "learn %s (%s), network %s: started %s, %s\n", rep.Container, shortID(rep.ContainerID), shortID(rep.Network),
		rep.Started.Local().Format(time.RFC3339), state)
	fmt.Fprintf(w, "\nrecorded flows (%d):\n", len(rep.Flows))
	tw := newTable(w)
	for _, f := range rep.Flows {
		dst := f.Name
		if dst == "" {
			dst = f.Addr
		} else if f.Addr != "" {
			dst += " (" + f.Addr + ")"
		}
		req := ""
		if f.PathPrefix != "" {
			req = f.Method + " " + f.PathPrefix
		}
		fmt.Fprintf(tw, "  %s\t%s:%d\t%s\tx%d\n", f.Proto, dst, f.Port, req, f.Count)
	}
	tw.Flush()
	if len(rep.Resolved) > 0 {
		fmt.Fprintf(w, "resolved, never connected to (no rule needed): %s\n", strings.Join(rep.Resolved, ", "))
	}
	if rep.Dropped > 0 {
		fmt.Fprintf(w, "not recorded (the recording was full): %d flows\n", rep.Dropped)
	}
	fmt.Fprintln(w)
	for _, warn := range rep.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", warn)
	}
	r := rep.Rules
	fmt.Fprintf(w, "\nproposed rules (REVIEW BEFORE APPLYING):\n")
	if len(r.Rules) == 0 {
		fmt.Fprintln(w, "  none: nothing was recorded")
		return
	}
	fmt.Fprintf(w, "  container labels:  docker run %s ...\n", shellJoin(r.Label))
	fmt.Fprintf(w, "  network options:   docker network create -d clawker-fw:latest %s NETWORK\n", shellJoin(r.Option))
	fmt.Fprintf(w, "  clawker.rules:\n")
	for i, raw := range r.Rules {
		sep := ","
		if i == len(r.Rules)-1 {
			sep = ""
		}
		open := "    ["
		if i > 0 {
			open = "     "
		}
		close := ""
		if i == len(r.Rules)-1 {
			close = "]"
		}
		fmt.Fprintf(w, "%s%s%s%s\n", open, raw, sep, close)
	}
	wcs := make([]string, 0, len(r.Wildcards))
	for wc := range r.Wildcards {
		wcs = append(wcs, wc)
	}
	sort.Strings(wcs)
	for _, wc := range wcs {
		fmt.Fprintf(w, "  %s stands for %s\n", wc, strings.Join(r.Wildcards[wc], ", "))
	}
	for _, u := range r.Unruled {
		fmt.Fprintf(w, "  no rule proposed: %s\n", u)
	}
}

// renderCheck prints a check result.
func renderCheck(w io.Writer, resp api.LearnCheckResponse, file string) {
	if len(resp.Denied) == 0 {
		fmt.Fprintf(w, "all %d recorded flows are allowed by the rules of %s on %s's network\n", resp.Checked, file, resp.Container)
		return
	}
	tw := newTable(w)
	fmt.Fprintf(tw, "DENIED\tFLOW\tREASON\n")
	for _, d := range resp.Denied {
		f := d.Flow
		dst := f.Name
		if dst == "" {
			dst = f.Addr
		}
		flow := fmt.Sprintf("%s %s:%d", f.Proto, dst, f.Port)
		if f.PathPrefix != "" {
			flow += fmt.Sprintf(" %s %s", f.Method, firstOf(f.Path, f.PathPrefix))
		}
		reason := d.Reason
		if d.Detail != "" {
			reason += ": " + d.Detail
		}
		fmt.Fprintf(tw, "x%d\t%s\t%s\n", f.Count, flow, reason)
	}
	tw.Flush()
}

// safeFileName keeps letters, digits, '-', '_' and '.' of a container name.
func safeFileName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, strings.TrimPrefix(s, "/"))
}

// shellJoin quotes arguments for a POSIX shell where they need it.
func shellJoin(args []string) string {
	out := make([]string, len(args))
	for i, a := range args {
		if a != "" && strings.IndexFunc(a, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.,:/=@+", r))
		}) < 0 {
			out[i] = a
			continue
		}
		out[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(out, " ")
}
