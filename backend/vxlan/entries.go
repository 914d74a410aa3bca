package vxlan

import (
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// mac is an Ethernet address as a comparable value: a cheap map key.
type mac [6]byte

// macOf converts hw; callers check its length first (a wrong one gives the
// zero mac).
func macOf(hw net.HardwareAddr) mac {
	var m mac
	if len(hw) == len(m) {
		copy(m[:], hw)
	}
	return m
}

func (m mac) hw() net.HardwareAddr { return net.HardwareAddr(m[:]) }

func (m mac) String() string { return m.hw().String() }

// unicast reports whether m can be a peer's VTEP MAC (and an FDB entry this
// package manages): not multicast, not all zeros (the default destination).
func (m mac) unicast() bool { return m[0]&1 == 0 && m != mac{} }

// The kernel's entries on the device, as a dump or an event shows them: only
// the fields that decide whether an entry is ours and right.
type (
	kRoute struct {
		dst    netip.Prefix
		gw     netip.Addr
		metric uint32
		tos    uint8
		proto  uint8
		scope  uint8
		typ    uint8
		onlink bool
		nhid   uint32
		table  uint32
		index  int
		// other is set when the route has something we never install:
		// a preferred source, several next hops, encapsulation, metrics
		// (mtu, window...), an expiry or a next hop through RTA_VIA.
		other bool
	}
	kNeigh struct {
		ip    netip.Addr
		mac   mac
		state uint16
		index int
	}
	kFDB struct {
		mac      mac
		dst      netip.Addr // invalid for a remote without an address
		state    uint16
		port     uint16
		vni      uint32
		hasVNI   bool
		remoteIf uint32
		nhid     bool // the remote is a nexthop group
		index    int
	}
)

func (n kNeigh) permanent() bool { return n.state&unix.NUD_PERMANENT != 0 }
func (f kFDB) permanent() bool   { return f.state&unix.NUD_PERMANENT != 0 }

// parseRoute reads an RTM_NEWROUTE or RTM_DELROUTE body.
func parseRoute(b []byte) (kRoute, error) {
	if len(b) < rtMsgLen {
		return kRoute{}, errShort
	}
	r := kRoute{tos: b[3], table: uint32(b[4]), proto: b[5], scope: b[6], typ: b[7], onlink: ne.Uint32(b[8:])&unix.RTNH_F_ONLINK != 0}
	fam, bits := b[0], int(b[1])
	var dst netip.Addr
	attrs(b[rtMsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_DST:
			dst, _ = netip.AddrFromSlice(v)
		case unix.RTA_GATEWAY:
			r.gw, _ = netip.AddrFromSlice(v)
		case unix.RTA_PRIORITY:
			if len(v) == 4 {
				r.metric = ne.Uint32(v)
			}
		case unix.RTA_OIF:
			if len(v) == 4 {
				r.index = int(ne.Uint32(v))
			}
		case unix.RTA_TABLE:
			if len(v) == 4 {
				r.table = ne.Uint32(v)
			}
		case rtaNHID:
			if len(v) == 4 {
				r.nhid = ne.Uint32(v)
			}
		case unix.RTA_PREFSRC, unix.RTA_MULTIPATH, unix.RTA_ENCAP, unix.RTA_METRICS, unix.RTA_EXPIRES, unix.RTA_VIA:
			r.other = true
		}
	})
	if !dst.IsValid() {
		dst = netip.IPv4Unspecified()
		if fam == unix.AF_INET6 {
			dst = netip.IPv6Unspecified()
		}
	}
	r.dst = netip.PrefixFrom(dst, bits)
	return r, nil
}

// parseNeigh reads an RTM_NEWNEIGH or RTM_DELNEIGH body of the IPv4 or IPv6
// neighbour table.
func parseNeigh(b []byte) (kNeigh, error) {
	if len(b) < ndMsgLen {
		return kNeigh{}, errShort
	}
	n := kNeigh{index: int(int32(ne.Uint32(b[4:]))), state: ne.Uint16(b[8:])}
	attrs(b[ndMsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NDA_DST:
			a, _ := netip.AddrFromSlice(v)
			n.ip = a.Unmap()
		case unix.NDA_LLADDR:
			if len(v) == 6 {
				n.mac = mac(v)
			}
		}
	})
	return n, nil
}

// parseFDB reads an RTM_NEWNEIGH or RTM_DELNEIGH body of the VXLAN FDB
// (family AF_BRIDGE): one remote of one MAC.
func parseFDB(b []byte) (kFDB, error) {
	if len(b) < ndMsgLen {
		return kFDB{}, errShort
	}
	f := kFDB{index: int(int32(ne.Uint32(b[4:]))), state: ne.Uint16(b[8:])}
	attrs(b[ndMsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NDA_LLADDR:
			if len(v) == 6 {
				f.mac = mac(v)
			}
		case unix.NDA_DST:
			a, _ := netip.AddrFromSlice(v)
			f.dst = a.Unmap()
		case unix.NDA_PORT:
			if len(v) == 2 {
				f.port = uint16(v[0])<<8 | uint16(v[1])
			}
		case unix.NDA_VNI:
			if len(v) == 4 {
				f.vni, f.hasVNI = ne.Uint32(v), true
			}
		case unix.NDA_IFINDEX:
			if len(v) == 4 {
				f.remoteIf = ne.Uint32(v)
			}
		case ndaNHID:
			f.nhid = true
		}
	})
	return f, nil
}
