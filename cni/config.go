package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net/netip"
)

// Defaults of the fields flannel's plugin has, at weft's paths.
const (
	defaultSubnetFile = "/run/flannel/subnet.env"
	defaultDataDir    = "/var/lib/cni/weft"
	defaultBridge     = "cni0"
)

// netConf is weft-cni's network config: the CNI fields it reads, and
// flannel's. Delegate and IPAM stay generic maps, because they are merged
// into another plugin's config and must keep every field the user gave,
// including ones weft does not know.
type netConf struct {
	CNIVersion    string         `json:"cniVersion"`
	Name          string         `json:"name"`
	Type          string         `json:"type"`
	SubnetFile    string         `json:"subnetFile"`
	DataDir       string         `json:"dataDir"`
	Delegate      map[string]any `json:"delegate"`
	IPAM          map[string]any `json:"ipam"`
	DNS           map[string]any `json:"dns"`
	RuntimeConfig map[string]any `json:"runtimeConfig"`
	// PrevResult is the runtime's record of ADD, given with CHECK and DEL.
	PrevResult json.RawMessage `json:"prevResult"`
}

// parseConf decodes stdin's config and fills in the defaults. Numbers are
// kept as written (json.Number), so a delegate sees the values it was given.
func parseConf(b []byte) (*netConf, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var n netConf
	if err := d.Decode(&n); err != nil {
		return nil, fmt.Errorf("decoding the network config: %w", err)
	}
	if n.SubnetFile == "" {
		n.SubnetFile = defaultSubnetFile
	}
	if n.DataDir == "" {
		n.DataDir = defaultDataDir
	}
	return &n, nil
}

// delegateConf builds the delegated plugin's config from n and the node's
// subnet.env, as flannel's plugin does: the user's delegate fields win,
// weft fills in what is missing, and the IPAM section is n's ipam with the
// node's range and the overlay's route put in.
func delegateConf(n *netConf, env subnetEnv, cniVersion string) (map[string]any, error) {
	d := maps.Clone(n.Delegate)
	if d == nil {
		d = map[string]any{}
	}
	d["name"] = n.Name
	d["cniVersion"] = cniVersion
	if _, ok := d["type"]; !ok {
		d["type"] = "bridge"
	}
	typ, ok := d["type"].(string)
	if !ok || typ == "" {
		return nil, fmt.Errorf("delegate.type: want a plugin name, got %v", d["type"])
	}
	setDefault(d, "ipMasq", !env.ipMasq) // masquerade here only if weftd does not
	setDefault(d, "mtu", env.mtu)
	if typ == "bridge" {
		setDefault(d, "bridge", defaultBridge)
		setDefault(d, "isGateway", true)
		// The bridge plugin refuses hairpin and promiscuous mode together;
		// promiscMode asked for explicitly wins over the default.
		if promisc, _ := d["promiscMode"].(bool); !promisc {
			setDefault(d, "hairpinMode", true)
		}
	}
	if n.RuntimeConfig != nil {
		d["runtimeConfig"] = n.RuntimeConfig
	}
	if n.DNS != nil {
		setDefault(d, "dns", n.DNS)
	}
	defaultGW, err := flag(d, "isDefaultGateway")
	if err != nil {
		return nil, err
	}
	ipam, err := delegateIPAM(n.IPAM, env, defaultGW)
	if err != nil {
		return nil, err
	}
	d["ipam"] = ipam
	return d, nil
}

// delegateIPAM is ipam (host-local unless it names another type) with
// ranges set to the node's lease and routes covering the overlay through the
// bridge's address, plus a
// default route through the bridge when the delegate is the default gateway.
// Routes the user listed are kept; an explicit dataDir is kept.
func delegateIPAM(user map[string]any, env subnetEnv, defaultGW bool) (map[string]any, error) {
	ipam := maps.Clone(user)
	if ipam == nil {
		ipam = map[string]any{}
	}
	setDefault(ipam, "type", "host-local")
	ipam["ranges"] = []any{[]any{map[string]any{"subnet": env.lease().String()}}}

	var routes []any
	if r, ok := ipam["routes"]; ok && r != nil {
		if routes, ok = r.([]any); !ok {
			return nil, fmt.Errorf("ipam.routes: want a list of routes, got %v", r)
		}
	}
	have := map[netip.Prefix]bool{}
	for i, r := range routes {
		m, ok := r.(map[string]any)
		dst, _ := m["dst"].(string)
		p, err := netip.ParsePrefix(dst)
		if !ok || err != nil {
			return nil, fmt.Errorf("ipam.routes[%d]: want {\"dst\": \"address/length\"}, got %v", i, r)
		}
		have[p.Masked()] = true
	}
	// The gateway is written out although host-local would fill in the same:
	// the bridge plugin's CHECK (1.1.1, Debian 12's) looks routes up by
	// destination and gateway, and a route without one is never found.
	if !have[env.network.Masked()] {
		routes = append(routes, map[string]any{"dst": env.network.Masked().String(), "gw": env.gateway().String()})
	}
	if defaultGW {
		all := netip.PrefixFrom(netip.IPv4Unspecified(), 0)
		if env.network.Addr().Is6() {
			all = netip.PrefixFrom(netip.IPv6Unspecified(), 0)
		}
		if !have[all] {
			routes = append(routes, map[string]any{"dst": all.String(), "gw": env.gateway().String()})
		}
	}
	ipam["routes"] = routes
	return ipam, nil
}

func setDefault(m map[string]any, key string, v any) {
	if _, ok := m[key]; !ok {
		m[key] = v
	}
}

// flag reads an optional boolean field of the delegate.
func flag(m map[string]any, key string) (bool, error) {
	v, ok := m[key]
	if !ok || v == nil {
		return false, nil
	}
	b, ok := v.(bool)
	if !ok {
		return false, fmt.Errorf("delegate.%s: want true or false, got %v", key, v)
	}
	return b, nil
}
