package dns

import (
	"encoding/json"
	"net/netip"
	"strings"
)

// LearnLinePrefix starts the line the plugin reads for learn mode: one per
// upstream answer to a learning endpoint, with the answered IPv4 addresses
// (the plugin names ssh/tcp flows to those addresses after the name).
const LearnLinePrefix = "CLAWKER-DNS-LEARN "

// LearnLine is the JSON body of a learn line.
type LearnLine struct {
	Endpoint uint32       `json:"endpoint"`
	Name     string       `json:"name"`
	Addrs    []netip.Addr `json:"addrs"`
}

// reportLearned writes the learn line of an answer to a learning endpoint.
// Only learning endpoints get one: it is no per-query log line.
func (c *Clawker) reportLearned(q *query, items []learnItem) {
	ll := LearnLine{Endpoint: q.ep.Index, Name: q.name}
	for _, it := range items {
		ll.Addrs = append(ll.Addrs, it.addr)
	}
	if len(ll.Addrs) == 0 {
		return
	}
	b, err := json.Marshal(ll)
	if err != nil {
		return
	}
	c.Log.Info(LearnLinePrefix + string(b))
}

// ParseLearnLine reads a learn line out of a sidecar output line (CoreDNS
// prefixes its own level and plugin name).
func ParseLearnLine(line string) (LearnLine, bool) {
	var ll LearnLine
	_, body, ok := strings.Cut(line, LearnLinePrefix)
	return ll, ok && json.Unmarshal([]byte(body), &ll) == nil
}
