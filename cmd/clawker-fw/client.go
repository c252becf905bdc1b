package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/clawker-fw/clawker-fw/plugin/api"
)

// client calls the plugin's admin API on its unix socket.
type client struct {
	http *http.Client
	sock string
}

func newClient(sock string) *client {
	return &client{sock: sock, http: &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}}
}

// apiError is an error answer of the admin API; the CLI dispatches what to
// do on its Reason.
type apiError struct{ api.APIError }

func (e *apiError) Error() string { return fmt.Sprintf("%s (%s)", e.Message, e.Reason) }

// do makes a call; answers of 300 and above become errors (an *apiError
// when the body carries a reason).
func (c *client) do(method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://clawker-fw"+path, rd)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, &apiError{api.APIError{Message: fmt.Sprintf("reach the plugin at %s: %v", c.sock, err), Reason: api.ReasonNotRunning}}
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		var ae api.APIError
		raw, _ := io.ReadAll(resp.Body)
		if json.Unmarshal(raw, &ae) != nil || ae.Reason == "" {
			return nil, fmt.Errorf("%s %s: HTTP %d: %s", method, path, resp.StatusCode, strings.TrimSpace(string(raw)))
		}
		return nil, &apiError{ae}
	}
	return resp, nil
}

// call makes a call and decodes its JSON answer into out (when not nil).
func (c *client) call(method, path string, body, out any) error {
	resp, err := c.do(method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body)
		return nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("decode the answer of %s %s: %w", method, path, err)
	}
	return nil
}

// copyTo makes a call and copies the answer's body to out.
func (c *client) copyTo(method, path string, body any, out io.Writer) error {
	resp, err := c.do(method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, err = io.Copy(out, resp.Body)
	return err
}

func (c *client) status() (api.StatusReport, error) {
	var st api.StatusReport
	return st, c.call(http.MethodGet, "/v1/status", nil, &st)
}

// rulesPath is the runtime rules resource of a network reference.
func rulesPath(network string) string {
	return "/v1/networks/" + url.PathEscape(network) + "/rules"
}
