package proxy

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ensureRoute makes sure the host can send to the service network at all.
// The host's own connections to a VIP are translated in OUTPUT, after the
// kernel has chosen a route; with no route (a host without a default route)
// connect() would fail before any rule ran. When nothing routes the service
// network, weft adds "<network> dev lo": the route only lets the packet reach
// OUTPUT, where the DNAT (or the reject of a service without endpoints)
// takes over and the kernel routes again. A packet no rule translates
// loops back on lo and is dropped, never sent anywhere. A host that routes
// the network already (a default route) is left alone.
func ensureRoute(h *netlink.Handle, p netip.Prefix) (bool, error) {
	probe := p.Addr().Next().AsSlice()
	if _, err := h.RouteGet(net.IP(probe)); err == nil {
		return false, nil
	} else if !errors.Is(err, unix.ENETUNREACH) {
		return false, fmt.Errorf("looking up the route to the service network %s: %w", p, err)
	}
	lo, err := h.LinkByName("lo")
	if err != nil {
		return false, fmt.Errorf("finding lo: %w", err)
	}
	r := &netlink.Route{
		LinkIndex: lo.Attrs().Index,
		Dst:       &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), 32)},
		Scope:     netlink.SCOPE_LINK,
		Protocol:  routeProtocol,
	}
	if err := h.RouteReplace(r); err != nil {
		return false, fmt.Errorf("adding route %s dev lo for the service network: %w", p, err)
	}
	return true, nil
}

// routeProtocol marks the route as weft's in `ip route` ("proto 0x57", 'W').
const routeProtocol = 0x57
