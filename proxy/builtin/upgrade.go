package builtin

import (
	"crypto/sha1"
	"encoding/base64"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"

	"github.com/clawker-fw/clawker-fw/proxy/verdict"
)

// ReasonUpgrade: a request that would turn a connection decided per request
// into a tunnel (an upgrade other than WebSocket, CONNECT, h2c).
const ReasonUpgrade = verdict.ReasonUpgrade

// websocketGUID is the fixed GUID of RFC 6455 section 1.3.
const websocketGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// upgradeRefusal decides whether request r may change the protocol of its
// connection. Every HTTP flow of the proxy (plain HTTP and inspected TLS)
// is decided request by request; a connection that becomes a tunnel would
// carry requests that are never decided (h2c smuggling: new :authority and
// :path values inside the upgraded stream). So:
//  1. "PRI * HTTP/2.0" (the h2c prior-knowledge preface, which Go's
//     HTTP/1 server hands to handlers) is refused;
//  2. CONNECT is refused, HTTP/2 extended CONNECT (":protocol") included;
//  3. an HTTP2-Settings header (an h2c upgrade) is refused;
//  4. a request with any Upgrade header, or with "upgrade" among its
//     Connection tokens, is allowed only as a correct WebSocket handshake
//     (RFC 6455 section 4.1): GET over HTTP/1.1, exactly one Upgrade value
//     equal to "websocket" (any case), Connection naming upgrade,
//     Sec-WebSocket-Version 13 and a Sec-WebSocket-Key of 16 bytes.
//
// It returns the WebSocket key when r is an allowed WebSocket handshake, or
// why r is refused. A WebSocket stream is opaque after its handshake: the
// proxy pipes it to the upstream the handshake was decided for.
func upgradeRefusal(r *http.Request) (key, why string) {
	if r.Method == "PRI" {
		return "", "the HTTP/2 prior-knowledge preface (h2c) is refused: requests inside it would not be checked"
	}
	if r.Method == http.MethodConnect {
		if p := r.Header.Get(":protocol"); p != "" {
			return "", fmt.Sprintf("HTTP/2 extended CONNECT (:protocol %q) is refused: only WebSocket over HTTP/1.1 may upgrade", p)
		}
		return "", "CONNECT is refused: a tunnel would carry requests that are not checked"
	}
	if _, ok := r.Header["Http2-Settings"]; ok {
		return "", "an h2c upgrade (HTTP2-Settings) is refused: requests inside it would not be checked"
	}
	ups, hasUp := r.Header["Upgrade"]
	connUp := httpguts.HeaderValuesContainsToken(r.Header["Connection"], "upgrade")
	if !hasUp && !connUp {
		return "", ""
	}
	switch {
	case len(ups) != 1 || !strings.EqualFold(strings.TrimSpace(ups[0]), "websocket"):
		return "", fmt.Sprintf("Upgrade %q is refused: only \"Upgrade: websocket\" is allowed", strings.Join(ups, ", "))
	case !connUp:
		return "", "Upgrade: websocket without \"Connection: upgrade\" is refused"
	case r.Method != http.MethodGet || r.ProtoMajor != 1 || r.ProtoMinor < 1:
		return "", fmt.Sprintf("a WebSocket handshake must be GET over HTTP/1.1, not %s over %s", r.Method, r.Proto)
	case r.Header.Get("Sec-WebSocket-Version") != "13" || len(r.Header["Sec-Websocket-Version"]) != 1:
		return "", "a WebSocket handshake needs Sec-WebSocket-Version: 13"
	}
	keys := r.Header["Sec-Websocket-Key"]
	if len(keys) != 1 {
		return "", "a WebSocket handshake needs exactly one Sec-WebSocket-Key"
	}
	if k, err := base64.StdEncoding.DecodeString(strings.TrimSpace(keys[0])); err != nil || len(k) != 16 {
		return "", "the Sec-WebSocket-Key is not 16 bytes in base64"
	}
	return strings.TrimSpace(keys[0]), ""
}

// checkSwitch is the reverse proxy's ModifyResponse: a 101 from the upstream
// is passed on (and the connection then piped) only for a request whose
// WebSocket handshake upgradeRefusal allowed, and only when the upstream
// really accepted WebSocket for that key. Anything else fails the request
// (502) and nothing is piped.
func checkSwitch(res *http.Response) error {
	if res.StatusCode != http.StatusSwitchingProtocols {
		return nil
	}
	var key string // the handshake's Sec-WebSocket-Key, "" when none was checked
	if q := requestOf(res.Request.Context()); q != nil {
		key = q.wsKey
	}
	switch {
	case key == "":
		return errors.New("upstream switched protocols for a request that asked for no WebSocket")
	case len(res.Header["Upgrade"]) != 1 || !strings.EqualFold(strings.TrimSpace(res.Header.Get("Upgrade")), "websocket"):
		return fmt.Errorf("upstream switched to %q, not websocket", res.Header.Get("Upgrade"))
	case res.Header.Get("Sec-WebSocket-Accept") != websocketAccept(key):
		return errors.New("upstream's Sec-WebSocket-Accept does not answer the handshake's key")
	}
	return nil
}

// websocketAccept is the Sec-WebSocket-Accept answering key (RFC 6455
// section 4.2.2).
func websocketAccept(key string) string {
	h := sha1.Sum([]byte(key + websocketGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}
