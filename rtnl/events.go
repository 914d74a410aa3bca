package rtnl

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Subscription is a netlink socket joined to multicast groups, read through
// the runtime's poller so that closing it ends a blocked read.
type Subscription struct {
	f   *os.File
	rc  syscall.RawConn
	buf []byte
}

// Subscribe opens a subscription to the multicast groups in the bit mask
// groups (bit g-1 for group g), in ns. With dropPid not 0, the kernel drops
// the notifications of changes made through the socket with that port id
// (see DropOwnEvents). Dropped events (a full buffer) are reported by Read
// as ENOBUFS, not hidden.
func Subscribe(ns netns.NsHandle, groups uint32, dropPid uint32) (*Subscription, error) {
	fd, _, err := OpenRoute(ns, groups, subscribeSockBuf, true)
	if err != nil {
		return nil, err
	}
	if dropPid != 0 {
		if err := DropOwnEvents(fd, dropPid); err != nil {
			unix.Close(fd)
			return nil, err
		}
	}
	f := os.NewFile(uintptr(fd), "netlink-subscription")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, err
	}
	return &Subscription{f: f, rc: rc, buf: make([]byte, 64<<10)}, nil
}

// Close closes the socket; a Read blocked on it returns.
func (s *Subscription) Close() error { return s.f.Close() }

// Read returns the next datagram of events.
func (s *Subscription) Read() ([]byte, error) {
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

// SetGroups joins (or, with join false, leaves) the multicast groups in the
// bit mask groups. Out of the groups, the kernel does not even look at the
// socket when it notifies.
func (s *Subscription) SetGroups(groups uint32, join bool) error {
	opt := unix.NETLINK_DROP_MEMBERSHIP
	if join {
		opt = unix.NETLINK_ADD_MEMBERSHIP
	}
	var err error
	cerr := s.rc.Control(func(fd uintptr) {
		for g := 1; g <= 32; g++ {
			if groups&(1<<(g-1)) == 0 {
				continue
			}
			if err = unix.SetsockoptInt(int(fd), unix.SOL_NETLINK, opt, g); err != nil {
				return
			}
		}
	})
	return errors.Join(cerr, err)
}

// DropOwnEvents attaches a socket filter that drops, in the kernel, the
// notifications of changes made through the socket with port id pid: the
// kernel stamps route and neighbour notifications with the port id of the
// request that caused them. FDB notifications carry no port id; they still
// arrive.
func DropOwnEvents(fd int, pid uint32) error {
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

// ParseLink reads the interface index and name of an RTM_NEWLINK or
// RTM_DELLINK body.
func ParseLink(b []byte) (index int, name string, ok bool) {
	if len(b) < unix.SizeofIfInfomsg {
		return 0, "", false
	}
	index = int(int32(ne.Uint32(b[4:])))
	Attrs(b[unix.SizeofIfInfomsg:], func(typ uint16, v []byte) {
		if typ == unix.IFLA_IFNAME {
			for len(v) > 0 && v[len(v)-1] == 0 {
				v = v[:len(v)-1]
			}
			name = string(v)
		}
	})
	return index, name, true
}

// AddrIndex reads the interface index of an RTM_NEWADDR or RTM_DELADDR body.
func AddrIndex(b []byte) (int, bool) {
	if len(b) < unix.SizeofIfAddrmsg {
		return 0, false
	}
	return int(ne.Uint32(b[4:])), true
}

// NeighHeader reads the family and interface index of an RTM_NEWNEIGH or
// RTM_DELNEIGH body: AF_BRIDGE for an FDB entry (ParseFDB), AF_INET or
// AF_INET6 for a neighbour (ParseNeigh).
func NeighHeader(b []byte) (family uint8, index int, ok bool) {
	if len(b) < ndMsgLen {
		return 0, 0, false
	}
	return b[0], int(int32(ne.Uint32(b[4:]))), true
}

// RouteUsesDevice reports whether the route message body b goes through
// device idx, directly or as one of several next hops.
func RouteUsesDevice(b []byte, idx int) bool {
	if len(b) < rtMsgLen {
		return false
	}
	uses := false
	Attrs(b[rtMsgLen:], func(typ uint16, v []byte) {
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
				v = v[min(Align4(l), len(v)):]
			}
		}
	})
	return uses
}
