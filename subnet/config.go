package subnet

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"

	"github.com/weft-net/weft/ip"
	"github.com/weft-net/weft/peer"
)

// Defaults for fields the config may leave out.
const (
	DefaultBackendType = "vxlan" // flannel defaults to "udp"; weft only speaks vxlan
	DefaultVNI         = 1
	DefaultPort        = 8472
	maxVNI             = 1<<24 - 1
)

// Config is the network configuration stored at <prefix>/config, with
// flannel's defaults filled in.
//
// Network, SubnetLen, SubnetMin and SubnetMax describe the leases' first
// subnet: IPv4, or, in an IPv6-only network (EnableIPv4 false), IPv6, copied
// from the IPv6 fields. So everything that allocates, checks and watches
// the first subnet works the same in both. IPv6 holds a dual-stack
// network's second family (EnableIPv4 and EnableIPv6).
type Config struct {
	Network   netip.Prefix // the whole overlay, e.g. 172.16.0.0/12
	SubnetLen int          // prefix length of each node's subnet
	SubnetMin netip.Addr   // network address of the lowest subnet handed out
	SubnetMax netip.Addr   // network address of the highest subnet handed out
	Backend   BackendConfig

	// IPv6 is the IPv6 network of a dual-stack config; zero otherwise.
	// (flannel's EnableIPv4 and EnableIPv6 are not kept: they are what
	// Network's family and IPv6 say, see EnableIPv4 and EnableIPv6.)
	IPv6 Family
}

// EnableIPv4 reports whether the network has IPv4 (flannel's field).
func (c Config) EnableIPv4() bool { return c.Network.Addr().Is4() }

// EnableIPv6 reports whether the network has IPv6, dual-stack or alone.
func (c Config) EnableIPv6() bool { return c.Dual() || c.Network.Addr().Is6() }

// Family is one address family's share of a dual-stack config: flannel's
// IPv6Network, IPv6SubnetLen, IPv6SubnetMin and IPv6SubnetMax.
type Family struct {
	Network   netip.Prefix
	SubnetLen int
	SubnetMin netip.Addr
	SubnetMax netip.Addr
}

// Dual reports whether leases carry an IPv6 subnet besides the IPv4 one.
func (c Config) Dual() bool { return c.IPv6.Network.IsValid() }

// BackendConfig is the "Backend" object of the config.
type BackendConfig struct {
	Type string // always "vxlan"
	VNI  uint32 // 1..16777215
	Port uint16 // UDP destination port
	MTU  int    // 0 = derive from the underlay device
	// DirectRouting routes peers on the same underlay network straight to
	// their PublicIP instead of through VXLAN (flannel's field).
	DirectRouting bool
}

// rawConfig is the wire form. Fields are raw so that each one can be parsed
// on its own and an error can name it. encoding/json matches names
// case-insensitively and ignores unknown fields, as flannel does.
type rawConfig struct {
	Network       json.RawMessage
	SubnetLen     json.RawMessage
	SubnetMin     json.RawMessage
	SubnetMax     json.RawMessage
	Backend       json.RawMessage
	EnableIPv4    json.RawMessage
	EnableIPv6    json.RawMessage
	IPv6Network   json.RawMessage
	IPv6SubnetLen json.RawMessage
	IPv6SubnetMin json.RawMessage
	IPv6SubnetMax json.RawMessage
}

type rawBackend struct {
	Type          json.RawMessage
	VNI           json.RawMessage
	Port          json.RawMessage
	MTU           json.RawMessage
	DirectRouting json.RawMessage
}

func present(m json.RawMessage) bool { return len(m) > 0 && !bytes.Equal(m, []byte("null")) }

func fieldErr(field string, raw json.RawMessage, problem string) error {
	v := string(raw)
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	if v == "" {
		return fmt.Errorf("config: %s: %s", field, problem)
	}
	return fmt.Errorf("config: %s %s: %s", field, v, problem)
}

func parseString(field string, raw json.RawMessage) (string, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return "", fieldErr(field, raw, "must be a string")
	}
	return s, nil
}

// parseInt accepts a JSON integer within [lo, hi].
func parseInt(field string, raw json.RawMessage, lo, hi int64, what string) (int64, error) {
	n, err := strconv.ParseInt(string(bytes.TrimSpace(raw)), 10, 64)
	if err != nil || n < lo || n > hi {
		return 0, fieldErr(field, raw, fmt.Sprintf("must be an integer between %d%s and %d", lo, what, hi))
	}
	return n, nil
}

func parseBool(field string, raw json.RawMessage) (bool, error) {
	var b bool
	if err := json.Unmarshal(raw, &b); err != nil {
		return false, fieldErr(field, raw, "must be true or false")
	}
	return b, nil
}

// ParseConfig parses and validates the JSON stored at <prefix>/config and
// fills in flannel's defaults. Every error names the offending field.
func ParseConfig(data []byte) (Config, error) {
	if err := valueSizeErr("config", data); err != nil {
		return Config{}, err
	}
	var raw rawConfig
	if err := json.Unmarshal(data, &raw); err != nil {
		return Config{}, fmt.Errorf("config: not a JSON object: %w", err)
	}
	var c Config
	var err error
	enable4, enable6 := true, false
	if present(raw.EnableIPv4) {
		if enable4, err = parseBool("EnableIPv4", raw.EnableIPv4); err != nil {
			return Config{}, err
		}
	}
	if present(raw.EnableIPv6) {
		if enable6, err = parseBool("EnableIPv6", raw.EnableIPv6); err != nil {
			return Config{}, err
		}
	}
	switch {
	case !enable4 && !enable6:
		return Config{}, fieldErr("EnableIPv4", raw.EnableIPv4, "with EnableIPv6 false too, the network has no address family")
	case !enable4 && present(raw.Network):
		return Config{}, fieldErr("Network", raw.Network, "set although EnableIPv4 is false (an IPv6-only network uses IPv6Network)")
	case !enable6 && present(raw.IPv6Network):
		return Config{}, fieldErr("IPv6Network", raw.IPv6Network, "set although EnableIPv6 is not true")
	}
	if enable4 {
		f, err := parseFamily(familyFields{"", raw.Network, raw.SubnetLen, raw.SubnetMin, raw.SubnetMax})
		if err != nil {
			return Config{}, err
		}
		c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax = f.Network, f.SubnetLen, f.SubnetMin, f.SubnetMax
	}
	if enable6 {
		f, err := parseFamily(familyFields{"IPv6", raw.IPv6Network, raw.IPv6SubnetLen, raw.IPv6SubnetMin, raw.IPv6SubnetMax})
		if err != nil {
			return Config{}, err
		}
		if enable4 {
			c.IPv6 = f
		} else {
			c.Network, c.SubnetLen, c.SubnetMin, c.SubnetMax = f.Network, f.SubnetLen, f.SubnetMin, f.SubnetMax
		}
	}

	if c.Backend, err = parseBackend(raw.Backend); err != nil {
		return Config{}, err
	}
	return c, nil
}

// specialNets are the ranges no overlay Network may touch: packets to them
// are never routed to a peer (loopback, link-local, multicast), or the
// addresses are not usable by hosts at all.
var specialNets = []struct {
	p    netip.Prefix
	what string
}{
	{netip.MustParsePrefix("0.0.0.0/8"), `"this network"`},
	{netip.MustParsePrefix("127.0.0.0/8"), "loopback"},
	{netip.MustParsePrefix("169.254.0.0/16"), "link-local"},
	{netip.MustParsePrefix("224.0.0.0/4"), "multicast"},
	{netip.MustParsePrefix("240.0.0.0/4"), "reserved, and the limited broadcast address"},
	{netip.MustParsePrefix("::/8"), "reserved (unspecified, loopback, IPv4-mapped and -compatible)"},
	{netip.MustParsePrefix("fe80::/10"), "link-local"},
	{netip.MustParsePrefix("ff00::/8"), "multicast"},
}

// parseBound parses SubnetMin or SubnetMax; a missing field yields the zero Addr.
func parseBound(field string, raw json.RawMessage, c Family) (netip.Addr, error) {
	if !present(raw) {
		return netip.Addr{}, nil
	}
	s, err := parseString(field, raw)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil || a.Is4() != c.Network.Addr().Is4() || a.Zone() != "":
		fam := "IPv4"
		if c.Network.Addr().Is6() {
			fam = "IPv6"
		}
		return netip.Addr{}, fieldErr(field, raw, "not an "+fam+" address")
	case !c.Network.Contains(a):
		return netip.Addr{}, fieldErr(field, raw, fmt.Sprintf("outside Network %v", c.Network))
	}
	if p, _ := a.Prefix(c.SubnetLen); p.Addr() != a {
		return netip.Addr{}, fieldErr(field, raw, fmt.Sprintf("not on a /%d boundary (did you mean %v?)", c.SubnetLen, p.Addr()))
	}
	return a, nil
}

func parseBackend(raw json.RawMessage) (BackendConfig, error) {
	b := BackendConfig{Type: DefaultBackendType, VNI: DefaultVNI, Port: DefaultPort}
	if !present(raw) {
		return b, nil
	}
	var rb rawBackend
	if err := json.Unmarshal(raw, &rb); err != nil {
		return b, fieldErr("Backend", raw, "must be an object")
	}
	if present(rb.Type) {
		t, err := parseString("Backend.Type", rb.Type)
		if err != nil {
			return b, err
		}
		if t != "vxlan" {
			return b, fieldErr("Backend.Type", rb.Type, "only \"vxlan\" is supported")
		}
	}
	if present(rb.VNI) {
		n, err := parseInt("Backend.VNI", rb.VNI, 1, maxVNI, "")
		if err != nil {
			return b, err
		}
		b.VNI = uint32(n)
	}
	if present(rb.Port) {
		n, err := parseInt("Backend.Port", rb.Port, 0, 65535, "")
		if err != nil {
			return b, err
		}
		if n != 0 { // flannel: 0 means the kernel default, 8472
			b.Port = uint16(n)
		}
	}
	if present(rb.MTU) {
		n, err := parseInt("Backend.MTU", rb.MTU, 0, 65535, " (auto)")
		if err != nil {
			return b, err
		}
		if n != 0 && n < 576 {
			return b, fieldErr("Backend.MTU", rb.MTU, "must be 0 (auto) or at least 576")
		}
		b.MTU = int(n)
	}
	if present(rb.DirectRouting) {
		v, err := parseBool("Backend.DirectRouting", rb.DirectRouting)
		if err != nil {
			return b, err
		}
		b.DirectRouting = v
	}
	return b, nil
}

// JSON returns the config in flannel's wire form, defaults written out, such
// that ParseConfig(c.JSON()) == c.
func (c Config) JSON() []byte {
	type backend struct {
		Type          string
		VNI           uint32
		Port          uint16
		MTU           int  `json:",omitempty"`
		DirectRouting bool `json:",omitempty"`
	}
	type out struct {
		EnableIPv4    *bool  `json:",omitempty"`
		EnableIPv6    bool   `json:",omitempty"`
		Network       string `json:",omitempty"`
		SubnetLen     int    `json:",omitempty"`
		SubnetMin     string `json:",omitempty"`
		SubnetMax     string `json:",omitempty"`
		IPv6Network   string `json:",omitempty"`
		IPv6SubnetLen int    `json:",omitempty"`
		IPv6SubnetMin string `json:",omitempty"`
		IPv6SubnetMax string `json:",omitempty"`
		Backend       backend
	}
	o := out{Backend: backend{c.Backend.Type, c.Backend.VNI, c.Backend.Port, c.Backend.MTU, c.Backend.DirectRouting}}
	v4, v6 := c.first(), c.IPv6
	if c.Network.Addr().Is6() {
		f := false
		o.EnableIPv4, v4, v6 = &f, Family{}, c.first()
	}
	if v4.Network.IsValid() {
		o.Network, o.SubnetLen, o.SubnetMin, o.SubnetMax = v4.Network.String(), v4.SubnetLen, v4.SubnetMin.String(), v4.SubnetMax.String()
	}
	if v6.Network.IsValid() {
		o.EnableIPv6 = true
		o.IPv6Network, o.IPv6SubnetLen, o.IPv6SubnetMin, o.IPv6SubnetMax = v6.Network.String(), v6.SubnetLen, v6.SubnetMin.String(), v6.SubnetMax.String()
	}
	b, err := json.Marshal(o)
	if err != nil {
		panic(err) // only strings, booleans and integers: cannot fail
	}
	return b
}

// alloc is the allocation range of the config's first subnet.
func (c Config) alloc() ip.Alloc { return c.first().alloc() }

// alloc6 is the allocation range of a dual-stack config's IPv6 subnet.
func (c Config) alloc6() ip.Alloc { return c.IPv6.alloc() }

func (f Family) alloc() ip.Alloc {
	return ip.Alloc{Bits: f.SubnetLen, First: f.SubnetMin, Last: f.SubnetMax}
}

var errNotVXLAN = errors.New("BackendType is not vxlan")

// checkLease reports why l cannot be a peer in this network, ignoring
// everything that depends on who we are (own subnet, own address, underlay,
// duplicates). nil means it is usable.
func (c Config) checkLease(l Lease) error {
	if l.Err != nil {
		return l.Err
	}
	s := l.Subnet
	switch {
	case s.Bits() != c.SubnetLen:
		return fmt.Errorf("subnet %v: length is not /%d", s, c.SubnetLen)
	case !c.Network.Contains(s.Addr()):
		return fmt.Errorf("subnet %v: outside Network %v", s, c.Network)
	}
	a := l.Attrs
	switch {
	case a.BackendType != "vxlan":
		return fmt.Errorf("BackendType %q: %w", clip(a.BackendType), errNotVXLAN)
	case a.VNI != 0 && a.VNI != c.Backend.VNI:
		return fmt.Errorf("VNI %d: network uses VNI %d", a.VNI, c.Backend.VNI)
	}
	p := peer.Peer{Subnet: s, PublicIP: a.PublicIP, VtepMAC: a.VtepMAC}
	if err := peer.CheckLease(&p, c.Rules()); err != nil {
		return err
	}
	if !c.Dual() {
		return nil
	}
	// A dual-stack network reads v4-only leases too (flanneld nodes without
	// IPv6): they get no IPv6 route. A v6 half present passes the same
	// rules in its own family.
	if !l.Subnet6.IsValid() {
		return nil
	}
	p6 := peer.Peer{Subnet: l.Subnet6, PublicIP: a.PublicIP6, VtepMAC: a.VtepMAC6}
	if err := peer.CheckLease(&p6, c.Rules6()); err != nil {
		return fmt.Errorf("IPv6 half: %w", err)
	}
	return nil
}

// Rules is the part of the config the lease rulebook (package peer) checks
// leases' first half against.
func (c Config) Rules() peer.Network { return c.first().rules() }

// Rules6 is what a dual-stack lease's IPv6 half is checked against.
func (c Config) Rules6() peer.Network { return c.IPv6.rules() }

func (f Family) rules() peer.Network {
	return peer.Network{Prefix: f.Network, SubnetLen: f.SubnetLen, SubnetMin: f.SubnetMin, SubnetMax: f.SubnetMax}
}

func usablePublicIP(a netip.Addr) error {
	switch {
	case !a.IsValid():
		return errors.New("PublicIP missing")
	case a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(), a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return fmt.Errorf("PublicIP %v: not a usable unicast address", a)
	}
	return nil
}
