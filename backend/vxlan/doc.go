// Package vxlan is weft's only data plane: one VXLAN device per node (by
// default "flannel.<VNI>", for example flannel.1) and, for every peer node,
// three kernel entries that together carry a packet across the overlay.
//
// Take node1 sending to 172.16.78.9 on node2, whose subnet is 172.16.78.0/24:
//
//   - the route "172.16.78.0/24 via 172.16.78.0 dev flannel.1 onlink" sends the
//     packet into the VXLAN device with next hop 172.16.78.0, node2's VTEP
//     address. "onlink" is needed because no prefix on flannel.1 covers it;
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
// "ip route" does not print, so the table reads like flannel's.
//
// Set is declarative and cheap. The Device keeps a record of what it
// programmed and applies only the difference between the desired peers and
// that record, in the order FDB, neighbour, route for additions and route,
// neighbour, FDB for removals. A peer whose VTEP MAC changed gets its new FDB
// entry before its neighbour is replaced and only then loses the old FDB
// entry (make-before-break). Reconcile is the expensive path: it dumps the
// kernel (filtered to the device by the kernel itself, with netlink strict
// checking), repairs whatever drifted from the desired set and reports how
// many repairs of each kind it made. The first Set after New or after the
// link had to be recreated does the same full comparison, so a restart adopts
// the entries that are already right without touching them: no packet is
// lost across a restart of weftd.
//
// Subscribe watches links, addresses, routes and neighbours and calls a kick
// function when something touching the device or its uplink changes, so the
// caller can Reconcile soon after someone deletes a route by hand.
//
// All kernel access goes through nlAPI, a small seam implemented by
// *netlink.Handle and, in tests, by a fake that prints its state as
// iproute2 commands.
package vxlan
