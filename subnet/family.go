package subnet

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/ip"
)

// familyFields are one family's raw fields; prefix is "" for IPv4, "IPv6"
// for IPv6 (the names flannel gives them).
type familyFields struct {
	prefix                                   string
	Network, SubnetLen, SubnetMin, SubnetMax json.RawMessage
}

// parseFamily parses and checks one family's network and subnet range, with
// flannel's defaults.
func parseFamily(fr familyFields) (Family, error) {
	v6 := fr.prefix != ""
	name := func(f string) string { return fr.prefix + f }
	var c Family
	if !present(fr.Network) {
		example := `"172.16.0.0/12"`
		if v6 {
			example = `"fd42::/48"`
		}
		return c, fieldErr(name("Network"), nil, "missing (e.g. "+example+")")
	}
	s, err := parseString(name("Network"), fr.Network)
	if err != nil {
		return c, err
	}
	c.Network, err = netip.ParsePrefix(s)
	maxBits, maxSub := 28, 30
	if v6 {
		maxBits, maxSub = 126, 128
	}
	switch {
	case err != nil:
		return c, fieldErr(name("Network"), fr.Network, "not a CIDR prefix")
	case !v6 && !c.Network.Addr().Is4():
		return c, fieldErr(name("Network"), fr.Network, "must be IPv4")
	case v6 && (!c.Network.Addr().Is6() || c.Network.Addr().Is4In6()):
		return c, fieldErr(name("Network"), fr.Network, "must be IPv6")
	case c.Network.Masked() != c.Network:
		return c, fieldErr(name("Network"), fr.Network, fmt.Sprintf("host bits set (did you mean %v?)", c.Network.Masked()))
	case c.Network.Bits() > maxBits:
		return c, fieldErr(name("Network"), fr.Network, fmt.Sprintf("too small: the prefix length must be at most %d", maxBits))
	case c.Network.Bits() < 8:
		return c, fieldErr(name("Network"), fr.Network, "too large: the prefix length must be at least 8")
	}
	for _, sp := range specialNets {
		if sp.p.Overlaps(c.Network) {
			return c, fieldErr(name("Network"), fr.Network, fmt.Sprintf("overlaps %v (%s)", sp.p, sp.what))
		}
	}

	nb := c.Network.Bits()
	switch {
	case present(fr.SubnetLen) && string(bytes.TrimSpace(fr.SubnetLen)) != "0": // flannel: 0 = default
		n, err := parseInt(name("SubnetLen"), fr.SubnetLen, int64(nb+2), int64(maxSub), " (Network's prefix length + 2)")
		if err != nil {
			return c, err
		}
		c.SubnetLen = int(n)
	case v6 && nb <= 62: // flannel: /64, or two more than a smaller network's
		c.SubnetLen = 64
	case !v6 && nb <= 22:
		c.SubnetLen = 24
	default:
		c.SubnetLen = nb + 2
	}

	if c.SubnetMin, err = parseBound(name("SubnetMin"), fr.SubnetMin, c); err != nil {
		return c, err
	}
	if !c.SubnetMin.IsValid() {
		// Skip the first subnet, like flannel.
		c.SubnetMin = secondSubnet(c.Network, c.SubnetLen)
	}
	if c.SubnetMax, err = parseBound(name("SubnetMax"), fr.SubnetMax, c); err != nil {
		return c, err
	}
	if !c.SubnetMax.IsValid() {
		last, _ := ip.Last(c.Network).Prefix(c.SubnetLen)
		c.SubnetMax = last.Addr()
	}
	if c.SubnetMax.Less(c.SubnetMin) {
		return c, fmt.Errorf("config: %s %v is above %s %v", name("SubnetMin"), c.SubnetMin, name("SubnetMax"), c.SubnetMax)
	}
	if n := ip.Count(c.SubnetLen, c.SubnetMin, c.SubnetMax); n < 2 {
		return c, fmt.Errorf("config: %s %d with %s %v and %s %v leaves %d subnet, fewer than 2: an overlay needs two nodes",
			name("SubnetLen"), c.SubnetLen, name("SubnetMin"), c.SubnetMin, name("SubnetMax"), c.SubnetMax, n)
	}
	return c, nil
}

// secondSubnet is the network address of the second /bits of n.
func secondSubnet(n netip.Prefix, bits int) netip.Addr {
	i := 0
	for p := range ip.Subnets(n, bits) {
		if i == 1 {
			return p.Addr()
		}
		i++
	}
	return netip.Addr{}
}

// first is the config of the leases' first subnet.
func (c Config) first() Family {
	return Family{Network: c.Network, SubnetLen: c.SubnetLen, SubnetMin: c.SubnetMin, SubnetMax: c.SubnetMax}
}
