package rtnl

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// OpKind is what one kernel change does.
type OpKind uint8

// The kinds in the order a plan applies them: additions and replacements
// FDB, neighbour, route, then removals route, neighbour, FDB. A peer's new
// entries are thus in place before its old ones go (make-before-break), and a
// route never points at a neighbour that is not there yet.
const (
	FDBSet OpKind = iota
	NeighSet
	RouteSet
	RouteDel
	NeighDel
	FDBDel
	NumOpKinds
)

// Op is one change to a route, neighbour or FDB entry on the device.
type Op struct {
	Kind OpKind
	// Routes: Dst via gw (the peer's VTEP address) with metric.
	// Neighbours: ip (the VTEP address) lladdr mac.
	// FDB: mac Dst ip (the peer's public address).
	Dst    netip.Prefix
	IP     netip.Addr
	MAC    MAC
	Metric uint32
	// Removals of entries found by a dump carry what identifies them in
	// the kernel beyond the fields above (zero for our own entries).
	TOS      uint8
	NHID     uint32 // route through a nexthop object
	OIF      int    // route through another device (-1: through none); for RouteSet, a direct route: "dst via IP dev OIF", not onlink
	Port     uint16 // FDB remote's UDP port (NDA_PORT)
	VNI      uint32 // FDB remote's VNI (NDA_VNI), valid when hasVNI
	HasVNI   bool
	RemoteIf uint32 // FDB remote's outgoing interface (NDA_IFINDEX)
}

// String is the op as the fake kernel logs it and errors name it.
func (o *Op) String() string {
	switch o.Kind {
	case FDBSet:
		return fmt.Sprintf("fdb replace %v dst %v", o.MAC, o.IP)
	case NeighSet:
		return fmt.Sprintf("neigh replace %v lladdr %v", o.IP, o.MAC)
	case RouteSet:
		if o.OIF > 0 {
			return fmt.Sprintf("route replace %v via %v dev %d", o.Dst, o.IP, o.OIF)
		}
		return fmt.Sprintf("route replace %v", o.Dst)
	case RouteDel:
		return fmt.Sprintf("route del %v", o.Dst)
	case NeighDel:
		return fmt.Sprintf("neigh del %v", o.IP)
	case FDBDel:
		return fmt.Sprintf("fdb del %v dst %v", o.MAC, o.IP)
	}
	return fmt.Sprintf("op %d", o.Kind)
}

// Failure wraps err the way errors of Set and Reconcile phrase it.
func (o *Op) Failure(err error) error {
	switch o.Kind {
	case FDBSet:
		return fmt.Errorf("adding FDB entry %v dst %v: %w", o.MAC, o.IP, err)
	case NeighSet:
		return fmt.Errorf("adding neighbour %v lladdr %v: %w", o.IP, o.MAC, err)
	case RouteSet:
		return fmt.Errorf("adding route to %v via %v: %w", o.Dst, o.IP, err)
	case RouteDel:
		return fmt.Errorf("removing route to %v: %w", o.Dst, err)
	case NeighDel:
		return fmt.Errorf("removing neighbour %v: %w", o.IP, err)
	case FDBDel:
		return fmt.Errorf("removing FDB entry %v dst %v: %w", o.MAC, o.IP, err)
	}
	return fmt.Errorf("%v: %w", o, err)
}

// AppendOp appends o as one netlink request on the device index, with
// sequence number seq.
func AppendOp(b []byte, o *Op, index int, seq uint32) []byte {
	const (
		set = unix.NLM_F_REQUEST | unix.NLM_F_CREATE | unix.NLM_F_REPLACE
		del = unix.NLM_F_REQUEST
	)
	switch o.Kind {
	case RouteSet, RouteDel:
		typ, flags := uint16(unix.RTM_NEWROUTE), uint16(set)
		proto, scope, rtype, rflags := uint8(RouteProtocol), uint8(unix.RT_SCOPE_UNIVERSE), uint8(unix.RTN_UNICAST), uint32(unix.RTNH_F_ONLINK)
		if o.Kind == RouteSet && o.OIF > 0 {
			rflags = 0 // a direct route: the gateway is on the device's link
		}
		if o.Kind == RouteDel {
			// Match by destination, TOS, metric and device (or
			// nexthop object), whatever the rest says.
			typ, flags = unix.RTM_DELROUTE, del
			proto, scope, rtype, rflags = 0, unix.RT_SCOPE_NOWHERE, 0, 0
		}
		start := len(b)
		b = appendHdr(b, typ, flags, seq)
		b = append(b, family(o.Dst.Addr()), uint8(o.Dst.Bits()), 0, o.TOS, unix.RT_TABLE_MAIN, proto, scope, rtype)
		b = ne.AppendUint32(b, rflags)
		b = appendAddr(b, unix.RTA_DST, o.Dst.Addr())
		switch {
		case o.Kind == RouteSet:
			oif := uint32(index)
			if o.OIF > 0 {
				oif = uint32(o.OIF)
			}
			b = appendAddr(b, unix.RTA_GATEWAY, o.IP)
			b = appendU32(b, unix.RTA_OIF, oif)
		case o.NHID != 0:
			b = appendU32(b, rtaNHID, o.NHID)
		case o.OIF > 0:
			b = appendU32(b, unix.RTA_OIF, uint32(o.OIF))
		case o.OIF == 0:
			b = appendU32(b, unix.RTA_OIF, uint32(index))
		}
		if o.Metric != 0 {
			b = appendU32(b, unix.RTA_PRIORITY, o.Metric)
		}
		return endMsg(b, start)

	case NeighSet, NeighDel:
		start := len(b)
		if o.Kind == NeighSet {
			b = appendHdr(b, unix.RTM_NEWNEIGH, set, seq)
			b = appendNdMsg(b, family(o.IP), index, unix.NUD_PERMANENT, 0)
			b = appendAddr(b, unix.NDA_DST, o.IP)
			b = AppendAttr(b, unix.NDA_LLADDR, o.MAC[:])
		} else {
			b = appendHdr(b, unix.RTM_DELNEIGH, del, seq)
			b = appendNdMsg(b, family(o.IP), index, 0, 0)
			b = appendAddr(b, unix.NDA_DST, o.IP)
		}
		return endMsg(b, start)

	case FDBSet, FDBDel:
		start := len(b)
		if o.Kind == FDBSet {
			b = appendHdr(b, unix.RTM_NEWNEIGH, set, seq)
			b = appendNdMsg(b, unix.AF_BRIDGE, index, unix.NUD_PERMANENT, unix.NTF_SELF)
		} else {
			b = appendHdr(b, unix.RTM_DELNEIGH, del, seq)
			b = appendNdMsg(b, unix.AF_BRIDGE, index, 0, unix.NTF_SELF)
		}
		b = AppendAttr(b, unix.NDA_LLADDR, o.MAC[:])
		if o.IP.IsValid() {
			b = appendAddr(b, unix.NDA_DST, o.IP)
		}
		if o.Port != 0 {
			b = AppendAttr(b, unix.NDA_PORT, []byte{byte(o.Port >> 8), byte(o.Port)}) // network order
		}
		if o.HasVNI {
			b = appendU32(b, unix.NDA_VNI, o.VNI)
		}
		if o.RemoteIf != 0 {
			b = appendU32(b, unix.NDA_IFINDEX, o.RemoteIf)
		}
		return endMsg(b, start)
	}
	panic(fmt.Sprintf("vxlan: unknown op kind %d", o.Kind))
}

func family(a netip.Addr) uint8 {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

// appendHdr appends a netlink header whose length endMsg fills in.
func appendHdr(b []byte, typ, flags uint16, seq uint32) []byte {
	b = ne.AppendUint32(b, 0)
	b = ne.AppendUint16(b, typ)
	b = ne.AppendUint16(b, flags)
	b = ne.AppendUint32(b, seq)
	return ne.AppendUint32(b, 0) // port id: the kernel fills in ours
}

func endMsg(b []byte, start int) []byte {
	ne.PutUint32(b[start:], uint32(len(b)-start))
	return b
}

// appendNdMsg appends a struct ndmsg with its padding zeroed (strict
// checking rejects requests whose padding is not).
func appendNdMsg(b []byte, fam uint8, index int, state uint16, flags uint8) []byte {
	b = append(b, fam, 0, 0, 0)
	b = ne.AppendUint32(b, uint32(index))
	b = ne.AppendUint16(b, state)
	return append(b, flags, 0) // flags, type
}

// AppendAttr appends a netlink attribute with value v, padded to 4 bytes.
// A nested attribute is appended with no value and closed by EndAttr.
func AppendAttr(b []byte, typ uint16, v []byte) []byte {
	b = ne.AppendUint16(b, uint16(rtaHdrLen+len(v)))
	b = ne.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

// EndAttr sets the length of the nested attribute that starts at start to
// what was appended since.
func EndAttr(b []byte, start int) {
	ne.PutUint16(b[start:], uint16(len(b)-start))
}

func appendU32(b []byte, typ uint16, v uint32) []byte {
	b = ne.AppendUint16(b, rtaHdrLen+4)
	b = ne.AppendUint16(b, typ)
	return ne.AppendUint32(b, v)
}

func appendAddr(b []byte, typ uint16, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return AppendAttr(b, typ, v[:])
	}
	v := a.As16()
	return AppendAttr(b, typ, v[:])
}
