package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/rtnl"
)

// watchTable calls kick when another process changes weft-svc (flushes it,
// deletes it, edits a chain): it reads nf_tables' change notifications,
// notes whether a transaction touched the table, and at the transaction's
// closing NEWGEN message checks who made it. weft's own transactions are
// skipped, so they cost no check. Lost notifications (ENOBUFS) ask for a
// check instead of a rebuild.
// tableWatch is the subscription to nf_tables notifications.
type tableWatch struct{ fd int }

func openTableWatch(nsFd int) (*tableWatch, error) {
	fd, err := rtnl.OpenNetfilter(nsFd)
	if err != nil {
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("subscribing to nf_tables changes: %w", err)
	}
	tv := unix.NsecToTimeval((500 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("setting a receive timeout: %w", err)
	}
	return &tableWatch{fd: fd}, nil
}

// pause leaves the notification group while weft commits: a batch of
// 100,000 elements is 100,000 notifications, each copied to every member,
// which weft would read only to skip them as its own. resume joins again.
// A change by someone else in between is found by the periodic check.
func (w *tableWatch) pause() {
	if w != nil {
		_ = unix.SetsockoptInt(w.fd, unix.SOL_NETLINK, unix.NETLINK_DROP_MEMBERSHIP, unix.NFNLGRP_NFTABLES)
	}
}

func (w *tableWatch) resume() {
	if w != nil {
		_ = unix.SetsockoptInt(w.fd, unix.SOL_NETLINK, unix.NETLINK_ADD_MEMBERSHIP, unix.NFNLGRP_NFTABLES)
	}
}

func (w *tableWatch) close() { unix.Close(w.fd) }

func (w *tableWatch) run(ctx context.Context, log *slog.Logger, kick func(sure bool)) error {
	fd := w.fd
	buf := make([]byte, 256<<10)
	touched := false
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		switch {
		case err == nil:
			for b := buf[:n]; len(b) >= unix.NLMSG_HDRLEN; {
				l := int(binary.NativeEndian.Uint32(b))
				if l < unix.NLMSG_HDRLEN || l > len(b) {
					break
				}
				typ, data := binary.NativeEndian.Uint16(b[4:]), b[unix.NLMSG_HDRLEN:l]
				switch typ & 0xff {
				case unix.NFT_MSG_NEWGEN:
					if pid := genPID(data); touched && !ourThread(pid) {
						log.Debug("weft-svc changed by another process", "pid", pid)
						kick(true)
					}
					touched = false
				default:
					if tableAttr(data) == TableName {
						touched = true
					}
				}
				step := (l + 3) &^ 3
				if step > len(b) {
					break
				}
				b = b[step:]
			}
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.ENOBUFS):
			touched = false
			kick(false) // lost notifications, most likely of weft's own big change: check
		default:
			return fmt.Errorf("reading nf_tables changes: %w", err)
		}
	}
	return nil
}

// attrs walks the netlink attributes after the 4-byte nfgenmsg header.
func attrs(data []byte, f func(typ uint16, val []byte) bool) {
	if len(data) < 4 {
		return
	}
	b := data[4:]
	for len(b) >= 4 {
		l := int(binary.NativeEndian.Uint16(b))
		typ := binary.NativeEndian.Uint16(b[2:]) & 0x3fff
		if l < 4 || l > len(b) {
			return
		}
		if !f(typ, b[4:l]) {
			return
		}
		step := (l + 3) &^ 3
		if step > len(b) {
			return
		}
		b = b[step:]
	}
}

// tableAttr returns attribute 1 as a string: the table's name in table,
// chain, rule, set and element messages alike.
func tableAttr(data []byte) string {
	var name string
	attrs(data, func(typ uint16, val []byte) bool {
		if typ == 1 {
			if i := len(val); i > 0 && val[i-1] == 0 {
				val = val[:i-1]
			}
			name = string(val)
			return false
		}
		return true
	})
	return name
}

// genPID is NFTA_GEN_PROC_PID of a NEWGEN message: who made the change.
func genPID(data []byte) uint32 {
	var pid uint32
	attrs(data, func(typ uint16, val []byte) bool {
		if typ == unix.NFTA_GEN_PROC_PID && len(val) == 4 {
			pid = binary.BigEndian.Uint32(val)
			return false
		}
		return true
	})
	return pid
}

// ourThread reports whether pid, as NEWGEN names the committer, is one of this
// process's threads: the kernel gives the thread id, and Go commits from any
// of its threads.
func ourThread(pid uint32) bool {
	_, err := os.Stat(fmt.Sprintf("/proc/self/task/%d", pid))
	return err == nil
}
