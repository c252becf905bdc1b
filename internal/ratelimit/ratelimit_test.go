package ratelimit

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPerKeyBucket(t *testing.T) {
	now := time.Unix(1000, 0)
	l := New(2, 3)
	l.now = func() time.Time { return now }
	allowed := func(key uint32, n int) int {
		c := 0
		for range n {
			if l.Allow(key) {
				c++
			}
		}
		return c
	}
	require.Equal(t, 3, allowed(1, 10), "burst, then refused")
	require.Equal(t, 3, allowed(2, 3), "another key has its own bucket")
	now = now.Add(time.Second)
	require.Equal(t, 2, allowed(1, 5), "refills at the rate")
	require.Equal(t, map[uint32]uint64{1: 10}, l.TakeDropped())
	require.Equal(t, uint64(10), l.Dropped())
	require.Empty(t, l.TakeDropped(), "counts are per period")
	now = now.Add(time.Hour)
	l.TakeDropped()
	require.Empty(t, l.buckets, "quiet keys are forgotten")
	require.Equal(t, uint64(10), l.Dropped(), "the total stays")

	var off *Limiter
	require.True(t, off.Allow(1))
	require.True(t, New(0, 1).Allow(1))
}
