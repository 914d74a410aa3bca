package rtnl

import (
	"cmp"
	"errors"
	"fmt"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// batchBytes bounds one write: this many bytes of requests (about 700
// requests) go to the kernel in one sendmsg. Larger writes gain nothing
// measurable and cost a bigger buffer; much smaller ones cost a system call
// per few entries.
const batchBytes = 32 << 10

// replyTimeout bounds the wait for the kernel's answer to a write or a
// dump, which it produces synchronously: a stuck read is a bug, not load.
const replyTimeout = 10 * time.Second

// Conn is a NETLINK_ROUTE socket for a device's entries: batches of
// hand-built requests, many per sendmsg and only the last of each write
// asking for an acknowledgement (failures are reported anyway), and dumps
// filtered to the device by the kernel itself (strict checking on, so the
// kernel honours the filter instead of ignoring it). It is not safe for
// concurrent use.
type Conn struct {
	fd   int
	pid  uint32 // fd's port id
	seq  uint32
	wbuf []byte
	rbuf []byte
}

// Open opens a Conn in the network namespace ns (the caller's one when ns
// is not open).
func Open(ns netns.NsHandle) (*Conn, error) {
	fd, pid, err := OpenRoute(ns, 0, writeSockBuf, false)
	if err != nil {
		return nil, err
	}
	k := &Conn{fd: fd, pid: pid, rbuf: make([]byte, 64<<10)}
	if err := k.setup(); err != nil {
		k.Close()
		return nil, err
	}
	return k, nil
}

// Pid is the socket's port id, which the kernel stamps on the
// notifications of the changes it makes (see DropOwnEvents).
func (k *Conn) Pid() uint32 { return k.pid }

func (k *Conn) setup() error {
	for _, o := range []struct {
		level, opt, v int
		what          string
	}{
		{unix.SOL_NETLINK, unix.NETLINK_GET_STRICT_CHK, 1, "enabling strict checking"},
		{unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1, "capping acknowledgements"},
		{unix.SOL_NETLINK, unix.NETLINK_EXT_ACK, 1, "enabling extended acknowledgements"},
	} {
		if err := unix.SetsockoptInt(k.fd, o.level, o.opt, o.v); err != nil {
			return fmt.Errorf("%s on netlink socket: %w", o.what, err)
		}
	}
	if err := unix.SetsockoptInt(k.fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, writeSockBuf); err != nil {
		_ = unix.SetsockoptInt(k.fd, unix.SOL_SOCKET, unix.SO_SNDBUF, writeSockBuf)
	}
	tv := unix.NsecToTimeval(replyTimeout.Nanoseconds())
	if err := unix.SetsockoptTimeval(k.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("setting a receive timeout on netlink socket: %w", err)
	}
	return nil
}

// Close closes the socket.
func (k *Conn) Close() {
	unix.Close(k.fd)
}

// Write sends ops in order, in batches, and calls fail for each op the
// kernel refused. If a batch's replies are lost (the socket overflowed), every
// op of that batch is reported with the socket's error: the caller must then
// assume nothing about them.
func (k *Conn) Write(index int, ops []Op, fail func(i int, err error)) {
	for start := 0; start < len(ops); {
		b := k.wbuf[:0]
		first := k.seq + 1
		last, end := 0, start
		for end < len(ops) && len(b) < batchBytes {
			k.seq++
			last = len(b)
			b = AppendOp(b, &ops[end], index, k.seq)
			end++
		}
		// Only the last request asks for an acknowledgement: its answer
		// ends the batch, and errors of the others arrive before it.
		ne.PutUint16(b[last+6:], ne.Uint16(b[last+6:])|unix.NLM_F_ACK)
		k.wbuf = b
		known := start // ops before this one have their answer
		err := k.send(b)
		if err == nil {
			err = k.acks(first, k.seq, func(seq uint32, err error) {
				i := start + int(seq-first)
				fail(i, err)
				known = i + 1
			})
		}
		if err != nil {
			for i := known; i < end; i++ {
				fail(i, err)
			}
		}
		start = end
	}
}

func (k *Conn) send(b []byte) error {
	for {
		err := unix.Sendto(k.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		if err != unix.EINTR {
			if err != nil {
				return fmt.Errorf("sending to netlink: %w", err)
			}
			return nil
		}
	}
}

// recv reads one datagram of replies. (read(2), not recvfrom: the sender is
// the kernel, and recvfrom allocates its address every time.)
func (k *Conn) recv() ([]byte, error) {
	for {
		n, err := unix.Read(k.fd, k.rbuf)
		switch {
		case err == unix.EINTR:
			continue
		case err == unix.EAGAIN:
			return nil, fmt.Errorf("reading from netlink: no answer within %v", replyTimeout)
		case err != nil:
			return nil, fmt.Errorf("reading from netlink: %w", err)
		}
		return k.rbuf[:n], nil
	}
}

// acks reads the answers to requests first..last and calls refused for each
// error, until the acknowledgement (or error) of last.
func (k *Conn) acks(first, last uint32, refused func(seq uint32, err error)) error {
	for done := false; !done; {
		b, err := k.recv()
		if err != nil {
			return err
		}
		perr := SplitMsgs(b, func(m Msg) bool {
			if m.Type != unix.NLMSG_ERROR || m.Seq-first > last-first {
				return true // a leftover of an earlier, abandoned exchange
			}
			if err := MsgError(m); err != nil {
				refused(m.Seq, err)
			}
			if m.Seq == last {
				done = true
				return false
			}
			return true
		})
		if perr != nil {
			return perr
		}
	}
	return nil
}

// ErrDumpInterrupted is the kernel's NLM_F_DUMP_INTR: the table changed
// while it was being read, and the dump may be inconsistent.
var ErrDumpInterrupted = errors.New("dump interrupted: the table changed while it was read")

// dump sends the dump request req (without its header) of type typ and
// calls each for every message of the answer.
func (k *Conn) dump(typ uint16, req []byte, each func(m Msg)) error {
	k.seq++
	seq := k.seq
	b := appendHdr(k.wbuf[:0], typ, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq)
	b = append(b, req...)
	b = endMsg(b, 0)
	k.wbuf = b
	if err := k.send(b); err != nil {
		return err
	}
	intr := false
	for done := false; !done; {
		b, err := k.recv()
		if err != nil {
			return err
		}
		var derr error
		perr := SplitMsgs(b, func(m Msg) bool {
			if m.Seq != seq {
				return true
			}
			if m.Flags&unix.NLM_F_DUMP_INTR != 0 {
				intr = true
			}
			switch m.Type {
			case unix.NLMSG_DONE:
				if len(m.Body) >= 4 {
					if code := int32(ne.Uint32(m.Body)); code < 0 {
						derr = unix.Errno(-code)
					}
				}
				done = true
				return false
			case unix.NLMSG_ERROR:
				derr = MsgError(m)
				done = true
				return false
			}
			each(m)
			return true
		})
		if perr != nil {
			return perr
		}
		if derr != nil {
			return derr
		}
	}
	if intr {
		return ErrDumpInterrupted
	}
	return nil
}

// DumpRoutes dumps the main table's routes, IPv4 and IPv6: those through the
// device, and the few others a node has (to find one that would shadow a
// peer's route).
func (k *Conn) DumpRoutes(index int, each func(*Route)) error {
	var r Route // one for all: each must not keep it
	for _, fam := range []uint8{unix.AF_INET, unix.AF_INET6} {
		req := []byte{fam, 0, 0, 0, unix.RT_TABLE_MAIN, 0, 0, 0, 0, 0, 0, 0} // struct rtmsg
		var perr error
		err := k.dump(unix.RTM_GETROUTE, req, func(m Msg) {
			if m.Type != unix.RTM_NEWROUTE {
				return
			}
			var err error
			if r, err = ParseRoute(m.Body); err != nil {
				perr = err
				return
			}
			each(&r)
		})
		if err = cmp.Or(err, perr); err != nil {
			return err
		}
	}
	return nil
}

// DumpNeighs dumps the device's IPv4 and IPv6 neighbours.
func (k *Conn) DumpNeighs(index int, each func(*Neigh)) error {
	req := appendNdMsg(nil, unix.AF_UNSPEC, 0, 0, 0) // strict: the device goes in NDA_IFINDEX
	req = appendU32(req, unix.NDA_IFINDEX, uint32(index))
	var perr error
	var n Neigh
	err := k.dump(unix.RTM_GETNEIGH, req, func(m Msg) {
		if m.Type != unix.RTM_NEWNEIGH {
			return
		}
		var err error
		if n, err = ParseNeigh(m.Body); err != nil {
			perr = err
			return
		}
		if n.Index == index {
			each(&n)
		}
	})
	return cmp.Or(err, perr)
}

// DumpFDB dumps the device's FDB (every remote of every MAC).
func (k *Conn) DumpFDB(index int, each func(*FDB)) error {
	req := appendNdMsg(nil, unix.AF_BRIDGE, index, 0, 0)
	var perr error
	var f FDB
	err := k.dump(unix.RTM_GETNEIGH, req, func(m Msg) {
		if m.Type != unix.RTM_NEWNEIGH {
			return
		}
		var err error
		if f, err = ParseFDB(m.Body); err != nil {
			perr = err
			return
		}
		if f.Index == index {
			each(&f)
		}
	})
	return cmp.Or(err, perr)
}

var errShort = errors.New("truncated netlink message")
