package rtnl

import (
	"net"
	"net/netip"

	"golang.org/x/sys/unix"
)

// MAC is an Ethernet address as a comparable value: a cheap map key.
type MAC [6]byte

// MACOf converts hw; callers check its length first (a wrong one gives the
// zero mac).
func MACOf(hw net.HardwareAddr) MAC {
	var m MAC
	if len(hw) == len(m) {
		copy(m[:], hw)
	}
	return m
}

func (m MAC) HW() net.HardwareAddr { return net.HardwareAddr(m[:]) }

func (m MAC) String() string { return m.HW().String() }

// Unicast reports whether m can be a peer's VTEP MAC (and an FDB entry this
// package manages): not multicast, not all zeros (the default destination).
func (m MAC) Unicast() bool { return m[0]&1 == 0 && m != MAC{} }

// The kernel's entries on the device, as a dump or an event shows them: only
// the fields that decide whether an entry is ours and right.
type (
	Route struct {
		Dst    netip.Prefix
		GW     netip.Addr
		Metric uint32
		TOS    uint8
		Proto  uint8
		Scope  uint8
		Type   uint8
		Onlink bool
		NHID   uint32
		Table  uint32
		Index  int
		// Other is set when the route has something we never install:
		// a preferred source, several next hops, encapsulation, metrics
		// (mtu, window...), an expiry or a next hop through RTA_VIA.
		Other bool
	}
	Neigh struct {
		IP    netip.Addr
		MAC   MAC
		State uint16
		Index int
	}
	FDB struct {
		MAC      MAC
		Dst      netip.Addr // invalid for a remote without an address
		State    uint16
		Port     uint16
		VNI      uint32
		HasVNI   bool
		RemoteIf uint32
		NHID     bool // the remote is a nexthop group
		Index    int
	}
)

func (n Neigh) Permanent() bool { return n.State&unix.NUD_PERMANENT != 0 }
func (f FDB) Permanent() bool   { return f.State&unix.NUD_PERMANENT != 0 }

// ParseRoute reads an RTM_NEWROUTE or RTM_DELROUTE body.
func ParseRoute(b []byte) (Route, error) {
	if len(b) < rtMsgLen {
		return Route{}, errShort
	}
	r := Route{TOS: b[3], Table: uint32(b[4]), Proto: b[5], Scope: b[6], Type: b[7], Onlink: ne.Uint32(b[8:])&unix.RTNH_F_ONLINK != 0}
	fam, bits := b[0], int(b[1])
	var dst netip.Addr
	Attrs(b[rtMsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_DST:
			dst, _ = netip.AddrFromSlice(v)
		case unix.RTA_GATEWAY:
			r.GW, _ = netip.AddrFromSlice(v)
		case unix.RTA_PRIORITY:
			if len(v) == 4 {
				r.Metric = ne.Uint32(v)
			}
		case unix.RTA_OIF:
			if len(v) == 4 {
				r.Index = int(ne.Uint32(v))
			}
		case unix.RTA_TABLE:
			if len(v) == 4 {
				r.Table = ne.Uint32(v)
			}
		case rtaNHID:
			if len(v) == 4 {
				r.NHID = ne.Uint32(v)
			}
		case unix.RTA_PREFSRC, unix.RTA_MULTIPATH, unix.RTA_ENCAP, unix.RTA_METRICS, unix.RTA_EXPIRES, unix.RTA_VIA:
			r.Other = true
		}
	})
	if !dst.IsValid() {
		dst = netip.IPv4Unspecified()
		if fam == unix.AF_INET6 {
			dst = netip.IPv6Unspecified()
		}
	}
	r.Dst = netip.PrefixFrom(dst, bits)
	return r, nil
}

// ParseNeigh reads an RTM_NEWNEIGH or RTM_DELNEIGH body of the IPv4 or IPv6
// neighbour table.
func ParseNeigh(b []byte) (Neigh, error) {
	if len(b) < ndMsgLen {
		return Neigh{}, errShort
	}
	n := Neigh{Index: int(int32(ne.Uint32(b[4:]))), State: ne.Uint16(b[8:])}
	Attrs(b[ndMsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NDA_DST:
			a, _ := netip.AddrFromSlice(v)
			n.IP = a.Unmap()
		case unix.NDA_LLADDR:
			if len(v) == 6 {
				n.MAC = MAC(v)
			}
		}
	})
	return n, nil
}

// ParseFDB reads an RTM_NEWNEIGH or RTM_DELNEIGH body of the VXLAN FDB
// (family AF_BRIDGE): one remote of one MAC.
func ParseFDB(b []byte) (FDB, error) {
	if len(b) < ndMsgLen {
		return FDB{}, errShort
	}
	f := FDB{Index: int(int32(ne.Uint32(b[4:]))), State: ne.Uint16(b[8:])}
	Attrs(b[ndMsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NDA_LLADDR:
			if len(v) == 6 {
				f.MAC = MAC(v)
			}
		case unix.NDA_DST:
			a, _ := netip.AddrFromSlice(v)
			f.Dst = a.Unmap()
		case unix.NDA_PORT:
			if len(v) == 2 {
				f.Port = uint16(v[0])<<8 | uint16(v[1])
			}
		case unix.NDA_VNI:
			if len(v) == 4 {
				f.VNI, f.HasVNI = ne.Uint32(v), true
			}
		case unix.NDA_IFINDEX:
			if len(v) == 4 {
				f.RemoteIf = ne.Uint32(v)
			}
		case ndaNHID:
			f.NHID = true
		}
	})
	return f, nil
}
