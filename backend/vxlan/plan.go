package vxlan

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"golang.org/x/sys/unix"
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
func (d *Device) compareLocked(ops *[numOpKinds][]op) (st stamps, err error) {
	next := func() uint64 { d.stamp++; return d.stamp }

	err = retryDump("routes", func() error {
		st[routeSet-fdbSet], ops[routeDel] = next(), ops[routeDel][:0]
		stamp := st[routeSet-fdbSet]
		return d.nl.routes(d.index, func(r *kRoute) {
			if r.proto == unix.RTPROT_KERNEL {
				return // e.g. fe80::/64, the kernel's own
			}
			w := d.want[r.dst.Addr()]
			wanted := w != nil && w.subnet == r.dst
			if r.index != d.index {
				// Not on the device, so not weft's: it is never deleted
				// (weft never removes a route it did not make). One that
				// takes a peer's traffic is an operator's decision; the
				// loop sees it among the host's routes and the lease
				// rules skip that peer (package peer, Self.Foreign).
				return
			}
			switch {
			case wanted && routeIsCanonical(r):
				w.routeOK = stamp
			case wanted && r.metric == metricOf(r.dst) && r.tos == 0:
				// Our route's key: the replacement overwrites it.
			default:
				ops[routeDel] = append(ops[routeDel], op{kind: routeDel, dst: r.dst, metric: r.metric, tos: r.tos, nhid: r.nhid})
			}
		})
	})
	if err != nil {
		return st, fmt.Errorf("reading routes of %s: %w", d.cfg.Name, err)
	}

	err = retryDump("neighbours", func() error {
		st[neighSet-fdbSet], ops[neighDel] = next(), ops[neighDel][:0]
		stamp := st[neighSet-fdbSet]
		return d.nl.neighs(d.index, func(n *kNeigh) {
			if !n.ip.IsValid() {
				return
			}
			w := d.want[n.ip]
			switch {
			case w != nil && n.permanent() && n.mac == w.mac:
				w.neighOK = stamp
			case w != nil:
				// Replaced.
			case n.permanent():
				ops[neighDel] = append(ops[neighDel], op{kind: neighDel, ip: n.ip})
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
	var wrong []kFDB
	err = retryDump("FDB entries", func() error {
		st[0], ops[fdbDel], wrong = next(), ops[fdbDel][:0], wrong[:0]
		stamp := st[0]
		return d.nl.fdb(d.index, func(f *kFDB) {
			if !f.mac.unicast() {
				return // the default destination or a multicast entry
			}
			w := d.macs[f.mac]
			switch {
			case w != nil && fdbIsCanonical(f, w):
				w.fdbOK = stamp
			case w != nil:
				wrong = append(wrong, *f)
			case f.permanent():
				ops[fdbDel] = append(ops[fdbDel], fdbDelOp(f))
			}
		})
	})
	if err != nil {
		return st, fmt.Errorf("reading FDB of %s: %w", d.cfg.Name, err)
	}
	for i := range wrong {
		if d.macs[wrong[i].mac].fdbOK == st[0] {
			ops[fdbDel] = append(ops[fdbDel], fdbDelOp(&wrong[i]))
		}
	}

	// Removals come in the kernel's order; sorted, they read better (and
	// test logs stay stable). Additions are left to applyLocked, which
	// makes them from the stamps, in the order of d.last.
	slices.SortFunc(ops[routeDel], func(a, b op) int { return cmp.Or(comparePrefix(a.dst, b.dst), cmp.Compare(a.metric, b.metric)) })
	slices.SortFunc(ops[neighDel], func(a, b op) int { return a.ip.Compare(b.ip) })
	slices.SortFunc(ops[fdbDel], func(a, b op) int { return cmp.Or(bytes.Compare(a.mac[:], b.mac[:]), a.ip.Compare(b.ip)) })
	return st, nil
}

// shadows reports whether r, a route to a wanted peer's subnet that is not
// ours, would carry the peer's traffic instead of ours.
func shadows(r *kRoute) bool {
	return r.tos == 0 && r.metric < metricOf(r.dst)
}

func routeIsCanonical(r *kRoute) bool {
	return r.gw == r.dst.Addr() &&
		r.metric == metricOf(r.dst) &&
		r.onlink &&
		r.proto == routeProtocol &&
		r.scope == unix.RT_SCOPE_UNIVERSE &&
		r.typ == unix.RTN_UNICAST &&
		r.tos == 0 && r.nhid == 0 && !r.other
}

// fdbIsCanonical reports whether f is the remote we install for w: its
// address, permanent, and the device's own port, VNI and uplink (which the
// kernel leaves out of the dump).
func fdbIsCanonical(f *kFDB, w *wantedPeer) bool {
	return f.dst == w.public && f.permanent() && f.port == 0 && !f.hasVNI && f.remoteIf == 0 && !f.nhid
}

// fdbDelOp removes exactly the remote f.
func fdbDelOp(f *kFDB) op {
	return op{kind: fdbDel, mac: f.mac, ip: f.dst, port: f.port, vni: f.vni, hasVNI: f.hasVNI, remoteIf: f.remoteIf}
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
func (d *Device) applyLocked(ops *[numOpKinds][]op, fill *stamps) (done Repairs, err error) {
	var errs []error
	write := func(kops []op) int {
		n := len(kops)
		d.nl.write(d.index, kops, func(i int, err error) {
			n--
			o := &kops[i]
			if o.kind >= routeDel && isMissing(err) {
				return
			}
			errs = append(errs, o.failure(err))
		})
		return n
	}
	for k := range opKind(numOpKinds) {
		n := write(ops[k])
		ops[k] = keepSmall(ops[k])
		if fill != nil && k <= routeSet {
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
		case fdbSet, fdbDel:
			done.FDB += n
		case neighSet, neighDel:
			done.Neigh += n
		case routeSet, routeDel:
			done.Route += n
		}
	}
	d.synced = len(errs) == 0
	return done, errors.Join(errs...)
}

// missing returns the operation that sets w's entry of kind k (an addition)
// if the comparison stamped stamp did not find it right.
func (w *wantedPeer) missing(k opKind, stamp uint64) (op, bool) {
	switch {
	case k == fdbSet && w.fdbOK != stamp:
		return op{kind: fdbSet, mac: w.mac, ip: w.public}, true
	case k == neighSet && w.neighOK != stamp:
		return op{kind: neighSet, ip: w.subnet.Addr(), mac: w.mac}, true
	case k == routeSet && w.routeOK != stamp:
		return routeOp(w.subnet), true
	}
	return op{}, false
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
