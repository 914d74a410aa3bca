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
type Config struct {
	Network   netip.Prefix // the whole overlay, e.g. 172.16.0.0/12
	SubnetLen int          // prefix length of each node's subnet
	SubnetMin netip.Addr   // network address of the lowest subnet handed out
	SubnetMax netip.Addr   // network address of the highest subnet handed out
	Backend   BackendConfig
}

// BackendConfig is the "Backend" object of the config.
type BackendConfig struct {
	Type string // always "vxlan"
	VNI  uint32 // 1..16777215
	Port uint16 // UDP destination port
	MTU  int    // 0 = derive from the underlay device
}

// rawConfig is the wire form. Fields are raw so that each one can be parsed
// on its own and an error can name it. encoding/json matches names
// case-insensitively and ignores unknown fields, as flannel does.
type rawConfig struct {
	Network    json.RawMessage
	SubnetLen  json.RawMessage
	SubnetMin  json.RawMessage
	SubnetMax  json.RawMessage
	Backend    json.RawMessage
	EnableIPv4 json.RawMessage
	EnableIPv6 json.RawMessage
}

type rawBackend struct {
	Type json.RawMessage
	VNI  json.RawMessage
	Port json.RawMessage
	MTU  json.RawMessage
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
	if present(raw.EnableIPv4) {
		if v4, err := parseBool("EnableIPv4", raw.EnableIPv4); err != nil {
			return Config{}, err
		} else if !v4 {
			return Config{}, fieldErr("EnableIPv4", raw.EnableIPv4, "IPv6-only networks are not supported")
		}
	}
	if present(raw.EnableIPv6) {
		if v6, err := parseBool("EnableIPv6", raw.EnableIPv6); err != nil {
			return Config{}, err
		} else if v6 {
			return Config{}, fieldErr("EnableIPv6", raw.EnableIPv6, "not supported")
		}
	}

	if !present(raw.Network) {
		return Config{}, fieldErr("Network", nil, "missing (e.g. \"172.16.0.0/12\")")
	}
	s, err := parseString("Network", raw.Network)
	if err != nil {
		return Config{}, err
	}
	c.Network, err = netip.ParsePrefix(s)
	switch {
	case err != nil:
		return Config{}, fieldErr("Network", raw.Network, "not a CIDR prefix")
	case !c.Network.Addr().Is4():
		return Config{}, fieldErr("Network", raw.Network, "must be IPv4")
	case c.Network.Masked() != c.Network:
		return Config{}, fieldErr("Network", raw.Network, fmt.Sprintf("host bits set (did you mean %v?)", c.Network.Masked()))
	case c.Network.Bits() > 28:
		return Config{}, fieldErr("Network", raw.Network, "too small: the prefix length must be at most 28")
	case c.Network.Bits() < 8:
		return Config{}, fieldErr("Network", raw.Network, "too large: the prefix length must be at least 8")
	}
	for _, sp := range specialNets {
		if sp.p.Overlaps(c.Network) {
			return Config{}, fieldErr("Network", raw.Network, fmt.Sprintf("overlaps %v (%s)", sp.p, sp.what))
		}
	}

	nb := c.Network.Bits()
	switch {
	case present(raw.SubnetLen) && string(bytes.TrimSpace(raw.SubnetLen)) != "0": // flannel: 0 = default
		n, err := parseInt("SubnetLen", raw.SubnetLen, int64(nb+2), 30, " (Network's prefix length + 2)")
		if err != nil {
			return Config{}, err
		}
		c.SubnetLen = int(n)
	case nb <= 22:
		c.SubnetLen = 24
	default:
		c.SubnetLen = nb + 2
	}

	if c.SubnetMin, err = parseBound("SubnetMin", raw.SubnetMin, c); err != nil {
		return Config{}, err
	}
	if !c.SubnetMin.IsValid() {
		c.SubnetMin, _ = ip.Nth(c.Network, 1<<(32-c.SubnetLen)) // skip the first subnet, like flannel
	}
	if c.SubnetMax, err = parseBound("SubnetMax", raw.SubnetMax, c); err != nil {
		return Config{}, err
	}
	if !c.SubnetMax.IsValid() {
		last, _ := ip.Last(c.Network).Prefix(c.SubnetLen)
		c.SubnetMax = last.Addr()
	}
	if c.SubnetMax.Less(c.SubnetMin) {
		return Config{}, fmt.Errorf("config: SubnetMin %v is above SubnetMax %v", c.SubnetMin, c.SubnetMax)
	}
	if n := ip.Count(c.SubnetLen, c.SubnetMin, c.SubnetMax); n < 2 {
		return Config{}, fmt.Errorf("config: SubnetLen %d with SubnetMin %v and SubnetMax %v leaves %d subnet, fewer than 2: an overlay needs two nodes",
			c.SubnetLen, c.SubnetMin, c.SubnetMax, n)
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
}

// parseBound parses SubnetMin or SubnetMax; a missing field yields the zero Addr.
func parseBound(field string, raw json.RawMessage, c Config) (netip.Addr, error) {
	if !present(raw) {
		return netip.Addr{}, nil
	}
	s, err := parseString(field, raw)
	if err != nil {
		return netip.Addr{}, err
	}
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil || !a.Is4():
		return netip.Addr{}, fieldErr(field, raw, "not an IPv4 address")
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
	return b, nil
}

// JSON returns the config in flannel's wire form, defaults written out, such
// that ParseConfig(c.JSON()) == c.
func (c Config) JSON() []byte {
	type backend struct {
		Type string
		VNI  uint32
		Port uint16
		MTU  int `json:",omitempty"`
	}
	out := struct {
		Network   string
		SubnetLen int
		SubnetMin string
		SubnetMax string
		Backend   backend
	}{c.Network.String(), c.SubnetLen, c.SubnetMin.String(), c.SubnetMax.String(),
		backend{c.Backend.Type, c.Backend.VNI, c.Backend.Port, c.Backend.MTU}}
	b, err := json.Marshal(out)
	if err != nil {
		panic(err) // only strings and integers: cannot fail
	}
	return b
}

// alloc is the allocation range of the config.
func (c Config) alloc() ip.Alloc {
	return ip.Alloc{Bits: c.SubnetLen, First: c.SubnetMin, Last: c.SubnetMax}
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
	return peer.CheckLease(&p, c.Rules())
}

// Rules is the part of the config the lease rulebook (package peer) checks
// leases against.
func (c Config) Rules() peer.Network {
	return peer.Network{Prefix: c.Network, SubnetLen: c.SubnetLen, SubnetMin: c.SubnetMin, SubnetMax: c.SubnetMax}
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
