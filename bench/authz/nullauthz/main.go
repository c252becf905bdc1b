// Command nullauthz is the benchmark's baseline authorization plugin: it
// allows every call without looking at it. bench/authz installs it as a
// managed plugin beside clawker-fw, so the report separates what any authz
// plugin costs (dockerd's two round trips per API call) from what
// clawker-fw's checks add on top.
package main

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
)

const socket = "/run/docker/plugins/null.sock"

// Probe in a request URI makes the plugin deny that request.
const Probe = "nullauthz-probe"

func main() {
	_ = os.Remove(socket)
	l, err := net.Listen("unix", socket)
	if err != nil {
		fmt.Fprintln(os.Stderr, "nullauthz:", err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	reply := func(s string) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.Copy(io.Discard, r.Body)
			w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.1+json")
			_, _ = io.WriteString(w, s)
		}
	}
	mux.HandleFunc("/Plugin.Activate", reply(`{"Implements":["authz"]}`+"\n"))
	// The one call it refuses is the benchmark's probe, which tells that
	// this plugin is the one dockerd is using.
	mux.HandleFunc("/AuthZPlugin.AuthZReq", func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/vnd.docker.plugins.v1.1+json")
		if bytes.Contains(b, []byte(Probe)) {
			_, _ = io.WriteString(w, `{"Allow":false,"Msg":"nullauthz probe"}`+"\n")
			return
		}
		_, _ = io.WriteString(w, `{"Allow":true}`+"\n")
	})
	mux.HandleFunc("/AuthZPlugin.AuthZRes", reply(`{"Allow":true}`+"\n"))
	fmt.Fprintln(os.Stderr, "nullauthz: serving", socket)
	if err := http.Serve(l, mux); err != nil {
		fmt.Fprintln(os.Stderr, "nullauthz:", err)
		os.Exit(1)
	}
}
