package plugin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/plugin/api"
	"github.com/clawker-fw/clawker-fw/plugin/queue"
	"github.com/clawker-fw/clawker-fw/policy"
)

// The admin API's wire types live in plugin/api (the CLI links only that).
const ErrorDomain = api.ErrorDomain

type (
	// APIError is api.APIError.
	APIError = api.APIError
	// StatusReport is api.StatusReport.
	StatusReport = api.StatusReport
	// Component is api.Component.
	Component = api.Component
)

// AdminHooks are the parts of the admin API that live outside the core.
type AdminHooks struct {
	Engine     string
	Components func() []Component
	CACertPEM  func() []byte
	RotateCA   func() error
	// Decisions returns up to n recent decisions that keep accepts (the
	// process's ring: allowed ones included).
	Decisions func(n int, keep func(*decisionlog.Record) bool) []decisionlog.Record
}

// AdminHandler serves the admin API (a unix socket on the host).
func AdminHandler(p *Plugin, hooks AdminHooks, log *logrus.Entry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		p.ensureNetworkNames(r.Context())
		nets, gen, err := p.Networks()
		if err != nil {
			writeAPIError(w, err)
			return
		}
		rep := StatusReport{Running: true, Healthy: true, Generation: gen, Engine: hooks.Engine, Networks: nets}
		if hooks.Components != nil {
			rep.Components = hooks.Components()
		}
		for _, c := range rep.Components {
			rep.Healthy = rep.Healthy && c.Healthy
		}
		if m := p.Model(); m != nil {
			for _, l := range m.Listeners {
				rep.Listeners = append(rep.Listeners, fmt.Sprintf("%s %d", l.Key, l.Port))
			}
		}
		writeAPI(w, rep)
	})
	// Rules: the network is resolved first (through Docker, outside the
	// queue), then changed by id.
	mux.HandleFunc("GET /v1/networks/{net}/rules", func(w http.ResponseWriter, r *http.Request) {
		id, err := p.ResolveNetwork(r.Context(), r.PathValue("net"))
		if err != nil {
			writeAPIError(w, err)
			return
		}
		_, rules, err := p.RuntimeRules(id)
		if err != nil {
			writeAPIError(w, err)
			return
		}
		writeAPI(w, p.rulesBody(r.Context(), id, rules))
	})
	mux.HandleFunc("POST /v1/networks/{net}/rules", func(w http.ResponseWriter, r *http.Request) {
		id, body, ok := p.rulesRequest(w, r)
		if !ok {
			return
		}
		added, err := p.AddRules(id, body.Rules)
		if err != nil {
			writeAPIError(w, err)
			return
		}
		writeAPI(w, p.rulesBody(r.Context(), id, added))
	})
	mux.HandleFunc("DELETE /v1/networks/{net}/rules", func(w http.ResponseWriter, r *http.Request) {
		id, body, ok := p.rulesRequest(w, r)
		if !ok {
			return
		}
		if err := p.RemoveRules(id, body.Rules); err != nil {
			writeAPIError(w, err)
			return
		}
		writeAPI(w, map[string]any{"removed": body.Rules})
	})
	mux.HandleFunc("GET /v1/denials", func(w http.ResponseWriter, r *http.Request) {
		f, err := p.denialFilter(r)
		if err != nil {
			writeAPIError(w, err)
			return
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		if r.URL.Query().Get(api.DenialsFollow) == "" {
			for _, d := range p.Denials.Recent() {
				if f.Match(d) {
					_ = enc.Encode(d)
				}
			}
			return
		}
		c, cancel := p.Denials.Follow()
		defer cancel()
		fl, _ := w.(http.Flusher)
		for _, d := range p.Denials.Recent() {
			if f.Match(d) {
				_ = enc.Encode(d)
			}
		}
		if fl != nil {
			fl.Flush()
		}
		for {
			select {
			case <-r.Context().Done():
				return
			case d := <-c:
				if !f.Match(d) {
					continue
				}
				if enc.Encode(d) != nil {
					return
				}
				if fl != nil {
					fl.Flush()
				}
			}
		}
	})
	// Recent decisions, allowed ones included, newline-delimited JSON
	// records, oldest first: ?n= (default 100), ?source=, ?verdict=,
	// ?container=.
	mux.HandleFunc("GET /v1/decisions", func(w http.ResponseWriter, r *http.Request) {
		if hooks.Decisions == nil {
			writeAPIError(w, errors.New("no decision ring in this process"))
			return
		}
		q := r.URL.Query()
		n, err := strconv.Atoi(q.Get("n"))
		if err != nil || n <= 0 {
			n = 100
		}
		src, verdict, ctr := q.Get("source"), q.Get("verdict"), q.Get("container")
		recs := hooks.Decisions(n, func(d *decisionlog.Record) bool {
			return (src == "" || d.Source == src) && (verdict == "" || d.Verdict == verdict) && (ctr == "" || d.Container == ctr)
		})
		w.Header().Set("Content-Type", "application/x-ndjson")
		enc := json.NewEncoder(w)
		for i := range recs {
			_ = enc.Encode(&recs[i])
		}
	})
	mux.HandleFunc("POST /v1/bypass", func(w http.ResponseWriter, r *http.Request) {
		var body api.BypassRequest
		if err := decodeAPI(r, &body); err != nil {
			writeAPIError(w, err)
			return
		}
		d, err := time.ParseDuration(body.For)
		if err != nil {
			writeAPIError(w, rejected(ReasonInvalidRequest, "bypass duration %q: %v (examples: 30s, 10m)", body.For, err))
			return
		}
		ref := body.Container
		if id, found := p.ResolveContainer(r.Context(), ref); found {
			ref = id
		}
		until, err := p.Bypass(ref, d)
		if err != nil {
			writeAPIError(w, err)
			return
		}
		log.WithField(FieldContainer, body.Container).WithField("until", until).Warn("bypass granted")
		writeAPI(w, api.BypassResponse{Container: body.Container, Until: until})
	})
	mux.HandleFunc("POST /v1/explain", func(w http.ResponseWriter, r *http.Request) {
		var body api.ExplainRequest
		if err := decodeAPI(r, &body); err != nil {
			writeAPIError(w, err)
			return
		}
		ex, err := p.Explain(r.Context(), body)
		if err != nil {
			writeAPIError(w, err)
			return
		}
		writeAPI(w, ex)
	})
	mux.HandleFunc("GET /v1/version", func(w http.ResponseWriter, r *http.Request) {
		v := api.BuildVersion()
		v.Engine = hooks.Engine
		writeAPI(w, v)
	})
	learnRoutes(mux, p, log)
	mux.HandleFunc("POST /v1/reload", func(w http.ResponseWriter, r *http.Request) {
		if err := p.Reload(); err != nil {
			writeAPIError(w, err)
			return
		}
		writeAPI(w, map[string]any{"reloaded": true})
	})
	mux.HandleFunc("GET /v1/ca", func(w http.ResponseWriter, r *http.Request) {
		if hooks.CACertPEM == nil {
			writeAPIError(w, rejected(ReasonStackUnhealthy, "no CA configured"))
			return
		}
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(hooks.CACertPEM())
	})
	mux.HandleFunc("POST /v1/ca/rotate", func(w http.ResponseWriter, r *http.Request) {
		if hooks.RotateCA == nil {
			writeAPIError(w, rejected(ReasonStackUnhealthy, "no CA configured"))
			return
		}
		if err := hooks.RotateCA(); err != nil {
			writeAPIError(w, partial(ReasonConfigRegenFailed, err))
			return
		}
		writeAPI(w, map[string]any{"rotated": true})
	})
	return mux
}

// rulesBody answers a rules call with the network's id and name.
func (p *Plugin) rulesBody(ctx context.Context, id string, rules []policy.EgressRule) api.RulesResponse {
	p.ensureNetworkNames(ctx)
	items := make([]string, 0, len(rules))
	for _, r := range rules {
		items = append(items, policy.FormatRule(r))
	}
	return api.RulesResponse{Network: id, Name: p.NetworkName(id), Rules: items}
}

// denialFilter reads the query of GET /v1/denials, resolving the container
// and network references as Docker does.
func (p *Plugin) denialFilter(r *http.Request) (DenialFilter, error) {
	var f DenialFilter
	q := r.URL.Query()
	if ref := q.Get(api.DenialsContainer); ref != "" {
		id, found := p.ResolveContainer(r.Context(), ref)
		if !found {
			return f, rejected(ReasonContainerGone, "no such container: %s", ref)
		}
		f.ContainerID = id
	}
	if ref := q.Get(api.DenialsNetwork); ref != "" {
		id, err := p.ResolveNetwork(r.Context(), ref)
		if err != nil {
			return f, err
		}
		f.NetworkID = id
	}
	if s := q.Get(api.DenialsSince); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return f, rejected(ReasonInvalidRequest, "since %q: want an RFC 3339 time: %v", s, err)
		}
		f.Since = t
	}
	return f, nil
}

func decodeAPI(r *http.Request, v any) error {
	body, err := readBody(r)
	if err != nil {
		return rejected(ReasonInvalidRequest, "read request: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(body)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return rejected(ReasonInvalidRequest, "decode request: %v", err)
	}
	return nil
}

func writeAPI(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

func writeAPIError(w http.ResponseWriter, err error) {
	layer, reason := ReasonOf(err)
	status := http.StatusInternalServerError
	switch {
	case reason == "":
		layer, reason = LayerPartial, ReasonConfigRegenFailed
	case reason == ReasonNetworkNotFound || reason == ReasonRuleNotFound || reason == ReasonContainerGone:
		status = http.StatusNotFound
	case layer == LayerRejected && reason != ReasonStoreWriteFailed:
		status = http.StatusBadRequest
	}
	if errors.Is(err, queue.ErrClosed) {
		layer, reason, status = LayerNotRunning, ReasonNotRunning, http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(APIError{Message: err.Error(), Reason: reason, Layer: layer, Domain: ErrorDomain})
}

// rulesRequest decodes a rules change and resolves its network; on failure
// it has answered the error and ok is false.
func (p *Plugin) rulesRequest(w http.ResponseWriter, r *http.Request) (id string, body api.RulesRequest, ok bool) {
	if err := decodeAPI(r, &body); err != nil {
		writeAPIError(w, err)
		return "", body, false
	}
	id, err := p.ResolveNetwork(r.Context(), r.PathValue("net"))
	if err != nil {
		writeAPIError(w, err)
		return "", body, false
	}
	return id, body, true
}
