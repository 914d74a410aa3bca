package vxlan

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Repairs counts the kernel changes a Reconcile made, per kind. Link counts a
// device that had to be created, recreated or fixed.
type Repairs struct {
	Link, FDB, Neigh, Route int
}

// Total is the number of repairs of all kinds.
func (r Repairs) Total() int { return r.Link + r.FDB + r.Neigh + r.Route }

// plan is the list of kernel changes that turn one set of entries into
// another, in the order they are applied: FDB, neighbour and route additions
// or replacements, then route, neighbour and FDB removals. A peer's old
// entries therefore stay until its new ones are in place.
type plan struct {
	fdbSet   []fdbEntry
	neighSet []neighEntry
	routeSet []routeEntry
	routeDel []routeDel
	neighDel []neighDel
	fdbDel   []neighDel
}

type (
	fdbEntry struct {
		mac mac
		dst netip.Addr
	}
	neighEntry struct {
		ip  netip.Addr
		mac mac
	}
	routeEntry struct {
		dst netip.Prefix
		gw  netip.Addr
	}
	// routeDel and neighDel are removals. forget means the entry is in the
	// record (Set's diff) and leaves it when removed; removals found by a
	// dump (Reconcile) are not in the record.
	routeDel struct {
		r      netlink.Route
		forget bool
	}
	neighDel struct {
		n      netlink.Neigh
		forget bool
	}
)

func (p *plan) empty() bool {
	return len(p.fdbSet)+len(p.neighSet)+len(p.routeSet)+len(p.routeDel)+len(p.neighDel)+len(p.fdbDel) == 0
}

// diffRecord plans the changes from the record to want, without asking the
// kernel.
func (d *Device) diffRecord(have, want *entries) *plan {
	p := &plan{}
	for mac, dst := range want.fdb {
		if v, ok := have.fdb[mac]; !ok || v != dst {
			p.fdbSet = append(p.fdbSet, fdbEntry{mac, dst})
		}
	}
	for ip, mac := range want.neighs {
		if v, ok := have.neighs[ip]; !ok || v != mac {
			p.neighSet = append(p.neighSet, neighEntry{ip, mac})
		}
	}
	for dst, gw := range want.routes {
		if v, ok := have.routes[dst]; !ok || v != gw {
			p.routeSet = append(p.routeSet, routeEntry{dst, gw})
		}
	}
	for dst, gw := range have.routes {
		if _, ok := want.routes[dst]; !ok {
			p.routeDel = append(p.routeDel, routeDel{*d.route(dst, gw), true})
		}
	}
	for ip, mac := range have.neighs {
		if _, ok := want.neighs[ip]; !ok {
			p.neighDel = append(p.neighDel, neighDel{*d.neigh(ip, mac), true})
		}
	}
	for mac, dst := range have.fdb {
		if _, ok := want.fdb[mac]; !ok {
			p.fdbDel = append(p.fdbDel, neighDel{*d.fdb(mac, dst), true})
		}
	}
	p.sort()
	return p
}

// diffKernel plans the changes from what a dump of the device found to want.
// Entries that are present but altered (wrong next hop, not permanent, not
// onlink, ...) are replaced; entries no peer wants are removed.
func (d *Device) diffKernel(want *entries, routes []netlink.Route, neighs, fdb []netlink.Neigh) *plan {
	p := &plan{}

	okRoute := make(map[netip.Prefix]bool, len(want.routes))
	for _, r := range routes {
		if r.Protocol == unix.RTPROT_KERNEL {
			continue // e.g. fe80::/64, the kernel's own
		}
		dst := routeDst(r)
		gw, wanted := want.routes[dst]
		switch {
		case wanted && d.routeIsCanonical(r, gw):
			okRoute[dst] = true
		case wanted && r.Priority == 0 && r.Tos == 0:
			// Same key as ours: RouteReplace below overwrites it.
		default:
			p.routeDel = append(p.routeDel, routeDel{r, false})
		}
	}
	for dst, gw := range want.routes {
		if !okRoute[dst] {
			p.routeSet = append(p.routeSet, routeEntry{dst, gw})
		}
	}

	okNeigh := make(map[netip.Addr]bool, len(want.neighs))
	for _, n := range neighs {
		ip, ok := netip.AddrFromSlice(n.IP)
		if !ok || n.Family == unix.AF_BRIDGE {
			continue
		}
		ip = ip.Unmap()
		mac, wanted := want.neighs[ip]
		permanent := n.State&netlink.NUD_PERMANENT != 0
		switch {
		case wanted && permanent && macOf(n.HardwareAddr) == mac:
			okNeigh[ip] = true
		case wanted:
			// NeighSet below replaces it.
		case permanent:
			p.neighDel = append(p.neighDel, neighDel{n, false})
		}
	}
	for ip, mac := range want.neighs {
		if !okNeigh[ip] {
			p.neighSet = append(p.neighSet, neighEntry{ip, mac})
		}
	}

	okFDB := make(map[mac]bool, len(want.fdb))
	for _, f := range fdb {
		if len(f.HardwareAddr) != 6 || f.HardwareAddr[0]&1 != 0 || isZeroMAC(f.HardwareAddr) {
			continue // the default destination or a multicast entry
		}
		mac := macOf(f.HardwareAddr)
		dst, _ := netip.AddrFromSlice(f.IP)
		dst = dst.Unmap()
		wantDst, wanted := want.fdb[mac]
		permanent := f.State&netlink.NUD_PERMANENT != 0
		switch {
		case wanted && dst == wantDst && permanent:
			okFDB[mac] = true
		case wanted:
			// NeighSet below rewrites it in place: the kernel keeps
			// one remote per unicast MAC ("append" is ignored for
			// them), and deleting (MAC, wrong dst) afterwards would be
			// a silent no-op.
		case permanent:
			p.fdbDel = append(p.fdbDel, neighDel{f, false})
		}
	}
	for mac, dst := range want.fdb {
		if !okFDB[mac] {
			p.fdbSet = append(p.fdbSet, fdbEntry{mac, dst})
		}
	}
	p.sort()
	return p
}

func (d *Device) routeIsCanonical(r netlink.Route, gw netip.Addr) bool {
	rgw, _ := netip.AddrFromSlice(r.Gw)
	return rgw.Unmap() == gw &&
		r.Flags&int(netlink.FLAG_ONLINK) != 0 &&
		r.Protocol == routeProtocol &&
		r.Scope == netlink.SCOPE_UNIVERSE &&
		r.Type == unix.RTN_UNICAST &&
		r.Priority == 0 && r.Tos == 0 &&
		r.Src == nil && len(r.MultiPath) == 0
}

func routeDst(r netlink.Route) netip.Prefix {
	if p, ok := prefixOf(r.Dst); ok {
		return p
	}
	if r.Family == unix.AF_INET6 {
		return netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	}
	return netip.PrefixFrom(netip.IPv4Unspecified(), 0)
}

func isZeroMAC(hw net.HardwareAddr) bool {
	for _, b := range hw {
		if b != 0 {
			return false
		}
	}
	return true
}

// sort orders each list so that the kernel sees changes in a stable order
// (and tests see a stable op log).
func (p *plan) sort() {
	slices.SortFunc(p.fdbSet, func(a, b fdbEntry) int { return bytes.Compare(a.mac[:], b.mac[:]) })
	slices.SortFunc(p.neighSet, func(a, b neighEntry) int { return a.ip.Compare(b.ip) })
	slices.SortFunc(p.routeSet, func(a, b routeEntry) int { return comparePrefix(a.dst, b.dst) })
	slices.SortFunc(p.routeDel, func(a, b routeDel) int { return comparePrefix(routeDst(a.r), routeDst(b.r)) })
	slices.SortFunc(p.neighDel, func(a, b neighDel) int { return slices.Compare(a.n.IP, b.n.IP) })
	slices.SortFunc(p.fdbDel, func(a, b neighDel) int {
		return cmp.Or(slices.Compare(a.n.HardwareAddr, b.n.HardwareAddr), slices.Compare(a.n.IP, b.n.IP))
	})
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// applyLocked makes the changes of p and keeps d.record in step with what
// succeeded: a failed addition leaves the record (so the next Set retries
// it), a failed removal of a recorded entry stays in it. Failures are joined;
// the rest of the plan is still applied.
func (d *Device) applyLocked(p *plan) (done Repairs, err error) {
	rec := d.record
	var errs []error
	for _, e := range p.fdbSet {
		if err := d.nl.NeighSet(d.fdb(e.mac, e.dst)); err != nil {
			errs = append(errs, fmt.Errorf("adding FDB entry %s dst %v: %w", e.mac, e.dst, err))
			delete(rec.fdb, e.mac)
			continue
		}
		d.log.Debug("set FDB entry", "mac", e.mac, "dst", e.dst)
		rec.fdb[e.mac] = e.dst
		done.FDB++
	}
	for _, e := range p.neighSet {
		if err := d.nl.NeighSet(d.neigh(e.ip, e.mac)); err != nil {
			errs = append(errs, fmt.Errorf("adding neighbour %v lladdr %s: %w", e.ip, e.mac, err))
			delete(rec.neighs, e.ip)
			continue
		}
		d.log.Debug("set neighbour", "ip", e.ip, "mac", e.mac)
		rec.neighs[e.ip] = e.mac
		done.Neigh++
	}
	for _, e := range p.routeSet {
		if err := d.nl.RouteReplace(d.route(e.dst, e.gw)); err != nil {
			errs = append(errs, fmt.Errorf("adding route to %v via %v: %w", e.dst, e.gw, err))
			delete(rec.routes, e.dst)
			continue
		}
		d.log.Debug("set route", "dst", e.dst, "via", e.gw)
		rec.routes[e.dst] = e.gw
		done.Route++
	}
	for _, e := range p.routeDel {
		dst := routeDst(e.r)
		if err := d.nl.RouteDel(&e.r); isMissing(err) {
			if e.forget {
				delete(rec.routes, dst)
			}
			continue
		} else if err != nil {
			errs = append(errs, fmt.Errorf("removing route to %v: %w", dst, err))
			continue
		}
		d.log.Debug("removed route", "dst", dst)
		if e.forget {
			delete(rec.routes, dst)
		}
		done.Route++
	}
	for _, e := range p.neighDel {
		ip, _ := netip.AddrFromSlice(e.n.IP)
		if err := d.nl.NeighDel(&e.n); isMissing(err) {
			if e.forget {
				delete(rec.neighs, ip.Unmap())
			}
			continue
		} else if err != nil {
			errs = append(errs, fmt.Errorf("removing neighbour %v: %w", ip, err))
			continue
		}
		d.log.Debug("removed neighbour", "ip", ip)
		if e.forget {
			delete(rec.neighs, ip.Unmap())
		}
		done.Neigh++
	}
	for _, e := range p.fdbDel {
		if err := d.nl.NeighDel(&e.n); isMissing(err) {
			if e.forget {
				delete(rec.fdb, macOf(e.n.HardwareAddr))
			}
			continue
		} else if err != nil {
			errs = append(errs, fmt.Errorf("removing FDB entry %v dst %v: %w", e.n.HardwareAddr, e.n.IP, err))
			continue
		}
		d.log.Debug("removed FDB entry", "mac", e.n.HardwareAddr, "dst", e.n.IP)
		if e.forget {
			delete(rec.fdb, macOf(e.n.HardwareAddr))
		}
		done.FDB++
	}
	return done, errors.Join(errs...)
}

// fdb is the permanent FDB entry sending mac to dst through the device.
func (d *Device) fdb(mac mac, dst netip.Addr) *netlink.Neigh {
	return &netlink.Neigh{
		LinkIndex:    d.index,
		Family:       unix.AF_BRIDGE,
		State:        netlink.NUD_PERMANENT,
		Flags:        netlink.NTF_SELF,
		IP:           dst.AsSlice(),
		HardwareAddr: mac.hw(),
	}
}

// neigh is the permanent neighbour giving ip the link-layer address mac.
func (d *Device) neigh(ip netip.Addr, mac mac) *netlink.Neigh {
	family := unix.AF_INET
	if ip.Is6() {
		family = unix.AF_INET6
	}
	return &netlink.Neigh{
		LinkIndex:    d.index,
		Family:       family,
		State:        netlink.NUD_PERMANENT,
		IP:           ip.AsSlice(),
		HardwareAddr: mac.hw(),
	}
}

// route is "dst via gw dev <device> onlink" in the main table.
func (d *Device) route(dst netip.Prefix, gw netip.Addr) *netlink.Route {
	return &netlink.Route{
		LinkIndex: d.index,
		Dst:       ipNet(dst),
		Gw:        gw.AsSlice(),
		Flags:     int(netlink.FLAG_ONLINK),
		Protocol:  routeProtocol,
		Scope:     netlink.SCOPE_UNIVERSE,
		Table:     unix.RT_TABLE_MAIN,
		Type:      unix.RTN_UNICAST,
	}
}
