// Package proxy programs every service of the registry into the kernel, so
// that containers and the host reach a service's ClusterIP with no userspace
// hop. It owns one nftables table, ip weft-svc, and never touches another.
//
//	nat-prerouting, nat-output   ip daddr <service network> jump services
//	services                     ip daddr . meta l4proto . th dport vmap @services
//	pick-<n>                     ip daddr . meta l4proto . th dport . numgen random mod n → dnat via map @backends
//	svc-<ns>/<name>/<port>       ClientIP affinity only: the remembered pick, else one rule per backend
//	nat-postrouting              masquerade the host's own connections, and clients reaching a backend on their own node
//	filter-forward, filter-output  new connections to a service with no endpoints: vmap @no-endpoints → reject
//
// The services map is the only thing a packet's cost depends on, and it is a
// hash lookup: the cost of a new connection does not grow with the number of
// services. Only a connection's first packet goes through the nat chains.
//
// The loop keeps what it programmed and, for every change from the registry,
// queues only the difference (a port's chain flushed and refilled, map
// elements swapped) in one nf_tables transaction. A whole-table rebuild,
// also one transaction that deletes and recreates the table, is done at
// start (which is how a restarted weftd adopts the rules without a moment
// without them) and whenever someone else changes the table. UDP conntrack
// entries of removed endpoints are deleted after the transaction, so a UDP
// flow moves on at once.
//
// Endpoints inside the overlay are served only while their subnet has a live
// lease (SetLive), so a dead node's endpoints stop getting new connections.
package proxy
