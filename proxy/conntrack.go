package proxy

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// flowFilter matches the UDP conntrack entries of flows that must move on:
// flows to a service port whose backend left (or, with all, every flow to a
// service port that was just created or just got its first backend, which
// can only be a flow that was never translated). Deleting them makes the
// next datagram a new flow that the rules send to a live backend, the fix
// for kube-proxy's stale-UDP-conntrack bug class.
type flowFilter []flowGone

func (f flowFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dst, ok := netip.AddrFromSlice(flow.Forward.DstIP)
	if !ok {
		return false
	}
	dst = dst.Unmap()
	for _, g := range f {
		if g.vip != dst || g.port != flow.Forward.DstPort {
			continue
		}
		if g.all {
			return true
		}
		src, ok := netip.AddrFromSlice(flow.Reverse.SrcIP)
		if !ok {
			continue
		}
		be := netip.AddrPortFrom(src.Unmap(), flow.Reverse.SrcPort)
		for _, b := range g.backends {
			if b == be {
				return true
			}
		}
	}
	return false
}

// deleteFlows deletes the conntrack entries f matches, in one dump of the
// table, and returns how many went.
func deleteFlows(h *netlink.Handle, f []flowGone) (uint, error) {
	if len(f) == 0 {
		return 0, nil
	}
	n, err := h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, flowFilter(f))
	if err != nil {
		return n, fmt.Errorf("deleting UDP conntrack entries of removed endpoints: %w", err)
	}
	return n, nil
}
