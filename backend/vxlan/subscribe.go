package vxlan

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
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
	membership := func(opt int) error {
		var err error
		cerr := s.rc.Control(func(fd uintptr) {
			for g := 1; g <= 32; g++ {
				if subscribeGroups&(1<<(g-1)) == 0 {
					continue
				}
				if err = unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, opt, g); err != nil {
					return
				}
			}
		})
		return errors.Join(cerr, err)
	}
	if err := membership(unix.NETLINK_DROP_MEMBERSHIP); err != nil {
		// Closed meanwhile, or refused: take it back, events keep coming.
		_ = membership(unix.NETLINK_ADD_MEMBERSHIP)
		return func() {}
	}
	return func() {
		if err := membership(unix.NETLINK_ADD_MEMBERSHIP); err != nil && !errors.Is(err, os.ErrClosed) {
			// The socket would stay deaf: end it, keepSubscribed renews it.
			d.log.Warn("rejoining the netlink subscription's groups", "err", err)
			s.f.Close()
		}
		kick()
	}
}

// subscription is a netlink socket joined to subscribeGroups, read through
// the runtime's poller so that closing it ends a blocked read.
type subscription struct {
	f   *os.File
	rc  syscall.RawConn
	buf []byte
}

func (d *Device) subscribe() (*subscription, error) {
	fd, _, err := openRoute(d.ns, subscribeGroups, subscribeSockBuf, true)
	if err != nil {
		return nil, err
	}
	if d.kernel != nil {
		if err := dropOwnEvents(fd, d.kernel.pid); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	// Dropped events are reported as ENOBUFS (then handled with a kick),
	// not hidden.
	f := os.NewFile(uintptr(fd), "netlink-subscription")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &subscription{f: f, rc: rc, buf: make([]byte, 64<<10)}, nil
}

// dropOwnEvents attaches a socket filter that drops, in the kernel, the
// notifications of changes made through the socket with port id pid: the
// kernel stamps route and neighbour notifications with the port id of the
// request that caused them. When thousands of peers are programmed, this
// spares the subscription most of its events (and the writer the cost of
// waking the reader for them). FDB notifications carry no port id; they
// still arrive and are judged by disagrees.
func dropOwnEvents(fd int, pid uint32) error {
	// Classic BPF loads words in network order.
	be := uint32(pid>>24) | uint32(pid>>8)&0xff00 | uint32(pid<<8)&0xff0000 | pid<<24
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		be = pid // big-endian host
	}
	prog := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 12}, // nlmsg_pid
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: be},
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},          // ours: drop
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffffffff}, // keep
	}
	fprog := unix.SockFprog{Len: uint16(len(prog)), Filter: &prog[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &fprog); err != nil {
		return fmt.Errorf("attaching a socket filter: %w", err)
	}
	return nil
}

// read returns the next datagram of events.
func (s *subscription) read() ([]byte, error) {
	var n int
	var rerr error
	err := s.rc.Read(func(fd uintptr) bool {
		// Read, not Recvfrom: the sender is always the kernel, and
		// Recvfrom allocates its address for every datagram.
		n, rerr = unix.Read(int(fd), s.buf)
		return rerr != unix.EAGAIN && rerr != unix.EINTR
	})
	if err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, rerr
	}
	return s.buf[:n], nil
}

// keepSubscribed follows s, and renews the subscription whenever it fails,
// until ctx is done.
func (d *Device) keepSubscribed(ctx context.Context, s *subscription, kick func()) {
	backoff := resubscribeMin
	for {
		since := time.Now()
		err := d.follow(ctx, s, kick)
		s.f.Close()
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
func (d *Device) follow(ctx context.Context, s *subscription, kick func()) error {
	stop := context.AfterFunc(ctx, func() { s.f.Close() })
	defer stop()
	for {
		b, err := s.read()
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
	_ = splitMsgs(b, func(m nlMsg) bool {
		found = d.eventDisagrees(m, idx)
		return !found
	})
	return found
}

func (d *Device) eventDisagrees(m nlMsg, idx int) bool {
	switch m.typ {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		if len(m.body) < unix.SizeofIfInfomsg {
			return false
		}
		if d.mine(int(int32(ne.Uint32(m.body[4:])))) {
			return true
		}
		named := false
		attrs(m.body[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) {
			if typ == unix.IFLA_IFNAME && string(trimNul(v)) == d.cfg.Name {
				named = true
			}
		})
		return named
	case unix.RTM_NEWADDR, unix.RTM_DELADDR:
		return len(m.body) >= unix.SizeofIfAddrmsg && idx != 0 && int(ne.Uint32(m.body[4:])) == idx
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		r, err := parseRoute(m.body)
		if err != nil || idx == 0 || r.table != unix.RT_TABLE_MAIN || r.proto == unix.RTPROT_KERNEL {
			return false
		}
		w := d.want[r.dst.Addr()]
		wanted := w != nil && w.subnet == r.dst
		if !routeUsesDevice(m.body, idx) {
			// A route elsewhere is not weft's and never repaired, but the
			// loop must hear of it: an operator's route to a peer's
			// subnet makes the lease rules skip that peer (and its going
			// away brings the peer back). Such changes are rare.
			return true
		}
		if m.typ == unix.RTM_DELROUTE {
			return wanted && r.metric == metricOf(r.dst)
		}
		return !wanted || !routeIsCanonical(&r)
	case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
		if len(m.body) < ndMsgLen || idx == 0 || int(int32(ne.Uint32(m.body[4:]))) != idx {
			return false
		}
		if m.body[0] == unix.AF_BRIDGE {
			f, _ := parseFDB(m.body)
			if !f.mac.unicast() {
				return false
			}
			w := d.macs[f.mac]
			if m.typ == unix.RTM_DELNEIGH {
				return w != nil && f.dst == w.public
			}
			if w == nil {
				return f.permanent()
			}
			return !fdbIsCanonical(&f, w)
		}
		n, _ := parseNeigh(m.body)
		w := d.want[n.ip]
		if m.typ == unix.RTM_DELNEIGH {
			return w != nil
		}
		if w == nil {
			return n.permanent()
		}
		return !n.permanent() || n.mac != w.mac
	}
	return false
}

// routeUsesDevice reports whether the route message b goes through device
// idx, directly or as one of several next hops.
func routeUsesDevice(b []byte, idx int) bool {
	uses := false
	attrs(b[rtMsgLen:], func(typ uint16, v []byte) {
		switch typ {
		case unix.RTA_OIF:
			uses = uses || len(v) == 4 && int(ne.Uint32(v)) == idx
		case unix.RTA_MULTIPATH:
			// struct rtnexthop: len u16, flags u8, hops u8, ifindex i32.
			for len(v) >= 8 {
				l := int(ne.Uint16(v))
				uses = uses || int(int32(ne.Uint32(v[4:]))) == idx
				if l < 8 || l > len(v) {
					break
				}
				v = v[min(align4(l), len(v)):]
			}
		}
	})
	return uses
}

func trimNul(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// mine reports whether an interface index is the device's or the uplink's.
func (d *Device) mine(index int) bool {
	return index != 0 && (index == int(d.curIndex.Load()) || index == d.cfg.UplinkIndex)
}
