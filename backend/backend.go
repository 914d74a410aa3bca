// Package backend defines what the node's data plane is asked to do: make the
// kernel forward to exactly this set of peers. A Backend is declarative: Set
// receives the whole desired set every time, diffs it against what is there,
// adds before it deletes, and is safe to call again with the same input. The
// only backend weft ships is backend/vxlan.
package backend

import (
	"context"
	"net/netip"

	"github.com/weft-net/weft/peer"
)

// Peer is one other node of the overlay (package peer, a leaf that subnet and
// the backends both import, holds it with the rules it must pass).
type Peer = peer.Peer

// Backend programs the data plane for a set of peers.
type Backend interface {
	// Set makes the kernel forward to exactly these peers.
	Set(ctx context.Context, peers []Peer) error
}

// Gate is what a data plane tells about the peers' public addresses it
// sends VXLAN to: Admit before the first entries that use an address go in,
// Release after the last entries that used it are gone, once for each peer
// admitted. The node's VXLAN ingress filter is one: it lets in packets from
// admitted addresses only. A Gate is told of changes only, so its cost
// follows the size of a change, not the number of peers. Release comes at
// the end of every Set that compared its peers, with no address if none
// went: by then every peer the data plane wants has been admitted. It handles its own
// failures (the filter logs and repairs them); they do not fail a Set.
type Gate interface {
	Admit(addrs []netip.Addr)
	Release(addrs []netip.Addr)
}
