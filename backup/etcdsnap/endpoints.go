package etcdsnap

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"

	"gopkg.in/yaml.v3"
)

// ErrNoLoopback is returned by EndpointsFromManifest and EndpointsFromFlags
// when etcd serves clients on no loopback address: kubecpr talks to etcd on
// loopback only, so it cannot take a snapshot of that etcd.
var ErrNoLoopback = errors.New("etcd serves clients on no loopback address")

// EndpointsFromManifest reads the etcd static pod manifest (the bytes of
// /etc/kubernetes/manifests/etcd.yaml, read by the caller through the node)
// and returns the https client URLs of this etcd that are on loopback, in
// the order Save should try them; see EndpointsFromFlags.
func EndpointsFromManifest(manifest []byte) ([]string, error) {
	flags, err := manifestFlags(manifest)
	if err != nil {
		return nil, err
	}
	return EndpointsFromFlags(flags)
}

// MetricsFromManifest returns etcd's plain-http metrics URL on loopback
// from the manifest's --listen-metrics-urls (kubeadm:
// http://127.0.0.1:2381), or "" when there is none. etcd serves /health
// there from its start, whatever its certificates and its quorum; Save
// asks it whether the member has a leader (Options.MetricsURL).
func MetricsFromManifest(manifest []byte) string {
	flags, err := manifestFlags(manifest)
	if err != nil {
		return ""
	}
	for _, raw := range strings.Split(flags["listen-metrics-urls"], ",") {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || u.Scheme != "http" || u.Port() == "" {
			continue
		}
		switch ip := net.ParseIP(u.Hostname()); {
		case strings.EqualFold(u.Hostname(), "localhost"), ip != nil && ip.IsUnspecified():
			return "http://" + net.JoinHostPort("127.0.0.1", u.Port())
		case ip != nil && ip.IsLoopback():
			return "http://" + net.JoinHostPort(ip.String(), u.Port())
		}
	}
	return ""
}

// manifestFlags are the flags of the etcd container of a static pod
// manifest.
func manifestFlags(manifest []byte) (map[string]string, error) {
	var pod struct {
		Spec struct {
			Containers []struct {
				Name    string   `yaml:"name"`
				Command []string `yaml:"command"`
				Args    []string `yaml:"args"`
			} `yaml:"containers"`
		} `yaml:"spec"`
	}
	if err := yaml.Unmarshal(manifest, &pod); err != nil {
		return nil, fmt.Errorf("the etcd manifest is not a valid static pod manifest: %w", err)
	}
	if len(pod.Spec.Containers) == 0 {
		return nil, errors.New("the etcd manifest has no containers: is it an etcd static pod manifest?")
	}
	c := pod.Spec.Containers[0]
	for _, cc := range pod.Spec.Containers {
		if cc.Name == "etcd" {
			c = cc
			break
		}
	}
	return flagMap(append(append([]string{}, c.Command...), c.Args...)), nil
}

// flagMap collects --name=value and "--name value" arguments (the first
// occurrence wins, as with etcd's own flag parsing of a single value).
func flagMap(argv []string) map[string]string {
	flags := map[string]string{}
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		if !strings.HasPrefix(a, "--") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !ok && i+1 < len(argv) && !strings.HasPrefix(argv[i+1], "-") {
			v = argv[i+1]
			i++
		}
		if _, seen := flags[k]; !seen {
			flags[k] = v
		}
	}
	return flags
}

// EndpointsFromFlags returns the https client URLs of etcd on loopback,
// from the flags of its manifest (node.Manifest.Flags, or any name → value
// map without the leading dashes): --listen-client-urls first (where etcd
// really listens), then --advertise-client-urls.
//
// Only loopback is kept: 127.0.0.0/8 and ::1 as they are; "localhost" as
// https://127.0.0.1:PORT (no name is ever resolved); a wildcard listen
// address (0.0.0.0, ::) as https://127.0.0.1:PORT, since etcd then also
// listens there. Plain http URLs are dropped: the snapshot always goes
// over TLS with a client certificate. URLs are deduplicated, IP forms first.
//
// A kubeadm manifest (listen-client-urls=https://127.0.0.1:2379,https://NODE-IP:2379)
// yields [https://127.0.0.1:2379]. No loopback https URL at all is an
// error wrapping ErrNoLoopback that names the flags.
func EndpointsFromFlags(flags map[string]string) ([]string, error) {
	listen, advertise := flags["listen-client-urls"], flags["advertise-client-urls"]
	if listen == "" && advertise == "" {
		return nil, fmt.Errorf("%w: the etcd manifest sets neither --listen-client-urls nor --advertise-client-urls "+
			"(etcd's default is plain http://localhost:2379, which kubecpr does not use); "+
			"is etcd external to this node? Then take its snapshot where etcd runs", ErrNoLoopback)
	}
	var ips, names []string
	seen := map[string]bool{}
	add := func(list *[]string, u string) {
		if !seen[u] {
			seen[u] = true
			*list = append(*list, u)
		}
	}
	for _, raw := range strings.Split(listen+","+advertise, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		if err != nil || u.Scheme != "https" || u.Port() == "" {
			continue
		}
		host, port := u.Hostname(), u.Port()
		switch ip := net.ParseIP(host); {
		case strings.EqualFold(host, "localhost"):
			add(&names, "https://"+net.JoinHostPort("127.0.0.1", port))
		case ip == nil:
			continue
		case ip.IsLoopback():
			add(&ips, "https://"+net.JoinHostPort(ip.String(), port))
		case ip.IsUnspecified():
			add(&names, "https://"+net.JoinHostPort("127.0.0.1", port))
		}
	}
	out := append(ips, names...)
	if len(out) == 0 {
		return nil, fmt.Errorf("%w (--listen-client-urls=%s --advertise-client-urls=%s): kubecpr talks to etcd on loopback over https only; "+
			"add https://127.0.0.1:2379 to etcd's --listen-client-urls, or take the snapshot yourself with etcdctl",
			ErrNoLoopback, listen, advertise)
	}
	return out, nil
}

// loopbackHostPort checks that endpoint is an https URL whose host is a
// loopback IP literal and returns host:port and the host.
func loopbackHostPort(endpoint string) (hostport, host string, err error) {
	u, err := url.Parse(endpoint)
	if err != nil {
		return "", "", fmt.Errorf("etcd endpoint %q is not a URL: %w", endpoint, err)
	}
	if u.Scheme != "https" {
		return "", "", fmt.Errorf("etcd endpoint %q: want an https:// URL (kubecpr talks to etcd over TLS only)", endpoint)
	}
	host = u.Hostname()
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return "", "", fmt.Errorf("etcd endpoint %q is not a loopback IP address: kubecpr takes etcd snapshots on loopback only "+
			"(use EndpointsFromManifest, which maps localhost and wildcard addresses to 127.0.0.1)", endpoint)
	}
	if u.Port() == "" {
		return "", "", fmt.Errorf("etcd endpoint %q has no port", endpoint)
	}
	if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
		return "", "", fmt.Errorf("etcd endpoint %q: want only scheme, host and port", endpoint)
	}
	return u.Host, host, nil
}
