package plugin

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"

	"github.com/clawker-fw/clawker-fw/policy"
)

// StateEncoder encodes states as state.json holds them: compact JSON (it
// is written on every mutation and read only by loadState). Each network's
// configuration (its options and the rules parsed from them: megabytes at
// thousands of rules, and no mutation changes them) is not in state.json
// but in a file of its own (networkFile),
// named by the SHA-256 of its content (ConfigFiles; state.json names it as
// the network's "config_file"): a mutation writes the configuration file
// only when it is new and state.json without the configurations. The
// encoder keeps each network's encoded configuration and encodes the rest
// of the state each time.
//
// A kept encoding is used only for the very configuration it encoded: the
// same options map and a Config identical field by field (the same slices,
// the same values; identical). A network's Options and Config are
// immutable (see Network: replaced whole, never written in place, which
// TestNoNetworkConfigWrites enforces), so the same map and slices hold the
// same content; any replacement is a new identity and is encoded again.
// Comparing identities costs nothing at any number of rules, where an
// Equal over a copy of 10,000 rules cost a fraction of a millisecond and the
// copy megabytes. Everything else is encoded by encoding/json from the
// state's own types, embedded, so a field added to State or Network later
// is encoded with no change here.
// TestStateEncoderMatchesMarshal checks the output against json.Marshal of
// the state. Not safe for concurrent use: the plugin's queue actions use it
// one at a time.
type StateEncoder struct {
	configs map[string]*encodedConfig // by network ID
	// buf and head are the last Encode's output and head, reused: at
	// thousands of rules the file is megabytes, and a fresh buffer per
	// mutation costs the allocator and the collector more than encoding.
	buf  []byte
	head bytes.Buffer
	// encodes counts the configurations encoded (tests).
	encodes int
}

type encodedConfig struct {
	// options and config are the network's own, shared, not copies. Kept,
	// they keep the memory they point to alive, so no later map or array
	// can take its address and pass for the one encoded.
	options map[string]string
	config  policy.NetworkConfig
	raw     []byte
	file    string // configFileName(raw)
}

// networkFile is the content of a network's configuration file: the
// fields of Network that state.json leaves out (networkSansConfig).
type networkFile struct {
	Options map[string]string    `json:"options"`
	Config  policy.NetworkConfig `json:"config"`
}

// configFileName is the name of the file holding the encoded
// configuration raw: its SHA-256, in hex, and ".json".
func configFileName(raw []byte) string {
	sum := sha256.Sum256(raw)
	return hex.EncodeToString(sum[:]) + ".json"
}

// ConfigFiles returns the configuration files the last Encode named, by
// name (each file's content is the configuration's JSON). The caller
// writes those not yet on disk before it writes state.json.
func (e *StateEncoder) ConfigFiles() map[string][]byte {
	files := make(map[string][]byte, len(e.configs))
	for _, c := range e.configs {
		files[c.file] = c.raw
	}
	return files
}

// NewStateEncoder returns an encoder that keeps nothing yet.
func NewStateEncoder() *StateEncoder { return &StateEncoder{configs: map[string]*encodedConfig{}} }

// stateSansNetworks and networkSansConfig encode a State without its
// networks and a Network without its configuration: the outer field, nil
// and omitted, takes the JSON name from the embedded one (a shallower field
// of the same name wins in encoding/json).
type stateSansNetworks struct {
	*State
	Networks *struct{} `json:"networks,omitempty"`
}

type networkSansConfig struct {
	*Network
	Options *struct{} `json:"options,omitempty"`
	Config  *struct{} `json:"config,omitempty"`
}

// Encode returns st as state.json holds it. The bytes are the encoder's
// own, valid until its next Encode.
func (e *StateEncoder) Encode(st *State) ([]byte, error) {
	e.head.Reset()
	if err := json.NewEncoder(&e.head).Encode(stateSansNetworks{State: st}); err != nil {
		return nil, fmt.Errorf("encode state: %w", err)
	}
	head := bytes.TrimSuffix(e.head.Bytes(), []byte("\n")) // Encode ends the value with a newline
	// The pieces first, then one buffer of their size: the file is
	// megabytes, and growing a buffer copies and clears it again and again.
	type piece struct {
		key, body []byte
		file      string
	}
	var pieces []piece
	size := len(head) + len(`,"networks":null}`)
	ids := slices.Sorted(maps.Keys(st.Networks))
	for _, id := range ids {
		var pc piece
		var err error
		if pc.key, err = json.Marshal(id); err != nil {
			return nil, fmt.Errorf("encode state: %w", err)
		}
		if n := st.Networks[id]; n != nil {
			if pc.body, err = json.Marshal(networkSansConfig{Network: n}); err != nil {
				return nil, fmt.Errorf("encode state: network %s: %w", short(id), err)
			}
			c, err := e.config(id, n)
			if err != nil {
				return nil, err
			}
			pc.file = c.file
		}
		size += len(pc.key) + len(pc.body) + len(pc.file) + len(`,:,"config_file":""`)
		pieces = append(pieces, pc)
	}
	b := e.buf[:0]
	if cap(b) < size {
		b = make([]byte, 0, size+size/8) // room for the state to grow a little
	}
	b = append(b, head[:len(head)-1]...) // {"version":...  (never empty: version)
	b = append(b, `,"networks":`...)
	if st.Networks == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '{')
		for i, pc := range pieces {
			if i > 0 {
				b = append(b, ',')
			}
			b = append(b, pc.key...)
			b = append(b, ':')
			if pc.body == nil {
				b = append(b, "null"...)
				continue
			}
			b = append(b, pc.body[:len(pc.body)-1]...) // {"id":...  (never empty: id)
			b = append(b, `,"config_file":"`...)
			b = append(b, pc.file...) // hex and ".json": nothing to escape
			b = append(b, `"}`...)
		}
		b = append(b, '}')
	}
	b = append(b, '}')
	for id := range e.configs {
		if st.Networks[id] == nil {
			delete(e.configs, id)
		}
	}
	e.buf = b
	return b, nil
}

// config returns network id's configuration encoded, encoding it again
// when it is not the one kept.
func (e *StateEncoder) config(id string, n *Network) (*encodedConfig, error) {
	if c := e.configs[id]; c != nil && identical(reflect.ValueOf(c.options), reflect.ValueOf(n.Options)) &&
		identical(reflect.ValueOf(c.config), reflect.ValueOf(n.Config)) {
		return c, nil
	}
	c := &encodedConfig{options: n.Options, config: n.Config}
	var err error
	if c.raw, err = json.Marshal(networkFile{Options: c.options, Config: c.config}); err != nil {
		return nil, fmt.Errorf("encode state: network %s config: %w", short(id), err)
	}
	c.file = configFileName(c.raw)
	e.configs[id] = c
	e.encodes++
	return c, nil
}

// identical reports whether a and b, of one type, are the same value by
// identity: the same map, the same pointee, the same slice (array and
// length; a nil and an empty one differ, as their JSON does), and
// everything else equal, field by field. For immutable values (a network's
// Options and Config) identical means equal content. A field added to
// policy.NetworkConfig later is compared with no change here.
func identical(a, b reflect.Value) bool {
	switch a.Kind() {
	case reflect.Map, reflect.Pointer, reflect.Chan, reflect.Func, reflect.UnsafePointer:
		return a.UnsafePointer() == b.UnsafePointer()
	case reflect.Slice:
		return a.UnsafePointer() == b.UnsafePointer() && a.Len() == b.Len()
	case reflect.Struct:
		for i := range a.NumField() {
			if !identical(a.Field(i), b.Field(i)) {
				return false
			}
		}
		return true
	case reflect.Array:
		for i := range a.Len() {
			if !identical(a.Index(i), b.Index(i)) {
				return false
			}
		}
		return true
	case reflect.Interface:
		if a.IsNil() || b.IsNil() {
			return a.IsNil() == b.IsNil()
		}
		return a.Elem().Type() == b.Elem().Type() && identical(a.Elem(), b.Elem())
	default:
		return a.Equal(b)
	}
}
