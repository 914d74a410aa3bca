// Package peer says what a peer of the overlay is, and holds the one
// rulebook that decides whether a lease may become one.
//
// A lease in etcd is written by whoever can write the subnets prefix, and
// everything weftd programs for a peer comes from it: a route to its subnet,
// a neighbour entry for its VTEP MAC and an FDB entry sending that MAC's
// frames to its PublicIP. A hostile or broken lease can therefore point
// traffic anywhere: at a loopback or broadcast address, at another node's
// MAC, at a subnet that carries the node's own underlay. The rules below
// refuse all of that. They are used by both sides that see peers: the
// subnet package, which turns leases into peer snapshots and rejects what
// breaks them (with the etcd facts it alone has: which of two claims is
// older), and backend/vxlan, which checks its own input again with the
// facts it has, so that no caller of Set can make it program a bad entry.
//
// The package is a leaf: addresses in, verdicts out, no I/O. A rejected peer
// is never an error of the caller's operation: it is skipped, reported once,
// and the rest of the peers are programmed.
package peer

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Peer is one other node of the overlay, as its lease in etcd describes it.
//
// A dual-stack lease has two halves, one per address family, each with its
// own subnet, underlay address and VXLAN device (flannel's BackendData and
// BackendV6Data): the first three fields are the lease's first half (IPv4,
// or IPv6 in an IPv6-only network), and V6 points to a dual-stack lease's
// IPv6 half, a Peer of its own (nil for a single-family lease). The rules
// below and backend/vxlan judge one half at a time (Half); one VXLAN device
// per family programs its half of every peer. A pointer, not three more
// fields: snapshots of thousands of peers are copied on every change, and a
// v4-only node should not copy a twice as large Peer for nothing.
type Peer struct {
	// Subnet is the peer's container subnet, for example 172.16.78.0/24.
	Subnet netip.Prefix
	// PublicIP is the peer's underlay address, where its VXLAN packets go.
	PublicIP netip.Addr
	// VtepMAC is the MAC address of the peer's VXLAN device.
	VtepMAC net.HardwareAddr

	// V6 is a dual-stack peer's IPv6 half: its container /64 (for example
	// fd42:0:0:1c::/64), its PublicIPv6 and the MAC of its flannel-v6
	// device. Never shared with another Peer's, never changed once made.
	V6 *Peer
}

// Half returns the half of p of one family (v6 or not) as a Peer of its
// own, in the first three fields, and whether p has that half.
func (p *Peer) Half(v6 bool) (Peer, bool) {
	if v6 {
		if p.V6 == nil {
			return Peer{}, false
		}
		return Peer{Subnet: p.V6.Subnet, PublicIP: p.V6.PublicIP, VtepMAC: p.V6.VtepMAC}, p.V6.Subnet.IsValid()
	}
	return Peer{Subnet: p.Subnet, PublicIP: p.PublicIP, VtepMAC: p.VtepMAC}, p.Subnet.IsValid()
}

// Halves appends to dst the halves of one family of the peers that have
// one, in order (peers sorted by subnet give halves sorted by subnet, as
// far as the other family allows; backend/vxlan sorts what is not).
func Halves(dst, peers []Peer, v6 bool) []Peer {
	for i := range peers {
		if h, ok := peers[i].Half(v6); ok {
			dst = append(dst, h)
		}
	}
	return dst
}

// SingleFamily reports whether every peer has its v4 half and none a v6
// half: the peers are then their own v4 halves, and need no copy.
func SingleFamily(peers []Peer) bool {
	for i := range peers {
		if peers[i].V6 != nil || !peers[i].Subnet.IsValid() {
			return false
		}
	}
	return true
}

// Network is what the cluster's config says every lease must fit. The zero
// Network checks nothing (backend/vxlan, which is not told the config).
type Network struct {
	Prefix    netip.Prefix // e.g. 172.16.0.0/12
	SubnetLen int          // e.g. 24
	// SubnetMin and SubnetMax bound the subnets' addresses, inclusive.
	SubnetMin, SubnetMax netip.Addr
}

// Self is what the rules need to know about this node.
type Self struct {
	Subnet   netip.Prefix // the node's own lease; zero before it has one
	PublicIP netip.Addr   // the node's underlay address
	VtepMAC  net.HardwareAddr
	// Underlay is the networks of the node's uplink: a subnet overlapping
	// one (unless it covers all of Network, like Foreign) and a PublicIP
	// equal to one of their broadcast addresses are refused.
	Underlay []netip.Prefix
	// Foreign is the destinations of this node's routes and addresses that
	// weft did not make. A peer subnet overlapping one would take traffic
	// the node already sends elsewhere (the underlay's network, an
	// operator's route), so that peer is skipped and the route left alone.
	// Routes that cover the whole Network (the default route) say nothing
	// about where containers live and are ignored.
	Foreign []netip.Prefix
}

var (
	classE = netip.MustParsePrefix("240.0.0.0/4")
	// IPv6 ranges that no peer's underlay address can be in, besides the
	// kinds checkPublicIP names: discard-only (RFC 6666), the deprecated
	// site-local and IPv4-compatible ranges (::127.0.0.1 is loopback in
	// disguise), and NAT64's well-known prefix (a peer's PublicIPv6 is its
	// own, never a translator's view of an IPv4 address).
	reserved6 = []netip.Prefix{
		netip.MustParsePrefix("100::/64"),
		netip.MustParsePrefix("fec0::/10"),
		netip.MustParsePrefix("::/96"),
		netip.MustParsePrefix("64:ff9b::/96"),
	}
	limitedBcast  = netip.AddrFrom4([4]byte{255, 255, 255, 255})
	errNoMAC      = errors.New("not a 6-byte Ethernet address")
	errZeroMAC    = errors.New("all zeros")
	errBcastMAC   = errors.New("the broadcast address")
	errMcastMAC   = errors.New("a multicast address")
	errOwnMAC     = errors.New("this node's own VTEP MAC")
	errBadSubnet  = errors.New("not a valid prefix")
	errNoPublicIP = errors.New("missing")
)

// CheckLease reports why p cannot be a peer in network n, judging only what
// the lease says: its subnet against the config, its MAC and its PublicIP by
// their kind. nil means it passes.
func CheckLease(p *Peer, n Network) error {
	if err := checkSubnet(p.Subnet, n); err != nil {
		return err
	}
	if err := checkMAC(p.VtepMAC); err != nil {
		return fmt.Errorf("VtepMAC %v: %w", p.VtepMAC, err)
	}
	if err := checkPublicIP(p.PublicIP); err != nil {
		return fmt.Errorf("PublicIP %v: %w", p.PublicIP, err)
	}
	if p.Subnet.Contains(p.PublicIP.Unmap()) {
		return fmt.Errorf("PublicIP %v: inside the lease's own subnet %v", p.PublicIP, p.Subnet)
	}
	return nil
}

// CheckAgainst reports why p cannot be a peer of this node: it is the node
// itself, or would collide with the node's own subnet, MAC, address, or a
// route of the node's that weft did not make. n says which of those routes
// cover the whole network and so are no collision.
func CheckAgainst(p *Peer, n Network, self *Self) error {
	pub := p.PublicIP.Unmap()
	if self.PublicIP.IsValid() {
		if pub.Is4() != self.PublicIP.Is4() {
			return fmt.Errorf("PublicIP %v: not of the family of this node's address %v", pub, self.PublicIP)
		}
		if pub == self.PublicIP.Unmap() {
			return fmt.Errorf("PublicIP %v: this node's own address", pub)
		}
	}
	if s := self.Subnet; s.IsValid() {
		if p.Subnet.Addr().Is4() != s.Addr().Is4() {
			return fmt.Errorf("subnet %v: not of the family of this node's subnet %v", p.Subnet, s)
		}
		if p.Subnet.Overlaps(s) {
			return fmt.Errorf("subnet %v: overlaps this node's own subnet %v", p.Subnet, s)
		}
		if s.Contains(pub) {
			return fmt.Errorf("PublicIP %v: inside this node's own subnet %v", pub, s)
		}
	}
	if len(self.VtepMAC) == 6 && len(p.VtepMAC) == 6 && [6]byte(self.VtepMAC) == [6]byte(p.VtepMAC) {
		return fmt.Errorf("VtepMAC %v: %w", p.VtepMAC, errOwnMAC)
	}
	if a := self.PublicIP.Unmap(); a.IsValid() && p.Subnet.Contains(a) {
		return fmt.Errorf("subnet %v: contains this node's address %v", p.Subnet, a)
	}
	for _, u := range self.Underlay {
		if u.Overlaps(p.Subnet) && !n.coveredBy(u) {
			return fmt.Errorf("subnet %v: overlaps the underlay %v", p.Subnet, u)
		}
		if u.Addr().Is4() && u.Bits() < 31 && pub == lastAddr(u) {
			return fmt.Errorf("PublicIP %v: the broadcast address of the underlay %v", pub, u)
		}
	}
	for _, f := range self.Foreign {
		if f.Overlaps(p.Subnet) && !n.coveredBy(f) {
			return fmt.Errorf("subnet %v: overlaps %v, a route or address of this node that weft did not make", p.Subnet, f)
		}
	}
	return nil
}

// coveredBy reports whether route f covers all of n (a default route, or a
// summary route for the whole overlay): such a route is less specific than
// any peer's and takes none of its traffic.
func (n Network) coveredBy(f netip.Prefix) bool {
	if f.Bits() == 0 {
		return true
	}
	return n.Prefix.IsValid() && f.Bits() <= n.Prefix.Bits() && f.Contains(n.Prefix.Addr())
}

// Check applies CheckLease and CheckAgainst.
func Check(p *Peer, n Network, self *Self) error {
	if err := CheckLease(p, n); err != nil {
		return err
	}
	return CheckAgainst(p, n, self)
}

// Block is the subnet of network n that address a falls in, if a lies
// inside n's prefix: a PublicIP inside a leased subnet would send the
// peer's VXLAN packets into the overlay itself, so callers that know every
// lease refuse a peer whose PublicIP's block is leased.
func (n Network) Block(a netip.Addr) (netip.Prefix, bool) {
	a = a.Unmap()
	if !n.Prefix.IsValid() || n.SubnetLen == 0 || n.SubnetLen < n.Prefix.Bits() || !n.Prefix.Contains(a) {
		return netip.Prefix{}, false
	}
	b, err := a.Prefix(n.SubnetLen)
	return b, err == nil
}

func checkSubnet(s netip.Prefix, n Network) error {
	if !s.IsValid() {
		return fmt.Errorf("subnet %v: %w", s, errBadSubnet)
	}
	if s.Masked() != s {
		return fmt.Errorf("subnet %v: has host bits set", s)
	}
	a := s.Addr()
	if a.IsUnspecified() || a.IsLoopback() || a.IsMulticast() || a.IsLinkLocalUnicast() || classE.Contains(a) {
		return fmt.Errorf("subnet %v: not a unicast range", s)
	}
	if !n.Prefix.IsValid() {
		return nil
	}
	switch {
	case a.Is4() != n.Prefix.Addr().Is4():
		return fmt.Errorf("subnet %v: not of the family of Network %v", s, n.Prefix)
	case n.SubnetLen != 0 && s.Bits() != n.SubnetLen:
		return fmt.Errorf("subnet %v: length is not /%d", s, n.SubnetLen)
	case !n.Prefix.Contains(a) || s.Bits() < n.Prefix.Bits():
		return fmt.Errorf("subnet %v: outside Network %v", s, n.Prefix)
	case n.SubnetMin.IsValid() && a.Less(n.SubnetMin):
		return fmt.Errorf("subnet %v: below SubnetMin %v", s, n.SubnetMin)
	case n.SubnetMax.IsValid() && n.SubnetMax.Less(a):
		return fmt.Errorf("subnet %v: above SubnetMax %v", s, n.SubnetMax)
	}
	return nil
}

func checkMAC(m net.HardwareAddr) error {
	switch {
	case len(m) != 6:
		return errNoMAC
	case [6]byte(m) == [6]byte{}:
		return errZeroMAC
	case [6]byte(m) == [6]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}:
		return errBcastMAC
	case m[0]&1 != 0:
		return errMcastMAC
	}
	return nil
}

func checkPublicIP(a netip.Addr) error {
	a = a.Unmap()
	switch {
	case !a.IsValid():
		return errNoPublicIP
	case a.IsUnspecified():
		return errors.New("unspecified")
	case a.IsLoopback():
		return errors.New("loopback")
	case a.IsLinkLocalUnicast():
		return errors.New("link-local")
	case a.IsMulticast(), a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		return errors.New("multicast")
	case a == limitedBcast:
		return errors.New("the limited broadcast address")
	case classE.Contains(a):
		return errors.New("reserved (240.0.0.0/4)")
	case a.Zone() != "":
		return errors.New("has a zone")
	}
	if a.Is6() {
		for _, r := range reserved6 {
			if r.Contains(a) {
				return fmt.Errorf("reserved (%v)", r)
			}
		}
	}
	return nil
}

// lastAddr is the last address of p (its broadcast address for IPv4).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	host := len(b)*8 - p.Bits()
	for i := len(b) - 1; i >= 0 && host > 0; i-- {
		n := min(host, 8)
		b[i] |= byte(1<<n - 1)
		host -= n
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}
