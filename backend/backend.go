// Package backend defines what the node's data plane is asked to do: make the
// kernel forward to exactly this set of peers. A Backend is declarative: Set
// receives the whole desired set every time, diffs it against what is there,
// adds before it deletes, and is safe to call again with the same input. The
// only backend weft ships is backend/vxlan.
package backend

import (
	"context"
	"net"
	"net/netip"
)

// Peer is one other node of the overlay, as its lease in etcd describes it.
type Peer struct {
	// Subnet is the peer's container subnet, for example 172.16.78.0/24.
	Subnet netip.Prefix
	// PublicIP is the peer's underlay address, where its VXLAN packets go.
	PublicIP netip.Addr
	// VtepMAC is the MAC address of the peer's VXLAN device.
	VtepMAC net.HardwareAddr
}

// Backend programs the data plane for a set of peers.
type Backend interface {
	// Set makes the kernel forward to exactly these peers.
	Set(ctx context.Context, peers []Peer) error
}
