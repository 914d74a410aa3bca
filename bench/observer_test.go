package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// observer follows the kernel state of flannel.1 in one namespace through
// netlink events: which peer routes, permanent neighbours and unicast FDB
// entries are present, and when each last appeared or went. It is how the
// bench sees "programmed" without polling dumps that would compete with
// weftd for the CPU. If the kernel drops events (ENOBUFS), it rebuilds its
// state from a dump and says so.
type observer struct {
	ns   string
	fd   int
	done chan struct{}

	mu      sync.Mutex // guards the fields below
	index   int
	routes  map[netip.Prefix]time.Time // present, since
	neighs  map[netip.Addr]time.Time
	fdb     map[[6]byte]time.Time
	gone    map[string]time.Time // "r"/"n"/"f"+key -> when it went
	last    time.Time            // last change seen
	changed chan struct{}        // closed and replaced at every change
	resyncs int
	err     error
}

const observerGroups = 1<<(unix.RTNLGRP_LINK-1) | 1<<(unix.RTNLGRP_IPV4_ROUTE-1) | 1<<(unix.RTNLGRP_NEIGH-1)

func newObserver(ns string) (*observer, error) {
	fd, err := nsSocket(ns, observerGroups, 64<<20)
	if err != nil {
		return nil, err
	}
	// A short timeout lets the reader notice close.
	tv := unix.NsecToTimeval((200 * time.Millisecond).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	o := &observer{
		ns: ns, fd: fd, done: make(chan struct{}),
		routes: map[netip.Prefix]time.Time{}, neighs: map[netip.Addr]time.Time{}, fdb: map[[6]byte]time.Time{},
		gone: map[string]time.Time{}, changed: make(chan struct{}),
	}
	if err := o.resync(); err != nil {
		unix.Close(fd)
		return nil, err
	}
	go o.run()
	return o, nil
}

func (o *observer) close() {
	close(o.done)
}

func (o *observer) run() {
	defer unix.Close(o.fd)
	buf := make([]byte, 256<<10)
	for {
		select {
		case <-o.done:
			return
		default:
		}
		n, _, err := unix.Recvfrom(o.fd, buf, 0)
		now := time.Now()
		switch {
		case err == unix.EAGAIN || err == unix.EINTR:
			continue
		case errors.Is(err, unix.ENOBUFS):
			if err := o.resync(); err != nil {
				o.fail(err)
				return
			}
			continue
		case err != nil:
			o.fail(err)
			return
		}
		o.mu.Lock()
		b := buf[:n]
		for len(b) >= 16 {
			l := int(ne.Uint32(b))
			if l < 16 || l > len(b) {
				break
			}
			o.eventLocked(ne.Uint16(b[4:]), b[16:l], now)
			b = b[min((l+3)&^3, len(b)):]
		}
		o.notifyLocked(now)
		o.mu.Unlock()
	}
}

func (o *observer) fail(err error) {
	o.mu.Lock()
	o.err = err
	o.notifyLocked(time.Now())
	o.mu.Unlock()
}

func (o *observer) notifyLocked(now time.Time) {
	o.last = now
	close(o.changed)
	o.changed = make(chan struct{})
}

func (o *observer) eventLocked(typ uint16, body []byte, now time.Time) {
	switch typ {
	case unix.RTM_NEWLINK:
		if len(body) < unix.SizeofIfInfomsg {
			return
		}
		attrsOf(body[unix.SizeofIfInfomsg:], func(t uint16, v []byte) {
			if t == unix.IFLA_IFNAME && string(trimZero(v)) == "flannel.1" {
				o.index = int(int32(ne.Uint32(body[4:])))
			}
		})
	case unix.RTM_NEWROUTE, unix.RTM_DELROUTE:
		if len(body) < 12 || body[0] != unix.AF_INET || body[4] != unix.RT_TABLE_MAIN || body[5] == unix.RTPROT_KERNEL {
			return
		}
		p, oif := routeDst(body)
		if oif != o.index || !p.Addr().IsValid() {
			return
		}
		if typ == unix.RTM_NEWROUTE {
			o.routes[p] = now
		} else {
			delete(o.routes, p)
			o.gone["r"+p.String()] = now
		}
	case unix.RTM_NEWNEIGH, unix.RTM_DELNEIGH:
		if len(body) < 12 || int(int32(ne.Uint32(body[4:]))) != o.index || o.index == 0 {
			return
		}
		permanent := ne.Uint16(body[8:])&unix.NUD_PERMANENT != 0
		var ip netip.Addr
		var mac [6]byte
		attrsOf(body[12:], func(t uint16, v []byte) {
			switch t {
			case unix.NDA_DST:
				ip = addr4(v)
			case unix.NDA_LLADDR:
				if len(v) == 6 {
					mac = [6]byte(v)
				}
			}
		})
		switch body[0] {
		case unix.AF_BRIDGE:
			if mac[0]&1 != 0 || mac == [6]byte{} {
				return
			}
			if typ == unix.RTM_NEWNEIGH {
				o.fdb[mac] = now
			} else {
				delete(o.fdb, mac)
				o.gone["f"+string(mac[:])] = now
			}
		case unix.AF_INET:
			if typ == unix.RTM_NEWNEIGH && permanent {
				o.neighs[ip] = now
			} else if _, ok := o.neighs[ip]; ok {
				delete(o.neighs, ip)
				o.gone["n"+ip.String()] = now
			}
		}
	}
}

func trimZero(b []byte) []byte {
	for len(b) > 0 && b[len(b)-1] == 0 {
		b = b[:len(b)-1]
	}
	return b
}

// resync rebuilds the state from dumps (at start, and after lost events).
func (o *observer) resync() error {
	c, err := newConn(o.ns)
	if err != nil {
		return err
	}
	defer c.close()
	index := 0
	if _, err := c.dumpCount(make([]byte, unix.SizeofIfInfomsg), unix.RTM_GETLINK, func(body []byte) bool {
		attrsOf(body[unix.SizeofIfInfomsg:], func(t uint16, v []byte) {
			if t == unix.IFLA_IFNAME && string(trimZero(v)) == "flannel.1" {
				index = int(int32(ne.Uint32(body[4:])))
			}
		})
		return false
	}); err != nil {
		return fmt.Errorf("observer: listing links: %w", err)
	}
	type event struct {
		typ  uint16
		body []byte
	}
	var events []event
	var errs []error
	if index != 0 {
		for _, d := range []struct {
			req      []byte
			get, new uint16
		}{
			{routeDumpReq(index), unix.RTM_GETROUTE, unix.RTM_NEWROUTE},
			{neighDumpReq(index), unix.RTM_GETNEIGH, unix.RTM_NEWNEIGH},
			{fdbDumpReq(index), unix.RTM_GETNEIGH, unix.RTM_NEWNEIGH},
		} {
			_, err := c.dumpCount(d.req, d.get, func(body []byte) bool {
				events = append(events, event{d.new, append([]byte(nil), body...)})
				return true
			})
			errs = append(errs, err)
		}
	}
	now := time.Now()
	o.mu.Lock()
	defer o.mu.Unlock()
	o.index = index
	clear(o.routes)
	clear(o.neighs)
	clear(o.fdb)
	for _, ev := range events {
		o.eventLocked(ev.typ, ev.body, now)
	}
	o.resyncs++
	o.notifyLocked(now)
	return errors.Join(errs...)
}

// snapshot of the observer's view, taken under its lock.
type view struct {
	o *observer
}

func (v view) present(p synth) (time.Time, bool) {
	r, ok1 := v.o.routes[p.subnet]
	n, ok2 := v.o.neighs[p.subnet.Addr()]
	f, ok3 := v.o.fdb[p.mac]
	return latest(r, n, f), ok1 && ok2 && ok3
}

func (v view) absent(p synth) (time.Time, bool) {
	_, ok1 := v.o.routes[p.subnet]
	_, ok2 := v.o.neighs[p.subnet.Addr()]
	_, ok3 := v.o.fdb[p.mac]
	if ok1 || ok2 || ok3 {
		return time.Time{}, false
	}
	return latest(v.o.gone["r"+p.subnet.String()], v.o.gone["n"+p.subnet.Addr().String()], v.o.gone["f"+string(p.mac[:])]), true
}

func (v view) counts() [3]int { return [3]int{len(v.o.routes), len(v.o.neighs), len(v.o.fdb)} }

func latest(ts ...time.Time) time.Time {
	var l time.Time
	for _, t := range ts {
		if t.After(l) {
			l = t
		}
	}
	return l
}

// wait calls cond with the current view after every change until it
// returns true, and returns the time cond reported (or the time of the
// change that satisfied it).
func (o *observer) wait(timeout time.Duration, cond func(v view) (time.Time, bool)) (time.Time, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		o.mu.Lock()
		t, ok := cond(view{o})
		if ok && t.IsZero() {
			t = o.last
		}
		ch, err := o.changed, o.err
		o.mu.Unlock()
		if ok {
			return t, nil
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("observer: %w", err)
		}
		select {
		case <-ch:
		case <-deadline.C:
			o.mu.Lock()
			c := view{o}.counts()
			o.mu.Unlock()
			return time.Time{}, fmt.Errorf("not within %v (routes, neighbours, FDB entries on flannel.1: %v)", timeout, c)
		}
	}
}

// allPresent and allAbsent are wait conditions over many peers.
func allPresent(ps []synth) func(v view) (time.Time, bool) {
	return func(v view) (time.Time, bool) {
		var last time.Time
		for _, p := range ps {
			t, ok := v.present(p)
			if !ok {
				return time.Time{}, false
			}
			last = latest(last, t)
		}
		return last, true
	}
}

func allAbsent(ps []synth) func(v view) (time.Time, bool) {
	return func(v view) (time.Time, bool) {
		var last time.Time
		for _, p := range ps {
			t, ok := v.absent(p)
			if !ok {
				return time.Time{}, false
			}
			last = latest(last, t)
		}
		return last, true
	}
}
