// Package service holds weft's service registry: Kubernetes-shaped v1 Service
// and Endpoints objects kept in etcd under weft's prefix, their parsing and
// validation, atomic ClusterIP allocation, and the watch that hands weftd the
// whole set of services as it changes.
//
// The keys live under <prefix>/services/, beside flannel's config and
// subnets, which flanneld never reads:
//
//	<prefix>/services/config                 {"Network":"10.254.0.0/16"} (optional; that is the default)
//	<prefix>/services/specs/<ns>/<name>      a v1 Service, normalised, spec.clusterIP filled in
//	<prefix>/services/endpoints/<ns>/<name>  a v1 Endpoints
//	<prefix>/services/ips/<clusterIP>        "<ns>/<name>": who holds the address
//
// A ClusterIP is taken by creating its ips/ key in the same etcd transaction
// that creates the Service, on the condition that the key does not exist yet:
// two services can never hold one address, whoever writes at the same time.
//
// The package never touches the kernel. What weftd makes of the services is
// the proxy package's business; this one only says what they are.
package service
