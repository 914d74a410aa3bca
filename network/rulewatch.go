package network

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/rtnl"
)

// WatchRuleChanges calls kick whenever the kernel reports a change to the
// nf_tables ruleset, which is where iptables-nft keeps weft's chains. It turns
// "someone flushed WEFT-POSTRTG" into a repair within milliseconds instead of
// at the next --iptables-resync tick; the tick stays as the safety net for
// legacy iptables, which sends no such events. weft's own rule changes kick
// too, and the check that follows finds nothing to do, except for the
// changes of the VXLAN ingress filter's peer set (see concernsRules). It
// returns when ctx ends, or at once if the subscription cannot be made.
func WatchRuleChanges(ctx context.Context, kick func()) error {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_NETFILTER)
	if err != nil {
		return fmt.Errorf("opening a netfilter netlink socket: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.NFNLGRP_NFTABLES - 1)}); err != nil {
		return fmt.Errorf("subscribing to nf_tables changes: %w", err)
	}
	// A receive timeout lets the loop notice ctx ending without another fd.
	tv := unix.NsecToTimeval((500 * time.Millisecond).Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("setting a receive timeout: %w", err)
	}
	buf := make([]byte, 64<<10)
	for ctx.Err() == nil {
		n, _, err := unix.Recvfrom(fd, buf, 0)
		switch {
		case err == nil && n > 0:
			if concernsRules(buf[:n]) {
				kick()
			}
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.ENOBUFS):
			kick() // events were lost: check anyway
		case err != nil:
			return fmt.Errorf("reading nf_tables changes: %w", err)
		}
	}
	return nil
}

// ServiceTable is the service proxy's nftables table (package proxy), whose
// changes never concern the rules here.
const ServiceTable = "weft-svc"

// concernsRules reports whether a datagram of nf_tables notifications holds
// anything but changes to the elements of weft's own ingress table, changes
// to the service proxy's table, and the generation messages that close
// every transaction. Those elements follow
// every peer change; a check of the iptables rules after each one would cost
// four runs of iptables per peer change, and Ensure checks the elements on
// its timer anyway.
func concernsRules(b []byte) bool {
	const (
		subsysNFTables = unix.NFNL_SUBSYS_NFTABLES
		msgNewSetElem  = unix.NFT_MSG_NEWSETELEM
		msgDelSetElem  = unix.NFT_MSG_DELSETELEM
		msgNewGen      = unix.NFT_MSG_NEWGEN
		attrTable      = 1 // NFTA_*_TABLE: the table's name, first in every message kind
		nfgenLen       = 4
	)
	for len(b) >= unix.NLMSG_HDRLEN {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		if l < unix.NLMSG_HDRLEN || l > len(b) {
			return true // malformed: let the check decide
		}
		typ := binary.NativeEndian.Uint16(b[4:6])
		body := b[unix.NLMSG_HDRLEN:l]
		table := ""
		if len(body) >= nfgenLen {
			table = attrString(body[nfgenLen:], attrTable)
		}
		switch {
		case typ>>8 != subsysNFTables:
			return true
		case typ&0xff == msgNewGen:
		case table == ServiceTable:
			// The service proxy's table: it keeps it itself.
		case typ&0xff == msgNewSetElem || typ&0xff == msgDelSetElem:
			if table != ingressTable {
				return true
			}
		default:
			return true
		}
		b = b[min(len(b), (l+3)&^3):]
	}
	return false
}

// attrString returns the string attribute typ of a netlink attribute list.
func attrString(b []byte, typ uint16) string {
	v := ""
	rtnl.Attrs(b, func(t uint16, val []byte) {
		if t == typ && v == "" {
			v = string(bytes.TrimRight(val, "\x00"))
		}
	})
	return v
}
