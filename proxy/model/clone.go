package model

import "maps"

// Clone returns an independent copy of a: ports allocated or released in
// one are not seen by the other.
func (a *PortAllocator) Clone() *PortAllocator {
	if a == nil {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	return &PortAllocator{ports: maps.Clone(a.ports), used: maps.Clone(a.used)}
}
