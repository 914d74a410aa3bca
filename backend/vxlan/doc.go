// Package vxlan is weft's only data plane: one VXLAN device per node (by
// default "flannel.<VNI>", for example flannel.1) and, for every peer node,
// three kernel entries that together carry a packet across the overlay.
//
// Take node1 sending to 172.16.78.9 on node2, whose subnet is 172.16.78.0/24:
//
//   - the route "172.16.78.0/24 via 172.16.78.0 dev flannel.1 metric 4175
//     onlink" sends the packet into the VXLAN device with next hop
//     172.16.78.0, node2's VTEP address. "onlink" is needed because no prefix
//     on flannel.1 covers it;
//   - the permanent neighbour "172.16.78.0 lladdr <node2 VTEP MAC>" gives the
//     inner Ethernet destination without ARP, which could not work anyway:
//     nobody answers broadcasts on a device with no flooding destination;
//   - the permanent FDB entry "<node2 VTEP MAC> dst 172.17.42.32 self" tells the
//     VXLAN driver which underlay address to encapsulate that MAC to.
//
// The device is created with learning off (nolearning) and without proxy,
// l2miss or l3miss, so the kernel never invents or asks for any of these
// entries: this package is their only author, and it removes the ones no
// peer wants (leftovers of peers that left while weftd was down). Every route
// in the main table on the device, every permanent neighbour and every
// permanent unicast FDB entry on it is treated as ours. Routes are installed
// with protocol RTPROT_BOOT, the protocol "ip route add" uses, which
// "ip route" does not print.
//
// # Why each route has its own metric
//
// flannel's routes differ only in destination and gateway. The kernel keeps a
// route's next-hop information (struct fib_info) in a hash table keyed by
// protocol, scope, preferred source, metric and device, not by gateway, and
// every insertion walks its hash chain looking for an identical one to share.
// With one metric for all, N peer routes share one chain and programming them
// is quadratic: about 32 µs per route into an empty table, 223 µs at 4,000
// routes, over 1 ms past 11,000. So each route gets a metric fixed by its
// subnet (metricOf: 1 + the low 16 bits of the subnet's number; 4175 for
// 172.16.78.0/24) and lands in a chain of its own: a route costs the same at
// any N. The kernel's other way to hash routes apart, nexthop objects, would
// print "nhid N" before "via", need ids that no other nexthop user in the
// namespace takes, a fourth kind of entry per peer to dump, check and repair,
// and an order of removal (routes before their nexthops, before the device)
// that a hand-deleted device breaks; the metric needs none of that and works
// on every kernel. flanneld peers do not see the local route's form.
//
// A metric ranks routes to the same destination, and that changes one thing:
// "ip route replace <peer subnet> dev eth0" used to overwrite flannel's
// metric-0 route (and weft put it back); now it adds a metric-0 route that
// wins over ours. So a route to a peer's subnet elsewhere in the main table
// with a lower metric than ours is treated as an alteration of ours, and
// removed; routes with a higher metric are left alone.
//
// # Batches
//
// Entries are not written one request at a time, each waiting for its
// answer: package rtnl builds the netlink requests itself and sends
// hundreds in one sendmsg on one persistent socket, with NLM_F_ACK only on
// the last request of each write. The kernel processes the whole write before
// sendmsg returns and reports every failure anyway, by sequence number, which
// maps it back to the entry; Set and Reconcile join these errors per entry. A
// second socket or thread would gain nothing: RTNL serialises the work.
//
// # Set and Reconcile
//
// Set is declarative and cheap. The Device keeps the last Set's input, sorted
// by subnet, and walks the new input alongside it like a merge: a peer given
// exactly as before costs one comparison, so one change among 4,000 peers
// costs tens of microseconds. Only the difference is written, additions
// before removals: FDB, neighbour, route, then route, neighbour, FDB. A peer
// whose VTEP MAC changed gets its new FDB entry before its neighbour is
// replaced and only then loses the old FDB entry (make-before-break).
//
// Reconcile is the expensive path: it dumps the device's routes, neighbours
// and FDB, filtered to the device by the kernel itself (strict checking on, and
// requests built by hand: netlink v1.3.1's neighbour dump request carries
// padding garbage that a strict kernel rejects), repairs whatever drifted from
// the wanted peers and reports how many repairs of each kind it made. The
// first Set after New, after the device had to be recreated or after any
// change failed does the same full comparison, so a restart adopts the
// entries that are already right without touching them (no packet is lost
// across a restart of weftd), and a failed change is retried from what the
// kernel really holds.
//
// Subscribe watches links, addresses, routes and neighbours and calls a kick
// function when a change disagrees with the wanted peers (someone deleted a
// route by hand, say), so the caller can Reconcile soon. The Device's own
// changes never kick: a socket filter drops, in the kernel, the route and
// neighbour notifications its own requests cause, and the rest agree with
// what it wants.
//
// # Neighbour table limits
//
// The IPv4 and IPv6 neighbour tables start garbage collection at gc_thresh2
// and refuse new entries beyond gc_thresh3 (1024 by default; the sysctls
// belong to the table, shared by all namespaces). flannel users at 2,500
// nodes hit that limit on kernels that counted permanent entries. Since Linux
// 5.0 the kernel exempts NUD_PERMANENT entries from those counts (they are
// never garbage collected), so this package leaves the limits alone: on
// 6.18, with gc_thresh3 at 1024, 4,000 peers get their 4,000 permanent
// neighbours and the table still takes dynamic entries for other devices
// (`make bench` checks it).
//
// All kernel access goes through nlAPI, a small seam implemented by kernel
// (a netlink handle for the device and its address, an rtnl.Conn for the
// entries) and, in tests, by a fake that prints its state as iproute2
// commands. The protocol itself (requests, batches, dumps, parsers, the
// event socket) is package rtnl's.
package vxlan
