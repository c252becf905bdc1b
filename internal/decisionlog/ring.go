package decisionlog

import "sync"

// Ring keeps the most recent records. It is safe for concurrent use.
type Ring struct {
	mu   sync.Mutex
	buf  []Record
	next int
	full bool
}

// NewRing keeps up to size records.
func NewRing(size int) *Ring { return &Ring{buf: make([]Record, size)} }

// Add records r, overwriting the oldest when full.
func (g *Ring) Add(r Record) {
	g.mu.Lock()
	g.buf[g.next] = r
	g.next++
	if g.next == len(g.buf) {
		g.next, g.full = 0, true
	}
	g.mu.Unlock()
}

// Recent returns up to n of the kept records that keep accepts (nil: all),
// the newest n of them, oldest first; n <= 0 returns every match.
func (g *Ring) Recent(n int, keep func(*Record) bool) []Record {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []Record
	// Walk newest to oldest, then reverse.
	size := g.next
	if g.full {
		size = len(g.buf)
	}
	for i := range size {
		r := &g.buf[(g.next-1-i+len(g.buf))%len(g.buf)]
		if keep != nil && !keep(r) {
			continue
		}
		out = append(out, *r)
		if n > 0 && len(out) == n {
			break
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out
}
