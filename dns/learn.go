package dns

// learnedAddrs are the IPv4 addresses of an upstream answer to an endpoint
// in learn mode (policy.Policy.Learn): its decision record carries them so
// that the plugin's recorder names the ssh/tcp flows that follow after the
// name. Other endpoints' records carry none (no per-answer data on the
// decision path).
func learnedAddrs(items []learnItem) []string {
	out := make([]string, 0, len(items))
	for _, it := range items {
		out = append(out, it.addr.String())
	}
	return out
}
