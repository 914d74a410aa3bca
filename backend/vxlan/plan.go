package vxlan

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/rtnl"
)

// Repairs counts the kernel changes a Reconcile made, per kind. Link counts a
// device that had to be created, recreated or fixed.
type Repairs struct {
	Link, FDB, Neigh, Route int
}

// Total is the number of repairs of all kinds.
func (r Repairs) Total() int { return r.Link + r.FDB + r.Neigh + r.Route }

// stamps identify one comparison with the kernel, per kind of entry (FDB,
// neighbour, route): a wanted peer's entry whose stamp matches was found
// right.
type stamps [3]uint64

// compareLocked dumps the device's entries and compares them with want, as
// they stream in (nothing is buffered: a dump of thousands of entries costs
// no memory). It stamps each wanted peer's entries that are right and
// returns the stamps: the others (missing, or present but altered: wrong
// next hop or metric, not permanent, not onlink, ...) are to be replaced.
// It plans the removal of entries no peer wants, except the kernel's own
// routes and neighbour entries that are not permanent (which the kernel
// makes and expires itself).
func (d *Device) compareLocked(ops *[rtnl.NumOpKinds][]rtnl.Op) (st stamps, err error) {
	next := func() uint64 { d.stamp++; return d.stamp }

	err = rtnl.RetryDump("routes", func() error {
		st[rtnl.RouteSet-rtnl.FDBSet], ops[rtnl.RouteDel] = next(), ops[rtnl.RouteDel][:0]
		stamp := st[rtnl.RouteSet-rtnl.FDBSet]
		return d.nl.DumpRoutes(d.index, func(r *rtnl.Route) {
			if r.Proto == unix.RTPROT_KERNEL {
				return // e.g. fe80::/64, the kernel's own
			}
			w := d.want[r.Dst.Addr()]
			wanted := w != nil && w.subnet == r.Dst
			if r.Index == d.cfg.UplinkIndex && d.directRoute(r) {
				// One of weft's direct routes (DirectRouting).
				switch {
				case wanted && w.direct && r.GW == w.public:
					w.routeOK = stamp
				case wanted:
					// The replacement overwrites it (same key).
				default:
					ops[rtnl.RouteDel] = append(ops[rtnl.RouteDel], rtnl.Op{Kind: rtnl.RouteDel, Dst: r.Dst, Metric: r.Metric, OIF: r.Index})
				}
				return
			}
			if r.Index != d.index {
				// Not on the device, so not weft's: it is never deleted
				// (weft never removes a route it did not make). One that
				// takes a peer's traffic is an operator's decision; the
				// loop sees it among the host's routes and the lease
				// rules skip that peer (package peer, Self.Foreign).
				return
			}
			switch {
			case wanted && !w.direct && routeIsCanonical(r):
				w.routeOK = stamp
			case wanted && r.Metric == metricOf(r.Dst) && r.TOS == 0:
				// Our route's key: the replacement overwrites it.
			default:
				ops[rtnl.RouteDel] = append(ops[rtnl.RouteDel], rtnl.Op{Kind: rtnl.RouteDel, Dst: r.Dst, Metric: r.Metric, TOS: r.TOS, NHID: r.NHID})
			}
		})
	})
	if err != nil {
		return st, fmt.Errorf("reading routes of %s: %w", d.cfg.Name, err)
	}

	err = rtnl.RetryDump("neighbours", func() error {
		st[rtnl.NeighSet-rtnl.FDBSet], ops[rtnl.NeighDel] = next(), ops[rtnl.NeighDel][:0]
		stamp := st[rtnl.NeighSet-rtnl.FDBSet]
		return d.nl.DumpNeighs(d.index, func(n *rtnl.Neigh) {
			if !n.IP.IsValid() {
				return
			}
			w := d.want[n.IP]
			switch {
			case w != nil && w.direct:
				// A direct peer has no neighbour on the device: a
				// leftover of its VXLAN days.
				if n.Permanent() {
					ops[rtnl.NeighDel] = append(ops[rtnl.NeighDel], rtnl.Op{Kind: rtnl.NeighDel, IP: n.IP})
				}
			case w != nil && n.Permanent() && n.MAC == w.mac:
				w.neighOK = stamp
			case w != nil:
				// Replaced.
			case n.Permanent():
				ops[rtnl.NeighDel] = append(ops[rtnl.NeighDel], rtnl.Op{Kind: rtnl.NeighDel, IP: n.IP})
			}
		})
	})
	if err != nil {
		return st, fmt.Errorf("reading neighbours of %s: %w", d.cfg.Name, err)
	}

	// A unicast MAC normally has one remote; someone may have appended
	// more. Wrong remotes of a MAC that also has the right one are removed
	// one by one; a MAC with only wrong ones is rewritten by the
	// replacement (which keeps one remote and rewrites it).
	var wrong []rtnl.FDB
	err = rtnl.RetryDump("FDB entries", func() error {
		st[0], ops[rtnl.FDBDel], wrong = next(), ops[rtnl.FDBDel][:0], wrong[:0]
		stamp := st[0]
		return d.nl.DumpFDB(d.index, func(f *rtnl.FDB) {
			if !f.MAC.Unicast() {
				return // the default destination or a multicast entry
			}
			w := d.macs[f.MAC]
			if w != nil && w.direct {
				w = nil // a direct peer has no FDB entry: remove it
			}
			switch {
			case w != nil && fdbIsCanonical(f, w):
				w.fdbOK = stamp
			case w != nil:
				wrong = append(wrong, *f)
			case f.Permanent():
				ops[rtnl.FDBDel] = append(ops[rtnl.FDBDel], fdbDelOp(f))
			}
		})
	})
	if err != nil {
		return st, fmt.Errorf("reading FDB of %s: %w", d.cfg.Name, err)
	}
	for i := range wrong {
		if w := d.macs[wrong[i].MAC]; w != nil && w.fdbOK == st[0] {
			ops[rtnl.FDBDel] = append(ops[rtnl.FDBDel], fdbDelOp(&wrong[i]))
		}
	}

	// Removals come in the kernel's order; sorted, they read better (and
	// test logs stay stable). Additions are left to applyLocked, which
	// makes them from the stamps, in the order of d.last.
	slices.SortFunc(ops[rtnl.RouteDel], func(a, b rtnl.Op) int { return cmp.Or(comparePrefix(a.Dst, b.Dst), cmp.Compare(a.Metric, b.Metric)) })
	slices.SortFunc(ops[rtnl.NeighDel], func(a, b rtnl.Op) int { return a.IP.Compare(b.IP) })
	slices.SortFunc(ops[rtnl.FDBDel], func(a, b rtnl.Op) int { return cmp.Or(bytes.Compare(a.MAC[:], b.MAC[:]), a.IP.Compare(b.IP)) })
	return st, nil
}

func routeIsCanonical(r *rtnl.Route) bool {
	return r.GW == r.Dst.Addr() &&
		r.Metric == metricOf(r.Dst) &&
		r.Onlink &&
		r.Proto == rtnl.RouteProtocol &&
		r.Scope == unix.RT_SCOPE_UNIVERSE &&
		r.Type == unix.RTN_UNICAST &&
		r.TOS == 0 && r.NHID == 0 && !r.Other
}

// directRoute reports whether r, a route through the uplink, is one weft
// makes with DirectRouting: its protocol and the peer metric of its
// destination, a gateway, into the overlay, nothing else set. Only with a
// Network known (otherwise no route on the uplink is ever taken for
// weft's); with DirectRouting off too, so that the direct routes of a run
// with it on are replaced or removed, not left behind.
func (d *Device) directRoute(r *rtnl.Route) bool {
	return d.cfg.Network.IsValid() && d.cfg.Network.Contains(r.Dst.Addr()) && r.Dst.Bits() >= d.cfg.Network.Bits() &&
		r.GW.IsValid() && r.Metric == metricOf(r.Dst) && !r.Onlink &&
		r.Proto == rtnl.RouteProtocol && r.Scope == unix.RT_SCOPE_UNIVERSE && r.Type == unix.RTN_UNICAST &&
		r.TOS == 0 && r.NHID == 0 && !r.Other
}

// fdbIsCanonical reports whether f is the remote we install for w: its
// address, permanent, and the device's own port, VNI and uplink (which the
// kernel leaves out of the dump).
func fdbIsCanonical(f *rtnl.FDB, w *wantedPeer) bool {
	return f.Dst == w.public && f.Permanent() && f.Port == 0 && !f.HasVNI && f.RemoteIf == 0 && !f.NHID
}

// fdbDelOp removes exactly the remote f.
func fdbDelOp(f *rtnl.FDB) rtnl.Op {
	return rtnl.Op{Kind: rtnl.FDBDel, MAC: f.MAC, IP: f.Dst, Port: f.Port, VNI: f.VNI, HasVNI: f.HasVNI, RemoteIf: f.RemoteIf}
}

func comparePrefix(a, b netip.Prefix) int {
	return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
}

// fillChunk is how many additions applyLocked builds at a time when it
// fills in what a comparison found missing: programming thousands of peers
// needs no more memory than this many requests.
const fillChunk = 512

// applyLocked makes the changes of ops, kind after kind. With fill (not
// nil) it also adds (or replaces), kind by kind, every entry of a wanted
// peer that the comparison with those stamps did not find right. It returns how many
// changes of each kind took effect. Failures are joined; the rest is still
// applied. Removing something already gone is no failure. After any failure
// the Device no longer trusts its picture of the kernel: the next Set
// compares with a dump instead.
func (d *Device) applyLocked(ops *[rtnl.NumOpKinds][]rtnl.Op, fill *stamps) (done Repairs, err error) {
	var errs []error
	write := func(kops []rtnl.Op) int {
		n := len(kops)
		d.nl.Write(d.index, kops, func(i int, err error) {
			n--
			o := &kops[i]
			if o.Kind >= rtnl.RouteDel && isMissing(err) {
				return
			}
			errs = append(errs, o.Failure(err))
		})
		return n
	}
	for k := range rtnl.OpKind(rtnl.NumOpKinds) {
		n := write(ops[k])
		ops[k] = keepSmall(ops[k])
		if fill != nil && k <= rtnl.RouteSet {
			buf := d.fill[:0]
			for i := range d.last {
				if w := d.last[i].w; w != nil {
					if o, ok := w.missing(k, fill[k]); ok {
						buf = append(buf, o)
						if len(buf) == fillChunk {
							n += write(buf)
							buf = buf[:0]
						}
					}
				}
			}
			n += write(buf)
			d.fill = buf[:0]
		}
		switch k {
		case rtnl.FDBSet, rtnl.FDBDel:
			done.FDB += n
		case rtnl.NeighSet, rtnl.NeighDel:
			done.Neigh += n
		case rtnl.RouteSet, rtnl.RouteDel:
			done.Route += n
		}
	}
	d.synced = len(errs) == 0
	return done, errors.Join(errs...)
}

// missing returns the operation that sets w's entry of kind k (an addition)
// if the comparison stamped stamp did not find it right.
func (w *wantedPeer) missing(k rtnl.OpKind, stamp uint64) (rtnl.Op, bool) {
	if w.direct {
		if k == rtnl.RouteSet && w.routeOK != stamp {
			return rtnl.Op{Kind: rtnl.RouteSet, Dst: w.subnet, IP: w.public, Metric: metricOf(w.subnet), OIF: w.uplink}, true
		}
		return rtnl.Op{}, false
	}
	switch {
	case k == rtnl.FDBSet && w.fdbOK != stamp:
		return rtnl.Op{Kind: rtnl.FDBSet, MAC: w.mac, IP: w.public}, true
	case k == rtnl.NeighSet && w.neighOK != stamp:
		return rtnl.Op{Kind: rtnl.NeighSet, IP: w.subnet.Addr(), MAC: w.mac}, true
	case k == rtnl.RouteSet && w.routeOK != stamp:
		return routeOp(w.subnet), true
	}
	return rtnl.Op{}, false
}

// keepSmall returns s emptied, or nil if it grew big: a buffer sized for
// programming hundreds or thousands of peers is not worth keeping for the
// small changes that follow (a burst of 1,000 left 700 kB of operations
// behind with a limit of 1,024).
func keepSmall[T any](s []T) []T {
	if cap(s) > 256 {
		return nil
	}
	return s[:0]
}

// isMissing reports whether a removal failed because the entry was already
// gone.
func isMissing(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}
