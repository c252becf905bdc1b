package main

import (
	"testing"

	fwplugin "github.com/clawker-fw/clawker-fw/plugin"
)

// BenchmarkStateEncode500 encodes the plugin's state.json at scale (one
// network of 10,000 option rules, 500 identified endpoints), as every
// mutation does: the network's option rules are encoded once and kept, so
// this is the endpoints' encoding and the assembly of the megabytes of the
// file. bench/results/state-encode.txt has a run.
func BenchmarkStateEncode500(b *testing.B) {
	st, _, err := buildState(500)
	if err != nil {
		b.Fatal(err)
	}
	e := fwplugin.NewStateEncoder()
	b.ReportAllocs()
	for b.Loop() {
		raw, err := e.Encode(st)
		if err != nil {
			b.Fatal(err)
		}
		b.SetBytes(int64(len(raw)))
	}
}
