package e2e

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/network"
)

// TestOwnLeaseRepaired: an attacker with write access to the subnets prefix
// overwrites node1's live key with garbage, a megabyte of it, and another
// address (without an etcd lease of its own, or on node1's). Each time
// node1 writes its value back, on its own etcd lease, within a second; the
// other node's data plane ends as it was, with no trace of the attacker's
// address, and containers still reach each other.
func TestOwnLeaseRepaired(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx
	a, b := e.nodes[0], e.nodes[1]
	key := e.leaseKey(a)
	orig, err := e.cli.Get(ctx, key)
	if err != nil || len(orig.Kvs) != 1 {
		t.Fatalf("reading node1's key: %v", err)
	}
	good := orig.Kvs[0]
	beforeA, beforeB := a.dataplane(ctx), b.dataplane(ctx)
	attacker := `{"PublicIP":"172.17.42.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}`

	for _, w := range []struct {
		what, value string
		lease       clientv3.LeaseID
	}{
		{"garbage with a terminal escape", "\x1b]0;pwned\x07{", 0},
		{"a megabyte of garbage", strings.Repeat("[", 1<<20), 0},
		{"the attacker's address, no etcd lease", attacker, 0},
		{"the attacker's address on node1's etcd lease", attacker, clientv3.LeaseID(good.Lease)},
	} {
		var opts []clientv3.OpOption
		if w.lease != 0 {
			opts = append(opts, clientv3.WithLease(w.lease))
		}
		if _, err := e.cli.Put(ctx, key, w.value, opts...); err != nil {
			t.Fatal(err)
		}
		took := e.eventually("node1 writes its key back over "+w.what, 3*time.Second, func() (bool, string) {
			r, err := e.cli.Get(ctx, key)
			if err != nil || len(r.Kvs) != 1 {
				return false, fmt.Sprint(r, err)
			}
			kv := r.Kvs[0]
			return bytes.Equal(kv.Value, good.Value) && kv.Lease == good.Lease, fmt.Sprintf("%.80q on etcd lease %x", kv.Value, kv.Lease)
		})
		t.Logf("%s: key back %v after the write", w.what, took.Round(time.Millisecond))
	}
	e.eventually("node2 as before, no trace of the attacker", 5*time.Second, func() (bool, string) {
		got := b.dataplane(ctx)
		return got == beforeB, got
	})
	if got := a.dataplane(ctx); got != beforeA {
		t.Errorf("node1's data plane changed:\nbefore:\n%s\nafter:\n%s", beforeA, got)
	}
	// Counted once the repair's transaction answered: maybe just after the
	// key shows it.
	e.eventually("four repairs counted", 2*time.Second, func() (bool, string) {
		n := a.metric(ctx, "weft_lease_repairs_total", "")
		return n == 4, fmt.Sprint(n)
	})
	if n := a.metric(ctx, "weft_lease_conflicts_total", ""); n != 0 {
		t.Errorf("weft_lease_conflicts_total = %v, want 0: none of these is a claim", n)
	}
	if n := a.logCount("writing this node's lease back"); n < 1 {
		t.Errorf("node1 did not log the repair:\n%s", a.proc.Tail(10))
	}
	if err := cluster.Ping(ctx, b.containers[0].NS, a.containers[0].Addr, cluster.PingOpts{Timeout: time.Second}); err != nil {
		t.Errorf("node2's container does not reach node1's after the repairs: %v", err)
	}
}

// TestSubnetFileTakesOverOnlyOwnKey: a node whose subnet.env names a subnet
// that another live node holds (subnet.env copied, or stale) does not take
// it; it gets another subnet, and the live node's key is not written.
func TestSubnetFileTakesOverOnlyOwnKey(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 1})
	ctx := e.ctx
	a := e.nodes[0]
	key := e.leaseKey(a)
	before, err := e.cli.Get(ctx, key)
	if err != nil || len(before.Kvs) != 1 {
		t.Fatalf("reading node1's key: %v", err)
	}
	env, err := network.ReadSubnetEnv(a.subnetFile)
	if err != nil {
		t.Fatal(err)
	}
	if env.EtcdLease != before.Kvs[0].Lease {
		t.Fatalf("node1's subnet.env records etcd lease %x, its key is on %x", env.EtcdLease, before.Kvs[0].Lease)
	}

	// node2's subnet.env is node1's, with another etcd lease (or with none,
	// as flanneld writes it).
	h, err := e.c.AddHost(ctx, "node2", mustPrefix("172.17.42.32/16"))
	if err != nil {
		t.Fatal(err)
	}
	for i, lease := range []int64{env.EtcdLease + 1, 0} {
		n := &node{Host: h, t: t, subnetFile: fmt.Sprintf("%s/node2-%d.env", e.c.Dir, i)}
		copied := env
		copied.EtcdLease = lease
		if err := network.WriteSubnetEnv(n.subnetFile, copied); err != nil {
			t.Fatal(err)
		}
		n.args = []string{e.bin + "/weftd", "--etcd-endpoints", etcdURL, "--iface", "eth0", "--subnet-file", n.subnetFile, "--metrics-addr", ""}
		n.start()
		e.nodes = append(e.nodes, n)
		e.eventually("node2 gets a subnet of its own", 10*time.Second, func() (bool, string) {
			got, err := network.ReadSubnetEnv(n.subnetFile)
			return err == nil && got.Lease() != env.Lease(), fmt.Sprint(got.Lease(), err)
		})
		after, err := e.cli.Get(ctx, key)
		if err != nil || len(after.Kvs) != 1 {
			t.Fatalf("reading node1's key: %v", err)
		}
		if kv := after.Kvs[0]; kv.ModRevision != before.Kvs[0].ModRevision || kv.Lease != before.Kvs[0].Lease {
			t.Fatalf("node2 wrote node1's key: %q on %x at mod revision %d", kv.Value, kv.Lease, kv.ModRevision)
		}
		n.stop()
		os.Remove(n.subnetFile)
	}
	if strings.Contains(a.proc.Tail(1000), "lost subnet lease") {
		t.Errorf("node1 lost its lease:\n%s", a.proc.Tail(20))
	}
}
