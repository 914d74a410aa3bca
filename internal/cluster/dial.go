package cluster

import (
	"context"
	"fmt"
	"net"

	"github.com/weft-net/weft/internal/netnsx"
)

// DialContext connects from inside the host's namespace, so the test process can talk to a
// daemon in the cluster, e.g. etcd on master:
//
//	clientv3.Config{Endpoints: []string{"172.17.42.30:2379"},
//		DialOptions: []grpc.DialOption{grpc.WithContextDialer(master.DialContext)}}
//
// Use numeric addresses: name lookups would run in the host namespace.
func (h *Host) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	var conn net.Conn
	err := inNamespace(h.NS, func() (err error) {
		conn, err = (&net.Dialer{}).DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dialing %s %s from %s: %w", network, address, h.Name, err)
	}
	return conn, nil
}

// Listen opens a listener inside the host's namespace, e.g. a server on the outside host
// that reports the source address it sees.
func (h *Host) Listen(ctx context.Context, network, address string) (net.Listener, error) {
	var ln net.Listener
	err := inNamespace(h.NS, func() (err error) {
		ln, err = (&net.ListenConfig{}).Listen(ctx, network, address)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listening on %s %s in %s: %w", network, address, h.Name, err)
	}
	return ln, nil
}

// inNamespace runs fn with its sockets made inside the named namespace.
func inNamespace(ns string, fn func() error) error { return netnsx.DoNamed(ns, fn) }
