package network

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// WatchRuleChanges calls kick whenever the kernel reports a change to the
// nf_tables ruleset, which is where iptables-nft keeps weft's chains. It turns
// "someone flushed WEFT-POSTRTG" into a repair within milliseconds instead of
// at the next --iptables-resync tick; the tick stays as the safety net for
// legacy iptables, which sends no such events. weft's own rule changes kick
// too, and the check that follows finds nothing to do. It returns when ctx
// ends, or at once if the subscription cannot be made.
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
			kick()
		case errors.Is(err, unix.EAGAIN), errors.Is(err, unix.EINTR):
		case errors.Is(err, unix.ENOBUFS):
			kick() // events were lost: check anyway
		case err != nil:
			return fmt.Errorf("reading nf_tables changes: %w", err)
		}
	}
	return nil
}
