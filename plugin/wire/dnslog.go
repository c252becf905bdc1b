package wire

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/clawker-fw/clawker-fw/dns"
	"github.com/clawker-fw/clawker-fw/plugin"
)

func firstNonEmpty(v ...string) string {
	for _, s := range v {
		if s != "" && s != "invalid IP" {
			return s
		}
	}
	return ""
}

// dnsDenial turns the DNS sidecar's decision line
// ("CLAWKER-DNS-DECISION decision=deny endpoint=3 container=x name=a.b. type=A reason=no-rule ...")
// into a recorded denial.
func dnsDenial(line string) (plugin.Denial, bool) {
	i := strings.Index(line, "CLAWKER-DNS-DECISION decision=deny")
	if i < 0 {
		return plugin.Denial{}, false
	}
	kv := map[string]string{}
	for _, f := range strings.Fields(line[i:]) {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		}
	}
	var idx uint32
	_, _ = fmt.Sscanf(kv["endpoint"], "%d", &idx)
	name, err := strconv.Unquote(kv["name"])
	if err != nil {
		name = strings.Trim(kv["name"], `"`)
	}
	name = strings.TrimSuffix(name, ".")
	d := plugin.Denial{Time: time.Now(), Source: "dns", Index: idx, Container: kv["container"], Destination: name,
		Reason: kv["reason"] + " (" + kv["type"] + " query answered " + kv["rcode"] + ")"}
	if kv["reason"] == string(dns.ReasonBadName) {
		// No rule can name it: suggesting one would mislead.
		d.Fix = "query names may hold only letters, digits, '-' and '_' between dots; write internationalized names in their xn-- (punycode) form"
	} else {
		d.Fix = plugin.FixFor(name, 0, "", nil)
	}
	return d, true
}
