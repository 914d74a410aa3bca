package subnet

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/weft-net/weft/ip"
)

// shapeFits reports whether our own key l has the shape this node's
// leases have now: with an IPv6 half at this node's IPv6 address in a
// dual-stack network, without one otherwise. A key of another shape (the
// node ran v4-only before IPv6 was turned on) cannot be rewritten in place,
// since the key names its subnets: it is left to expire, and the node takes
// a key of the right shape.
func (h *holder) shapeFits(l Lease) bool {
	if !h.req.Config.Dual() {
		return !l.Subnet6.IsValid()
	}
	return l.Subnet6.IsValid() && l.Attrs.PublicIP6 == h.req.PublicIP6 && h.req.Config.alloc6().Eligible(l.Subnet6)
}

// pick6 chooses the IPv6 subnet of a new dual-stack key: the previous one
// if it is still free, else a free one at random; zero in a network that
// is not dual-stack.
func (h *holder) pick6(exact map[netip.Prefix]struct{}, odd []netip.Prefix) (netip.Prefix, error) {
	if !h.req.Config.Dual() {
		return netip.Prefix{}, nil
	}
	alloc := h.req.Config.alloc6()
	alloc.Avoid = h.req.Avoid
	alloc.Rand = h.req.Rand
	alloc.Prefer = h.prev6
	alloc.Taken = func(p netip.Prefix) bool {
		if _, ok := exact[p]; ok {
			return true
		}
		for _, o := range odd {
			if ip.Overlaps(p, o) {
				return true
			}
		}
		return false
	}
	p, err := alloc.Pick()
	if err != nil {
		var fe *ip.FullError
		if errors.As(err, &fe) {
			return p, fmt.Errorf("no free /%d left in %v between %v and %v: %d taken",
				fe.Bits, h.req.Config.IPv6.Network, fe.First, fe.Last, fe.Taken)
		}
	}
	return p, err
}
