package network

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/rtnl"
)

// elementWriter adds and deletes the elements of the peers sets with
// nf_tables batches built by hand on a netlink socket of its own. It is the
// hot path of the filter: a peer's change is one sendmsg of about 150 bytes
// and one non-blocking recvmsg, where the general-purpose library took
// several syscalls per message and allocated for every attribute; in weftd,
// between two changes the caches are cold, and that made the filter's share
// of a change several times its cost in a loop. Everything else (the table,
// its chains, the checks) stays with the library.
//
// The requests ask for no acknowledgement: nfnetlink runs a batch within the
// sendmsg that carries it, so an error, the only answer, is already queued
// when sendmsg returns.
type elementWriter struct {
	fd  int
	seq uint32
	buf []byte
	rcv []byte
}

// openElementWriter opens the writer's socket in the namespace nsfd (0: the
// process's own).
func openElementWriter(nsfd int) (*elementWriter, error) {
	fd, err := rtnl.OpenNetfilter(nsfd)
	if err != nil {
		return nil, err
	}
	w := &elementWriter{fd: fd, rcv: make([]byte, 8192)}
	if err := unix.Bind(w.fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(w.fd)
		return nil, fmt.Errorf("binding a netfilter netlink socket: %w", err)
	}
	// An error echoes only the header of the refused request, not its
	// thousands of elements: the answer fits the receive buffer.
	if err := unix.SetsockoptInt(w.fd, unix.SOL_NETLINK, unix.NETLINK_CAP_ACK, 1); err != nil {
		unix.Close(w.fd)
		return nil, fmt.Errorf("capping netlink acknowledgements: %w", err)
	}
	return w, nil
}

func (w *elementWriter) close() {
	if w.fd >= 0 {
		unix.Close(w.fd)
		w.fd = -1
	}
}

// nf_tables attribute and message numbers (include/uapi/linux/netfilter/
// nf_tables.h, nfnetlink.h).
const (
	nftMsgNewSetElem = 12
	nftMsgDelSetElem = 14

	nftaSetElemListTable    = 1
	nftaSetElemListSet      = 2
	nftaSetElemListElements = 3
	nftaListElem            = 1
	nftaSetElemKey          = 1
	nftaDataValue           = 1

	nfnlMsgBatchBegin  = 0x10
	nfnlMsgBatchEnd    = 0x11
	nfnlSubsysNFTables = 10
	nfprotoINet        = 1
)

// write adds (or deletes) the addresses v4 to set peers and v6 to set
// peers6 of table inet weft in one transaction: all or nothing.
func (w *elementWriter) write(add bool, v4, v6 []netip.Addr) error {
	b := w.buf[:0]
	b = w.appendBatchMark(b, nfnlMsgBatchBegin)
	typ, flags := uint16(nftMsgDelSetElem), uint16(unix.NLM_F_REQUEST)
	if add {
		typ, flags = nftMsgNewSetElem, unix.NLM_F_REQUEST|unix.NLM_F_CREATE
	}
	for _, s := range []struct {
		name  string
		addrs []netip.Addr
	}{{peersSet, v4}, {peers6Set, v6}} {
		if len(s.addrs) == 0 {
			continue
		}
		start := len(b)
		b = w.appendHeader(b, nfnlSubsysNFTables<<8|typ, flags, nfprotoINet)
		b = rtnl.AppendAttr(b, nftaSetElemListTable, append([]byte(ingressTable), 0))
		b = rtnl.AppendAttr(b, nftaSetElemListSet, append([]byte(s.name), 0))
		list := len(b)
		b = rtnl.AppendAttr(b, nftaSetElemListElements|unix.NLA_F_NESTED, nil)
		for _, a := range s.addrs {
			elem := len(b)
			b = rtnl.AppendAttr(b, nftaListElem|unix.NLA_F_NESTED, nil)
			key := len(b)
			b = rtnl.AppendAttr(b, nftaSetElemKey|unix.NLA_F_NESTED, nil)
			b = rtnl.AppendAttr(b, nftaDataValue, a.AsSlice())
			rtnl.EndAttr(b, key)
			rtnl.EndAttr(b, elem)
		}
		rtnl.EndAttr(b, list)
		binary.NativeEndian.PutUint32(b[start:], uint32(len(b)-start))
	}
	b = w.appendBatchMark(b, nfnlMsgBatchEnd)
	w.buf = b
	if cap(w.buf) > 64<<10 {
		w.buf = nil // a restart's thousands: do not keep them
	}
	if err := unix.Sendto(w.fd, b, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return fmt.Errorf("sending nf_tables batch: %w", err)
	}
	return w.errors()
}

// errors reads what the kernel answered to the batch just sent: nothing
// when it was applied.
func (w *elementWriter) errors() error {
	var errs []error
	for {
		n, _, err := unix.Recvfrom(w.fd, w.rcv, unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EWOULDBLOCK) {
			return errors.Join(errs...)
		}
		if err != nil {
			return errors.Join(append(errs, fmt.Errorf("reading nf_tables answer: %w", err))...)
		}
		perr := rtnl.SplitMsgs(w.rcv[:n], func(m rtnl.Msg) bool {
			if m.Type != unix.NLMSG_ERROR {
				return true
			}
			if err := rtnl.MsgError(m); err != nil {
				errs = append(errs, fmt.Errorf("nf_tables refused the peers set update: %w", err))
			}
			return true
		})
		if perr != nil {
			errs = append(errs, perr)
		}
	}
}

func (w *elementWriter) appendHeader(b []byte, typ, flags uint16, family uint8) []byte {
	w.seq++
	var h [unix.SizeofNlMsghdr + 4]byte
	binary.NativeEndian.PutUint16(h[4:], typ)
	binary.NativeEndian.PutUint16(h[6:], flags)
	binary.NativeEndian.PutUint32(h[8:], w.seq)
	h[16] = family // nfgenmsg: family, version 0, res_id 0
	binary.NativeEndian.PutUint32(h[0:], uint32(len(h)))
	return append(b, h[:]...)
}

// appendBatchMark appends a batch's begin or end message (its res_id names
// the nf_tables subsystem).
func (w *elementWriter) appendBatchMark(b []byte, typ uint16) []byte {
	start := len(b)
	b = w.appendHeader(b, typ, unix.NLM_F_REQUEST, unix.AF_UNSPEC)
	binary.BigEndian.PutUint16(b[start+unix.SizeofNlMsghdr+2:], nfnlSubsysNFTables)
	return b
}
