// Package network owns the node's side of the overlay that is not the VXLAN
// device itself: weft's iptables chains (masquerade and forward), the sysctls
// forwarding needs, subnet.env, and the loop that ties them together.
//
// The loop (Node) is the only goroutine that touches the data plane. It holds
// the node's lease through the subnet package, feeds whole peer snapshots from
// etcd to the backend, and re-checks the kernel on netlink events and on a
// timer, so that a route, neighbour, FDB entry or device that another tool
// removed comes back without a restart. Everything that arrives from other
// goroutines (a new lease, a new snapshot, a netlink event) lands in a
// one-slot mailbox where a newer value replaces an older one, so a slow kernel
// never makes the loop work through a backlog of stale states.
//
// subnet.env is written only once the device, the rules and the first
// snapshot are in place: Docker or a CNI plugin that waits for the file finds
// a node that already forwards.
//
// On shutdown the loop returns and leaves everything in place: the lease, the
// device, the routes and the rules. A restarted weftd adopts them without
// rebuilding, so restarts lose no packet.
package network
