package builtin

import (
	"bytes"
	"context"
	"time"

	"github.com/clawker-fw/clawker-fw/policy"
	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// learnSniffWait is how long a learning endpoint's redirected flow may stay
// silent before it is taken for a server-speaks-first protocol (SMTP,
// MySQL) and spliced by address.
const learnSniffWait = 2 * time.Second

// learn carries a learning endpoint's redirected flow (learn mode: allow-all
// like a bypass, see policy.Policy.Learn). Instead of splicing to the
// address unseen, it reads the first bytes so that the decision reported
// for the recorder names the flow:
//  1. a TLS ClientHello with a server name is served as on a web listener
//     (decided and dialed by that name);
//  2. an HTTP/1 request line is served as plain HTTP (every request
//     reported with its Host, method and path);
//  3. anything else, a ClientHello without a server name, and a flow that
//     sends nothing within learnSniffWait is spliced to the address it was
//     sent to, as under bypass, its Decision's Stream "ssh" (an SSH banner)
//     or "tcp".
func (f *flow) learn(ctx context.Context, who policy.Who) {
	b, _ := peekConn(f.tcp, time.Now().Add(learnSniffWait), func(b []byte) int {
		if len(b) >= 1 && b[0] == 0x16 {
			if need := helloNeed(b); need > 0 {
				return need
			}
		}
		return 0
	})
	switch {
	case len(b) > 0 && b[0] == 0x16:
		if ch, err := parseHello(b); err == nil && ch.sni != "" {
			f.web(ctx, who)
			return
		}
	case looksHTTP(b):
		f.web(ctx, who)
		return
	}
	f.stream = "tcp"
	if bytes.HasPrefix(b, []byte("SSH-")) {
		f.stream = "ssh"
	}
	fl := f.facts(who)
	f.decideAndSplice(ctx, fl, verdict.Decide(fl))
}

// looksHTTP reports whether b starts like an HTTP/1 request line: a method
// token of upper-case letters followed by a space.
func looksHTTP(b []byte) bool {
	for i, c := range b {
		switch {
		case c == ' ':
			return i > 0
		case c < 'A' || c > 'Z' || i >= 16:
			return false
		}
	}
	return false
}
