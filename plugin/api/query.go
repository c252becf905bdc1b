package api

// Query parameters of GET /v1/denials. Container and network references
// are resolved by the plugin as Docker resolves them (a full id, then an
// exact name, then a unique id prefix).
const (
	// DenialsContainer keeps the denials of one container.
	DenialsContainer = "container"
	// DenialsNetwork keeps the denials on one network.
	DenialsNetwork = "network"
	// DenialsSince keeps the denials at or after a time (RFC 3339).
	DenialsSince = "since"
	// DenialsFollow keeps the answer open and streams new denials.
	DenialsFollow = "follow"
)
