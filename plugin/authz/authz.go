// Package authz is clawker-fw's Docker authorization plugin
// (docker.authz/1.0). It validates clawker.* labels at container create and
// closes Docker-level escape hatches for containers on clawker-fw networks
// (invariant 8). It sits on every Docker API call, so it answers from the
// latest published snapshot and never waits on the plugin's action queue;
// calls it does not inspect are allowed at once.
//
// Decision order for an inspected call:
//  1. the admin override (CLAWKER_AUTHZ_OVERRIDE=true) allows, logged;
//  2. a body that is missing, truncated or unparseable is denied (older
//     engines forward oversized bodies empty; chunked bodies have bypassed
//     authz plugins before);
//  3. the call's own rules (container create, network create and connect,
//     exec, service create and update, plugin disable/remove) decide, with a
//     message saying what to do.
package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	pathpkg "path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/internal/decisionlog"
	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// Config configures the authorizer.
type Config struct {
	// Snapshot returns the latest published snapshot. Its network ids (the
	// plugin's own store) are what makes a network a clawker-fw network,
	// under whatever reference the plugin is installed.
	Snapshot func() *policy.Snapshot
	// Networks lists Docker's networks (every driver) as name -> id, to
	// place network names. Cached briefly.
	Networks func(ctx context.Context) (map[string]string, error)
	// NetworkDriver resolves a network reference as Docker does (full id,
	// name, id prefix; a manager's swarm networks too) to its driver's name
	// (found=false when there is no such network), for services: a swarm
	// network is in the plugin's store only once a task of it ran on this
	// node. nil: services are checked against the store alone.
	NetworkDriver func(ctx context.Context, ref string) (driver string, found bool, err error)
	// GlobalScope is set when the driver reports global scope
	// (CLAWKER_SCOPE=global): swarm networks then carry their clawker.*
	// options through Swarm, and they are validated at create.
	GlobalScope bool
	// VolumeOptions returns the driver options of an existing named volume
	// (found=false when there is none), for mount checks.
	VolumeOptions func(ctx context.Context, name string) (opts map[string]string, found bool, err error)
	// Container resolves a container reference as Docker does (full id,
	// then name, then unique id prefix), in any state, through Docker's
	// container list: never inspect, which blocks behind a concurrent start.
	Container func(ctx context.Context, ref string) (Container, bool, error)
	// Plugin resolves a plugin reference as Docker does (full id, name with
	// or without tag or registry, unique id prefix) to its id and name.
	Plugin func(ctx context.Context, ref string) (id, name string, found bool, err error)
	// SelfID is this plugin's own id ("" when it could not be read: then
	// every plugin disable/remove/set/upgrade is refused while the firewall
	// has networks).
	SelfID string
	// Records is authz's durable memory of containers (create host configs,
	// firewalled-for-life); nil keeps nothing.
	Records *Records
	// Override allows every call (logged): the explicit admin override.
	Override bool
	Log      *logrus.Entry
	// Record, when set, takes the decision of every inspected call (the
	// plugin's decisionlog.Hub); when nil, denials are logged as decision
	// lines and allowed calls at debug.
	Record func(decisionlog.Record)
}

// Authz answers Docker's authz calls.
type Authz struct {
	cfg Config
	log *logrus.Entry

	mu         sync.Mutex
	names      map[string]string
	namesAt    time.Time
	learned    map[string]string // name -> id seen in network create responses
	lastDenial string

	calls, inspected, denied atomic.Uint64
}

// Stats counts the calls answered since the plugin started.
type Stats struct {
	Calls      uint64 // AuthZReq calls
	Inspected  uint64 // calls whose body was checked
	Denied     uint64
	LastDenial string // the message of the latest denial
}

// Stats returns the counters; no calls at all means dockerd does not use
// the plugin for authz (not named in daemon.json).
func (a *Authz) Stats() Stats {
	a.mu.Lock()
	last := a.lastDenial
	a.mu.Unlock()
	return Stats{Calls: a.calls.Load(), Inspected: a.inspected.Load(), Denied: a.denied.Load(), LastDenial: last}
}

// Summary is Stats in one line for `clawker-fw status`.
func (s Stats) Summary() string {
	if s.Calls == 0 {
		return "no calls yet (not in daemon.json authorization-plugins?)"
	}
	out := fmt.Sprintf("%d calls, %d inspected, %d denied", s.Calls, s.Inspected, s.Denied)
	if s.LastDenial != "" {
		out += "; last denial: " + s.LastDenial
	}
	return out
}

// New returns an authorizer.
func New(cfg Config) *Authz {
	if cfg.Log == nil {
		cfg.Log = logrus.NewEntry(logrus.StandardLogger())
	}
	return &Authz{cfg: cfg, log: cfg.Log, learned: map[string]string{}}
}

// envelope is the part of Docker's authz request the plugin reads, in one
// pass. The bodies stay raw (base64 JSON strings) until a check needs them,
// so calls that are not inspected are answered from method and URI alone.
type envelope struct {
	RequestMethod      string          `json:"RequestMethod"`
	RequestURI         string          `json:"RequestUri"`
	RequestBody        json.RawMessage `json:"RequestBody"`
	ResponseStatusCode int             `json:"ResponseStatusCode"`
	ResponseBody       json.RawMessage `json:"ResponseBody"`
}

// head reads RequestMethod and RequestUri from the start of Docker's authz
// request without scanning the rest: dockerd writes them ahead of the
// bodies, and a response body (docker ps, inspect) can be megabytes. ok is
// false when they are not found that way; callers then decode it all.
func head(body []byte) (method, uri string, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return "", "", false
	}
	var gotMethod, gotURI bool
	for dec.More() && !(gotMethod && gotURI) {
		t, err := dec.Token()
		if err != nil {
			return "", "", false
		}
		var dst *string
		switch t {
		case "RequestMethod":
			dst, gotMethod = &method, true
		case "RequestUri":
			dst, gotURI = &uri, true
		case "User", "UserAuthNMethod":
			var skip string
			dst = &skip
		default:
			return "", "", false // something else first: not the layout this reads
		}
		if err := dec.Decode(dst); err != nil {
			return "", "", false
		}
	}
	return method, uri, gotMethod && gotURI
}

// decodeBytes decodes a raw JSON []byte field (a base64 string, or null).
func decodeBytes(raw json.RawMessage) ([]byte, error) {
	var b []byte
	if len(raw) == 0 {
		return nil, nil
	}
	err := json.Unmarshal(raw, &b)
	return b, err
}

// route returns the request's path without the query and without the API
// version prefix (/v1.41), unescaped and cleaned (//, ., ..), so that no
// spelling of an inspected path slips past the checks.
func route(uri string) string {
	path, _ := routeVersion(uri)
	return path
}

// routeVersion is route that also returns the API version the URI names
// ("1.23"; "" when none, which Docker serves at its current version).
func routeVersion(uri string) (path, version string) {
	path, _, _ = strings.Cut(uri, "?")
	if strings.Contains(path, "%") {
		if p, err := url.PathUnescape(path); err == nil {
			path = p
		}
	}
	if path != "" {
		path = pathpkg.Clean(path)
	}
	if rest, ok := strings.CutPrefix(path, "/v"); ok {
		i := 0
		for i < len(rest) && (rest[i] >= '0' && rest[i] <= '9' || rest[i] == '.') {
			i++
		}
		if i > 0 && (i == len(rest) || rest[i] == '/') {
			path, version = rest[i:], rest[:i]
		}
	}
	return path, version
}

func allow() authorization.Response { return authorization.Response{Allow: true} }

func deny(format string, args ...any) authorization.Response {
	return authorization.Response{Allow: false, Msg: "clawker-fw: " + fmt.Sprintf(format, args...)}
}

// AuthZReq decides a request (body is Docker's JSON authz request).
func (a *Authz) AuthZReq(body []byte) any {
	a.calls.Add(1)
	resp := a.authZReq(body)
	if !resp.Allow {
		a.denied.Add(1)
		a.mu.Lock()
		a.lastDenial = resp.Msg
		a.mu.Unlock()
	}
	return resp
}

func (a *Authz) authZReq(body []byte) authorization.Response {
	method, uri, ok := head(body)
	var env envelope
	if !ok {
		if err := json.Unmarshal(body, &env); err != nil {
			return deny("unreadable authorization request: %v", err)
		}
		method, uri = env.RequestMethod, env.RequestURI
	}
	path, version := routeVersion(uri)
	r := a.rule(method, path)
	if r.check == nil {
		return allow()
	}
	if ok {
		if err := json.Unmarshal(body, &env); err != nil {
			return deny("unreadable authorization request: %v", err)
		}
	}
	a.inspected.Add(1)
	reqBody, err := decodeBytes(env.RequestBody)
	if err != nil {
		return deny("unreadable authorization request: %v", err)
	}
	start := time.Now()
	resp := a.decide(apiCall{body: reqBody, path: path, version: version}, r)
	rec := decisionlog.Record{Source: decisionlog.SourceAuthz, Verdict: decisionlog.Allow, Protocol: "docker-api",
		Method: method, Path: path, DurationMS: time.Since(start).Milliseconds()}
	if !resp.Allow {
		rec.Verdict, rec.Reason = decisionlog.Deny, resp.Msg
	}
	if a.cfg.Record != nil {
		a.cfg.Record(rec)
		return resp
	}
	// Without a hub, allowed calls log at debug only: a line on the
	// plugin's stdout is relayed through dockerd's log while the API call
	// waits (measured: ~0.3 ms per inspected call on 2 cores, bench/authz).
	if !resp.Allow || a.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		l := a.log.WithFields(rec.Fields())
		if resp.Allow {
			l.Debug(decisionlog.Message)
		} else {
			l.Warn(decisionlog.Message)
		}
	}
	return resp
}

// apiCall is what a check reads of an inspected Docker API call.
type apiCall struct {
	body    []byte // the request body (JSON), if any
	path    string // without the version prefix
	version string // the API version in the URI, "" when none
}

// checkFn decides an inspected call.
type checkFn func(a *Authz, c apiCall) authorization.Response

// rule is how an inspected call is decided: its check, and whether the
// check needs the request body (then a missing or broken one is refused).
type rule struct {
	check    checkFn
	needBody bool
}

// rule returns the rule of a call; the zero rule (no check) allows it.
func (a *Authz) rule(method, path string) rule {
	container := strings.HasPrefix(path, "/containers/")
	switch {
	case method == "POST" && path == "/containers/create":
		return rule{(*Authz).checkCreate, true}
	case method == "POST" && path == "/networks/create":
		return rule{(*Authz).checkNetworkCreate, true}
	case method == "POST" && (path == "/services/create" || strings.HasPrefix(path, "/services/") && strings.HasSuffix(path, "/update")):
		return rule{(*Authz).checkService, true}
	case method == "POST" && strings.HasPrefix(path, "/networks/") && strings.HasSuffix(path, "/connect"):
		return rule{(*Authz).checkConnect, true}
	case method == "POST" && container && strings.HasSuffix(path, "/exec"):
		return rule{(*Authz).checkExec, true}
	case method == "POST" && container && strings.HasSuffix(path, "/update"):
		return rule{(*Authz).checkBodyOnly, true}
	case method == "POST" && container && strings.HasSuffix(path, "/start"):
		return rule{(*Authz).checkStart, false}
	case method == "POST" && strings.HasPrefix(path, "/plugins/") && pluginOp(path) != "":
		return rule{(*Authz).checkPlugin, false}
	case method == "DELETE" && strings.HasPrefix(path, "/plugins/"):
		return rule{(*Authz).checkPlugin, false}
	}
	return rule{}
}

func (a *Authz) decide(c apiCall, r rule) authorization.Response {
	if a.cfg.Override {
		a.log.WithField("path", c.path).Warn("authz override is on: allowing without checks")
		return allow()
	}
	if r.needBody {
		if len(c.body) == 0 {
			return deny("the request body was not forwarded to the authorization plugin (too large, or chunked); send a normal-sized JSON body")
		}
		if !json.Valid(c.body) {
			return deny("the request body is not valid JSON (truncated?); refusing to authorize what cannot be inspected")
		}
	}
	return r.check(a, c)
}

// HostConfigBody is the part of a container's host config the checks read.
type HostConfigBody struct {
	NetworkMode string   `json:"NetworkMode"`
	Privileged  bool     `json:"Privileged"`
	CapAdd      []string `json:"CapAdd"`
	Binds       []string `json:"Binds"`
	VolumesFrom []string `json:"VolumesFrom"`
	Mounts      []struct {
		Type          string `json:"Type"`
		Source        string `json:"Source"`
		VolumeOptions *struct {
			DriverConfig *struct {
				Name    string            `json:"Name"`
				Options map[string]string `json:"Options"`
			} `json:"DriverConfig"`
		} `json:"VolumeOptions"`
	} `json:"Mounts"`
	PidMode     string   `json:"PidMode"`
	SecurityOpt []string `json:"SecurityOpt"`
	// MaskedPaths and ReadonlyPaths are null unless set: the CLI sends them
	// empty for --security-opt systempaths=unconfined.
	MaskedPaths   []string `json:"MaskedPaths"`
	ReadonlyPaths []string `json:"ReadonlyPaths"`
	Devices       []struct {
		PathOnHost string `json:"PathOnHost"`
	} `json:"Devices"`
	DeviceCgroupRules []string `json:"DeviceCgroupRules"`
}

// createBody is the part of POST /containers/create the checks read,
// decoded the way dockerd decodes it (encoding/json, the same wrapper
// shape): host config fields at the top level are the deprecated spelling
// that dockerd still applies when there is no "HostConfig" object.
type createBody struct {
	Labels           map[string]string `json:"Labels"`
	Inner            *HostConfigBody   `json:"HostConfig"`
	*HostConfigBody                    // deprecated top-level fields
	NetworkingConfig struct {
		EndpointsConfig map[string]json.RawMessage `json:"EndpointsConfig"`
	} `json:"NetworkingConfig"`
}

// hostConfig returns the host config dockerd will use.
func (b *createBody) hostConfig() HostConfigBody {
	switch {
	case b.Inner != nil:
		return *b.Inner
	case b.HostConfigBody != nil:
		return *b.HostConfigBody
	}
	return HostConfigBody{}
}

// dangerousCaps change the container's own network stack or firewall, or are
// known ways out of a container (SYS_RAWIO, DAC_READ_SEARCH).
var dangerousCaps = map[string]bool{"NET_ADMIN": true, "SYS_ADMIN": true, "BPF": true, "ALL": true, "SYS_MODULE": true,
	"SYS_PTRACE": true, "SYS_RAWIO": true, "DAC_READ_SEARCH": true, "PERFMON": true}

func (a *Authz) checkCreate(c apiCall) authorization.Response {
	raw := c.body
	var body createBody
	if err := json.Unmarshal(raw, &body); err != nil {
		return deny("cannot parse the container create request: %v", err)
	}
	if resp := checkLabels(body.Labels); !resp.Allow {
		return resp
	}
	return a.checkHostConfig(body.hostConfig(), body.NetworkingConfig.EndpointsConfig, body.Labels)
}

// checkLabels refuses invalid clawker.* labels of a container, and labels
// whose rules need more listener ports than a container may use.
func checkLabels(labels map[string]string) authorization.Response {
	rules, err := policy.ParseLabels(labels, "")
	if err != nil {
		return deny("invalid label: %v. Fix the label (syntax: clawker.allow=[proto://]host[:port],...) and run again; nothing was created", err)
	}
	if err := model.CheckLimit(rules, model.MaxPortsPerContainer, "a container"); err != nil {
		return deny("label %v. Narrow the port ranges and run again; nothing was created", err)
	}
	return allow()
}

// unfirewalledWithLabels refuses a container that is given clawker.* labels
// but joins no clawker-fw network (host, the default bridge, none, a plain
// network, a plain container's namespace): nothing would enforce its labels,
// and nothing would say so. nets are the networks of the request (none: the
// default bridge).
func unfirewalledWithLabels(labels map[string]string, nets []string) authorization.Response {
	var keys []string
	for k := range labels {
		if policy.IsClawkerKey(k) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return allow()
	}
	sort.Strings(keys)
	var where []string
	for _, n := range nets {
		w := "network " + n
		if n == "bridge" || n == "default" {
			w = "the default bridge"
		}
		if !contains(where, w) {
			where = append(where, w)
		}
	}
	if len(where) == 0 {
		where = []string{"the default bridge"}
	}
	return deny("the container is given clawker labels (%s) but is on no clawker-fw network (%s): its labels protect nothing, no firewall applies to it. Run it with --network <a clawker-fw network>, or drop the clawker.* labels", strings.Join(keys, ", "), strings.Join(where, ", "))
}

// checkHostConfig applies invariant 8 to a container's host config (and the
// networks of its create request) when it is on a clawker-fw network.
func (a *Authz) checkHostConfig(hc HostConfigBody, endpoints map[string]json.RawMessage, labels map[string]string) authorization.Response {
	nets := []string{}
	if m := hc.NetworkMode; m != "" && m != "default" {
		nets = append(nets, m)
	}
	for n := range endpoints {
		if !contains(nets, n) {
			nets = append(nets, n)
		}
	}
	var fw []string
	for _, n := range nets {
		isFW, err := a.isFirewalled(n)
		if err != nil {
			return deny("%v", err)
		}
		if isFW {
			fw = append(fw, n)
		}
	}
	// --network container:X shares X's network namespace: when X is
	// firewalled (resolved through Docker, in any state) the new container
	// is inside the same firewall and gets the same checks.
	var self netns
	if ref, ok := strings.CutPrefix(hc.NetworkMode, "container:"); ok {
		ns, err := a.netnsOfRef(ref)
		if err != nil {
			return deny("%v", err)
		}
		self = ns
		if ns.fw != "" {
			fw = append(fw, fmt.Sprintf("of container %s (--network container:%s)", ref, ref))
		}
	} else if len(fw) > 0 {
		self.fw = fw[0]
	}
	if resp := a.checkPid(hc.PidMode, self); !resp.Allow {
		return resp
	}
	if len(fw) == 0 {
		return unfirewalledWithLabels(labels, nets)
	}
	return a.checkEscapes(hc, nets, fw)
}

// checkEscapes refuses the escape hatches of invariant 8 for a container on
// the clawker-fw networks fw (none: allowed) whose networks are nets.
func (a *Authz) checkEscapes(hc HostConfigBody, nets, fw []string) authorization.Response {
	if len(fw) == 0 {
		return allow()
	}
	if len(nets) > 1 {
		return deny("a container on the clawker-fw network %s cannot join other networks (%s): that would bypass the firewall; use only the firewalled network", fw[0], strings.Join(nets, ", "))
	}
	if hc.Privileged {
		return deny("--privileged is not allowed on the clawker-fw network %s: it would let the container change its own firewall; drop --privileged", fw[0])
	}
	for _, c := range hc.CapAdd {
		name := strings.TrimPrefix(strings.ToUpper(c), "CAP_")
		if dangerousCaps[name] {
			return deny("--cap-add %s is not allowed on the clawker-fw network %s: it would let the container bypass the firewall; drop it", c, fw[0])
		}
	}
	if hc.PidMode == "host" {
		return deny("--pid host is not allowed on the clawker-fw network %s: it exposes other processes' network namespaces; drop it", fw[0])
	}
	unmasked := hc.MaskedPaths != nil || hc.ReadonlyPaths != nil
	for _, o := range hc.SecurityOpt {
		unmasked = unmasked || strings.ReplaceAll(o, ":", "=") == "systempaths=unconfined"
	}
	if unmasked {
		return deny("--security-opt systempaths=unconfined (or custom MaskedPaths/ReadonlyPaths) is not allowed on the clawker-fw network %s: it unmasks /proc and /sys, a way out of the container; drop it", fw[0])
	}
	for _, d := range hc.Devices {
		if hostDevice(d.PathOnHost) {
			return deny("--device %s is not allowed on the clawker-fw network %s: raw disk or memory access is a way out of the container; drop it", d.PathOnHost, fw[0])
		}
	}
	for _, r := range hc.DeviceCgroupRules {
		if t := strings.TrimSpace(r); strings.HasPrefix(t, "a") || strings.HasPrefix(t, "b") {
			return deny("--device-cgroup-rule %q is not allowed on the clawker-fw network %s: it opens block devices, a way out of the container; drop it", r, fw[0])
		}
	}
	if len(hc.VolumesFrom) > 0 {
		return deny("--volumes-from is not allowed on the clawker-fw network %s: the other container's mounts are not checked (they could hold the Docker socket); mount the volumes directly", fw[0])
	}
	mountDenied := func(what string) authorization.Response {
		return deny("mounting the Docker socket, or another path that controls Docker or the firewall (%s), is not allowed on the clawker-fw network %s; remove the mount", what, fw[0])
	}
	// volumeDenied checks an existing named volume (its local driver may
	// bind a host path).
	volumeDenied := func(name, what string) (authorization.Response, bool) {
		bad, err := a.volumeBindsControl(name)
		switch {
		case err != nil:
			return deny("cannot check volume %s: %v; retry", name, err), true
		case bad != "":
			return mountDenied(what + "volume " + name + " binds " + bad), true
		}
		return authorization.Response{}, false
	}
	for _, b := range hc.Binds {
		src := strings.SplitN(b, ":", 2)[0]
		if !strings.HasPrefix(src, "/") { // a named volume
			if resp, bad := volumeDenied(src, b+": "); bad {
				return resp
			}
			continue
		}
		if controlPath(src) {
			return mountDenied(b)
		}
	}
	for _, m := range hc.Mounts {
		switch m.Type {
		case "bind":
			if controlPath(m.Source) {
				return mountDenied(m.Source)
			}
		case "volume", "":
			if vo := m.VolumeOptions; vo != nil && vo.DriverConfig != nil {
				if dev := bindDevice(vo.DriverConfig.Options); dev != "" && controlPath(dev) {
					return mountDenied("a volume binding " + dev)
				}
			}
			if m.Source != "" {
				if resp, bad := volumeDenied(m.Source, ""); bad {
					return resp
				}
			}
		}
	}
	return allow()
}

// checkStart re-checks a container at every start, because what it shares
// is resolved by Docker again then (by id, name or id prefix, after renames
// and in any state) and its networks may have changed since create:
//  1. the container is resolved through Docker's container list;
//  2. a start with an API version below 1.24 is refused for a firewalled
//     container: dockerd still applies a host config sent with such a start
//     (Privileged, CapAdd, NetworkMode, ...) over the one create checked,
//     and a chunked start body never reaches the authz plugin;
//  3. a container firewalled for its life, or on a clawker-fw network, is
//     refused while it is also attached to a network that is not one
//     (connected while authz was off);
//  4. the host config checked at create (authz's record) is checked again
//     against the namespaces it joins now: the escapes when its network
//     namespace is firewalled, and the PID rule. A container that shares a
//     firewalled namespace but whose create authz never saw (created while
//     authz was off) is refused: its escapes cannot be seen.
func (a *Authz) checkStart(c apiCall) authorization.Response {
	ref := strings.TrimSuffix(strings.TrimPrefix(c.path, "/containers/"), "/start")
	ctr, found, err := a.container(ref)
	if err != nil {
		return deny("%v", err)
	}
	if !found {
		return allow() // Docker answers "no such container"
	}
	self, err := a.netnsOf(ctr, 0)
	if err != nil {
		return deny("%v", err)
	}
	if self.fw != "" && c.version != "" && versionBelow(c.version, 1, 24) {
		return deny("starting container %s with Docker API %s is not allowed on a clawker-fw network: before API 1.24 a start may replace the container's host config; use a current Docker client", ref, c.version)
	}
	var nets, fw, plain []string
	for name, id := range ctr.Networks {
		nets = append(nets, name)
		isFW, err := a.networkFirewalled(name, id)
		if err != nil {
			return deny("%v", err)
		}
		if isFW {
			fw = append(fw, name)
		} else {
			plain = append(plain, name)
		}
	}
	rec, hasRec := a.cfg.Records.Get(ctr.ID)
	if len(plain) > 0 && (rec.Firewalled != "" || len(fw) > 0) {
		why := rec.Firewalled
		if why == "" {
			why = "on the clawker-fw network " + fw[0]
		}
		return deny("container %s is firewalled for its life (%s) and cannot start attached to the network %s, which is not a clawker-fw network: that would bypass the firewall; disconnect it (docker network disconnect %s %s)", ref, why, plain[0], plain[0], ref)
	}
	if !hasRec || rec.HostConfig == nil {
		if self.fw != "" && strings.HasPrefix(ctr.NetworkMode, "container:") {
			return deny("container %s shares the network namespace %s, but its host config was never checked (created while authz was off): recreate it with authz on", ref, self.fw)
		}
		return allow()
	}
	hc := *rec.HostConfig
	if resp := a.checkPid(hc.PidMode, self); !resp.Allow {
		return resp
	}
	if self.fw != "" && len(fw) == 0 {
		fw = append(fw, self.fw)
	}
	return a.checkEscapes(hc, nets, fw)
}

// dockerTimeout bounds the Docker API calls a decision makes.
const dockerTimeout = 2 * time.Second

func dockerCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), dockerTimeout)
}

// versionBelow reports whether API version v ("1.23") is below major.minor;
// an unparsable version counts as below.
func versionBelow(v string, major, minor int) bool {
	maj, min, ok := strings.Cut(v, ".")
	x, err1 := strconv.Atoi(maj)
	y, err2 := strconv.Atoi(min)
	if !ok || err1 != nil || err2 != nil {
		return true
	}
	return x < major || (x == major && y < minor)
}

// hostDevices are device path patterns that give raw disk or memory access.
var hostDevices = []string{"/dev/sd", "/dev/vd", "/dev/xvd", "/dev/hd", "/dev/nvme", "/dev/mmcblk", "/dev/dm-",
	"/dev/mapper/", "/dev/loop", "/dev/md", "/dev/nbd", "/dev/disk/", "/dev/mem", "/dev/kmem", "/dev/port"}

// hostDevice reports whether a --device host path is a disk or memory device.
func hostDevice(p string) bool {
	p = pathpkg.Clean("/" + p)
	for _, d := range hostDevices {
		if strings.HasPrefix(p, d) {
			return true
		}
	}
	return false
}

// bindDevice returns the host path a local-driver volume's options bind
// (device=PATH with o=bind or type=none), or "".
func bindDevice(opts map[string]string) string {
	dev := opts["device"]
	if dev == "" || !(strings.Contains(opts["o"], "bind") || opts["type"] == "none") {
		return ""
	}
	return dev
}

// volumeBindsControl returns the control path an existing named volume
// binds ("" when it binds none, or does not exist yet: Docker then creates a
// plain volume).
func (a *Authz) volumeBindsControl(name string) (string, error) {
	if a.cfg.VolumeOptions == nil {
		return "", nil
	}
	ctx, cancel := dockerCtx()
	defer cancel()
	opts, found, err := a.cfg.VolumeOptions(ctx, name)
	if err != nil || !found {
		return "", err
	}
	if dev := bindDevice(opts); dev != "" && controlPath(dev) {
		return dev, nil
	}
	return "", nil
}

// controlPaths are host paths whose mount gives a container control over
// Docker or the firewall: the Docker and containerd API sockets, Docker's run
// directory (managed plugin sockets, the firewall's driver socket among
// them), Docker's data root, the firewall's state (admin socket) and its BPF
// pins.
var controlPaths = []string{
	"/var/run/docker.sock", "/run/docker.sock", "/run/docker", "/var/run/docker",
	"/run/containerd", "/var/run/containerd", "/var/lib/docker", "/var/lib/containerd",
	"/var/lib/clawker-fw", "/sys/fs/bpf",
}

// controlPath reports whether mounting host path src exposes a control path:
// src is one, lies inside one, or contains one.
func controlPath(src string) bool {
	src = pathpkg.Clean("/" + src)
	if src == "/" {
		return true
	}
	for _, c := range controlPaths {
		if src == c || strings.HasPrefix(c, src+"/") || strings.HasPrefix(src, c+"/") {
			return true
		}
	}
	return strings.HasSuffix(src, "docker.sock") || strings.HasSuffix(src, "containerd.sock")
}

// checkConnect keeps a firewalled container firewalled for its life and a
// clawker-fw network the only network of its containers:
//  1. the container is resolved through Docker's container list (running,
//     created or stopped; by id, name or id prefix);
//  2. a container that is, or ever was, firewalled (authz's record, the
//     snapshot, or a clawker-fw network among its networks) cannot join a
//     network that is not a clawker-fw network;
//  3. a container joining a clawker-fw network must have no other network,
//     and share no PID namespace with another network namespace.
func (a *Authz) checkConnect(c apiCall) authorization.Response {
	raw, path := c.body, c.path
	var body struct{ Container string }
	if err := json.Unmarshal(raw, &body); err != nil || body.Container == "" {
		return deny("cannot parse the network connect request")
	}
	target := strings.TrimSuffix(strings.TrimPrefix(path, "/networks/"), "/connect")
	ctr, found, err := a.container(body.Container)
	if err != nil {
		return deny("%v", err)
	}
	if !found {
		return allow() // Docker answers "no such container"
	}
	targetFW, err := a.isFirewalled(target)
	if err != nil {
		return deny("%v", err)
	}
	if !targetFW {
		fw, err := a.firewalledHow(ctr)
		if err != nil {
			return deny("%v", err)
		}
		if fw != "" {
			return deny("container %s is firewalled (on the clawker-fw network %s) and cannot join another network, running or stopped, for its life: that would bypass the firewall", body.Container, fw)
		}
		return allow()
	}
	if others := otherNetworks(ctr, target); len(others) > 0 {
		return deny("container %s is already on other networks (%s); a clawker-fw network must be its only network: create it with --network %s", body.Container, strings.Join(others, ", "), target)
	}
	if other := a.pidSharers(ctr); other != "" {
		return deny("container %s shares a PID namespace with container %s, which is in another network namespace: a process there could ptrace the firewalled one's processes (or the reverse) and bypass the firewall; recreate it without --pid container:", body.Container, other)
	}
	return allow()
}

func (a *Authz) checkExec(c apiCall) authorization.Response {
	raw, path := c.body, c.path
	var body struct{ Privileged bool }
	if err := json.Unmarshal(raw, &body); err != nil {
		return deny("cannot parse the exec request")
	}
	if !body.Privileged {
		return allow()
	}
	ref := strings.TrimSuffix(strings.TrimPrefix(path, "/containers/"), "/exec")
	ctr, found, err := a.container(ref)
	if err != nil {
		return deny("%v", err)
	}
	if !found {
		return allow()
	}
	ns, err := a.netnsOf(ctr, 0)
	if err != nil {
		return deny("%v", err)
	}
	if ns.fw != "" {
		return deny("docker exec --privileged is not allowed in container %s: it is on the clawker-fw network %s", ref, ns.fw)
	}
	return allow()
}

func (a *Authz) checkBodyOnly(apiCall) authorization.Response {
	return allow()
}

// pluginOp returns the plugin operation a POST /plugins/{name}/{op} path
// names when it could take the firewall down or replace it ("" for others:
// enable, push, and the collection's pull/create/privileges).
func pluginOp(path string) string {
	for _, op := range []string{"disable", "set", "upgrade"} {
		if strings.HasSuffix(path, "/"+op) && len(path) > len("/plugins//"+op) {
			return op
		}
	}
	return ""
}

// checkPlugin protects the firewall plugin itself while it has networks:
// the request's plugin reference (id, id prefix, name with or without tag,
// docker.io/library/...) is resolved through Docker, as Docker resolves it,
// and its id compared with the plugin's own id. An unknown own id refuses
// every plugin's disable, removal, set and upgrade (fail closed).
func (a *Authz) checkPlugin(c apiCall) authorization.Response {
	op := pluginOp(c.path)
	name := strings.TrimPrefix(c.path, "/plugins/")
	if op == "" {
		op = "remove"
	} else {
		name = strings.TrimSuffix(name, "/"+op)
	}
	snap := a.cfg.Snapshot()
	if snap == nil || len(snap.Networks) == 0 {
		return allow()
	}
	if a.cfg.SelfID == "" || a.cfg.Plugin == nil {
		return deny("the firewall plugin cannot tell its own plugin id, so it refuses to %s any plugin (%s) while it has %d network(s): remove them first (docker network rm), or set CLAWKER_AUTHZ_OVERRIDE=true", op, name, len(snap.Networks))
	}
	ctx, cancel := dockerCtx()
	defer cancel()
	id, pname, found, err := a.cfg.Plugin(ctx, name)
	if err != nil {
		return deny("cannot resolve plugin %q through Docker (%v); retry", name, err)
	}
	if !found || id != a.cfg.SelfID {
		return allow()
	}
	return deny("the firewall plugin %s (%s, id %s) still has %d network(s): remove them first (docker network rm), or set CLAWKER_AUTHZ_OVERRIDE=true; and turn authz off in daemon.json before disabling the plugin", pname, name, id[:min(12, len(id))], len(snap.Networks))
}

// AuthZRes learns network names from network create responses and records
// every created container's host config (and whether it is firewalled) for
// the checks at start. It allows every response except a container create
// that could not be recorded: the container exists then, but a start would
// not see what it shares, so the client is told to remove it.
func (a *Authz) AuthZRes(body []byte) any {
	if method, uri, ok := head(body); ok && (method != "POST" || !recordedRoute(route(uri))) {
		return allow()
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil || env.RequestMethod != "POST" || env.ResponseStatusCode/100 != 2 {
		return allow()
	}
	reqBody, err1 := decodeBytes(env.RequestBody)
	respBody, err2 := decodeBytes(env.ResponseBody)
	var out struct {
		ID string `json:"Id"`
	}
	if err1 != nil || err2 != nil || json.Unmarshal(respBody, &out) != nil || out.ID == "" {
		return allow()
	}
	switch route(env.RequestURI) {
	case "/networks/create":
		var in struct{ Name string }
		if json.Unmarshal(reqBody, &in) == nil && in.Name != "" {
			a.mu.Lock()
			a.learned[in.Name] = out.ID
			a.mu.Unlock()
		}
	case "/containers/create":
		if err := a.recordCreate(reqBody, out.ID); err != nil {
			a.log.WithError(err).WithField("container", out.ID[:min(12, len(out.ID))]).Error("authz could not record a created container")
			return deny("container %s was created but authz could not record it (%v): its namespaces could not be checked at start; remove it (docker rm %s) and retry", out.ID[:min(12, len(out.ID))], err, out.ID[:min(12, len(out.ID))])
		}
	}
	return allow()
}

func recordedRoute(path string) bool {
	return path == "/networks/create" || path == "/containers/create"
}

// recordCreate records a created container's host config, and whether it
// was created firewalled (on a clawker-fw network, or in a firewalled
// container's network namespace).
func (a *Authz) recordCreate(raw []byte, id string) error {
	if a.cfg.Records == nil {
		return nil
	}
	var body createBody
	if err := json.Unmarshal(raw, &body); err != nil {
		return fmt.Errorf("parse the create request: %w", err)
	}
	hc := body.hostConfig()
	// Only the clawker labels given here carry rules for the container
	// (never those Docker merges in from its image): remember exactly them.
	labels := map[string]string{}
	for k, v := range body.Labels {
		if policy.IsClawkerKey(k) {
			labels[k] = v
		}
	}
	// dockerd stores a shared namespace's container by id when it exists at
	// create (moby adaptSharedNamespaceContainer), so a later rename does
	// not change what it joins: record the same.
	for _, mode := range []*string{&hc.PidMode, &hc.NetworkMode} {
		if ref, ok := strings.CutPrefix(*mode, "container:"); ok {
			c, found, err := a.container(ref)
			if err != nil {
				return err
			}
			if found {
				*mode = "container:" + c.ID
			}
		}
	}
	fw := ""
	if ref, ok := strings.CutPrefix(hc.NetworkMode, "container:"); ok {
		ns, err := a.netnsOfRef(ref)
		if err != nil {
			return err
		}
		if ns.fw != "" {
			fw = "created in the network namespace of container " + ref
		}
	} else {
		nets := []string{hc.NetworkMode}
		for n := range body.NetworkingConfig.EndpointsConfig {
			nets = append(nets, n)
		}
		for _, n := range nets {
			isFW, err := a.isFirewalled(n)
			if err != nil {
				return err
			}
			if isFW {
				fw = "created on the clawker-fw network " + n
				break
			}
		}
	}
	return a.cfg.Records.Created(id, hc, labels, fw)
}

// isFirewalled reports whether a network reference is a clawker-fw network:
// one whose id is in the plugin's store (the snapshot), whatever driver
// name the plugin is installed under. The reference is resolved as Docker
// resolves it: full id, then name, then id prefix (any prefix of a store id
// counts, failing closed on ambiguity). It fails closed: when a name must be
// placed and Docker's network list cannot be read, it says so instead of
// guessing "no".
func (a *Authz) isFirewalled(ref string) (bool, error) {
	switch ref {
	case "", "bridge", "host", "none", "default":
		return false, nil
	}
	if strings.HasPrefix(ref, "container:") {
		return false, nil // shares another container's netns: checked by the callers
	}
	if a.ownNetwork(ref) {
		return true, nil
	}
	id, known, err := a.networkID(ref)
	if known {
		return a.ownNetwork(id), nil
	}
	if snap := a.cfg.Snapshot(); snap != nil {
		for sid := range snap.Networks {
			if strings.HasPrefix(sid, ref) {
				return true, nil
			}
		}
	}
	if err != nil {
		return false, fmt.Errorf("cannot tell whether network %q is a clawker-fw network (listing Docker's networks failed: %v); retry", ref, err)
	}
	return false, nil
}

// ownNetwork is the one test of "is this network ours": its id is in the
// plugin's store (the served snapshot), whatever driver name it was created
// with.
func (a *Authz) ownNetwork(id string) bool {
	snap := a.cfg.Snapshot()
	return snap != nil && snap.Networks[id] != nil
}

// networkID places a network name through the names learned from create
// responses and Docker's network list (cached 2 s, and read again when the
// name is not in it).
func (a *Authz) networkID(name string) (id string, known bool, err error) {
	a.mu.Lock()
	id, known = a.learned[name]
	if !known {
		id, known = a.names[name]
	}
	age := time.Since(a.namesAt)
	a.mu.Unlock()
	if (known && age < 2*time.Second) || a.cfg.Networks == nil || (!known && age < 100*time.Millisecond) {
		return id, known, nil
	}
	ctx, cancel := dockerCtx()
	defer cancel()
	n, err := a.cfg.Networks(ctx)
	if err != nil {
		a.log.WithError(err).Warn("list Docker's networks")
		return "", false, err
	}
	a.mu.Lock()
	a.names, a.namesAt = n, time.Now()
	a.mu.Unlock()
	id, known = n[name]
	return id, known, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
