package bench

import (
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// prober asks the kernel about single entries (route lookup, neighbour get,
// FDB get), which costs microseconds and, unlike a subscription, adds no
// listener that every change weftd makes would have to be copied to. The
// bench uses it to see a large change finish without slowing it down: it
// polls the entries of the peer weftd programs last, then verifies every
// peer with one dump.
type prober struct {
	c   *conn
	idx int // flannel.1, once known
	seq uint32
}

// RTM_F_FIB_MATCH: answer with the route that matched, not the result.
const rtmFFibMatch = 0x2000

func newProber(ns string) (*prober, error) {
	c, err := newConn(ns)
	if err != nil {
		return nil, err
	}
	return &prober{c: c, seq: 1 << 24}, nil
}

func (p *prober) close() { p.c.close() }

// get sends one request and returns the body of its answer, or the error
// the kernel gave.
func (p *prober) get(build func(m *msgs)) (uint16, []byte, error) {
	m := msgs{seq: p.seq}
	build(&m)
	p.seq = m.seq
	if err := p.c.send(m.b); err != nil {
		return 0, nil, err
	}
	var typ uint16
	var body []byte
	err := p.c.each(func(t, _ uint16, seq uint32, b []byte) (bool, error) {
		if seq != m.seq {
			return false, nil
		}
		if t == unix.NLMSG_ERROR {
			if code := int32(ne.Uint32(b)); code != 0 {
				return true, syscall.Errno(-code)
			}
			return true, nil
		}
		typ, body = t, append(body[:0], b...)
		return true, nil
	})
	return typ, body, err
}

// route reports whether the route to s is weft's: the lookup of an address
// in s matches the prefix s itself, on flannel.1 (learning its index).
func (p *prober) route(s netip.Prefix) (bool, error) {
	a := s.Addr().Next().As4()
	_, body, err := p.get(func(m *msgs) {
		m.begin(unix.RTM_GETROUTE, unix.NLM_F_REQUEST)
		m.b = append(m.b, unix.AF_INET, 32, 0, 0, 0, 0, 0, 0)
		m.b = ne.AppendUint32(m.b, rtmFFibMatch)
		m.attr(unix.RTA_DST, a[:])
		m.end()
	})
	if errors.Is(err, unix.ENETUNREACH) || errors.Is(err, unix.EHOSTUNREACH) {
		return false, nil
	}
	if err != nil || len(body) < 12 {
		return false, err
	}
	got, oif := routeDst(body)
	if got != s {
		return false, nil
	}
	p.idx = oif
	return true, nil
}

// fdb reports whether the device has an FDB entry for mac.
func (p *prober) fdb(mac [6]byte) (bool, error) {
	if p.idx == 0 {
		return false, nil
	}
	_, _, err := p.get(func(m *msgs) {
		m.begin(unix.RTM_GETNEIGH, unix.NLM_F_REQUEST)
		m.ndmsg(unix.AF_BRIDGE, p.idx, 0, unix.NTF_SELF)
		m.attr(unix.NDA_LLADDR, mac[:])
		m.end()
	})
	if errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	return err == nil, err
}

// waitBulk waits until all peers are present (want 1) or gone (want -1).
// weftd adds FDB entries, then neighbours, then routes, each kind in the
// order of subnets, and removes in the opposite kind order: so it polls, once
// a millisecond, the route of the peer with the highest subnet (for an
// addition) or its FDB entry (for a removal), which change last. One request
// per poll keeps the polling itself negligible. Then it checks that peer's
// other entries and every peer with one dump, and returns the time of the
// poll that saw the change. If the check disagrees (the order assumption
// failed), it goes on checking with dumps every 2 ms.
func (p *prober) waitBulk(peers []synth, want int, timeout time.Duration) (time.Time, error) {
	lastPeer := peers[0]
	for _, s := range peers {
		if comparePrefix(s.subnet, lastPeer.subnet) > 0 {
			lastPeer = s
		}
	}
	deadline := time.Now().Add(timeout)
	var at time.Time
	for {
		var ok bool
		var err error
		if want == 1 {
			ok, err = p.route(lastPeer.subnet)
		} else {
			ok, err = p.fdb(lastPeer.mac)
			ok = !ok && p.idx != 0
		}
		at = time.Now()
		if err != nil {
			return time.Time{}, err
		}
		if ok {
			break
		}
		if at.After(deadline) {
			return time.Time{}, fmt.Errorf("peer %v not %s within %v", lastPeer.subnet, map[int]string{1: "programmed", -1: "removed"}[want], timeout)
		}
		time.Sleep(time.Millisecond)
	}
	for {
		ok, err := p.verify(peers, want)
		if err != nil {
			return time.Time{}, err
		}
		if ok {
			return at, nil
		}
		at = time.Now()
		if at.After(deadline) {
			return time.Time{}, fmt.Errorf("not all %d peers as wanted within %v", len(peers), timeout)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// verify dumps the device and checks every peer's three entries.
func (p *prober) verify(peers []synth, want int) (bool, error) {
	d, err := dumpDevice(p.c, p.idx)
	if err != nil {
		return false, err
	}
	for _, s := range peers {
		_, r := d.routes[s.subnet]
		_, n := d.neighs[s.subnet.Addr()]
		_, f := d.fdb[s.mac]
		if (want == 1) != (r && n && f) || (want == -1) != (!r && !n && !f) {
			return false, nil
		}
	}
	return true, nil
}

func comparePrefix(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// device is a dump of flannel.1: peer routes, permanent neighbours,
// unicast FDB entries.
type device struct {
	routes map[netip.Prefix]bool
	neighs map[netip.Addr]bool
	fdb    map[[6]byte]bool
}

func dumpDevice(c *conn, idx int) (device, error) {
	d := device{routes: map[netip.Prefix]bool{}, neighs: map[netip.Addr]bool{}, fdb: map[[6]byte]bool{}}
	if idx == 0 {
		return d, nil
	}
	_, err := c.dumpCount(routeDumpReq(idx), unix.RTM_GETROUTE, func(body []byte) bool {
		if body[5] == unix.RTPROT_KERNEL {
			return false
		}
		attrsOf(body[12:], func(t uint16, v []byte) {
			if t == unix.RTA_DST {
				d.routes[netip.PrefixFrom(addr4(v), int(body[1]))] = true
			}
		})
		return true
	})
	if err != nil {
		return d, err
	}
	_, err = c.dumpCount(neighDumpReq(idx), unix.RTM_GETNEIGH, func(body []byte) bool {
		if ne.Uint16(body[8:])&unix.NUD_PERMANENT == 0 {
			return false
		}
		attrsOf(body[12:], func(t uint16, v []byte) {
			if t == unix.NDA_DST {
				d.neighs[addr4(v)] = true
			}
		})
		return true
	})
	if err != nil {
		return d, err
	}
	_, err = c.dumpCount(fdbDumpReq(idx), unix.RTM_GETNEIGH, func(body []byte) bool {
		attrsOf(body[12:], func(t uint16, v []byte) {
			if t == unix.NDA_LLADDR && len(v) == 6 && v[0]&1 == 0 && [6]byte(v) != [6]byte{} {
				d.fdb[[6]byte(v)] = true
			}
		})
		return true
	})
	return d, err
}
