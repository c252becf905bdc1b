package queue

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestFIFOAcrossKinds(t *testing.T) {
	q := New()
	defer q.Close()
	block := make(chan struct{})
	var order []int
	var mu sync.Mutex
	go func() { _ = q.Do(context.Background(), KindRead, func() error { <-block; return nil }) }()
	time.Sleep(20 * time.Millisecond)
	var wg sync.WaitGroup
	kinds := []Kind{KindEnable, KindBypass, KindRead, KindTeardown, KindMutate}
	for i, k := range kinds {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = q.Do(context.Background(), k, func() error { mu.Lock(); order = append(order, i); mu.Unlock(); return nil })
		}()
		time.Sleep(10 * time.Millisecond) // fix submission order
	}
	close(block)
	wg.Wait()
	require.Equal(t, []int{0, 1, 2, 3, 4}, order)
}

func TestConsecutiveReconcilesCoalesce(t *testing.T) {
	q := New()
	defer q.Close()
	block := make(chan struct{})
	go func() { _ = q.Do(context.Background(), KindRead, func() error { <-block; return nil }) }()
	time.Sleep(20 * time.Millisecond)
	want := errors.New("reconcile result")
	execs := 0
	results := make(chan error, 6)
	submit := func(k Kind) {
		go func() {
			results <- q.Do(context.Background(), k, func() error {
				if k == KindReconcile {
					execs++
					return want
				}
				return nil
			})
		}()
		time.Sleep(10 * time.Millisecond)
	}
	submit(KindReconcile)
	submit(KindReconcile)
	submit(KindReconcile)
	submit(KindEnable) // breaks the run
	submit(KindReconcile)
	submit(KindReconcile)
	close(block)
	var errs int
	for range 6 {
		if errors.Is(<-results, want) {
			errs++
		}
	}
	require.Equal(t, 5, errs, "every coalesced caller receives the shared result")
	require.Equal(t, 2, execs, "two runs of reconciles, split by the enable")
	require.Equal(t, 4, q.Runs()) // read, reconcile x3 (once), enable, reconcile x2 (once)
}

func TestPanicBecomesError(t *testing.T) {
	q := New()
	defer q.Close()
	err := q.Do(context.Background(), KindMutate, func() error { panic("boom") })
	require.ErrorContains(t, err, "panicked: boom")
	require.NoError(t, q.Do(context.Background(), KindRead, func() error { return nil }), "queue survives a panic")
}

func TestCloseDrainsAndRejects(t *testing.T) {
	q := New()
	block := make(chan struct{})
	var ran []int
	var mu sync.Mutex
	res := make(chan error, 3)
	for i := range 3 {
		go func() {
			res <- q.Do(context.Background(), KindMutate, func() error {
				if i == 0 {
					<-block
				}
				mu.Lock()
				ran = append(ran, i)
				mu.Unlock()
				return nil
			})
		}()
		time.Sleep(10 * time.Millisecond)
	}
	closed := make(chan struct{})
	go func() { q.Close(); close(closed) }()
	time.Sleep(20 * time.Millisecond)
	require.ErrorIs(t, q.Do(context.Background(), KindRead, func() error { return nil }), ErrClosed)
	close(block)
	<-closed
	for range 3 {
		require.NoError(t, <-res)
	}
	require.Len(t, ran, 3, "accepted actions drain on close")
}

// TestContextCancel: a caller that gives up withdraws its action if it has
// not started (it never runs, so it cannot write the caller's variables
// after Do returned), and waits for it if it has.
func TestContextCancel(t *testing.T) {
	q := New()
	defer q.Close()
	block := make(chan struct{})
	started := make(chan struct{})
	go func() {
		_ = q.Do(context.Background(), KindRead, func() error { close(started); <-block; return nil })
	}()
	<-started
	ctx, cancel := context.WithCancel(context.Background())
	ran := false
	errc := make(chan error)
	go func() { errc <- q.Do(ctx, KindMutate, func() error { ran = true; return nil }) }()
	time.Sleep(10 * time.Millisecond)
	cancel()
	require.ErrorIs(t, <-errc, context.Canceled)
	close(block)
	require.NoError(t, q.Do(context.Background(), KindRead, func() error { return nil }), "queue still works")
	require.False(t, ran, "a withdrawn action never runs")

	// Cancelled while running: Do returns only when the action is done.
	ctx, cancel = context.WithCancel(context.Background())
	release := make(chan struct{})
	running := make(chan struct{})
	finished := false
	go func() {
		errc <- q.Do(ctx, KindMutate, func() error { close(running); <-release; finished = true; return nil })
	}()
	<-running
	cancel()
	select {
	case err := <-errc:
		t.Fatalf("Do returned %v while its action was still running", err)
	case <-time.After(30 * time.Millisecond):
	}
	close(release)
	require.NoError(t, <-errc)
	require.True(t, finished)
}
