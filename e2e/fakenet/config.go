// Package fakenet is the project's own fake internet for end-to-end tests:
// an authoritative DNS server for a test zone, HTTPS/HTTP servers with
// certificates from a test CA, TCP echo servers and an optional real sshd,
// all recording every connection and query they see.
//
// It is meant to run inside a network namespace created by the e2e harness
// (cmd/clawker-fakenet is its binary). Every recorded entry carries the
// source address of the peer: the firewall never NATs, so a packet that leaked
// from a container arrives with the container's address, while everything the
// plugin legitimately forwards (proxy, DNS upstream) comes from the host side.
package fakenet

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
)

// Host is one name the fake DNS answers with an A record. Several hosts may
// share a name (several A records) or an IP (several names on one address,
// like a CDN). A name starting with "*." is a wildcard for one or more labels.
type Host struct {
	Name string `json:"name"`
	IP   string `json:"ip"`
}

// CNAME makes Name an alias of Target (which may itself be an alias).
type CNAME struct {
	Name   string `json:"name"`
	Target string `json:"target"`
}

// SSHConfig starts a real sshd behind the recording listener on Port.
type SSHConfig struct {
	// Port is the public port (recorded, proxied to sshd). Default 22.
	Port int `json:"port"`
	// AuthorizedKeys is the path of an authorized_keys file; every user
	// (tests log in as root) accepts the keys in it.
	AuthorizedKeys string `json:"authorized_keys"`
	// Sshd is the sshd binary. Default /usr/sbin/sshd.
	Sshd string `json:"sshd"`
	// Dir holds the generated host key, config and pid file.
	Dir string `json:"dir"`
}

// Config is the fakenet configuration, read from JSON by cmd/clawker-fakenet.
type Config struct {
	// CADir holds ca.crt, ca.key, leaf.crt and leaf.key; created if absent.
	CADir string `json:"ca_dir"`
	// Zone is the zone the DNS server is authoritative for. Default example.test.
	Zone   string  `json:"zone"`
	Hosts  []Host  `json:"hosts"`
	CNAMEs []CNAME `json:"cnames"`
	// TTL of the A and CNAME records in seconds. Default 30.
	TTL uint32 `json:"ttl"`
	// DNSAddrs are the IPs the DNS server listens on (UDP and TCP), one socket
	// per address so that the recorded destination is exact.
	DNSAddrs []string `json:"dns_addrs"`
	// DNSPort defaults to 53.
	DNSPort int `json:"dns_port"`
	// ListenIP is the bind address of the TCP services. Default 0.0.0.0: every
	// address of the namespace serves them; the recorded destination is the
	// connection's local address.
	ListenIP   string `json:"listen_ip"`
	HTTPSPorts []int  `json:"https_ports"`
	HTTPPorts  []int  `json:"http_ports"`
	EchoPorts  []int  `json:"echo_ports"`
	// Control is ip:port of the control HTTP API (/log, /reset, /healthz, /ca.crt).
	// Connections to it are not recorded.
	Control string     `json:"control"`
	SSH     *SSHConfig `json:"ssh,omitempty"`
	// SniffIface, when set, records every IPv4/IPv6 flow (source, destination,
	// protocol, destination port; deduplicated) that arrives on this interface,
	// so that even a packet no server accepted shows up in the log.
	SniffIface string `json:"sniff_iface"`
}

// LoadConfig reads a JSON config file.
func LoadConfig(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var c Config
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	return &c, nil
}

// normalize fills defaults and validates.
func (c *Config) normalize() error {
	if c.Zone == "" {
		c.Zone = "example.test"
	}
	c.Zone = canonical(c.Zone)
	if c.TTL == 0 {
		c.TTL = 30
	}
	if c.DNSPort == 0 {
		c.DNSPort = 53
	}
	if c.ListenIP == "" {
		c.ListenIP = "0.0.0.0"
	}
	if c.CADir == "" {
		return fmt.Errorf("config: ca_dir is required")
	}
	for i, h := range c.Hosts {
		if net.ParseIP(h.IP).To4() == nil {
			return fmt.Errorf("config: host %q: ip %q is not IPv4", h.Name, h.IP)
		}
		c.Hosts[i].Name = canonical(h.Name)
	}
	for i, a := range c.CNAMEs {
		c.CNAMEs[i].Name = canonical(a.Name)
		c.CNAMEs[i].Target = canonical(a.Target)
	}
	if c.SSH != nil {
		if c.SSH.Port == 0 {
			c.SSH.Port = 22
		}
		if c.SSH.Sshd == "" {
			c.SSH.Sshd = "/usr/sbin/sshd"
		}
		if c.SSH.Dir == "" || c.SSH.AuthorizedKeys == "" {
			return fmt.Errorf("config: ssh needs dir and authorized_keys")
		}
	}
	return nil
}

// canonical lowercases a name and makes it fully qualified.
func canonical(name string) string {
	name = strings.ToLower(strings.TrimSpace(name))
	if !strings.HasSuffix(name, ".") {
		name += "."
	}
	return name
}

// certNames returns the DNS names (without trailing dot) the leaf
// certificate must cover.
func (c *Config) certNames() []string {
	seen := map[string]bool{}
	var out []string
	add := func(n string) {
		n = strings.TrimSuffix(n, ".")
		if n != "" && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	for _, h := range c.Hosts {
		add(h.Name)
	}
	for _, a := range c.CNAMEs {
		add(a.Name)
	}
	add("localhost")
	return out
}

// certIPs returns the IP addresses the leaf certificate must cover.
func (c *Config) certIPs() []net.IP {
	seen := map[string]bool{}
	var out []net.IP
	add := func(s string) {
		ip := net.ParseIP(s)
		if ip != nil && !seen[ip.String()] {
			seen[ip.String()] = true
			out = append(out, ip)
		}
	}
	for _, h := range c.Hosts {
		add(h.IP)
	}
	for _, a := range c.DNSAddrs {
		add(a)
	}
	if host, _, err := net.SplitHostPort(c.Control); err == nil {
		add(host)
	}
	add("127.0.0.1")
	return out
}
