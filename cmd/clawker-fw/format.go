package main

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"text/template"

	"github.com/spf13/cobra"
)

// output is the --format / --json choice of a listing command, as Docker
// has it: "table" (the default, for people), "json" (one JSON document; one
// per line for streams of items) or a Go template, executed for each item.
type output struct {
	format string
	json   bool
	tmpl   *template.Template
}

// addOutputFlags adds --format and --json to cmd; item names what a
// template is executed on.
func addOutputFlags(cmd *cobra.Command, o *output, item string) {
	cmd.Flags().StringVar(&o.format, "format", "table",
		fmt.Sprintf("output format: table, json, or a Go template executed for each %s (e.g. '{{json .}}')", item))
	cmd.Flags().BoolVar(&o.json, "json", false, "same as --format json")
	prev := cmd.PreRunE
	cmd.PreRunE = func(cmd *cobra.Command, args []string) error {
		if err := o.parse(); err != nil {
			return err
		}
		if prev != nil {
			return prev(cmd, args)
		}
		return nil
	}
}

// parse checks the flags (a usage error when they are wrong).
func (o *output) parse() error {
	switch {
	case o.json && o.format != "table" && o.format != "json":
		return fmt.Errorf("--json and --format %q contradict each other", o.format)
	case o.json:
		o.format = "json"
	case o.format == "":
		o.format = "table"
	}
	if o.format == "table" || o.format == "json" {
		return nil
	}
	t, err := template.New("format").Funcs(templateFuncs).Parse(o.format)
	if err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	o.tmpl = t
	return nil
}

func (o *output) isJSON() bool { return o.format == "json" }

// write writes v as one JSON document, through the template, or as table
// writes it (the default).
func (o *output) write(w io.Writer, v any, table func() error) error {
	switch {
	case o.isJSON():
		return writeJSON(w, v)
	case o.tmpl != nil:
		return o.execute(w, v)
	}
	return table()
}

// execute writes v through the template and a newline.
func (o *output) execute(w io.Writer, v any) error {
	var b strings.Builder
	if err := o.tmpl.Execute(&b, v); err != nil {
		return fmt.Errorf("--format: %w", err)
	}
	_, err := fmt.Fprintln(w, b.String())
	return err
}

// templateFuncs are the functions of Docker's --format templates that
// make sense here.
var templateFuncs = template.FuncMap{
	"json": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
	"join":  strings.Join,
	"split": strings.Split,
	"lower": strings.ToLower,
	"upper": strings.ToUpper,
}

// writeJSON writes v as one line of JSON.
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// newTable returns a tabwriter laid out as Docker's tables are (columns
// three spaces apart).
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 8, 3, ' ', 0)
}

// shortID is Docker's 12-character short form of an id.
func shortID(id string) string { return id[:min(12, len(id))] }

// orDash renders an empty cell as Docker does.
func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
