package dns

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/policy"
)

// eventsQueue is how many decisions wait for the events socket before new
// ones are dropped (and counted).
const eventsQueue = 4096

func init() { plugin.Register(pluginName, setup) }

// Config is what the `clawker` Corefile block parses into.
type Config struct {
	SnapshotPath   string
	PinDir         string
	Upstreams      []string
	UseNext        bool
	TTLFloor       time.Duration
	TTLCeiling     time.Duration
	PendingTimeout time.Duration
	Poll           time.Duration
	StatusAddr     string
	// EventsPath is the plugin's events socket: decisions go there as
	// records instead of log lines.
	EventsPath string
}

func setup(c *caddy.Controller) error {
	cfg, err := parse(c)
	if err != nil {
		return plugin.Error(pluginName, err)
	}

	var learner Learner = nopLearner{}
	var mapLearner *MapLearner
	if cfg.PinDir == "" {
		log.Warningf("no bpf_pins configured: answers are not recorded in the learned map (connections to answered addresses will be denied)")
	} else {
		mapLearner, err = OpenMapLearner(cfg.PinDir)
		if err != nil {
			return plugin.Error(pluginName, err)
		}
		learner = mapLearner
	}

	store := NewStore()
	h := New(store, learner)
	h.UseNext = cfg.UseNext
	if len(cfg.Upstreams) > 0 {
		h.Upstreams = cfg.Upstreams
	}
	h.TTLFloor, h.TTLCeiling, h.PendingTimeout = cfg.TTLFloor, cfg.TTLCeiling, cfg.PendingTimeout
	w := NewWatcher(cfg.SnapshotPath, cfg.Poll, store, log)
	var sink *decisionlog.Sink
	if cfg.EventsPath != "" {
		sink = decisionlog.NewSink(cfg.EventsPath, eventsQueue)
		h.Decisions = func(r decisionlog.Record) { sink.Send(r) }
		eventsDropped.set(sink)
	}

	c.OnStartup(func() error {
		w.Start()
		if cfg.StatusAddr != "" {
			return startStatus(cfg.StatusAddr, store)
		}
		return nil
	})
	c.OnShutdown(func() error {
		w.Stop()
		h.Close()
		if sink != nil {
			sink.Close()
		}
		return mapLearner.Close()
	})
	c.OnFinalShutdown(func() error {
		stopStatus(cfg.StatusAddr)
		return nil
	})

	dnsserver.GetConfig(c).AddPlugin(func(next plugin.Handler) plugin.Handler {
		h.Next = next
		return h
	})
	return nil
}

// parse reads the plugin block (see README.md, SYNTAX).
func parse(c *caddy.Controller) (*Config, error) {
	cfg := &Config{
		TTLFloor:       DefaultTTLFloor,
		TTLCeiling:     DefaultTTLCeiling,
		PendingTimeout: DefaultPendingTimeout,
		Poll:           100 * time.Millisecond,
	}
	i := 0
	for c.Next() {
		if i > 0 {
			return nil, plugin.ErrOnce
		}
		i++
		if len(c.RemainingArgs()) > 0 {
			return nil, c.ArgErr()
		}
		for c.NextBlock() {
			switch c.Val() {
			case "snapshot":
				v, err := oneArg(c)
				if err != nil {
					return nil, err
				}
				cfg.SnapshotPath = v
			case "bpf_pins":
				v, err := oneArg(c)
				if err != nil {
					return nil, err
				}
				cfg.PinDir = v
			case "upstream":
				args := c.RemainingArgs()
				if len(args) == 0 {
					return nil, c.ArgErr()
				}
				if len(args) == 1 && args[0] == "next" {
					cfg.UseNext = true
					continue
				}
				for _, a := range args {
					u, err := policy.NormalizeUpstream(a)
					if err != nil {
						return nil, c.Errf("upstream %q: not an IP or IP:port: %v", a, err)
					}
					cfg.Upstreams = append(cfg.Upstreams, u)
				}
			case "ttl_floor", "ttl_ceiling", "pending_timeout", "poll":
				key := c.Val()
				v, err := oneArg(c)
				if err != nil {
					return nil, err
				}
				d, err := time.ParseDuration(v)
				if err != nil || d <= 0 {
					return nil, c.Errf("%s %q: want a positive duration", key, v)
				}
				switch key {
				case "ttl_floor":
					cfg.TTLFloor = d
				case "ttl_ceiling":
					cfg.TTLCeiling = d
				case "pending_timeout":
					cfg.PendingTimeout = d
				case "poll":
					cfg.Poll = d
				}
			case "events":
				v, err := oneArg(c)
				if err != nil {
					return nil, err
				}
				cfg.EventsPath = v
			case "status":
				v, err := oneArg(c)
				if err != nil {
					return nil, err
				}
				if _, _, err := net.SplitHostPort(v); err != nil {
					return nil, c.Errf("status %q: want host:port", v)
				}
				cfg.StatusAddr = v
			default:
				return nil, c.Errf("unknown property %q", c.Val())
			}
		}
	}
	if cfg.SnapshotPath == "" {
		return nil, errors.New("snapshot path is required")
	}
	if cfg.TTLFloor > cfg.TTLCeiling {
		return nil, fmt.Errorf("ttl_floor %s is above ttl_ceiling %s", cfg.TTLFloor, cfg.TTLCeiling)
	}
	return cfg, nil
}

func oneArg(c *caddy.Controller) (string, error) {
	args := c.RemainingArgs()
	if len(args) != 1 {
		return "", c.ArgErr()
	}
	return args[0], nil
}

// The status server (GET /generation) lives for the whole process: a
// Corefile reload builds a new handler and store, and the server then
// reports the newest store. Keyed by address, like CoreDNS's own listeners.
var (
	statusMu      sync.Mutex
	statusServers = map[string]*statusServer{}
)

type statusServer struct {
	srv   *http.Server
	store atomic.Pointer[Store]
}

func startStatus(addr string, store *Store) error {
	statusMu.Lock()
	defer statusMu.Unlock()
	if s, ok := statusServers[addr]; ok {
		s.store.Store(store)
		return nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen status %s: %w", addr, err)
	}
	s := &statusServer{}
	s.store.Store(store)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /generation", func(w http.ResponseWriter, _ *http.Request) {
		gen, ok := s.store.Load().Generation()
		if !ok {
			http.Error(w, "no snapshot loaded", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		fmt.Fprintln(w, strconv.FormatUint(gen, 10))
	})
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	statusServers[addr] = s
	go s.srv.Serve(ln)
	return nil
}

func stopStatus(addr string) {
	statusMu.Lock()
	defer statusMu.Unlock()
	if s, ok := statusServers[addr]; ok {
		s.srv.Close()
		delete(statusServers, addr)
	}
}
