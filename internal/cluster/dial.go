package cluster

import (
	"context"
	"fmt"
	"net"
	"runtime"

	"github.com/vishvananda/netns"
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

// inNamespace runs fn on a fresh goroutine whose locked OS thread has entered ns. A socket
// keeps the namespace it was created in, so it stays usable from any goroutine afterwards.
// The caller's thread never moves; if switching back fails, the goroutine exits still
// locked and the runtime discards the thread instead of reusing it in the wrong namespace.
func inNamespace(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("reading current namespace: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(ns)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening namespace %s: %w", ns, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			errc <- fmt.Errorf("entering namespace %s: %w", ns, err) // thread state unknown: stay locked
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leaving namespace %s: %w", ns, err) // stay locked: thread is discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}
