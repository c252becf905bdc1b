// Package decisionlog is the one shape of a firewall decision — DNS, socket
// hooks (bpf), proxy and authz alike — and what the plugin process does with
// each: count it (Prometheus, per network and container), keep the recent
// ones in its own ring, and write log lines sparingly.
//
// A managed plugin's output is relayed by dockerd line by line (stdout at
// info, stderr at error), so a line per allowed flow or per allowed DNS
// query costs dockerd CPU on the data path. Hence:
//   - allowed decisions are counted and kept in the ring; one line per
//     source and period is logged as a sample (field sampled_of says how
//     many it stands for); at CLAWKER_LOG_LEVEL=debug every one is logged
//     at debug;
//   - denials are logged at warn, identical ones within a period folded
//     into one line with a count, and rate-limited per endpoint;
//   - errors are logged at error, rate-limited the same way.
//
// Every line carries the same field names (the F* constants) under the
// message Message, so one query finds the decisions of every part.
package decisionlog

import (
	"strconv"
	"time"

	"github.com/sirupsen/logrus"
)

// Message is the message of every decision line.
const Message = "CLAWKER-DECISION"

// Sources of decisions.
const (
	SourceDNS   = "dns"
	SourceBPF   = "bpf"
	SourceProxy = "proxy"
	SourceAuthz = "authz"
)

// Verdicts.
const (
	Allow = "allow"
	Deny  = "deny"
	Error = "error"
)

// Field names of a decision line (and JSON names of a Record).
const (
	FSource    = "source"
	FVerdict   = "verdict"
	FReason    = "reason"
	FRule      = "rule"
	FFix       = "fix"
	FDetail    = "detail"
	FContainer = "container"
	FNetwork   = "network"
	FEndpoint  = "endpoint"
	FSrcAddr   = "src_addr"
	FDestName  = "dest_name"
	FDestAddr  = "dest_addr"
	FDestPort  = "dest_port"
	FProtocol  = "protocol"
	// FCount is the number of identical decisions one line stands for
	// (folded denials); FSampledOf the number of allowed decisions since
	// the previous sampled line of the same source.
	FCount     = "count"
	FSampledOf = "sampled_of"
	// Source-specific details.
	FListener       = "listener"
	FMode           = "mode"
	FMethod         = "method"
	FPath           = "path"
	FBytesUp        = "bytes_up"
	FBytesDown      = "bytes_down"
	FDurationMS     = "duration_ms"
	FRequests       = "requests"
	FDeniedRequests = "denied_requests"
	FClosedBy       = "closed_by"
	FQueryType      = "query_type"
	FRcode          = "rcode"
	FAnswers        = "answers"
	FUpstream       = "upstream"
	FIdentity       = "identity"
)

// Record is one decision. The JSON form is what the DNS sidecar sends the
// plugin (one object per line on the events socket).
type Record struct {
	Time    time.Time `json:"time"`
	Source  string    `json:"source"`
	Verdict string    `json:"verdict"`
	Reason  string    `json:"reason,omitempty"`
	// Rule is the rule that decided (its provenance), Fix what would allow
	// a denial, Detail more about the reason (a label error, a dial error).
	Rule   string `json:"rule,omitempty"`
	Fix    string `json:"fix,omitempty"`
	Detail string `json:"detail,omitempty"`

	// Endpoint is the asking endpoint's index (0: none known). Container
	// and Network are names, filled in by the plugin from its snapshot.
	Endpoint  uint32 `json:"endpoint,omitempty"`
	Container string `json:"container,omitempty"`
	Network   string `json:"network,omitempty"`
	SrcAddr   string `json:"src_addr,omitempty"`

	DestName string `json:"dest_name,omitempty"`
	DestAddr string `json:"dest_addr,omitempty"`
	DestPort uint16 `json:"dest_port,omitempty"`
	// Protocol is dns, tcp, udp, http, https, ssh or docker-api.
	Protocol string `json:"protocol,omitempty"`

	// Proxy.
	Listener       string `json:"listener,omitempty"`
	Mode           string `json:"mode,omitempty"`
	Method         string `json:"method,omitempty"`
	Path           string `json:"path,omitempty"`
	BytesUp        uint64 `json:"bytes_up,omitempty"`
	BytesDown      uint64 `json:"bytes_down,omitempty"`
	DurationMS     int64  `json:"duration_ms,omitempty"`
	Requests       uint64 `json:"requests,omitempty"`
	DeniedRequests uint64 `json:"denied_requests,omitempty"`
	ClosedBy       string `json:"closed_by,omitempty"`

	// DNS.
	QueryType string `json:"query_type,omitempty"`
	Rcode     string `json:"rcode,omitempty"`
	Answers   int    `json:"answers,omitempty"`
	Upstream  string `json:"upstream,omitempty"`
	Identity  uint32 `json:"identity,omitempty"`
	// Addrs are the answered IPv4 addresses, sent only for an endpoint in
	// learn mode (its recorder names ssh/tcp flows to them); not logged.
	Addrs []string `json:"addrs,omitempty"`

	// Count is set on folded lines (identical denials in one period).
	Count uint64 `json:"count,omitempty"`
}

// Fields is the record as log fields (empty values left out; the verdict,
// source and reason always present).
func (r *Record) Fields() logrus.Fields {
	f := logrus.Fields{FSource: r.Source, FVerdict: r.Verdict, FReason: r.Reason}
	str := func(k, v string) {
		if v != "" {
			f[k] = v
		}
	}
	num := func(k string, v uint64) {
		if v != 0 {
			f[k] = v
		}
	}
	str(FRule, r.Rule)
	str(FFix, r.Fix)
	str(FDetail, r.Detail)
	if r.Endpoint != 0 {
		f[FEndpoint] = r.Endpoint
	}
	str(FContainer, r.Container)
	str(FNetwork, r.Network)
	str(FSrcAddr, r.SrcAddr)
	str(FDestName, r.DestName)
	str(FDestAddr, r.DestAddr)
	num(FDestPort, uint64(r.DestPort))
	str(FProtocol, r.Protocol)
	str(FListener, r.Listener)
	str(FMode, r.Mode)
	str(FMethod, r.Method)
	str(FPath, r.Path)
	num(FBytesUp, r.BytesUp)
	num(FBytesDown, r.BytesDown)
	if r.DurationMS != 0 {
		f[FDurationMS] = r.DurationMS
	}
	num(FRequests, r.Requests)
	num(FDeniedRequests, r.DeniedRequests)
	str(FClosedBy, r.ClosedBy)
	str(FQueryType, r.QueryType)
	str(FRcode, r.Rcode)
	if r.Answers != 0 {
		f[FAnswers] = r.Answers
	}
	str(FUpstream, r.Upstream)
	num(FIdentity, uint64(r.Identity))
	num(FCount, r.Count)
	return f
}

// Level is the level a record is logged at: allowed at info, denied at
// warn, errors at error.
func (r *Record) Level() logrus.Level {
	switch r.Verdict {
	case Allow:
		return logrus.InfoLevel
	case Deny:
		return logrus.WarnLevel
	}
	return logrus.ErrorLevel
}

// Log writes r as one decision line on log at its level.
func Log(log *logrus.Entry, r *Record) {
	log.WithFields(r.Fields()).Log(r.Level(), Message)
}

// Dest is the destination in one word: name or address, with the port.
func (r *Record) Dest() string {
	d := r.DestName
	if d == "" {
		d = r.DestAddr
	}
	if r.DestPort != 0 {
		d += ":" + strconv.Itoa(int(r.DestPort))
	}
	return d
}
