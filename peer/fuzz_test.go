package peer

import (
	"bytes"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
)

// FuzzCheck gives the rulebook arbitrary peers, networks and nodes. It must
// not panic, must say the same through Check as through its two halves, and
// whatever it accepts must be something weftd may program: a unicast MAC
// that is not ours, a usable PublicIP outside every subnet it knows of, and
// a subnet inside Network that takes nothing from this node.
func FuzzCheck(f *testing.F) {
	v4 := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }
	mac := func(s string) []byte {
		m, err := net.ParseMAC(s)
		if err != nil {
			panic(err)
		}
		return m
	}
	type seed struct {
		sub               string
		pub, mac          string
		network           string
		subLen            uint8
		min, max          string
		selfSub, selfIP   string
		selfMAC           string
		underlay, foreign string
	}
	for _, s := range []seed{
		// node2 of the reference layout, as node1 sees it.
		{"172.16.78.0/24", "172.17.42.32", "0a:00:00:00:00:4e", "172.16.0.0/12", 24, "172.16.1.0", "172.31.255.0",
			"172.16.28.0/24", "172.17.42.31", "0a:00:00:00:00:1c", "172.17.0.0/16", "0.0.0.0/0"},
		{"172.16.78.0/24", "172.17.255.255", "0a:00:00:00:00:4e", "172.16.0.0/12", 24, "172.16.1.0", "172.31.255.0",
			"172.16.28.0/24", "172.17.42.31", "0a:00:00:00:00:1c", "172.17.0.0/16", "172.16.0.0/12"},
		{"172.17.42.0/24", "172.16.28.9", "ff:ff:ff:ff:ff:ff", "172.16.0.0/12", 24, "172.16.1.0", "172.31.255.0",
			"172.16.28.0/24", "172.17.42.31", "0a:00:00:00:00:1c", "172.17.0.0/16", "172.17.0.0/16"},
		{"10.244.3.0/24", "192.0.2.3", "02:42:ac:11:00:03", "10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0",
			"10.244.1.0/24", "192.0.2.1", "02:42:ac:11:00:01", "192.0.2.0/24", "10.244.3.128/25"},
		// The backend's view: no Network.
		{"172.16.5.0/24", "::ffff:172.17.42.5", "0a:00:00:00:00:05", "", 0, "", "",
			"172.16.1.0/24", "172.17.42.1", "0a:00:00:00:00:01", "", ""},
		{"fd00:1:0:5::/64", "2001:db8::5", "0a:00:00:00:00:05", "fd00:1::/48", 64, "fd00:1:0:1::", "fd00:1:0:ff::",
			"fd00:1:0:1::/64", "2001:db8::1", "0a:00:00:00:00:01", "2001:db8::/64", "::/0"},
	} {
		pre := func(s string) ([]byte, uint8) {
			if s == "" {
				return nil, 0
			}
			p := netip.MustParsePrefix(s)
			return p.Addr().AsSlice(), uint8(p.Bits())
		}
		addr := func(s string) []byte {
			if s == "" {
				return nil
			}
			return v4(s)
		}
		sub, subBits := pre(s.sub)
		nw, nwBits := pre(s.network)
		ss, ssBits := pre(s.selfSub)
		u, uBits := pre(s.underlay)
		fo, foBits := pre(s.foreign)
		f.Add(sub, subBits, addr(s.pub), mac(s.mac), nw, nwBits, s.subLen, addr(s.min), addr(s.max),
			ss, ssBits, addr(s.selfIP), mac(s.selfMAC), u, uBits, fo, foBits)
	}

	f.Fuzz(func(t *testing.T, sub []byte, subBits uint8, pub, vtep []byte, nw []byte, nwBits, subLen uint8,
		minA, maxA []byte, selfSub []byte, selfBits uint8, selfIP, selfMAC []byte,
		under []byte, underBits uint8, foreign []byte, foreignBits uint8) {
		pfx := func(b []byte, bits uint8) netip.Prefix {
			a, _ := netip.AddrFromSlice(b)
			return netip.PrefixFrom(a, int(bits)) // invalid if bits is too long
		}
		addr := func(b []byte) netip.Addr {
			a, _ := netip.AddrFromSlice(b)
			return a
		}
		p := Peer{Subnet: pfx(sub, subBits), PublicIP: addr(pub), VtepMAC: net.HardwareAddr(vtep)}
		n := Network{Prefix: pfx(nw, nwBits).Masked(), SubnetLen: int(subLen), SubnetMin: addr(minA), SubnetMax: addr(maxA)}
		self := Self{Subnet: pfx(selfSub, selfBits).Masked(), PublicIP: addr(selfIP), VtepMAC: net.HardwareAddr(selfMAC)}
		if u := pfx(under, underBits); u.IsValid() {
			self.Underlay = []netip.Prefix{u}
		}
		if fr := pfx(foreign, foreignBits); fr.IsValid() {
			self.Foreign = []netip.Prefix{fr}
		}
		before := p
		before.VtepMAC = bytes.Clone(p.VtepMAC)

		err := Check(&p, n, &self)
		if p.Subnet != before.Subnet || p.PublicIP != before.PublicIP || !bytes.Equal(p.VtepMAC, before.VtepMAC) {
			t.Fatalf("Check changed the peer: %+v, was %+v", p, before)
		}
		halves := CheckLease(&p, n)
		if halves == nil {
			halves = CheckAgainst(&p, n, &self)
		}
		if (err == nil) != (halves == nil) {
			t.Fatalf("Check = %v, but CheckLease then CheckAgainst = %v", err, halves)
		}
		if b, ok := n.Block(p.PublicIP); ok {
			if b.Bits() != n.SubnetLen || !b.Contains(p.PublicIP.Unmap()) || !n.Prefix.Contains(b.Addr()) || b.Masked() != b {
				t.Fatalf("%+v.Block(%v) = %v", n, p.PublicIP, b)
			}
		}
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
		assertPeer(t, &p, n, &self)
	})
}

// assertPeer fails unless p is fit to program, by each rule stated on its
// own terms.
func assertPeer(t *testing.T, p *Peer, n Network, self *Self) {
	t.Helper()
	m := p.VtepMAC
	switch {
	case len(m) != 6:
		t.Fatalf("accepted VtepMAC %v: not 6 bytes", m)
	case bytes.Equal(m, make([]byte, 6)), m[0]&1 != 0:
		t.Fatalf("accepted VtepMAC %v: zero, multicast or broadcast", m)
	case bytes.Equal(m, self.VtepMAC):
		t.Fatalf("accepted VtepMAC %v: this node's", m)
	}

	a := p.PublicIP.Unmap()
	switch {
	case !a.IsValid(), a.IsUnspecified(), a.IsLoopback(), a.IsMulticast(), a.IsLinkLocalUnicast(),
		a.IsLinkLocalMulticast(), a.IsInterfaceLocalMulticast():
		t.Fatalf("accepted PublicIP %v: not a usable unicast address", p.PublicIP)
	case a.Is4() && a.As4()[0] >= 240:
		t.Fatalf("accepted PublicIP %v: class E or limited broadcast", p.PublicIP)
	case a.Zone() != "":
		t.Fatalf("accepted PublicIP %v with a zone", p.PublicIP)
	case p.Subnet.Contains(a):
		t.Fatalf("accepted PublicIP %v inside its own subnet %v", p.PublicIP, p.Subnet)
	}

	s := p.Subnet
	if !s.IsValid() || s.Masked() != s {
		t.Fatalf("accepted subnet %v: not a masked prefix", s)
	}
	if b := s.Addr(); b.IsUnspecified() || b.IsLoopback() || b.IsMulticast() || b.IsLinkLocalUnicast() ||
		(b.Is4() && b.As4()[0] >= 240) {
		t.Fatalf("accepted subnet %v: not a unicast range", s)
	}
	if n.Prefix.IsValid() {
		if !n.Prefix.Contains(s.Addr()) || s.Bits() < n.Prefix.Bits() {
			t.Fatalf("accepted subnet %v outside Network %v", s, n.Prefix)
		}
		if n.SubnetLen != 0 && s.Bits() != n.SubnetLen {
			t.Fatalf("accepted subnet %v: not /%d", s, n.SubnetLen)
		}
		if n.SubnetMin.IsValid() && s.Addr().Compare(n.SubnetMin) < 0 ||
			n.SubnetMax.IsValid() && s.Addr().Compare(n.SubnetMax) > 0 {
			t.Fatalf("accepted subnet %v outside %v..%v", s, n.SubnetMin, n.SubnetMax)
		}
	}

	if self.Subnet.IsValid() {
		if s.Overlaps(self.Subnet) || self.Subnet.Contains(a) {
			t.Fatalf("accepted %v (%v) against this node's subnet %v", s, a, self.Subnet)
		}
		if s.Addr().Is4() != self.Subnet.Addr().Is4() {
			t.Fatalf("accepted subnet %v beside this node's %v: two families", s, self.Subnet)
		}
	}
	if self.PublicIP.IsValid() && (a == self.PublicIP.Unmap() || a.Is4() != self.PublicIP.Is4()) {
		t.Fatalf("accepted PublicIP %v: this node's is %v", a, self.PublicIP)
	}
	if self.PublicIP.IsValid() && s.Contains(self.PublicIP.Unmap()) {
		t.Fatalf("accepted subnet %v over this node's address %v", s, self.PublicIP)
	}
	for _, u := range self.Underlay {
		if u.Overlaps(s) && !coversNetwork(u, n) {
			t.Fatalf("accepted subnet %v on the underlay %v", s, u)
		}
		if u.Addr().Is4() && u.Bits() < 31 && a.Is4() {
			bcast := binary.BigEndian.Uint32(u.Addr().AsSlice()) | (1<<(32-u.Bits()) - 1)
			if binary.BigEndian.Uint32(a.AsSlice()) == bcast {
				t.Fatalf("accepted PublicIP %v: broadcast of the underlay %v", a, u)
			}
		}
	}
	for _, fr := range self.Foreign {
		if fr.Overlaps(s) && !coversNetwork(fr, n) {
			t.Fatalf("accepted subnet %v over the foreign route %v", s, fr)
		}
	}
}

// coversNetwork reports whether route r takes in all of n: a default or
// summary route, which is no collision.
func coversNetwork(r netip.Prefix, n Network) bool {
	return r.Bits() == 0 || n.Prefix.IsValid() && r.Bits() <= n.Prefix.Bits() && r.Contains(n.Prefix.Addr())
}
