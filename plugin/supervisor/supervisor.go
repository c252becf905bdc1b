// Package supervisor runs the plugin's sidecars (the CoreDNS binary, Envoy):
// it starts them, logs their output through the plugin's logger,
// health-checks them, restarts a crashed one with backoff, and stops them
// cleanly on disable.
package supervisor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
)

// Spec describes one sidecar.
type Spec struct {
	Name string
	Path string
	Args []string
	Env  []string
	// Health reports whether the running sidecar is healthy (nil: running
	// counts as healthy).
	Health func(ctx context.Context) error
	// HealthEvery is the health-check period (default 1 s).
	HealthEvery time.Duration
	// MinBackoff/MaxBackoff bound the restart delay (defaults 100 ms, 10 s).
	MinBackoff, MaxBackoff time.Duration
}

// Status is a sidecar's health snapshot.
type Status struct {
	Name      string    `json:"name"`
	Running   bool      `json:"running"`
	Healthy   bool      `json:"healthy"`
	PID       int       `json:"pid,omitempty"`
	Restarts  int       `json:"restarts"`
	LastError string    `json:"last_error,omitempty"`
	Since     time.Time `json:"since,omitzero"`
}

// Process is one supervised sidecar.
type Process struct {
	spec Spec
	log  *logrus.Entry

	mu     sync.Mutex
	st     Status
	cmd    *exec.Cmd
	cancel context.CancelFunc
	done   chan struct{}
}

// Start launches the sidecar and its supervision loop.
func Start(spec Spec, log *logrus.Entry) *Process {
	if spec.HealthEvery == 0 {
		spec.HealthEvery = time.Second
	}
	if spec.MinBackoff == 0 {
		spec.MinBackoff = 100 * time.Millisecond
	}
	if spec.MaxBackoff == 0 {
		spec.MaxBackoff = 10 * time.Second
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Process{spec: spec, log: log.WithField("sidecar", spec.Name), cancel: cancel, done: make(chan struct{})}
	p.st.Name = spec.Name
	go p.loop(ctx)
	go p.healthLoop(ctx)
	return p
}

// Status returns the current status.
func (p *Process) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// Stop terminates the sidecar (SIGTERM, then SIGKILL after grace) and ends
// supervision.
func (p *Process) Stop(grace time.Duration) {
	p.cancel()
	p.mu.Lock()
	cmd := p.cmd
	p.mu.Unlock()
	if cmd != nil && cmd.Process != nil {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
			return
		case <-time.After(grace):
			_ = cmd.Process.Kill()
		}
	}
	<-p.done
}

func (p *Process) loop(ctx context.Context) {
	defer close(p.done)
	backoff := p.spec.MinBackoff
	for {
		started := time.Now()
		err := p.runOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		p.mu.Lock()
		p.st.Running, p.st.Healthy, p.st.PID = false, false, 0
		p.st.Restarts++
		if err != nil {
			p.st.LastError = err.Error()
		}
		p.mu.Unlock()
		if time.Since(started) > 30*time.Second {
			backoff = p.spec.MinBackoff
		}
		p.log.WithError(err).WithField("restart_in", backoff.String()).Warn("sidecar exited; restarting")
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, p.spec.MaxBackoff)
	}
}

func (p *Process) runOnce(ctx context.Context) error {
	cmd := exec.Command(p.spec.Path, p.spec.Args...)
	cmd.Env = p.spec.Env
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.spec.Path, err)
	}
	p.mu.Lock()
	p.cmd = cmd
	p.st.Running, p.st.PID, p.st.Since = true, cmd.Process.Pid, time.Now()
	p.mu.Unlock()
	p.log.WithField("pid", cmd.Process.Pid).Info("sidecar started")
	p.pipe(stdout)
	err = cmd.Wait()
	p.mu.Lock()
	p.cmd = nil
	p.mu.Unlock()
	if err == nil {
		err = errors.New("exited with status 0")
	}
	return fmt.Errorf("%s: %w", p.spec.Name, err)
}

func (p *Process) pipe(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		p.log.Log(LineLevel(sc.Text()), sc.Text())
	}
}

func (p *Process) healthLoop(ctx context.Context) {
	t := time.NewTicker(p.spec.HealthEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		p.mu.Lock()
		running := p.st.Running
		p.mu.Unlock()
		healthy := running
		var herr error
		if running && p.spec.Health != nil {
			hctx, cancel := context.WithTimeout(ctx, p.spec.HealthEvery)
			herr = p.spec.Health(hctx)
			cancel()
			healthy = herr == nil
		}
		p.mu.Lock()
		if p.st.Running {
			p.st.Healthy = healthy
			if herr != nil {
				p.st.LastError = herr.Error()
			}
		}
		p.mu.Unlock()
	}
}

// LineLevel is the level a sidecar's output line states: CoreDNS writes
// "[INFO] ...", "[WARNING] ...", "[ERROR] ..." (and "[FATAL]"), Envoy
// "[date][thread][info][logger] ..." ("warning", "error", "critical"), a Go
// panic starts with "panic: " or "fatal error: ". A line that states none
// is info. The sidecar's line is logged at that level, so it lands on the
// plugin's stdout or stderr (and in dockerd's log at info or error) as its
// level says, and CLAWKER_LOG_LEVEL filters it like the plugin's own.
func LineLevel(line string) logrus.Level {
	if strings.HasPrefix(line, "panic: ") || strings.HasPrefix(line, "fatal error: ") {
		return logrus.ErrorLevel
	}
	// The level is one of the first few bracketed tokens.
	rest := line
	for range 4 {
		open := strings.IndexByte(rest, '[')
		if open < 0 || open > 40 {
			break
		}
		end := strings.IndexByte(rest[open:], ']')
		if end < 0 {
			break
		}
		switch strings.ToLower(rest[open+1 : open+end]) {
		case "trace", "debug":
			return logrus.DebugLevel
		case "info":
			return logrus.InfoLevel
		case "warning", "warn":
			return logrus.WarnLevel
		case "error", "err":
			return logrus.ErrorLevel
		case "fatal", "critical", "crit":
			return logrus.ErrorLevel
		}
		rest = rest[open+end+1:]
	}
	return logrus.InfoLevel
}
