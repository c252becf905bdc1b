// Package ratelimit is a per-key token bucket for log lines. A managed
// plugin's output is relayed line by line through dockerd, so every denial
// and DNS decision line costs dockerd CPU: one endpoint that floods must not
// make dockerd relay a line per attempt. Lines over the limit are counted,
// not written; the owner logs the counts periodically as one summary line
// and shows the total in status.
package ratelimit

import (
	"sync"
	"time"
)

// Limiter holds one token bucket per key (an endpoint index). It is safe
// for concurrent use.
type Limiter struct {
	mu      sync.Mutex
	rate    float64 // tokens per second
	burst   float64
	now     func() time.Time
	buckets map[uint32]*bucket
	// dropped counts, per key, lines refused since the last TakeDropped;
	// total since the start.
	dropped map[uint32]uint64
	total   uint64
}

type bucket struct {
	tokens float64
	last   time.Time
}

// New returns a limiter that lets each key write rate lines per second on
// average and burst lines at once. rate <= 0 disables limiting.
func New(rate float64, burst int) *Limiter {
	if burst < 1 {
		burst = 1
	}
	return &Limiter{rate: rate, burst: float64(burst), now: time.Now, buckets: map[uint32]*bucket{}, dropped: map[uint32]uint64{}}
}

// Allow takes a token for key and reports whether the line may be written;
// a refused line is counted. A nil Limiter allows everything.
func (l *Limiter) Allow(key uint32) bool {
	if l == nil || l.rate <= 0 {
		return true
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens >= 1 {
		b.tokens--
		return true
	}
	l.dropped[key]++
	l.total++
	return false
}

// TakeDropped returns the lines refused per key since the last call, and
// forgets buckets that have refilled (keys that went quiet).
func (l *Limiter) TakeDropped() map[uint32]uint64 {
	if l == nil {
		return nil
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	out := l.dropped
	l.dropped = map[uint32]uint64{}
	for k, b := range l.buckets {
		if b.tokens+now.Sub(b.last).Seconds()*l.rate >= l.burst {
			delete(l.buckets, k)
		}
	}
	return out
}

// Dropped returns how many lines were refused since the limiter was made.
func (l *Limiter) Dropped() uint64 {
	if l == nil {
		return 0
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}
