// Package cni is weft-cni, the CNI plugin that puts containers of any CNI
// runtime (containerd, CRI-O, podman, nerdctl, the kubelet) on weft's overlay.
// It is flannel's CNI plugin in what it accepts: a flannel conflist works with
// only its "type" changed to "weft-cni".
//
// The plugin owns no data plane. On ADD it reads subnet.env, the node's lease
// as weftd wrote it, turns it and the network config into the config of a
// standard plugin (by default bridge cni0 with host-local addresses from
// FLANNEL_SUBNET and a route to FLANNEL_NETWORK) and delegates to that plugin,
// which does the kernel work. weftd then carries the packets between nodes:
// the plugin never talks to etcd or to weftd.
//
// Before delegating ADD it writes the delegate's config to a per-container
// file under dataDir, and DEL and CHECK replay that file. So DEL works after
// subnet.env is gone or the lease changed, and releases exactly what ADD
// took. The file is removed only once the delegate's DEL succeeded, so a
// failed DEL can be retried. DEL of something never added, or already
// deleted, succeeds, as the spec asks.
//
// subnet.env is read by this package's own parser (the format is network's,
// checked against it by a fuzz test) so that the binary, which runtimes exec
// for every container, links neither weftd's data plane nor its metrics.
package cni
