// Package queue is the plugin's serialized action queue: every mutation
// (driver hooks, admin calls, bypass expiries, sidecar restarts) runs through
// it, one at a time, in strict FIFO order across kinds.
//
// Consecutive reconcile actions coalesce: when the worker reaches a reconcile
// action, it takes every reconcile action directly behind it too, runs the
// last one once, and hands that result to every coalesced caller (a reconcile
// recomputes everything from the store, so running it once is equivalent to
// running it N times). Other kinds run one by one. Submissions after Close get
// ErrClosed; accepted ones drain before Close returns. A panicking action
// becomes an error, never a crash.
package queue

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
)

// ErrClosed is returned for submissions after Close.
var ErrClosed = errors.New("action queue closed")

// Kind names an action kind. KindReconcile actions coalesce.
type Kind string

// Action kinds.
const (
	KindReconcile Kind = "reconcile"
	KindEnable    Kind = "enable"
	KindDisable   Kind = "disable"
	KindBypass    Kind = "bypass"
	KindBringUp   Kind = "bring-up"
	KindTeardown  Kind = "teardown"
	KindRead      Kind = "read"
	KindMutate    Kind = "mutate"
	KindRepair    Kind = "repair"
)

type item struct {
	kind Kind
	fn   func() error
	done chan error
}

// Queue runs actions one at a time.
type Queue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	items   []*item
	closed  bool
	stopped chan struct{}
	// Runs counts executions (coalesced reconciles count once); for tests.
	runs int
}

// New starts a queue with its worker.
func New() *Queue {
	q := &Queue{stopped: make(chan struct{})}
	q.cond = sync.NewCond(&q.mu)
	go q.work()
	return q
}

// Do submits fn as an action of kind and waits for its result. If ctx ends
// before the action started, it is withdrawn (it never runs) and Do returns
// ctx.Err(); once started, Do waits for it to finish. Either way nothing of
// fn runs after Do returns, so fn may write the caller's variables (it used
// to run later, racing with a caller that had returned).
func (q *Queue) Do(ctx context.Context, kind Kind, fn func() error) error {
	it := &item{kind: kind, fn: fn, done: make(chan error, 1)}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	q.items = append(q.items, it)
	q.cond.Signal()
	q.mu.Unlock()
	select {
	case err := <-it.done:
		return err
	case <-ctx.Done():
	}
	q.mu.Lock()
	for i, pending := range q.items {
		if pending == it {
			q.items = append(q.items[:i], q.items[i+1:]...)
			q.mu.Unlock()
			return ctx.Err()
		}
	}
	q.mu.Unlock()
	return <-it.done // the worker has it: wait
}

// Runs returns how many executions the worker has made.
func (q *Queue) Runs() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.runs
}

// Close stops accepting actions, drains the accepted ones and waits for the
// worker to finish.
func (q *Queue) Close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
	<-q.stopped
}

func (q *Queue) work() {
	defer close(q.stopped)
	for {
		q.mu.Lock()
		for len(q.items) == 0 && !q.closed {
			q.cond.Wait()
		}
		if len(q.items) == 0 && q.closed {
			q.mu.Unlock()
			return
		}
		batch := []*item{q.items[0]}
		if batch[0].kind == KindReconcile {
			for len(batch) < len(q.items) && q.items[len(batch)].kind == KindReconcile {
				batch = append(batch, q.items[len(batch)])
			}
		}
		q.items = q.items[len(batch):]
		q.runs++
		q.mu.Unlock()

		err := run(batch[len(batch)-1])
		for _, it := range batch {
			it.done <- err
		}
	}
}

func run(it *item) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s action panicked: %v\n%s", it.kind, r, debug.Stack())
		}
	}()
	return it.fn()
}
