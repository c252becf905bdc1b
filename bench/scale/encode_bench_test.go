package main

import (
	"path/filepath"
	"slices"
	"testing"

	fwplugin "github.com/clawker-fw/clawker-fw/plugin"
	"github.com/clawker-fw/clawker-fw/store"
)

// BenchmarkStateEncode500 encodes the plugin's state.json at scale (one
// network of 10,000 option rules, 500 identified endpoints), as every
// mutation does: the network's options and rules are encoded once, kept,
// and live in a configuration file of their own, so this is the encoding
// of the endpoints and the rest of the state. bench/results/state-encode.txt
// has runs.
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

// BenchmarkStateWrite500 writes state.json at scale durably (temporary
// file, fsync, rename, fsync of the directory) on the disk of TMPDIR, in
// the size of each layout: layout1 carries the network's configuration
// (2.8 MB), layout2 names its file (the configuration file itself is
// written once, when the network is created, not per mutation).
func BenchmarkStateWrite500(b *testing.B) {
	st, _, err := buildState(500)
	if err != nil {
		b.Fatal(err)
	}
	e := fwplugin.NewStateEncoder()
	raw, err := e.Encode(st)
	if err != nil {
		b.Fatal(err)
	}
	layout2 := slices.Clone(raw)
	layout1 := slices.Clone(raw)
	for _, cfg := range e.ConfigFiles() {
		layout1 = append(layout1, cfg...) // the size of the inline form
	}
	dir := b.TempDir()
	for _, l := range []struct {
		name string
		raw  []byte
	}{{"layout1", layout1}, {"layout2", layout2}} {
		b.Run(l.name, func(b *testing.B) {
			b.SetBytes(int64(len(l.raw)))
			for b.Loop() {
				if err := store.WriteFileAtomic(filepath.Join(dir, "state.json"), l.raw, 0o600); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkStateMutation500 is what every plugin mutation costs before its
// write, at the scale of BenchmarkStateEncode500: the state cloned
// (Plugin.commit's p.st.clone()) and the clone encoded by the plugin's
// encoder, which encoded the state before (its network configuration is
// kept). The clone row measures the copy alone.
func BenchmarkStateMutation500(b *testing.B) {
	st, _, err := buildState(500)
	if err != nil {
		b.Fatal(err)
	}
	e := fwplugin.NewStateEncoder()
	if _, err := e.Encode(st); err != nil {
		b.Fatal(err)
	}
	b.Run("clone", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st = st.Clone()
		}
	})
	b.Run("clone+encode", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			st = st.Clone()
			if _, err := e.Encode(st); err != nil {
				b.Fatal(err)
			}
		}
	})
}
