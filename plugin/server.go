package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/sirupsen/logrus"
)

// manifest declares both plugin interfaces served on the one socket.
const manifest = `{"Implements": ["NetworkDriver", "authz"]}`

const genericOptions = "com.docker.network.generic"

// Authorizer answers Docker's authz calls (nil: allow everything).
type Authorizer interface {
	AuthZReq(body []byte) any
	AuthZRes(body []byte) any
}

// Handler returns the plugin socket's HTTP handler: the network driver
// (docker.networkdriver/1.0) and, when az is set, authz (docker.authz/1.0).
// Handlers only decode, call the core and encode; errors travel as
// {"Err": "..."} which Docker shows to the user.
func Handler(p *Plugin, az Authorizer, log *logrus.Entry) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/Plugin.Activate", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.1+json")
		fmt.Fprintln(w, manifest)
	})
	empty := func(req *struct{}) (any, error) { return struct{}{}, nil }
	route(mux, log, "/NetworkDriver.GetCapabilities", func(*struct{}) (any, error) {
		p.EngineRegistered()
		// Connectivity stays local in either scope: each node's bridge is
		// its own (tasks on two nodes do not reach each other through it),
		// and moby joins a swarm network to its cluster gossip (service
		// records, VIP load balancing) only when the driver reports global
		// connectivity (libnetwork's driverIsMultihost).
		return network.CapabilitiesResponse{Scope: p.Scope(), ConnectivityScope: network.LocalScope}, nil
	})
	route(mux, log, "/NetworkDriver.AllocateNetwork", func(req *network.AllocateNetworkRequest) (any, error) {
		if len(req.IPv6Data) > 0 {
			return nil, fmt.Errorf("clawker-fw does not support IPv6 networks yet: create the network without --ipv6")
		}
		opts, err := p.AllocateNetwork(req.NetworkID, req.Options)
		if err != nil {
			return nil, err
		}
		return network.AllocateNetworkResponse{Options: opts}, nil
	})
	route(mux, log, "/NetworkDriver.CreateNetwork", func(req *network.CreateNetworkRequest) (any, error) {
		if len(req.IPv4Data) == 0 || req.IPv4Data[0] == nil {
			return nil, fmt.Errorf("clawker-fw needs an IPv4 subnet (docker network create --subnet ...)")
		}
		if len(req.IPv6Data) > 0 {
			return nil, fmt.Errorf("clawker-fw does not support IPv6 networks yet: create the network without --ipv6")
		}
		opts, err := genericOpts(req.Options)
		if err != nil {
			return nil, err
		}
		return struct{}{}, p.CreateNetwork(NetworkRequest{ID: req.NetworkID, Options: opts, Pool: req.IPv4Data[0].Pool, Gateway: req.IPv4Data[0].Gateway})
	})
	route(mux, log, "/NetworkDriver.DeleteNetwork", func(req *network.DeleteNetworkRequest) (any, error) {
		return struct{}{}, p.DeleteNetwork(req.NetworkID)
	})
	route(mux, log, "/NetworkDriver.CreateEndpoint", func(req *network.CreateEndpointRequest) (any, error) {
		p.awaitEngine("CreateEndpoint")
		if req.Interface == nil || req.Interface.Address == "" {
			return nil, fmt.Errorf("create endpoint: Docker gave no IPv4 address")
		}
		mac, err := p.CreateEndpoint(EndpointRequest{NetworkID: req.NetworkID, EndpointID: req.EndpointID,
			Address: req.Interface.Address, MacAddress: req.Interface.MacAddress})
		if err != nil {
			return nil, err
		}
		resp := network.CreateEndpointResponse{}
		if mac != "" {
			resp.Interface = &network.EndpointInterface{MacAddress: mac}
		}
		return resp, nil
	})
	route(mux, log, "/NetworkDriver.EndpointOperInfo", func(req *network.InfoRequest) (any, error) {
		return network.InfoResponse{Value: map[string]string{}}, nil
	})
	route(mux, log, "/NetworkDriver.DeleteEndpoint", func(req *network.DeleteEndpointRequest) (any, error) {
		return struct{}{}, p.DeleteEndpoint(req.NetworkID, req.EndpointID)
	})
	route(mux, log, "/NetworkDriver.Join", func(req *network.JoinRequest) (any, error) {
		p.awaitEngine("Join")
		info, err := p.Join(req.NetworkID, req.EndpointID, req.SandboxKey)
		if err != nil {
			return nil, err
		}
		return network.JoinResponse{
			InterfaceName:         network.InterfaceName{SrcName: info.SrcName, DstPrefix: "eth"},
			Gateway:               info.Gateway.String(),
			DisableGatewayService: true,
		}, nil
	})
	route(mux, log, "/NetworkDriver.Leave", func(req *network.LeaveRequest) (any, error) {
		return struct{}{}, p.Leave(req.NetworkID, req.EndpointID)
	})
	// FreeNetwork: AllocateNetwork stored nothing.
	for _, path := range []string{"/NetworkDriver.FreeNetwork", "/NetworkDriver.DiscoverNew", "/NetworkDriver.DiscoverDelete",
		"/NetworkDriver.ProgramExternalConnectivity", "/NetworkDriver.RevokeExternalConnectivity"} {
		route(mux, log, path, empty)
	}
	if az != nil {
		mux.HandleFunc("/AuthZPlugin.AuthZReq", rawRoute(az.AuthZReq, false))
		// A response body has no size limit in dockerd (docker ps on a big
		// host): the response phase is decided from the body's start.
		mux.HandleFunc("/AuthZPlugin.AuthZRes", rawRoute(az.AuthZRes, true))
	}
	return mux
}

// route registers a JSON handler: decode Req, call fn, encode the response
// or {"Err": msg}.
func route[Req any](mux *http.ServeMux, log *logrus.Entry, path string, fn func(*Req) (any, error)) {
	mux.HandleFunc(path, func(w http.ResponseWriter, r *http.Request) {
		req := new(Req)
		if r.ContentLength != 0 {
			if err := json.NewDecoder(r.Body).Decode(req); err != nil {
				writeJSON(w, map[string]string{"Err": fmt.Sprintf("decode %s request: %v", path, err)})
				return
			}
		}
		resp, err := fn(req)
		if layer, _ := ReasonOf(err); layer == LayerPartial {
			// The store committed and Docker's view must match it: a data
			// plane that failed to apply is retried by the next publish
			// (or `clawker-fw reload`); failing the call would leave Docker
			// and the plugin disagreeing.
			log.WithField("call", path).WithError(err).Error("driver call committed but not fully applied")
			err = nil
		}
		if err != nil {
			log.WithField("call", path).WithError(err).Warn("driver call failed")
			writeJSON(w, map[string]string{"Err": err.Error()})
			return
		}
		writeJSON(w, resp)
	})
}

// rawRoute serves an authz call: fn gets Docker's raw JSON request. With
// prefixOK a body over maxBody is passed on cut to its first maxBody bytes;
// otherwise it is refused.
func rawRoute(fn func([]byte) any, prefixOK bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body, err := readBody(r)
		if errors.Is(err, errBodyTooLarge) && prefixOK {
			err = nil
		}
		if err != nil {
			writeJSON(w, map[string]any{"Allow": false, "Msg": "clawker-fw authz: unreadable request", "Err": err.Error()})
			return
		}
		writeJSON(w, fn(body))
	}
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.1+json")
	_ = json.NewEncoder(w).Encode(v)
}

// genericOpts extracts the `-o` options Docker nests under
// com.docker.network.generic; every value must be a string.
func genericOpts(options map[string]any) (map[string]string, error) {
	out := map[string]string{}
	raw, ok := options[genericOptions]
	if !ok || raw == nil {
		return out, nil
	}
	m, ok := raw.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("network options: %s is %T, want an object", genericOptions, raw)
	}
	for k, v := range m {
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("network option %s: value is %T, want a string", k, v)
		}
		out[k] = s
	}
	return out, nil
}

// maxBody bounds request bodies the plugin reads (authz bodies included).
const maxBody = 16 << 20

var errBodyTooLarge = fmt.Errorf("request body larger than %d bytes", maxBody)

// readBody reads a request body of up to maxBody bytes; a larger one returns
// its first maxBody bytes with errBodyTooLarge.
func readBody(r *http.Request) ([]byte, error) {
	var b []byte
	if n := r.ContentLength; n > 0 && n <= maxBody {
		b = make([]byte, n)
		if _, err := io.ReadFull(r.Body, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBody+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxBody {
		return b[:maxBody], errBodyTooLarge
	}
	return b, nil
}
