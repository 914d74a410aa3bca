package network

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"regexp"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Uplink is the interface VXLAN packets leave by, and the addresses that come with it.
type Uplink struct {
	Name     string
	Index    int
	MTU      int
	PublicIP netip.Addr     // where peers send this node's VXLAN packets
	Networks []netip.Prefix // the uplink's own networks: no peer subnet may sit on them
	// PublicIP6 is where peers send this node's IPv6 VXLAN packets
	// (--public-ipv6, else the uplink's first global IPv6 address); zero
	// when the uplink has none.
	PublicIP6 netip.Addr
}

// UplinkChoice is how the operator names the uplink, in flanneld's terms.
type UplinkChoice struct {
	Ifaces   []string // names or addresses, tried in order (--iface)
	Regexes  []string // matched against names and addresses (--iface-regex)
	PublicIP string   // overrides the address peers use (--public-ip)
	// PublicIP6 overrides the IPv6 address peers use (--public-ipv6).
	PublicIP6 string
}

// SelectUplink finds the uplink: the first --iface that exists, else the first
// interface matching an --iface-regex, else the interface of the default route,
// else the only interface with a global IPv4 address.
func SelectUplink(c UplinkChoice) (Uplink, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return Uplink{}, fmt.Errorf("listing interfaces: %w", err)
	}
	var chosen netlink.Link
	switch {
	case len(c.Ifaces) > 0:
		for _, want := range c.Ifaces {
			if chosen = findLink(links, want); chosen != nil {
				break
			}
		}
		if chosen == nil {
			return Uplink{}, fmt.Errorf("--iface %s: no such interface or address on this host", strings.Join(c.Ifaces, ","))
		}
	case len(c.Regexes) > 0:
		for _, expr := range c.Regexes {
			re, err := regexp.Compile(expr)
			if err != nil {
				return Uplink{}, fmt.Errorf("--iface-regex %q: %w", expr, err)
			}
			if chosen = matchLink(links, re); chosen != nil {
				break
			}
		}
		if chosen == nil {
			return Uplink{}, fmt.Errorf("--iface-regex %s: no interface matches", strings.Join(c.Regexes, ","))
		}
	default:
		if chosen, err = defaultLink(links); err != nil {
			return Uplink{}, err
		}
	}
	return describe(chosen, c.PublicIP, c.PublicIP6)
}

// globalV6 is l's global IPv6 addresses (ULAs included), in the kernel's
// order, without temporary and deprecated ones.
func globalV6(l netlink.Link) []netlink.Addr {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V6)
	if err != nil {
		return nil
	}
	var out []netlink.Addr
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if ok && ip.IsGlobalUnicast() && !ip.Is4In6() && a.Flags&(unix.IFA_F_TEMPORARY|unix.IFA_F_DEPRECATED|unix.IFA_F_TENTATIVE) == 0 {
			out = append(out, a)
		}
	}
	return out
}

// globalAddrs is l's global addresses of both families.
func globalAddrs(l netlink.Link) []netlink.Addr { return append(globalV4(l), globalV6(l)...) }

func globalV4(l netlink.Link) []netlink.Addr {
	addrs, err := netlink.AddrList(l, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	var out []netlink.Addr
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap().IsGlobalUnicast() {
			out = append(out, a)
		}
	}
	return out
}

func findLink(links []netlink.Link, want string) netlink.Link {
	addr, err := netip.ParseAddr(want)
	isAddr := err == nil
	for _, l := range links {
		if !isAddr && l.Attrs().Name == want {
			return l
		}
		if isAddr {
			for _, a := range globalAddrs(l) {
				if ip, _ := netip.AddrFromSlice(a.IP); ip.Unmap() == addr {
					return l
				}
			}
		}
	}
	return nil
}

func matchLink(links []netlink.Link, re *regexp.Regexp) netlink.Link {
	for _, l := range links {
		if re.MatchString(l.Attrs().Name) {
			return l
		}
		for _, a := range globalAddrs(l) {
			if re.MatchString(a.IP.String()) {
				return l
			}
		}
	}
	return nil
}

func defaultLink(links []netlink.Link) (netlink.Link, error) {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteList(nil, fam)
		if err != nil {
			continue
		}
		for _, r := range routes {
			if (r.Dst == nil || r.Dst.String() == "0.0.0.0/0" || r.Dst.String() == "::/0") && r.LinkIndex > 0 {
				return netlink.LinkByIndex(r.LinkIndex)
			}
		}
	}
	// No default route (as on the demo's namespace nodes): take the only
	// candidate, leaving out loopback and the bridges and tunnels that carry
	// containers rather than the underlay.
	var withAddr []netlink.Link
	for _, l := range links {
		switch l.Type() {
		case "vxlan", "bridge", "dummy":
			continue
		}
		if l.Attrs().Flags&net.FlagLoopback == 0 && len(globalAddrs(l)) > 0 {
			withAddr = append(withAddr, l)
		}
	}
	if len(withAddr) == 1 {
		return withAddr[0], nil
	}
	return nil, errors.New("no default route and no single interface with a global address: name the uplink with --iface")
}

func describe(l netlink.Link, publicIP, publicIP6 string) (Uplink, error) {
	u := Uplink{Name: l.Attrs().Name, Index: l.Attrs().Index, MTU: l.Attrs().MTU}
	addrs := globalV4(l)
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		u.Networks = append(u.Networks, netip.PrefixFrom(ip.Unmap(), ones).Masked())
	}
	if publicIP != "" {
		ip, err := netip.ParseAddr(publicIP)
		if err != nil || !ip.Is4() {
			return Uplink{}, fmt.Errorf("--public-ip %q: not an IPv4 address", publicIP)
		}
		u.PublicIP = ip
	} else if len(addrs) > 0 {
		u.PublicIP, _ = netip.AddrFromSlice(addrs[0].IP)
		u.PublicIP = u.PublicIP.Unmap()
	}
	addrs6 := globalV6(l)
	for _, a := range addrs6 {
		ip, _ := netip.AddrFromSlice(a.IP)
		ones, _ := a.Mask.Size()
		u.Networks = append(u.Networks, netip.PrefixFrom(ip, ones).Masked())
	}
	if publicIP6 != "" {
		ip, err := netip.ParseAddr(publicIP6)
		if err != nil || !ip.Is6() || ip.Is4In6() || ip.Zone() != "" {
			return Uplink{}, fmt.Errorf("--public-ipv6 %q: not an IPv6 address", publicIP6)
		}
		u.PublicIP6 = ip
	} else if len(addrs6) > 0 {
		u.PublicIP6, _ = netip.AddrFromSlice(addrs6[0].IP)
	}
	if !u.PublicIP.IsValid() && !u.PublicIP6.IsValid() {
		return Uplink{}, fmt.Errorf("interface %s has no global address: give --public-ip or --public-ipv6", u.Name)
	}
	return u, nil
}

// HostPrefixes lists the networks of this host's addresses and routes that weft
// did not make, which no subnet of the node's may overlap. Links named in skip
// (flannel.<VNI>) are weft's own. Default routes are left out: they overlap
// everything and say nothing about where containers may live.
func HostPrefixes(skip ...string) ([]netip.Prefix, error) { return HostPrefixesExcept(nil, skip...) }

// HostPrefixesExcept is HostPrefixes leaving out also the routes weft
// recognises as weft's (DirectRouting's routes through the uplink).
func HostPrefixesExcept(weft func(dst netip.Prefix, proto, metric int) bool, skip ...string) ([]netip.Prefix, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing interfaces: %w", err)
	}
	ours := map[int]bool{}
	for _, l := range links {
		for _, s := range skip {
			if l.Attrs().Name == s {
				ours[l.Attrs().Index] = true
			}
		}
	}
	var out []netip.Prefix
	for _, l := range links {
		if ours[l.Attrs().Index] {
			continue
		}
		for _, a := range globalV4(l) {
			ip, _ := netip.AddrFromSlice(a.IP)
			ones, _ := a.Mask.Size()
			out = append(out, netip.PrefixFrom(ip.Unmap(), ones).Masked())
		}
	}
	routes, err := netlink.RouteList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil, fmt.Errorf("listing routes: %w", err)
	}
	for _, r := range routes {
		if ours[r.LinkIndex] || r.Dst == nil {
			continue
		}
		p, ok := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		if !ok || ones == 0 {
			continue
		}
		dst := netip.PrefixFrom(p.Unmap(), ones).Masked()
		if weft != nil && weft(dst, int(r.Protocol), r.Priority) {
			continue
		}
		out = append(out, dst)
	}
	return out, nil
}
