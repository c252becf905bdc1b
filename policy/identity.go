package policy

import (
	"cmp"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"sync"
)

// IdentityTable is the Allocator the plugin uses: it hands out identities
// sequentially from 1, once per pattern, and never reuses or renumbers one.
//
// Identities are allocated once and persisted, never re-derived: BPF maps,
// learned DNS answers and proxy routes key on them, so a number must keep
// meaning the same pattern across recompilations and restarts. The plugin
// stores the table (its JSON form, MarshalJSON/UnmarshalJSON) through the
// store package after every compilation that allocated (Len grew) and loads
// it at start, before compiling anything.
//
// An IdentityTable is safe for concurrent use. Its zero value is empty and
// ready to use.
type IdentityTable struct {
	mu   sync.Mutex
	ids  map[string]Identity
	next Identity
	// body is the encoded entries of the identities object
	// (`"a.example":1,"b.example":2`), in identity order, nil until
	// MarshalJSON first needs it: the plugin writes state.json on every
	// mutation, and re-encoding (and sorting) 10,000 patterns each time
	// cost it ~10 ms. Numbers only grow, so an allocation appends its
	// entry and the order holds. Owned by the table alone (Clone copies
	// it, MarshalJSON returns a copy).
	body []byte
}

// NewIdentityTable returns an empty table.
func NewIdentityTable() *IdentityTable { return &IdentityTable{} }

// Identity returns pattern's identity, allocating the next number the first
// time the pattern is seen.
func (t *IdentityTable) Identity(pattern string) Identity {
	t.mu.Lock()
	defer t.mu.Unlock()
	if id, ok := t.ids[pattern]; ok {
		return id
	}
	if t.ids == nil {
		t.ids = make(map[string]Identity)
	}
	if t.next == 0 {
		t.next = 1
	}
	id := t.next
	t.next++
	t.ids[pattern] = id
	if t.body != nil {
		t.body = appendIdentity(t.body, pattern, id)
	}
	return id
}

// appendIdentity appends the entry "pattern":id to an identities object's
// encoded entries.
func appendIdentity(body []byte, pattern string, id Identity) []byte {
	if len(body) > 0 {
		body = append(body, ',')
	}
	key, _ := json.Marshal(pattern) // a string always encodes
	body = append(body, key...)
	body = append(body, ':')
	return strconv.AppendUint(body, uint64(id), 10)
}

// Lookup returns pattern's identity without allocating one.
func (t *IdentityTable) Lookup(pattern string) (Identity, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	id, ok := t.ids[pattern]
	return id, ok
}

// Len returns the number of allocated identities. It only grows, so a caller
// can compare it before and after a compilation to know whether the table
// must be persisted.
func (t *IdentityTable) Len() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.ids)
}

// identityJSON is the persisted form. Next is stored so that the numbers of
// patterns that were dropped from the table by hand are never reused.
type identityJSON struct {
	Next       Identity            `json:"next"`
	Identities map[string]Identity `json:"identities"`
}

// MarshalJSON returns the table as {"next":N,"identities":{"pattern":id}},
// the identities in the order of their numbers.
func (t *IdentityTable) MarshalJSON() ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.body == nil {
		pats := make([]string, 0, len(t.ids))
		for p := range t.ids {
			pats = append(pats, p)
		}
		slices.SortFunc(pats, func(a, b string) int { return cmp.Compare(t.ids[a], t.ids[b]) })
		body := make([]byte, 0, 24*len(pats))
		for _, p := range pats {
			body = appendIdentity(body, p, t.ids[p])
		}
		t.body = body
	}
	out := make([]byte, 0, len(t.body)+48)
	out = append(out, `{"next":`...)
	out = strconv.AppendUint(out, uint64(max(t.next, 1)), 10)
	out = append(out, `,"identities":{`...)
	out = append(out, t.body...)
	return append(out, "}}"...), nil
}

// UnmarshalJSON replaces the table with a persisted one. It rejects a table
// with identity 0 or a repeated identity; next is raised above the highest
// identity in the table, so a damaged counter can never hand a number out
// twice.
func (t *IdentityTable) UnmarshalJSON(b []byte) error {
	var in identityJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("decode identity table: %w", err)
	}
	seen := make(map[Identity]string, len(in.Identities))
	next := max(in.Next, 1)
	for p, id := range in.Identities {
		if id == 0 {
			return fmt.Errorf("decode identity table: pattern %q has identity 0", p)
		}
		if other, ok := seen[id]; ok {
			return fmt.Errorf("decode identity table: identity %d given to %q and %q", id, p, other)
		}
		seen[id] = p
		if id >= next {
			next = id + 1
		}
	}
	if in.Identities == nil {
		in.Identities = make(map[string]Identity)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ids = in.Identities
	t.next = next
	t.body = nil
	return nil
}
