package vxlan

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/rtnl"
)

// Resubscription backoff after the subscription fails.
const (
	resubscribeMin = 100 * time.Millisecond
	resubscribeMax = 10 * time.Second
)

// subscribeGroups are the multicast groups of the subscription: links,
// addresses, routes and neighbours (the FDB included).
const subscribeGroups = 1<<(unix.RTNLGRP_LINK-1) |
	1<<(unix.RTNLGRP_IPV4_IFADDR-1) | 1<<(unix.RTNLGRP_IPV6_IFADDR-1) |
	1<<(unix.RTNLGRP_IPV4_ROUTE-1) | 1<<(unix.RTNLGRP_IPV6_ROUTE-1) |
	1<<(unix.RTNLGRP_NEIGH-1)

// Subscribe calls kick whenever the kernel reports a change that may need a
// repair, in the Device's namespace: a change of the device or its uplink
// (link or address), a route, neighbour or FDB entry on the device that
// disagrees with the peers of the last Set (one that is missing, altered or
// not wanted), and a route elsewhere that would take a peer's traffic. The
// Device's own changes agree with its peers, so they do not kick, except
// that a Set of pauseEventsOps operations or more (and a first Set of a
// third as many peers) pauses the subscription and kicks once at its end,
// for one Reconcile after a burst instead of its own events.
//
// Subscribe returns once the subscription is in place. It lasts until ctx is
// done and is renewed, with a kick since events may have been missed, when it
// fails; events the kernel drops for lack of buffer space also cause a kick.
// kick must not block for long; debouncing and the Reconcile that follows
// are the caller's job.
func (d *Device) Subscribe(ctx context.Context, kick func()) error {
	if d.closing.Err() != nil {
		return errors.New("subscribing to kernel changes: device closed")
	}
	s, err := d.subscribe()
	if err != nil {
		return fmt.Errorf("subscribing to kernel changes: %w", err)
	}
	d.subMu.Lock()
	d.sub, d.kick = s, kick
	d.subMu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(d.closing, cancel)
	d.subs.Add(1)
	go func() {
		defer d.subs.Done()
		defer cancel()
		defer stop()
		d.keepSubscribed(ctx, s, kick)
	}()
	return nil
}

// pauseEventsOps is the size of a change, in kernel operations, from which
// Set pauses the subscription while it writes.
const pauseEventsOps = 1024

// pauseEvents takes the subscription out of its multicast groups until the
// returned resume puts it back and kicks, so that a Reconcile catches
// whatever someone else changed meanwhile. Set pauses for large changes: FDB
// notifications carry no port id, so the filter cannot drop weftd's own, and
// for a burst of 1,000 peers the kernel's copying of every notification to
// the subscription made its work a quarter slower (out of the groups, the
// kernel does not even look at the socket). A kick and one Reconcile after
// the burst cost far less. With no subscription, or no kernel, it does
// nothing.
func (d *Device) pauseEvents() (resume func()) {
	d.subMu.Lock()
	s, kick := d.sub, d.kick
	d.subMu.Unlock()
	if s == nil || d.kernel == nil {
		return func() {}
	}
	if err := s.SetGroups(subscribeGroups, false); err != nil {
		// Closed meanwhile, or refused: take it back, events keep coming.
		_ = s.SetGroups(subscribeGroups, true)
		return func() {}
	}
	return func() {
		if err := s.SetGroups(subscribeGroups, true); err != nil && !errors.Is(err, os.ErrClosed) {
			// The socket would stay deaf: end it, keepSubscribed renews it.
			d.log.Warn("rejoining the netlink subscription's groups", "err", err)
			s.Close()
		}
		kick()
	}
}

func (d *Device) subscribe() (*rtnl.Subscription, error) {
	var pid uint32
	if d.kernel != nil {
		pid = d.kernel.conn.Pid()
	}
	return rtnl.Subscribe(d.ns, subscribeGroups, pid)
}

// keepSubscribed follows s, and renews the subscription whenever it fails,
// until ctx is done.
func (d *Device) keepSubscribed(ctx context.Context, s *rtnl.Subscription, kick func()) {
	backoff := resubscribeMin
	for {
		since := time.Now()
		err := d.follow(ctx, s, kick)
		s.Close()
		if ctx.Err() != nil {
			return
		}
		d.log.Warn("netlink subscription failed", "err", err)
		if time.Since(since) > resubscribeMax {
			backoff = resubscribeMin // it worked for a while: not a loop
		}
		for {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, resubscribeMax)
			if s, err = d.subscribe(); err == nil {
				break
			}
			d.log.Warn("renewing netlink subscription", "err", err)
		}
		d.subMu.Lock()
		d.sub = s
		d.subMu.Unlock()
		d.log.Info("renewed netlink subscription")
		kick()
	}
}

// follow reads events until ctx is done (then it returns nil) or the socket
// fails.
func (d *Device) follow(ctx context.Context, s *rtnl.Subscription, kick func()) error {
	stop := context.AfterFunc(ctx, func() { _ = s.Close() })
	defer stop()
	for {
		b, err := s.Read()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, unix.ENOBUFS):
			d.log.Debug("kernel events were dropped; asking for a check")
			kick()
			continue
		case err != nil:
			return err
		}
		if d.disagrees(b) {
			kick()
		}
	}
}

// disagrees reports whether any event in the datagram b may need a repair.
func (d *Device) disagrees(b []byte) bool {
	idx := int(d.curIndex.Load())
	d.wantMu.RLock()
	defer d.wantMu.RUnlock()
	found := false
	_ = rtnl.SplitMsgs(b, func(m rtnl.Msg) bool {
		found = d.eventDisagrees(m, idx)
		return !found
	})
	return found
}

func (d *Device) eventDisagrees(m rtnl.Msg, idx int) bool {
	switch m.Type {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		index, name, ok := rtnl.ParseLink(m.Body)
		return ok && (d.mine(index) || name == d.cfg.Name)
	case unix.RTM_NEWADDR, unix.RTM_DELADDR:
		index, ok := rtnl.AddrIndex(m.Body)
		return ok && idx != 0 && index == idx
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		r, err := rtnl.ParseRoute(m.Body)
		if err != nil || idx == 0 || r.Table != unix.RT_TABLE_MAIN || r.Proto == unix.RTPROT_KERNEL {
			return false
		}
		w := d.want[r.Dst.Addr()]
		wanted := w != nil && w.subnet == r.Dst
		if (wanted && w.direct || d.directRoute(&r)) && rtnl.RouteUsesDevice(m.Body, d.cfg.UplinkIndex) {
			right := wanted && w.direct && d.directRoute(&r) && r.GW == w.public
			if m.Type == unix.RTM_DELROUTE {
				return right
			}
			return !right
		}
		if wanted && w.direct && m.Type == unix.RTM_DELROUTE {
			return false // the VXLAN route it replaced
		}
		if !rtnl.RouteUsesDevice(m.Body, idx) {
			// A route elsewhere is not weft's and never repaired, but the
			// loop must hear of it: an operator's route to a peer's
			// subnet makes the lease rules skip that peer (and its going
			// away brings the peer back). Such changes are rare.
			return true
		}
		if m.Type == unix.RTM_DELROUTE {
			return wanted && r.Metric == metricOf(r.Dst)
		}
		if wanted && w.direct {
			return true // a direct peer wants no route on the device
		}
		return !wanted || !routeIsCanonical(&r)
	case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
		fam, index, ok := rtnl.NeighHeader(m.Body)
		if !ok || idx == 0 || index != idx {
			return false
		}
		if fam == unix.AF_BRIDGE {
			f, _ := rtnl.ParseFDB(m.Body)
			if !f.MAC.Unicast() {
				return false
			}
			w := d.macs[f.MAC]
			if w != nil && w.direct {
				w = nil // a direct peer wants no FDB entry
			}
			if m.Type == unix.RTM_DELNEIGH {
				return w != nil && f.Dst == w.public
			}
			if w == nil {
				return f.Permanent()
			}
			return !fdbIsCanonical(&f, w)
		}
		n, _ := rtnl.ParseNeigh(m.Body)
		w := d.want[n.IP]
		if w != nil && w.direct {
			w = nil // a direct peer wants no neighbour
		}
		if m.Type == unix.RTM_DELNEIGH {
			return w != nil
		}
		if w == nil {
			return n.Permanent()
		}
		return !n.Permanent() || n.MAC != w.mac
	}
	return false
}

// mine reports whether an interface index is the device's or the uplink's.
func (d *Device) mine(index int) bool {
	return index != 0 && (index == int(d.curIndex.Load()) || index == d.cfg.UplinkIndex)
}
