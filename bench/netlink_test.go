package bench

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"syscall"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A deliberately small netlink client of its own: the floors must measure the
// kernel, not weft's code, so nothing here is shared with backend/vxlan.

var ne = binary.NativeEndian

// nsSocket opens a NETLINK_ROUTE socket inside the named namespace, bound to
// groups, on a locked thread that returns to its namespace (or is discarded)
// afterwards.
func nsSocket(ns string, groups uint32, rcvbuf int) (int, error) {
	type res struct {
		fd  int
		err error
	}
	c := make(chan res, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			c <- res{-1, err}
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			c <- res{-1, err}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			c <- res{-1, err} // thread state unknown: stays locked, discarded
			return
		}
		fd, serr := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err := netns.Set(orig); err != nil {
			if serr == nil {
				unix.Close(fd)
			}
			c <- res{-1, err}
			return
		}
		runtime.UnlockOSThread()
		c <- res{fd, serr}
	}()
	r := <-c
	if r.err != nil {
		return -1, fmt.Errorf("netlink socket in %s: %w", ns, r.err)
	}
	fd := r.fd
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		unix.Close(fd)
		return -1, err
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
	for _, opt := range []int{unix.NETLINK_GET_STRICT_CHK, unix.NETLINK_CAP_ACK} {
		if err := unix.SetsockoptInt(fd, unix.SOL_NETLINK, opt, 1); err != nil {
			unix.Close(fd)
			return -1, err
		}
	}
	tv := unix.NsecToTimeval((30 * time.Second).Nanoseconds())
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// msgs builds netlink requests back to back.
type msgs struct {
	b    []byte
	last int // offset of the last message
	seq  uint32
	n    int
}

func (m *msgs) begin(typ, flags uint16) {
	m.seq++
	m.n++
	m.last = len(m.b)
	m.b = ne.AppendUint32(m.b, 0)
	m.b = ne.AppendUint16(m.b, typ)
	m.b = ne.AppendUint16(m.b, flags)
	m.b = ne.AppendUint32(m.b, m.seq)
	m.b = ne.AppendUint32(m.b, 0)
}

func (m *msgs) end() { ne.PutUint32(m.b[m.last:], uint32(len(m.b)-m.last)) }

func (m *msgs) attr(typ uint16, v []byte) {
	m.b = ne.AppendUint16(m.b, uint16(4+len(v)))
	m.b = ne.AppendUint16(m.b, typ)
	m.b = append(m.b, v...)
	for len(m.b)%4 != 0 {
		m.b = append(m.b, 0)
	}
}

func (m *msgs) u32(typ uint16, v uint32) { m.attr(typ, ne.AppendUint32(nil, v)) }

func (m *msgs) ackLast() {
	ne.PutUint16(m.b[m.last+6:], ne.Uint16(m.b[m.last+6:])|unix.NLM_F_ACK)
}

const (
	reqSet = unix.NLM_F_REQUEST | unix.NLM_F_CREATE | unix.NLM_F_REPLACE
	reqDel = unix.NLM_F_REQUEST
)

// ndmsg appends a struct ndmsg, padding zeroed.
func (m *msgs) ndmsg(fam uint8, index int, state uint16, flags uint8) {
	m.b = append(m.b, fam, 0, 0, 0)
	m.b = ne.AppendUint32(m.b, uint32(index))
	m.b = ne.AppendUint16(m.b, state)
	m.b = append(m.b, flags, 0)
}

func (m *msgs) rtmsg(dstLen uint8, proto, scope, typ uint8, flags uint32) {
	m.b = append(m.b, unix.AF_INET, dstLen, 0, 0, unix.RT_TABLE_MAIN, proto, scope, typ)
	m.b = ne.AppendUint32(m.b, flags)
}

func (m *msgs) addNeigh(index int, p synth) {
	m.begin(unix.RTM_NEWNEIGH, reqSet)
	m.ndmsg(unix.AF_INET, index, unix.NUD_PERMANENT, 0)
	a := p.subnet.Addr().As4()
	m.attr(unix.NDA_DST, a[:])
	m.attr(unix.NDA_LLADDR, p.mac[:])
	m.end()
}

func (m *msgs) addFDB(index int, p synth) {
	m.begin(unix.RTM_NEWNEIGH, reqSet)
	m.ndmsg(unix.AF_BRIDGE, index, unix.NUD_PERMANENT, unix.NTF_SELF)
	m.attr(unix.NDA_LLADDR, p.mac[:])
	a := p.public.As4()
	m.attr(unix.NDA_DST, a[:])
	m.end()
}

func (m *msgs) addRoute(index int, p synth, metric uint32) {
	m.begin(unix.RTM_NEWROUTE, reqSet)
	m.rtmsg(uint8(p.subnet.Bits()), unix.RTPROT_BOOT, unix.RT_SCOPE_UNIVERSE, unix.RTN_UNICAST, unix.RTNH_F_ONLINK)
	a := p.subnet.Addr().As4()
	m.attr(unix.RTA_DST, a[:])
	m.attr(unix.RTA_GATEWAY, a[:])
	m.u32(unix.RTA_OIF, uint32(index))
	if metric != 0 {
		m.u32(unix.RTA_PRIORITY, metric)
	}
	m.end()
}

func (m *msgs) delRoute(index int, p synth, metric uint32) {
	m.begin(unix.RTM_DELROUTE, reqDel)
	m.rtmsg(uint8(p.subnet.Bits()), 0, unix.RT_SCOPE_NOWHERE, 0, 0)
	a := p.subnet.Addr().As4()
	m.attr(unix.RTA_DST, a[:])
	m.u32(unix.RTA_OIF, uint32(index))
	if metric != 0 {
		m.u32(unix.RTA_PRIORITY, metric)
	}
	m.end()
}

func (m *msgs) delNeigh(index int, p synth) {
	m.begin(unix.RTM_DELNEIGH, reqDel)
	m.ndmsg(unix.AF_INET, index, 0, 0)
	a := p.subnet.Addr().As4()
	m.attr(unix.NDA_DST, a[:])
	m.end()
}

func (m *msgs) delFDB(index int, p synth) {
	m.begin(unix.RTM_DELNEIGH, reqDel)
	m.ndmsg(unix.AF_BRIDGE, index, 0, unix.NTF_SELF)
	m.attr(unix.NDA_LLADDR, p.mac[:])
	a := p.public.As4()
	m.attr(unix.NDA_DST, a[:])
	m.end()
}

// conn is a netlink socket with its receive buffer.
type conn struct {
	fd  int
	buf []byte
}

func newConn(ns string) (*conn, error) {
	fd, err := nsSocket(ns, 0, 8<<20)
	if err != nil {
		return nil, err
	}
	return &conn{fd: fd, buf: make([]byte, 64<<10)}, nil
}

func (c *conn) close() { unix.Close(c.fd) }

func (c *conn) send(b []byte) error {
	return unix.Sendto(c.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
}

// each reads datagrams and calls f for every message until f returns done.
func (c *conn) each(f func(typ, flags uint16, seq uint32, body []byte) (done bool, err error)) error {
	for {
		n, _, err := unix.Recvfrom(c.fd, c.buf, 0)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		b := c.buf[:n]
		for len(b) >= 16 {
			l := int(ne.Uint32(b))
			if l < 16 || l > len(b) {
				return fmt.Errorf("malformed netlink message")
			}
			done, err := f(ne.Uint16(b[4:]), ne.Uint16(b[6:]), ne.Uint32(b[8:]), b[16:l])
			if err != nil || done {
				return err
			}
			b = b[min((l+3)&^3, len(b)):]
		}
	}
}

// exchange sends b (whose last message asks for an acknowledgement, with
// sequence number last) and waits for that acknowledgement; errors of
// earlier messages count as failures.
func (c *conn) exchange(b []byte, last uint32) (failed int, err error) {
	if err := c.send(b); err != nil {
		return 0, err
	}
	err = c.each(func(typ, _ uint16, seq uint32, body []byte) (bool, error) {
		if typ != unix.NLMSG_ERROR || len(body) < 4 {
			return false, nil
		}
		if code := int32(ne.Uint32(body)); code != 0 {
			failed++
			if failed == 1 {
				err = syscall.Errno(-code)
			}
		}
		return seq == last, nil
	})
	return failed, err
}

// dumpCount sends a dump request and counts the entries of the answer.
func (c *conn) dumpCount(req []byte, typ uint16, count func(body []byte) bool) (int, error) {
	var m msgs
	m.seq = 1 << 30
	m.begin(typ, unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	m.b = append(m.b, req...)
	m.end()
	if err := c.send(m.b); err != nil {
		return 0, err
	}
	n := 0
	err := c.each(func(t, _ uint16, seq uint32, body []byte) (bool, error) {
		switch {
		case seq != m.seq:
			return false, nil
		case t == unix.NLMSG_DONE:
			return true, nil
		case t == unix.NLMSG_ERROR:
			return true, syscall.Errno(-int32(ne.Uint32(body)))
		}
		if count == nil || count(body) {
			n++
		}
		return false, nil
	})
	return n, err
}

// Dump requests filtered to one device by the kernel (strict checking).
func routeDumpReq(index int) []byte {
	var m msgs
	m.b = []byte{unix.AF_INET, 0, 0, 0, unix.RT_TABLE_MAIN, 0, 0, 0, 0, 0, 0, 0}
	m.u32(unix.RTA_OIF, uint32(index))
	return m.b
}

func neighDumpReq(index int) []byte {
	var m msgs
	m.ndmsg(unix.AF_INET, 0, 0, 0)
	m.u32(unix.NDA_IFINDEX, uint32(index))
	return m.b
}

func fdbDumpReq(index int) []byte {
	var m msgs
	m.ndmsg(unix.AF_BRIDGE, index, 0, 0)
	return m.b
}

// attrsOf calls f for each attribute.
// routeDst reads an IPv4 route message's destination and output device
// (body at least the 12 bytes of struct rtmsg).
func routeDst(body []byte) (netip.Prefix, int) {
	var dst netip.Addr
	oif := 0
	attrsOf(body[12:], func(t uint16, v []byte) {
		switch t {
		case unix.RTA_DST:
			dst = addr4(v)
		case unix.RTA_OIF:
			oif = int(ne.Uint32(v))
		}
	})
	return netip.PrefixFrom(dst, int(body[1])), oif
}

func attrsOf(b []byte, f func(typ uint16, v []byte)) {
	for len(b) >= 4 {
		l := int(ne.Uint16(b))
		if l < 4 || l > len(b) {
			return
		}
		f(ne.Uint16(b[2:])&0x3fff, b[4:l])
		b = b[min((l+3)&^3, len(b)):]
	}
}

// addr4 reads a 4-byte address attribute.
func addr4(v []byte) netip.Addr {
	a, _ := netip.AddrFromSlice(v)
	return a.Unmap()
}
