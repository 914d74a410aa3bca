package vxlan

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/backend"
	rulebook "github.com/weft-net/weft/peer"
	"github.com/weft-net/weft/rtnl"
)

// vals is a peer in canonical form: what its three entries are made of. The
// zero vals is no peer.
type vals struct {
	subnet netip.Prefix // masked; its address is the peer's VTEP address
	public netip.Addr   // unmapped
	mac    rtnl.MAC
	// direct: routed straight to public on the uplink (DirectRouting),
	// without neighbour and FDB entry.
	direct bool
}

func (v vals) ok() bool { return v.subnet.IsValid() }

// wantedPeer is one wanted peer, in Device.want under its VTEP address.
type wantedPeer struct {
	vals
	uplink int // the uplink's index, for a direct peer's route
	// Stamps of the Reconcile that found each entry right in the kernel.
	routeOK, neighOK, fdbOK uint64
}

// entry is one peer of the last Set, as given, for the next Set to compare
// with. Device.last holds them sorted by subnet.
type entry struct {
	subnet netip.Prefix
	public netip.Addr
	mac    rtnl.MAC
	macOK  bool // the given VtepMAC had 6 bytes: mac holds it
	// w is the wanted peer made of it; nil if it was skipped.
	w *wantedPeer
	// err says why it was skipped. conflict means another peer had its
	// subnet address or MAC: such a peer is looked at again by every Set,
	// since the other may have gone; an invalid one only when it changes.
	err      error
	conflict bool
}

func newEntry(p *backend.Peer) entry {
	return entry{subnet: p.Subnet, public: p.PublicIP, mac: rtnl.MACOf(p.VtepMAC), macOK: len(p.VtepMAC) == 6}
}

func (e *entry) same(p *backend.Peer) bool {
	return e.macOK && len(p.VtepMAC) == 6 && e.mac == rtnl.MAC(p.VtepMAC) && e.public == p.PublicIP
}

// change is a peer whose entries must change: added (old is zero), removed
// (new is zero) or altered. in is its index in the Set's input, at in
// Device.last; both are -1 for a removal.
type change struct {
	old, new vals
	in, at   int
}

// PeerMetric is the metric of weft's route to peer subnet p (see metricOf).
func PeerMetric(p netip.Prefix) uint32 { return metricOf(p) }

// IsDirectRoute reports whether a route to dst with protocol proto and
// metric is one a Device makes with DirectRouting for a peer in network:
// the host's other routes are judged without it.
func IsDirectRoute(network, dst netip.Prefix, proto, metric int) bool {
	return network.IsValid() && network.Contains(dst.Addr()) && dst.Bits() >= network.Bits() &&
		proto == rtnl.RouteProtocol && metric == int(metricOf(dst))
}

// metricOf is the route metric of a peer subnet: one more than the low 16
// bits of the subnet's number (its address shifted right by its host bits).
// 172.16.78.0/24 is /24 number 0xAC104E, so its metric is 0x104E+1 = 4175.
//
// The kernel hashes a route's next-hop information by protocol, scope,
// preferred source, metric and device, not by gateway. With one metric for
// all, every peer route lands in one hash chain and each insertion walks it:
// programming N peers costs O(N²) (223 µs per route at 4,000 peers, over
// 1 ms past 11,000). A metric fixed per subnet spreads the routes over the
// table, so each costs the same whatever N is. Within any network of up to
// 65,536 subnets the metrics are distinct; two equal ones would only share a
// chain. It is never 0, which IPv6 would turn into 1024.
func metricOf(p netip.Prefix) uint32 {
	a := p.Addr().As16()
	hi, lo := binary.BigEndian.Uint64(a[:8]), binary.BigEndian.Uint64(a[8:])
	var n uint64 // the address shifted right by the host bits
	switch host := p.Addr().BitLen() - p.Bits(); {
	case host >= 64:
		n = hi >> (host - 64)
	case host > 0:
		n = lo>>host | hi<<(64-host)
	default:
		n = lo
	}
	return uint32(n&0xffff) + 1
}

// canonical checks one peer by the lease rulebook (package peer), with what
// the device knows of this node, and returns it in canonical form. The
// subnet package has already applied the same rules with the network's
// config and every lease in view; this is the backend's own guard, so that
// no caller of Set can have it program an entry the rules refuse.
func (d *Device) canonical(p *backend.Peer) (vals, error) {
	self := rulebook.Self{Subnet: d.cfg.Subnet, PublicIP: d.cfg.Local, VtepMAC: d.cfg.MAC, Underlay: d.cfg.OnLink}
	if err := rulebook.Check(p, rulebook.Network{}, &self); err != nil {
		return vals{}, err
	}
	v := vals{subnet: p.Subnet, public: p.PublicIP.Unmap(), mac: rtnl.MAC(p.VtepMAC)}
	v.direct = d.cfg.DirectRouting && d.onLink(v.public)
	return v, nil
}

// onLink reports whether a is a plausible next hop on the uplink's link:
// inside one of its networks, and neither that network's own address nor
// (IPv4) its broadcast address, which the rulebook refused already.
func (d *Device) onLink(a netip.Addr) bool {
	for _, p := range d.cfg.OnLink {
		if p.Contains(a) && p.Masked().Addr() != a {
			return true
		}
	}
	return false
}

// updateLocked makes peers the wanted set and returns what changed since the
// last Set. It walks peers and the last Set's input side by side, like a
// merge of two sorted lists: a peer given exactly as before costs a
// comparison, and only new, changed and vanished peers cost more. Peers
// from etcd come sorted by subnet; other input is sorted first.
//
// Peers that cannot be programmed are left out and reported: invalid ones,
// and a peer whose subnet address (its VTEP address, the neighbour's key) or
// VTEP MAC (the FDB entry's key) another wanted peer already has. A peer
// that had them before keeps them; among newcomers the first by subnet wins.
func (d *Device) updateLocked(peers []backend.Peer) ([]change, error) {
	d.wantMu.Lock()
	defer d.wantMu.Unlock()
	if d.want == nil {
		d.want = make(map[netip.Addr]*wantedPeer, len(peers))
		d.macs = make(map[rtnl.MAC]*wantedPeer, len(peers))
	}
	// mergeLocked rewrites d.last as it goes, so it must see sorted
	// input from the start: a second pass after a partial one would take
	// the changes the first pass wrote for peers given as before.
	if !slices.IsSortedFunc(peers, bySubnet) {
		peers = slices.Clone(peers)
		slices.SortStableFunc(peers, bySubnet)
	}
	changes, next, errs, fresh, _ := d.mergeLocked(peers)
	// What went or changed lets go of its subnet address and MAC first.
	for k := range changes {
		if c := &changes[k]; c.old.ok() {
			d.releaseLocked(c.old)
		}
	}
	// Then claims: peers that had their subnet address and MAC before
	// first, so that a newcomer cannot take them over.
	for round := range 2 {
		for k := range changes {
			c := &changes[k]
			if c.in < 0 || c.old.ok() != (round == 0) {
				continue
			}
			p, e := &peers[c.in], &next[c.at]
			v, err := d.canonical(p)
			if err == nil {
				if w := d.want[v.subnet.Addr()]; w != nil {
					err, e.conflict = fmt.Errorf("another peer (%v) has the same subnet address", w.subnet), true
				} else if w := d.macs[v.mac]; w != nil {
					err, e.conflict = fmt.Errorf("another peer (%v) has the same VTEP MAC", w.subnet), true
				}
			}
			if err != nil {
				e.err = skipped(p, err)
				errs = append(errs, e.err)
				continue
			}
			e.w = &wantedPeer{vals: v, uplink: d.cfg.UplinkIndex}
			d.want[v.subnet.Addr()] = e.w
			d.macs[v.mac] = e.w
			c.new = v
		}
	}
	if fresh { // a new list was built: swap the buffers
		clear(d.last)
		d.last, d.next = next, d.last[:0]
	}
	d.changes = changes
	return changes, errors.Join(errs...)
}

// mergeLocked walks peers and d.last side by side. Peers given as before are
// kept (in d.last itself while nothing was added or removed, else in a new
// list, and then fresh is true); the others become changes. It reports
// whether peers were sorted; if not, it changed nothing and must be called
// again with sorted peers.
func (d *Device) mergeLocked(peers []backend.Peer) (changes []change, next []entry, errs []error, fresh, sorted bool) {
	changes = d.changes[:0]
	if len(d.last) == 0 {
		changes = slices.Grow(changes, len(peers))
	}
	last := d.last
	next = last // in place until the lists diverge
	diverge := func(j int) {
		if !fresh {
			fresh = true
			next = append(slices.Grow(d.next[:0], len(peers)), last[:j]...)
		}
	}
	j := 0
	for i := range peers {
		p := &peers[i]
		if j == len(last) || last[j].subnet != p.Subnet {
			// Not simply the next peer of the last Set.
			if i > 0 {
				switch c := comparePrefix(peers[i-1].Subnet, p.Subnet); {
				case c > 0:
					return nil, nil, nil, false, false
				case c == 0:
					errs = append(errs, skipped(p, errors.New("another peer has the same subnet")))
					continue
				}
			}
			for ; j < len(last) && comparePrefix(last[j].subnet, p.Subnet) < 0; j++ {
				diverge(j)
				if w := last[j].w; w != nil {
					changes = append(changes, change{old: w.vals, in: -1, at: -1})
				}
			}
		}
		if j == len(last) || last[j].subnet != p.Subnet {
			diverge(j)
			next = append(next, newEntry(p))
			changes = append(changes, change{in: i, at: len(next) - 1})
			continue
		}
		e := &last[j]
		j++
		if e.same(p) && !e.conflict {
			if fresh {
				next = append(next, *e)
			}
			if e.err != nil {
				errs = append(errs, e.err)
			}
			continue
		}
		var old vals
		if e.w != nil {
			old = e.w.vals
		}
		at := j - 1
		if fresh {
			next = append(next, newEntry(p))
			at = len(next) - 1
		} else {
			*e = newEntry(p)
		}
		changes = append(changes, change{old: old, in: i, at: at})
	}
	if j < len(last) {
		diverge(j)
		for ; j < len(last); j++ {
			if w := last[j].w; w != nil {
				changes = append(changes, change{old: w.vals, in: -1, at: -1})
			}
		}
	}
	return changes, next, errs, fresh, true
}

// releaseLocked forgets the claims of a peer that was wanted as v.
func (d *Device) releaseLocked(v vals) {
	if key := v.subnet.Addr(); d.want[key] != nil && d.want[key].vals == v {
		delete(d.want, key)
	}
	if d.macs[v.mac] != nil && d.macs[v.mac].vals == v {
		delete(d.macs, v.mac)
	}
}

func bySubnet(a, b backend.Peer) int { return comparePrefix(a.Subnet, b.Subnet) }

func skipped(p *backend.Peer, err error) error {
	return fmt.Errorf("skipping peer %v (%v, %v): %w", p.Subnet, p.PublicIP, p.VtepMAC, err)
}

// planChanges turns changes into kernel operations, appended to ops by kind.
func (d *Device) planChanges(changes []change, ops *[rtnl.NumOpKinds][]rtnl.Op) {
	if len(changes) > 64 {
		for k := range ops {
			ops[k] = slices.Grow(ops[k], len(changes))
		}
	}
	for _, c := range changes {
		o, n := c.old, c.new
		// A peer on VXLAN has three entries, a direct one a route only.
		// Every change adds (or replaces) before it removes: a peer moving
		// to direct routing gets its direct route in place of the VXLAN
		// one (one replace, same key) before its neighbour and FDB entry
		// go; moving back, it gets them before the route is replaced.
		oldVX, newVX := o.ok() && !o.direct, n.ok() && !n.direct
		if n.ok() {
			key := n.subnet.Addr()
			if newVX && (!oldVX || o.mac != n.mac || o.public != n.public) {
				ops[rtnl.FDBSet] = append(ops[rtnl.FDBSet], rtnl.Op{Kind: rtnl.FDBSet, MAC: n.mac, IP: n.public})
			}
			if newVX && (!oldVX || o.mac != n.mac || o.subnet.Addr() != key) {
				ops[rtnl.NeighSet] = append(ops[rtnl.NeighSet], rtnl.Op{Kind: rtnl.NeighSet, IP: key, MAC: n.mac})
			}
			if !o.ok() || o.subnet != n.subnet || o.direct != n.direct || n.direct && o.public != n.public {
				ops[rtnl.RouteSet] = append(ops[rtnl.RouteSet], d.routeOp(n))
			}
		}
		if !o.ok() {
			continue
		}
		if !n.ok() || o.subnet != n.subnet {
			del := rtnl.Op{Kind: rtnl.RouteDel, Dst: o.subnet, Metric: metricOf(o.subnet)}
			if o.direct {
				del.OIF = d.cfg.UplinkIndex
			}
			ops[rtnl.RouteDel] = append(ops[rtnl.RouteDel], del)
		}
		if !oldVX {
			continue
		}
		// The old neighbour goes unless another peer now has that subnet
		// address (a subnet of another length): its neighSet rewrote it.
		if (!newVX || o.subnet.Addr() != n.subnet.Addr()) && !d.wantsNeigh(o.subnet.Addr()) {
			ops[rtnl.NeighDel] = append(ops[rtnl.NeighDel], rtnl.Op{Kind: rtnl.NeighDel, IP: o.subnet.Addr()})
		}
		// The old MAC's FDB entry goes unless another peer now has that
		// MAC on VXLAN: then that peer's replacement rewrites it.
		if (!newVX || o.mac != n.mac) && !d.wantsFDB(o.mac) {
			ops[rtnl.FDBDel] = append(ops[rtnl.FDBDel], rtnl.Op{Kind: rtnl.FDBDel, MAC: o.mac, IP: o.public})
		}
	}
}

// wantsNeigh and wantsFDB report whether a wanted peer on VXLAN has the
// neighbour at a or the FDB entry of m.
func (d *Device) wantsNeigh(a netip.Addr) bool {
	w := d.want[a]
	return w != nil && !w.direct
}

func (d *Device) wantsFDB(m rtnl.MAC) bool {
	w := d.macs[m]
	return w != nil && !w.direct
}

// routeOp is the route to peer v: over VXLAN "dst via <its .0> dev
// <device> onlink metric <metricOf(dst)>", or with DirectRouting "dst via
// <PublicIP> dev <uplink> metric <metricOf(dst)>". Both have the same key
// (destination, metric), so one replaces the other in one step.
func (d *Device) routeOp(v vals) rtnl.Op {
	if v.direct {
		return rtnl.Op{Kind: rtnl.RouteSet, Dst: v.subnet, IP: v.public, Metric: metricOf(v.subnet), OIF: d.cfg.UplinkIndex}
	}
	return routeOp(v.subnet)
}

// routeOp is the route to a peer subnet: "dst via <its .0> dev <device>
// onlink metric <metricOf(dst)>".
func routeOp(dst netip.Prefix) rtnl.Op {
	return rtnl.Op{Kind: rtnl.RouteSet, Dst: dst, IP: dst.Addr(), Metric: metricOf(dst)}
}
