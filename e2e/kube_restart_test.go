package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
)

// TestKubeAPIServerRestart stops the API server for a few seconds and starts
// it again while containers ping each other: no ping is lost, no route
// changes, and the informer's re-list after the restart is not read as a
// mass deletion. A Node added afterwards joins, so the watch came back.
func TestKubeAPIServerRestart(t *testing.T) {
	k := newKubeEnv(t)
	k.kubeNodes(3)
	for _, n := range k.nodes {
		n.waitReady(t, 2, 30*time.Second)
	}
	before := map[string]string{}
	for _, n := range k.nodes {
		before[n.Name] = routeSnapshot(t, n)
	}
	s := startStreams(t, k.env)
	time.Sleep(time.Second)

	if err := k.api.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-k.api.Done()
	// A write behind the API server's back, and a compaction up to it: the
	// revision weftd last saw is gone from etcd's history, so its watch
	// cannot resume and its informer lists the Nodes again.
	k.bumpEtcd()
	time.Sleep(3 * time.Second)
	for _, n := range k.nodes {
		if got := routeSnapshot(t, n); got != before[n.Name] {
			t.Errorf("%s: routes changed while the API server was down:\n%s\nwant\n%s", n.Name, got, before[n.Name])
		}
	}
	k.startAPI()
	// Pings go on until every informer has listed the Nodes again (its
	// backoff after the outage may take a while).
	for _, n := range k.nodes {
		k.eventually(n.Name+" lists the Nodes again", 60*time.Second, func() (bool, string) {
			v := n.metric(k.ctx, "weft_kube_node_lists_total", "")
			return v >= 2, fmt.Sprint(v, " listings")
		})
	}
	time.Sleep(time.Second)
	s.stop()
	for _, n := range k.nodes {
		if got := routeSnapshot(t, n); got != before[n.Name] {
			t.Errorf("%s: routes changed across the API server restart:\n%s\nwant\n%s", n.Name, got, before[n.Name])
		}
		if v := n.metric(k.ctx, "weft_peer_events_total", `type="removed"`); v != 0 {
			t.Errorf("%s: %v peers removed across the API server restart", n.Name, v)
		}
		n.waitReady(t, 2, 10*time.Second)
	}

	// The watch is back: a new Node joins everywhere.
	k.createNode("late", "172.17.42.44", "172.16.44.0/24", flannelAnnotations("172.17.42.44", "0e:5d:9f:0a:0b:44"))
	for _, n := range k.nodes {
		k.eventually(n.Name+" sees a Node added after the restart", 30*time.Second, func() (bool, string) {
			routes, _ := n.Routes(k.ctx)
			return hasRoute(routes, netip.MustParsePrefix("172.16.44.0/24")), routes
		})
	}
}

// routeSnapshot is n's overlay routes, neighbours and FDB entries.
func routeSnapshot(t *testing.T, n *node) string {
	t.Helper()
	out, err := n.IP(t.Context(), "route", "show", "dev", "flannel.1")
	if err != nil {
		t.Fatal(err)
	}
	neigh, _ := n.Neigh(t.Context())
	fdb, _ := n.FDB(t.Context())
	return out + neigh + fdb
}

// bumpEtcd writes a key of its own straight into the API server's etcd and
// compacts its history up to that write.
func (k *kubeEnv) bumpEtcd() {
	k.t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{"http://127.0.0.1:2379"},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return k.master.DialContext(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		k.t.Fatal(err)
	}
	defer cli.Close()
	var rev int64
	for i := range 3 {
		r, err := cli.Put(k.ctx, "/weft-e2e/bump", fmt.Sprint(i))
		if err != nil {
			k.t.Fatalf("writing to etcd: %v", err)
		}
		rev = r.Header.Revision
	}
	if _, err := cli.Compact(k.ctx, rev); err != nil {
		k.t.Fatalf("compacting etcd: %v", err)
	}
}
