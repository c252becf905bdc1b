package plugin

import (
	"sync"
	"time"
)

// engineSettle is how long after the engine's GetCapabilities a driver call
// waits more: dockerd reads the answer, then registers its driver object.
const engineSettle = 50 * time.Millisecond

// engineGate holds endpoint calls until the engine has registered this
// plugin process as a driver. dockerd (every version) asks a started or
// restarted plugin for its capabilities and then registers a new
// remote-driver object for it; the current engine keeps the endpoints that
// joined in that object, so a container whose Join went through the object
// of the plugin's previous process fails in ProgramExternalConnectivity
// ("remote network driver: endpoint ... not found") without the plugin
// being asked. Holding CreateEndpoint and Join until the new object exists
// sends the whole join through it.
type engineGate struct {
	once sync.Once
	seen chan struct{}
	at   time.Time // written before seen is closed
}

func newEngineGate() *engineGate { return &engineGate{seen: make(chan struct{})} }

// registered records the engine's GetCapabilities call.
func (g *engineGate) registered(now time.Time) {
	g.once.Do(func() {
		g.at = now
		close(g.seen)
	})
}

// wait returns once the engine registered the driver (and engineSettle
// passed), or after max; it reports how long it waited and whether the
// registration was seen. max 0 does not wait.
func (g *engineGate) wait(max time.Duration) (time.Duration, bool) {
	if max <= 0 {
		return 0, true
	}
	start := time.Now()
	timer := time.NewTimer(max)
	defer timer.Stop()
	select {
	case <-g.seen:
	case <-timer.C:
		return time.Since(start), false
	}
	if d := time.Until(g.at.Add(engineSettle)); d > 0 {
		time.Sleep(d)
	}
	return time.Since(start), true
}

// EngineRegistered records that the engine asked for the driver's
// capabilities (it registers this process's driver right after).
func (p *Plugin) EngineRegistered() { p.engine.registered(time.Now()) }

// awaitEngine holds an endpoint call of call until the engine registered the
// driver, at most Config.EngineWait.
func (p *Plugin) awaitEngine(call string) {
	waited, ok := p.engine.wait(p.cfg.EngineWait)
	switch {
	case !ok:
		p.log.WithField("call", call).WithField("waited", waited.Round(time.Millisecond)).
			Warn("the engine has not registered the driver since the plugin started: going on")
	case waited > engineSettle:
		p.log.WithField("call", call).WithField("waited", waited.Round(time.Millisecond)).
			Info("held until the engine registered the restarted driver")
	}
}
