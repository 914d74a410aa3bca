// Package backend defines what the node's data plane is asked to do: make the
// kernel forward to exactly this set of peers. A Backend is declarative: Set
// receives the whole desired set every time, diffs it against what is there,
// adds before it deletes, and is safe to call again with the same input. The
// only backend weft ships is backend/vxlan.
package backend

import (
	"context"

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
