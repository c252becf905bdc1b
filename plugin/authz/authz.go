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
//  3. the call's own rules (container create, network connect, exec,
//     plugin disable/remove) decide, with a message saying what to do.
package authz

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	pathpkg "path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/docker/go-plugins-helpers/authorization"
	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/model"
)

// Config configures the authorizer.
type Config struct {
	// Snapshot returns the latest published snapshot.
	Snapshot func() *policy.Snapshot
	// Networks lists clawker-fw networks as name -> id (Docker's network
	// list; names are not sent to the driver). Cached briefly.
	Networks func(ctx context.Context) (map[string]string, error)
	// VolumeOptions returns the driver options of an existing named volume
	// (found=false when there is none), for mount checks.
	VolumeOptions func(ctx context.Context, name string) (opts map[string]string, found bool, err error)
	// ContainerNetworks returns the networks (ids) a running container is
	// attached to, for network connect checks.
	ContainerNetworks func(ctx context.Context, ref string) ([]string, error)
	// PluginNames are the names the firewall plugin is known by
	// (default clawker-fw, clawker-fw:latest).
	PluginNames []string
	// Override allows every call (logged): the explicit admin override.
	Override bool
	Log      *logrus.Entry
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
	if len(cfg.PluginNames) == 0 {
		cfg.PluginNames = []string{"clawker-fw", "clawker-fw:latest"}
	}
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
	// Allowed calls log at debug only: a line on the plugin's stdout is
	// relayed through dockerd's log while the API call waits (measured:
	// ~0.3 ms per inspected call on 2 cores, bench/authz).
	if !resp.Allow || a.log.Logger.IsLevelEnabled(logrus.DebugLevel) {
		entry := a.log.WithField("method", method).WithField("path", path).WithField("allowed", resp.Allow).
			WithField("took_us", time.Since(start).Microseconds())
		if resp.Allow {
			entry.Debug("authz decision")
		} else {
			entry.WithField("reason", resp.Msg).Warn("authz decision")
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
	case method == "POST" && strings.HasPrefix(path, "/networks/") && strings.HasSuffix(path, "/connect"):
		return rule{(*Authz).checkConnect, true}
	case method == "POST" && container && strings.HasSuffix(path, "/exec"):
		return rule{(*Authz).checkExec, true}
	case method == "POST" && container && strings.HasSuffix(path, "/update"):
		return rule{(*Authz).checkBodyOnly, true}
	case method == "POST" && container && strings.HasSuffix(path, "/start"):
		return rule{(*Authz).checkStart, false}
	case (method == "POST" && strings.HasPrefix(path, "/plugins/") && strings.HasSuffix(path, "/disable")) ||
		(method == "DELETE" && strings.HasPrefix(path, "/plugins/")):
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
	rules, err := policy.ParseLabels(body.Labels, "")
	if err != nil {
		return deny("invalid label: %v. Fix the label (syntax: clawker.allow=[proto://]host[:port],...) and run again; nothing was created", err)
	}
	if err := model.CheckLimit(rules, model.MaxPortsPerContainer, "a container"); err != nil {
		return deny("label %v. Narrow the port ranges and run again; nothing was created", err)
	}
	return a.checkHostConfig(body.hostConfig(), body.NetworkingConfig.EndpointsConfig)
}

// checkHostConfig applies invariant 8 to a container's host config (and the
// networks of its create request) when it is on a clawker-fw network.
func (a *Authz) checkHostConfig(hc HostConfigBody, endpoints map[string]json.RawMessage) authorization.Response {
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
	// --network container:X shares X's network namespace: when X is on a
	// clawker-fw network the new container is inside the same firewall and
	// gets the same checks.
	if ref, ok := strings.CutPrefix(hc.NetworkMode, "container:"); ok && a.onFirewalled(ref) {
		fw = append(fw, fmt.Sprintf("of container %s (--network container:%s)", ref, ref))
	}
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

// checkStart refuses starting a clawker-fw container with an API version
// below 1.24: dockerd still applies a host config sent with such a start
// (Privileged, CapAdd, NetworkMode, ...) over the one create checked, and a
// chunked start body never reaches the authz plugin. Current clients (and
// URIs without a version) cannot do that and are allowed.
func (a *Authz) checkStart(c apiCall) authorization.Response {
	if c.version == "" || !versionBelow(c.version, 1, 24) {
		return allow()
	}
	ref := strings.TrimSuffix(strings.TrimPrefix(c.path, "/containers/"), "/start")
	onFW := a.onFirewalled(ref)
	if !onFW && a.cfg.ContainerNetworks != nil {
		ctx, cancel := dockerCtx()
		defer cancel()
		nets, err := a.cfg.ContainerNetworks(ctx, ref)
		if err != nil {
			return deny("cannot check container %s's networks for a start with API %s: %v; use a current Docker client", ref, c.version, err)
		}
		n, err := a.firstFirewalled(nets, "")
		if err != nil {
			return deny("%v", err)
		}
		onFW = n != ""
	}
	if onFW {
		return deny("starting container %s with Docker API %s is not allowed on a clawker-fw network: before API 1.24 a start may replace the container's host config; use a current Docker client", ref, c.version)
	}
	return allow()
}

// firstFirewalled returns the first of nets (other than skip) that is a
// clawker-fw network, or "".
func (a *Authz) firstFirewalled(nets []string, skip string) (string, error) {
	for _, n := range nets {
		if n == skip {
			continue
		}
		isFW, err := a.isFirewalled(n)
		if err != nil || isFW {
			return n, err
		}
	}
	return "", nil
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

func (a *Authz) checkConnect(c apiCall) authorization.Response {
	raw, path := c.body, c.path
	var body struct{ Container string }
	if err := json.Unmarshal(raw, &body); err != nil || body.Container == "" {
		return deny("cannot parse the network connect request")
	}
	target := strings.TrimSuffix(strings.TrimPrefix(path, "/networks/"), "/connect")
	if a.onFirewalled(body.Container) {
		return deny("container %s is on a clawker-fw network and cannot join another network: that would bypass the firewall", body.Container)
	}
	if a.cfg.ContainerNetworks == nil {
		return allow()
	}
	// A container that is created (or stopped) on a clawker-fw network has
	// no endpoint in the snapshot, but Docker attaches every network it is
	// connected to at start: ask Docker for its networks.
	ctx, cancel := dockerCtx()
	defer cancel()
	nets, err := a.cfg.ContainerNetworks(ctx, body.Container)
	if err == nil {
		n, ferr := a.firstFirewalled(nets, target)
		if ferr != nil {
			return deny("%v", ferr)
		}
		if n != "" {
			return deny("container %s is attached to the clawker-fw network %s and cannot join another network: that would bypass the firewall", body.Container, n)
		}
	}
	targetFW, ferr := a.isFirewalled(target)
	if ferr != nil {
		return deny("%v", ferr)
	}
	if targetFW {
		if err != nil {
			return deny("cannot check container %s's networks: %v", body.Container, err)
		}
		if len(nets) > 0 {
			return deny("container %s is already on other networks (%s); a clawker-fw network must be its only network: create it with --network %s", body.Container, strings.Join(nets, ", "), target)
		}
	}
	return allow()
}

func (a *Authz) checkExec(c apiCall) authorization.Response {
	raw, path := c.body, c.path
	var body struct{ Privileged bool }
	if err := json.Unmarshal(raw, &body); err != nil {
		return deny("cannot parse the exec request")
	}
	ref := strings.TrimSuffix(strings.TrimPrefix(path, "/containers/"), "/exec")
	if body.Privileged && a.onFirewalled(ref) {
		return deny("docker exec --privileged is not allowed in container %s on a clawker-fw network", ref)
	}
	return allow()
}

func (a *Authz) checkBodyOnly(apiCall) authorization.Response {
	return allow()
}

func (a *Authz) checkPlugin(c apiCall) authorization.Response {
	path := c.path
	name := strings.TrimPrefix(path, "/plugins/")
	name = strings.TrimSuffix(name, "/disable")
	if !contains(a.cfg.PluginNames, name) {
		return allow()
	}
	snap := a.cfg.Snapshot()
	if snap != nil && len(snap.Networks) > 0 {
		return deny("the firewall plugin %s still has %d network(s): remove them first (docker network rm), or set CLAWKER_AUTHZ_OVERRIDE=true; and turn authz off in daemon.json before disabling the plugin", name, len(snap.Networks))
	}
	return allow()
}

// AuthZRes allows every response; it learns network names from network
// create responses.
func (a *Authz) AuthZRes(body []byte) any {
	if method, uri, ok := head(body); ok && (method != "POST" || route(uri) != "/networks/create") {
		return allow()
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return allow()
	}
	if env.RequestMethod != "POST" || route(env.RequestURI) != "/networks/create" || env.ResponseStatusCode/100 != 2 {
		return allow()
	}
	reqBody, err1 := decodeBytes(env.RequestBody)
	respBody, err2 := decodeBytes(env.ResponseBody)
	var in struct{ Name, Driver string }
	var out struct {
		ID string `json:"Id"`
	}
	if err1 == nil && err2 == nil && json.Unmarshal(reqBody, &in) == nil && json.Unmarshal(respBody, &out) == nil &&
		strings.HasPrefix(in.Driver, "clawker-fw") && out.ID != "" {
		a.mu.Lock()
		a.learned[in.Name] = out.ID
		a.mu.Unlock()
	}
	return allow()
}

// isFirewalled reports whether a network reference (name, id or id prefix:
// Docker accepts any unique prefix) is a clawker-fw network. It fails
// closed: when Docker's network list is needed and cannot be read, it says
// so instead of guessing "no".
func (a *Authz) isFirewalled(ref string) (bool, error) {
	switch ref {
	case "", "bridge", "host", "none", "default":
		return false, nil
	}
	if strings.HasPrefix(ref, "container:") {
		return false, nil // shares another container's netns: covered by netns enrollment
	}
	if snap := a.cfg.Snapshot(); snap != nil {
		for id := range snap.Networks {
			if strings.HasPrefix(id, ref) {
				return true, nil
			}
		}
	}
	a.mu.Lock()
	if id, ok := a.learned[ref]; ok {
		a.mu.Unlock()
		return id != "", nil
	}
	fresh := time.Since(a.namesAt) < 2*time.Second
	names := a.names
	a.mu.Unlock()
	if !fresh && a.cfg.Networks != nil {
		ctx, cancel := dockerCtx()
		defer cancel()
		n, err := a.cfg.Networks(ctx)
		if err != nil {
			a.log.WithError(err).Warn("list clawker-fw networks")
			return false, fmt.Errorf("cannot tell whether network %q is a clawker-fw network (listing Docker's networks failed: %v); retry", ref, err)
		}
		a.mu.Lock()
		a.names, a.namesAt = n, time.Now()
		names = n
		a.mu.Unlock()
	}
	if _, ok := names[ref]; ok {
		return true, nil
	}
	for _, id := range names {
		if strings.HasPrefix(id, ref) {
			return true, nil
		}
	}
	return false, nil
}

// onFirewalled reports whether a container (name or id) is on a clawker-fw
// network according to the snapshot.
func (a *Authz) onFirewalled(ref string) bool {
	snap := a.cfg.Snapshot()
	if snap == nil {
		return false
	}
	ref = strings.TrimPrefix(ref, "/")
	if ref == "" {
		return false
	}
	for _, ep := range snap.Endpoints {
		if ep.ContainerID == "" {
			continue
		}
		// Docker accepts any unique id prefix.
		if ep.ContainerName == ref || strings.HasPrefix(ep.ContainerID, ref) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
