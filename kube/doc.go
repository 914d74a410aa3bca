// Package kube is weft's subnet manager for Kubernetes (weftd
// --kube-subnet-mgr): the node's subnet is the podCIDR the controller
// manager assigned to its Node object, its VTEP is published in the Node's
// annotations, and the peers are the other Nodes.
//
// It speaks flannel's protocol node by node, so that flanneld and weftd
// nodes in one cluster are peers: the annotations <prefix>/backend-data
// ({"VNI":1,"VtepMAC":"..."}), backend-type, public-ip and
// kube-subnet-manager ("true"), with public-ip-overwrite honoured, under the
// prefix flannel.alpha.coreos.com by default.
//
// Manager implements what network.Node needs of a subnet source, the same two
// methods subnet.Registry implements for etcd: Hold (take the node's subnet,
// publish its annotations, say when it changes) and WatchPeers (whole peer
// snapshots). So the same loop, Set, repair and rulebook (package peer) apply
// in both modes. Every Node reaches weftd through one informer: one list and
// one watch, whatever the cluster's size, and no polling. The informer keeps
// only what weft reads of a Node (its name, creation time, podCIDR and the
// few annotations under the prefix), not managedFields, status or labels:
// at 4,000 Nodes the whole objects would be most of weftd's memory.
// Nodes are decoded into weft's own types (wire.go), not k8s.io/api's,
// which would be megabytes of weftd's binary, resident in etcd mode too.
//
// A Node's annotations are written by whoever may patch Nodes, so they are
// checked like etcd leases: garbage, a zero MAC or a bogus public IP is
// skipped and counted, and a Node whose annotations turn bad keeps its last
// good value, so that a working peer is never removed by bad data. A Node
// without annotations at all (no weftd or flanneld there yet) is normal and
// simply not a peer. Only the deletion of a Node removes its peer; the
// informer's re-list after an API server outage reports deletions only for
// Nodes the new list lacks, so a restart of the API server changes nothing.
package kube
