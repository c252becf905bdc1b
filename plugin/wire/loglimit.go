package wire

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/clawker-fw/clawker-fw/internal/ratelimit"
)

// logLimitReportEvery is how often the dropped-line counts are logged (one
// line, only when something was dropped).
const logLimitReportEvery = 30 * time.Second

// logLimits rate-limits, per endpoint, the lines the plugin relays through
// dockerd for each source of per-flow lines: the proxy's decisions, the DNS
// sidecar's decisions and the socket hooks' denials. Denials are recorded
// in full either way (`clawker-fw denials`); only log lines are dropped.
type logLimits struct {
	rate            float64
	proxy, dns, bpf *ratelimit.Limiter
}

func newLogLimits(rate float64) *logLimits {
	burst := int(rate * 10)
	return &logLimits{rate: rate, proxy: ratelimit.New(rate, burst), dns: ratelimit.New(rate, burst), bpf: ratelimit.New(rate, burst)}
}

// dnsDecision is how the DNS sidecar's per-query lines start.
const dnsDecision = "CLAWKER-DNS-DECISION "

// keepDNSLine passes every sidecar line except decision lines over their
// endpoint's limit ("endpoint=N"; "endpoint=-", no endpoint, is key 0).
func (l *logLimits) keepDNSLine(line string) bool {
	i := strings.Index(line, dnsDecision)
	if i < 0 {
		return true
	}
	var key uint32
	if _, v, ok := strings.Cut(line[i:], " endpoint="); ok {
		if end := strings.IndexByte(v, ' '); end >= 0 {
			v = v[:end]
		}
		if n, err := strconv.ParseUint(v, 10, 32); err == nil {
			key = uint32(n)
		}
	}
	return l.dns.Allow(key)
}

// summary is the status line.
func (l *logLimits) summary() string {
	if l.rate <= 0 {
		return "off (CLAWKER_LOG_RATE=0)"
	}
	return fmt.Sprintf("%g lines/s per endpoint; dropped since start: proxy %d, dns %d, bpf %d",
		l.rate, l.proxy.Dropped(), l.dns.Dropped(), l.bpf.Dropped())
}

// reportLoop logs, every period, one line with the lines each endpoint had
// dropped in it.
func (l *logLimits) reportLoop(log *logrus.Entry, every time.Duration) {
	for range time.Tick(every) {
		l.report(log)
	}
}

func (l *logLimits) report(log *logrus.Entry) {
	fields := logrus.Fields{}
	for name, lim := range map[string]*ratelimit.Limiter{"proxy": l.proxy, "dns": l.dns, "bpf": l.bpf} {
		if d := lim.TakeDropped(); len(d) > 0 {
			per := map[string]uint64{}
			for k, n := range d {
				per[strconv.FormatUint(uint64(k), 10)] = n
			}
			fields[name] = per
		}
	}
	if len(fields) > 0 {
		log.WithFields(fields).Warn("log lines over the per-endpoint rate limit were dropped (counts by endpoint index); the denials are all in `clawker-fw denials`")
	}
}
