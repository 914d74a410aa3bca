package vxlan

import (
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// opKind is what one kernel change does.
type opKind uint8

// The kinds in the order a plan applies them: additions and replacements
// FDB, neighbour, route, then removals route, neighbour, FDB. A peer's new
// entries are thus in place before its old ones go (make-before-break), and a
// route never points at a neighbour that is not there yet.
const (
	fdbSet opKind = iota
	neighSet
	routeSet
	routeDel
	neighDel
	fdbDel
	numOpKinds
)

// op is one change to a route, neighbour or FDB entry on the device.
type op struct {
	kind opKind
	// Routes: dst via gw (the peer's VTEP address) with metric.
	// Neighbours: ip (the VTEP address) lladdr mac.
	// FDB: mac dst ip (the peer's public address).
	dst    netip.Prefix
	ip     netip.Addr
	mac    mac
	metric uint32
	// Removals of entries found by a dump carry what identifies them in
	// the kernel beyond the fields above (zero for our own entries).
	tos      uint8
	nhid     uint32 // route through a nexthop object
	oif      int    // route through another device (-1: through none)
	port     uint16 // FDB remote's UDP port (NDA_PORT)
	vni      uint32 // FDB remote's VNI (NDA_VNI), valid when hasVNI
	hasVNI   bool
	remoteIf uint32 // FDB remote's outgoing interface (NDA_IFINDEX)
}

// String is the op as the fake kernel logs it and errors name it.
func (o *op) String() string {
	switch o.kind {
	case fdbSet:
		return fmt.Sprintf("fdb replace %v dst %v", o.mac, o.ip)
	case neighSet:
		return fmt.Sprintf("neigh replace %v lladdr %v", o.ip, o.mac)
	case routeSet:
		return fmt.Sprintf("route replace %v", o.dst)
	case routeDel:
		return fmt.Sprintf("route del %v", o.dst)
	case neighDel:
		return fmt.Sprintf("neigh del %v", o.ip)
	case fdbDel:
		return fmt.Sprintf("fdb del %v dst %v", o.mac, o.ip)
	}
	return fmt.Sprintf("op %d", o.kind)
}

// failure wraps err the way errors of Set and Reconcile phrase it.
func (o *op) failure(err error) error {
	switch o.kind {
	case fdbSet:
		return fmt.Errorf("adding FDB entry %v dst %v: %w", o.mac, o.ip, err)
	case neighSet:
		return fmt.Errorf("adding neighbour %v lladdr %v: %w", o.ip, o.mac, err)
	case routeSet:
		return fmt.Errorf("adding route to %v via %v: %w", o.dst, o.ip, err)
	case routeDel:
		return fmt.Errorf("removing route to %v: %w", o.dst, err)
	case neighDel:
		return fmt.Errorf("removing neighbour %v: %w", o.ip, err)
	case fdbDel:
		return fmt.Errorf("removing FDB entry %v dst %v: %w", o.mac, o.ip, err)
	}
	return fmt.Errorf("%v: %w", o, err)
}

// appendOp appends o as one netlink request on the device index, with
// sequence number seq.
func appendOp(b []byte, o *op, index int, seq uint32) []byte {
	const (
		set = unix.NLM_F_REQUEST | unix.NLM_F_CREATE | unix.NLM_F_REPLACE
		del = unix.NLM_F_REQUEST
	)
	switch o.kind {
	case routeSet, routeDel:
		typ, flags := uint16(unix.RTM_NEWROUTE), uint16(set)
		proto, scope, rtype, rflags := uint8(routeProtocol), uint8(unix.RT_SCOPE_UNIVERSE), uint8(unix.RTN_UNICAST), uint32(unix.RTNH_F_ONLINK)
		if o.kind == routeDel {
			// Match by destination, TOS, metric and device (or
			// nexthop object), whatever the rest says.
			typ, flags = unix.RTM_DELROUTE, del
			proto, scope, rtype, rflags = 0, unix.RT_SCOPE_NOWHERE, 0, 0
		}
		start := len(b)
		b = appendHdr(b, typ, flags, seq)
		b = append(b, family(o.dst.Addr()), uint8(o.dst.Bits()), 0, o.tos, unix.RT_TABLE_MAIN, proto, scope, rtype)
		b = ne.AppendUint32(b, rflags)
		b = appendAddr(b, unix.RTA_DST, o.dst.Addr())
		switch {
		case o.kind == routeSet:
			b = appendAddr(b, unix.RTA_GATEWAY, o.ip)
			b = appendU32(b, unix.RTA_OIF, uint32(index))
		case o.nhid != 0:
			b = appendU32(b, rtaNHID, o.nhid)
		case o.oif > 0:
			b = appendU32(b, unix.RTA_OIF, uint32(o.oif))
		case o.oif == 0:
			b = appendU32(b, unix.RTA_OIF, uint32(index))
		}
		if o.metric != 0 {
			b = appendU32(b, unix.RTA_PRIORITY, o.metric)
		}
		return endMsg(b, start)

	case neighSet, neighDel:
		start := len(b)
		if o.kind == neighSet {
			b = appendHdr(b, unix.RTM_NEWNEIGH, set, seq)
			b = appendNdMsg(b, family(o.ip), index, unix.NUD_PERMANENT, 0)
			b = appendAddr(b, unix.NDA_DST, o.ip)
			b = appendAttr(b, unix.NDA_LLADDR, o.mac[:])
		} else {
			b = appendHdr(b, unix.RTM_DELNEIGH, del, seq)
			b = appendNdMsg(b, family(o.ip), index, 0, 0)
			b = appendAddr(b, unix.NDA_DST, o.ip)
		}
		return endMsg(b, start)

	case fdbSet, fdbDel:
		start := len(b)
		if o.kind == fdbSet {
			b = appendHdr(b, unix.RTM_NEWNEIGH, set, seq)
			b = appendNdMsg(b, unix.AF_BRIDGE, index, unix.NUD_PERMANENT, unix.NTF_SELF)
		} else {
			b = appendHdr(b, unix.RTM_DELNEIGH, del, seq)
			b = appendNdMsg(b, unix.AF_BRIDGE, index, 0, unix.NTF_SELF)
		}
		b = appendAttr(b, unix.NDA_LLADDR, o.mac[:])
		if o.ip.IsValid() {
			b = appendAddr(b, unix.NDA_DST, o.ip)
		}
		if o.port != 0 {
			b = appendAttr(b, unix.NDA_PORT, []byte{byte(o.port >> 8), byte(o.port)}) // network order
		}
		if o.hasVNI {
			b = appendU32(b, unix.NDA_VNI, o.vni)
		}
		if o.remoteIf != 0 {
			b = appendU32(b, unix.NDA_IFINDEX, o.remoteIf)
		}
		return endMsg(b, start)
	}
	panic(fmt.Sprintf("vxlan: unknown op kind %d", o.kind))
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

func appendAttr(b []byte, typ uint16, v []byte) []byte {
	b = ne.AppendUint16(b, uint16(rtaHdrLen+len(v)))
	b = ne.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%4 != 0 {
		b = append(b, 0)
	}
	return b
}

func appendU32(b []byte, typ uint16, v uint32) []byte {
	b = ne.AppendUint16(b, rtaHdrLen+4)
	b = ne.AppendUint16(b, typ)
	return ne.AppendUint32(b, v)
}

func appendAddr(b []byte, typ uint16, a netip.Addr) []byte {
	if a.Is4() {
		v := a.As4()
		return appendAttr(b, typ, v[:])
	}
	v := a.As16()
	return appendAttr(b, typ, v[:])
}
