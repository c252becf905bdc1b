package decisionlog

import (
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestEventsPeerSpeaksForItself: the listener forces the source and a known
// verdict whatever a peer writes, and skips lines that are no record.
func TestEventsPeerSpeaksForItself(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ev.sock")
	got := make(chan Record, 4)
	l, err := Listen(path, SourceDNS, func(r Record) { got <- r })
	require.NoError(t, err)
	defer l.Close()
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	_, err = c.Write([]byte("not json\n{\"source\":\"authz\",\"verdict\":\"allow\",\"dest_name\":\"a\"}\n{\"verdict\":\"maybe\",\"dest_name\":\"b\"}\n"))
	require.NoError(t, err)
	c.Close()
	for _, want := range []Record{{Source: SourceDNS, Verdict: Allow, DestName: "a"}, {Source: SourceDNS, Verdict: Error, DestName: "b"}} {
		select {
		case r := <-got:
			require.Equal(t, want, r)
		case <-time.After(5 * time.Second):
			t.Fatal("no record")
		}
	}
}

// TestSinkNeverBlocks: with no listener, Send returns at once and counts
// what it could not deliver; once a listener appears records flow.
func TestSinkNeverBlocks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ev.sock")
	s := NewSink(path, 8)
	defer s.Close()
	start := time.Now()
	for range 1000 {
		s.Send(Record{Verdict: Allow})
	}
	require.Less(t, time.Since(start), time.Second)
	require.Positive(t, s.Dropped())
	got := make(chan Record, 16)
	l, err := Listen(path, SourceDNS, func(r Record) { got <- r })
	require.NoError(t, err)
	defer l.Close()
	require.Eventually(t, func() bool {
		s.Send(Record{Verdict: Deny, DestName: "late"})
		select {
		case r := <-got:
			return r.Verdict == Deny || r.Verdict == Allow
		default:
			return false
		}
	}, 10*time.Second, 50*time.Millisecond)
}
