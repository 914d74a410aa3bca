package rtnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/netnsx"
)

// Socket buffer sizes. A batch's replies (one error per failed request at
// worst) and a subscription's backlog while a big Set runs (three events per
// peer) must fit, or the kernel drops them and reports ENOBUFS. Root can force
// sizes above net.core.[rw]mem_max; otherwise the kernel caps them.
const (
	writeSockBuf     = 4 << 20
	subscribeSockBuf = 32 << 20
)

// inNamespace runs fn with its sockets made inside ns (directly, when ns is
// not open: the daemon's own namespace).
func inNamespace(ns netns.NsHandle, fn func() error) error {
	if !ns.IsOpen() {
		return fn()
	}
	return netnsx.Do(ns, fn)
}

// OpenRoute opens a NETLINK_ROUTE socket in ns, bound to the multicast groups
// in the bit mask groups (0 for none), with a receive buffer of rcvbuf bytes.
func OpenRoute(ns netns.NsHandle, groups uint32, rcvbuf int, nonblock bool) (fd int, pid uint32, err error) {
	flags := unix.SOCK_RAW | unix.SOCK_CLOEXEC
	if nonblock {
		flags |= unix.SOCK_NONBLOCK
	}
	err = inNamespace(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, flags, unix.NETLINK_ROUTE)
		return err
	})
	if err != nil {
		return -1, 0, fmt.Errorf("opening netlink socket: %w", err)
	}
	fail := func(what string, err error) (int, uint32, error) {
		unix.Close(fd)
		return -1, 0, fmt.Errorf("%s on netlink socket: %w", what, err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvbuf); err != nil {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf); err != nil {
			return fail("setting the receive buffer", err)
		}
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
		return fail("binding", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("reading the address", err)
	}
	nl, ok := sa.(*unix.SockaddrNetlink)
	if !ok {
		return fail("reading the address", errors.New("not a netlink address"))
	}
	return fd, nl.Pid, nil
}

// OpenNetfilter opens a NETLINK_NETFILTER socket in the namespace nsFd (0:
// the process's own), unbound.
func OpenNetfilter(nsFd int) (int, error) {
	ns := netns.None()
	if nsFd != 0 {
		ns = netns.NsHandle(nsFd)
	}
	var fd int
	err := inNamespace(ns, func() (err error) {
		fd, err = unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("opening a netfilter netlink socket: %w", err)
	}
	return fd, nil
}

// Offsets and sizes of the netlink structures this package reads and writes
// by hand (include/uapi/linux/netlink.h, rtnetlink.h, neighbour.h).
const (
	nlHdrLen  = unix.SizeofNlMsghdr // 16
	rtMsgLen  = unix.SizeofRtMsg    // 12
	ndMsgLen  = unix.SizeofNdMsg    // 12
	errMsgLen = unix.SizeofNlMsgerr // 20: error code, then the request's header
	rtaHdrLen = unix.SizeofRtAttr   // 4

	rtaNHID = 30 // RTA_NH_ID, not in x/sys/unix
	ndaNHID = 13 // NDA_NH_ID, not in x/sys/unix
)

var ne = binary.NativeEndian

func Align4(n int) int { return (n + 3) &^ 3 }

// Msg is one message of a receive buffer.
type Msg struct {
	Type  uint16
	Flags uint16
	Seq   uint32
	Body  []byte // after the header
}

// SplitMsgs calls f for each complete message in b, until f returns false.
func SplitMsgs(b []byte, f func(m Msg) bool) error {
	for len(b) >= nlHdrLen {
		l := int(ne.Uint32(b))
		if l < nlHdrLen || l > len(b) {
			return fmt.Errorf("malformed netlink message of length %d in %d bytes", l, len(b))
		}
		m := Msg{Type: ne.Uint16(b[4:]), Flags: ne.Uint16(b[6:]), Seq: ne.Uint32(b[8:]), Body: b[nlHdrLen:l]}
		if !f(m) {
			return nil
		}
		b = b[min(Align4(l), len(b)):]
	}
	return nil
}

// Attrs calls f for each attribute in b.
func Attrs(b []byte, f func(typ uint16, v []byte)) {
	for len(b) >= rtaHdrLen {
		l := int(ne.Uint16(b))
		if l < rtaHdrLen || l > len(b) {
			return
		}
		f(ne.Uint16(b[2:])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[rtaHdrLen:l])
		b = b[min(Align4(l), len(b)):]
	}
}

// MsgError turns an NLMSG_ERROR message into its error (nil for an
// acknowledgement), with the kernel's extended message when it sent one.
func MsgError(m Msg) error {
	if len(m.Body) < 4 {
		return errors.New("truncated netlink error message")
	}
	code := int32(ne.Uint32(m.Body))
	if code == 0 {
		return nil
	}
	err := error(syscall.Errno(-code))
	if m.Flags&unix.NLM_F_ACK_TLVS == 0 {
		return err
	}
	tlvs := m.Body[min(errMsgLen, len(m.Body)):]
	if m.Flags&unix.NLM_F_CAPPED == 0 && len(m.Body) >= errMsgLen {
		// The whole request was echoed before the TLVs.
		reqLen := int(ne.Uint32(m.Body[4:]))
		tlvs = m.Body[min(4+Align4(reqLen), len(m.Body)):]
	}
	Attrs(tlvs, func(typ uint16, v []byte) {
		if typ == unix.NLMSGERR_ATTR_MSG && len(v) > 1 {
			msg := string(v)
			if i := len(msg) - 1; msg[i] == 0 {
				msg = msg[:i]
			}
			err = fmt.Errorf("%w (%s)", err, msg)
		}
	})
	return err
}
