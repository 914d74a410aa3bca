// Package bench is `make bench`: weft against the kernel's own floor, at
// 1,000 and 4,000 peers, on one machine. It has no code outside its tests.
//
// Everything runs in network namespaces the run creates and removes (also
// when it fails): an underlay switch; per weftd run, one node with a real
// etcd (/usr/bin/etcd) on its loopback and a real bin/weftd; per floor
// measurement, a namespace of its own. Synthetic peers are leases in
// flannel's schema whose PublicIPs are addresses on the node's underlay /16
// that no host has; nothing is ever sent to them (the bench asks the kernel
// about routes with lookups, never with packets).
//
// What it measures, and how:
//
//   - The kernel floors, for the same N: flannel's way (one request per
//     entry, each waiting for its acknowledgement, metric-0 routes) and the
//     fast way (per-subnet metrics, requests built beforehand, batched, one
//     acknowledgement per write), and kernel-filtered dumps of the device.
//     This package has its own small netlink client for them: the floors
//     must measure the kernel, not weft's code.
//   - weftd's cold start: N leases in etcd, then the process starts; the
//     time until every peer's route, neighbour and FDB entry is present,
//     seen by polling single-entry lookups (no subscription, which would add
//     work to every change weftd makes) and verified with a dump; weftd's
//     own time applying the snapshot (its log); CPU; peak RSS; the etcd
//     requests it made (etcd's grpc_server_started_total; the bench makes
//     none meanwhile); the log it wrote. Each cold start is measured three
//     times, next to a fast floor measured right before it.
//   - Single adds and deletes at 4,000 peers, from the etcd call returning
//     to the three entries present or gone, seen through netlink events; a
//     burst of 1,000 adds, then deletes, in one transaction each (three
//     times, medians compared with the floor); 30 s with
//     nothing changing (CPU, etcd requests, weftd's periodic check against
//     the dump floor on its own device); the ARP table limits; 100
//     concurrent lease acquisitions against one etcd.
//   - weftd's path again in this process, with the same packages, timing
//     each step of every change (etcd delivery, subnet's snapshot,
//     vxlan's Set), and the start-up steps.
//
// It prints a table, writes results.json next to this file, and reports the
// main figures as benchmark metrics.
//
// BenchmarkServices (services_test.go) measures issue 10's service targets on
// a node of its own: 1,000 and 10,000 services of 10 endpoints applied from
// nothing (etcd writes to the last service in the kernel), one endpoint
// change at 10,000 services (etcd write to the kernel's transaction), the
// connection setup rate through a VIP at 10 and at 10,000 services against
// connecting directly, and weftd's memory. It prints its own table.
package bench
