package dns

import (
	"github.com/coredns/coredns/request"
	mdns "github.com/miekg/dns"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// Extended DNS Errors (RFC 8914). An NXDOMAIN the firewall gives for a name
// outside the rules carries EDE 15 "Blocked" with what to do, so an agent
// whose resolver shows EDE (dig, kdig, Go's resolver with EDNS, systemd-
// resolved) learns why without a human. Only for clients that sent EDNS: an
// OPT record in the answer of a query without one would break RFC 6891.
// glibc's and musl's stub resolvers send no EDNS by default (glibc with
// "options edns0" in resolv.conf does; neither shows EDE to applications).

// badNameText explains a bad-name NXDOMAIN.
const badNameText = "clawker-fw: query names may hold only letters, digits, '-' and '_' between dots; write internationalized names in their xn-- (punycode) form"

// deniedText explains an NXDOMAIN for name: the proxy's fix text (one for
// every part), which names the deny rule that covers the name or the rule
// that would allow it.
func deniedText(name string, reason policy.Reason, rule, detail, network string) string {
	return "clawker-fw: " + name + " denied (" + string(reason) + "); " +
		verdict.Fix(verdict.Denial{Dest: name, Reason: reason, Rule: rule, Detail: detail, Network: network})
}

// writeDenied answers NXDOMAIN, with EDE Blocked and text when the query
// carried EDNS.
func (c *Clawker) writeDenied(w mdns.ResponseWriter, r *mdns.Msg, text string) (int, error) {
	m := new(mdns.Msg)
	m.SetRcode(r, mdns.RcodeNameError)
	m.Authoritative = true
	m.RecursionAvailable = true
	if o := r.IsEdns0(); o != nil {
		m.SetEdns0(o.UDPSize(), o.Do())
		opt := m.IsEdns0()
		opt.Option = append(opt.Option, &mdns.EDNS0_EDE{InfoCode: mdns.ExtendedErrorCodeBlocked, ExtraText: text})
	}
	state := request.Request{W: w, Req: r}
	state.SizeAndDo(m)
	if err := w.WriteMsg(state.Scrub(m)); err != nil {
		return mdns.RcodeServerFailure, err
	}
	return mdns.RcodeNameError, nil
}
