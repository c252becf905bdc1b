package decisionlog

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// The events socket carries the DNS sidecar's decisions to the plugin
// process as typed data: a unix stream socket the plugin listens on, one
// JSON Record per line, written by the sidecar. The sidecar never waits for
// the plugin: a Sink queues records and drops (and counts) what does not
// fit, so a slow or restarting plugin never delays an answer.

// maxLine bounds one record on the wire.
const maxLine = 64 << 10

// Sink sends records to the events socket at Path. It is safe for
// concurrent use; Send never blocks.
type Sink struct {
	path    string
	ch      chan Record
	dropped atomic.Uint64
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
}

// NewSink starts a sink that keeps up to queue records while the socket is
// slow or absent, and (re)connects to path as needed.
func NewSink(path string, queue int) *Sink {
	s := &Sink{path: path, ch: make(chan Record, queue), stop: make(chan struct{}), done: make(chan struct{})}
	go s.loop()
	return s
}

// Send queues r, or drops it (counted) when the queue is full.
func (s *Sink) Send(r Record) bool {
	select {
	case s.ch <- r:
		return true
	default:
		s.dropped.Add(1)
		return false
	}
}

// Dropped is the number of records dropped since the start.
func (s *Sink) Dropped() uint64 { return s.dropped.Load() }

// Close stops the sink; records still queued are dropped.
func (s *Sink) Close() {
	s.once.Do(func() { close(s.stop) })
	<-s.done
}

func (s *Sink) loop() {
	defer close(s.done)
	var conn net.Conn
	var w *bufio.Writer
	defer func() {
		if conn != nil {
			_ = conn.Close()
		}
	}()
	backoff := 50 * time.Millisecond
	for {
		var r Record
		select {
		case r = <-s.ch:
		case <-s.stop:
			return
		}
		if conn == nil {
			c, err := net.DialTimeout("unix", s.path, time.Second)
			if err != nil {
				s.dropped.Add(1)
				select { // wait, but keep draining into drops
				case <-time.After(backoff):
				case <-s.stop:
					return
				}
				backoff = min(backoff*2, 2*time.Second)
				continue
			}
			backoff = 50 * time.Millisecond
			conn, w = c, bufio.NewWriterSize(c, 32<<10)
		}
		pending := uint64(1)
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		err := s.write(w, r)
		// Batch whatever else is queued, then flush once.
	batch:
		for err == nil {
			select {
			case r = <-s.ch:
				pending++
				err = s.write(w, r)
			default:
				break batch
			}
		}
		if err == nil {
			err = w.Flush()
		}
		if err != nil {
			// Some of the batch may have gone out; count it all as lost.
			s.dropped.Add(pending)
			_ = conn.Close()
			conn, w = nil, nil
		}
	}
}

func (s *Sink) write(w *bufio.Writer, r Record) error {
	b, err := json.Marshal(&r)
	if err != nil {
		s.dropped.Add(1)
		return nil
	}
	if len(b) >= maxLine {
		s.dropped.Add(1)
		return nil
	}
	if _, err := w.Write(b); err != nil {
		return err
	}
	return w.WriteByte('\n')
}

// Listen serves the events socket at path (mode 0600, replacing a stale
// socket): every record read is given to add, with its Source forced to
// source — a peer speaks only for itself. It returns the listener; closing
// it stops serving.
func Listen(path, source string, add func(Record)) (net.Listener, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale events socket: %w", err)
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("chmod %s: %w", path, err)
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				time.Sleep(50 * time.Millisecond)
				continue
			}
			go serveEvents(c, source, add)
		}
	}()
	return l, nil
}

func serveEvents(c net.Conn, source string, add func(Record)) {
	defer c.Close()
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 0, 32<<10), maxLine)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			continue // not a record: skip the line, keep the stream
		}
		r.Source = source
		switch r.Verdict {
		case Allow, Deny, Error:
		default:
			r.Verdict = Error
		}
		add(r)
	}
}
