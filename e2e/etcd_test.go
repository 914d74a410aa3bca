package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/cluster"
)

// cpuSeconds is the user+system CPU time the process has used.
func cpuSeconds(t *testing.T, pid int) float64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name, which is in parentheses and may hold spaces.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func (e *env) leaseKey(n *node) string {
	s := n.subnet()
	return fmt.Sprintf("%s/subnets/%s-%d", prefix, s.Addr(), s.Bits())
}

// hasPeer reports whether n's kernel has all three entries for peer subnet s.
func (n *node) hasPeer(ctx context.Context, s netip.Prefix, gw string) (bool, string) {
	routes, _ := n.Routes(ctx)
	neigh, _ := n.Neigh(ctx)
	ok := hasRoute(routes, s) && strings.Contains(neigh, gw+" lladdr")
	return ok, routes + neigh
}

// TestEtcdOutage freezes etcd for 12 s: pings keep flowing, weftd stays up on
// little CPU and logs the outage once, and after etcd thaws a new node is
// programmed everywhere within 5 s.
func TestEtcdOutage(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx
	a, b := e.nodes[0], e.nodes[1]
	stream, err := cluster.StartPingStream(a.containers[0].NS, b.containers[0].Addr, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	before := a.dataplane(ctx)
	cpu0 := cpuSeconds(t, a.proc.Pid())
	lines0 := strings.Count(a.proc.Tail(100000), "\n")

	if err := e.etcd.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	time.Sleep(12 * time.Second)
	cpu := cpuSeconds(t, a.proc.Pid()) - cpu0
	outageLog := a.proc.Tail(100000)
	outageLines := strings.Count(outageLog, "\n") - lines0
	if err := e.etcd.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	thawed := time.Now()

	res, err := stream.Stop()
	if err != nil {
		t.Fatal(err)
	}
	// The stream spans the outage by construction (started before SIGSTOP,
	// stopped after SIGCONT); it must also have pinged through it, at half
	// its nominal 20/s at least: on a loaded machine ping's own timer
	// slips, which says nothing about weftd.
	if res.Received != res.Sent || res.Sent < 12*10 {
		t.Errorf("pings during the outage: %d sent, %d received, lost %v", res.Sent, res.Received, res.Lost)
	}
	if got := a.dataplane(ctx); got != before {
		t.Errorf("the data plane changed during the outage:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	if cpu > 0.6 {
		t.Errorf("weftd used %.2f s of CPU during a 12 s outage, want well under 5%% of a core", cpu)
	}
	if !strings.Contains(outageLog, "etcd unreachable") {
		t.Errorf("weftd's log does not say etcd became unreachable:\n%s", a.proc.Tail(15))
	}
	if outageLines > 8 {
		t.Errorf("weftd logged %d lines during a 12 s outage, want a handful:\n%s", outageLines, a.proc.Tail(outageLines))
	}
	t.Logf("12 s outage: %d pings, none lost; weftd used %.2f s CPU and logged %d lines", res.Sent, cpu, outageLines)

	c := e.addNode("node3", mustPrefix("172.17.42.33/16"))
	env := c.waitSubnetFile(10 * time.Second)
	gw := env.Lease().Addr().String()
	for _, n := range []*node{a, b} {
		e.eventually(n.Name+" programs node3 after the outage", 5*time.Second, func() (bool, string) {
			return n.hasPeer(ctx, env.Lease(), gw)
		})
	}
	e.eventually("log says etcd is back", 5*time.Second, func() (bool, string) {
		return strings.Contains(a.proc.Tail(100000), "etcd reachable again"), a.proc.Tail(10)
	})
	t.Logf("node3 programmed on both nodes %v after etcd thawed", time.Since(thawed).Round(time.Millisecond))
}

// TestEtcdPartitionJoinLeaveCompaction cuts node1 off etcd while a node
// leaves, another joins and etcd compacts its history; node1 converges within
// 5 s of the cut ending.
func TestEtcdPartitionJoinLeaveCompaction(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 3})
	ctx := e.ctx
	a, leaving := e.nodes[0], e.nodes[2]
	gone := leaving.subnet()
	cuts := [][]string{
		{"OUTPUT", "-d", etcdAddr, "-p", "tcp", "--dport", "2379", "-j", "DROP"},
		{"INPUT", "-s", etcdAddr, "-p", "tcp", "--sport", "2379", "-j", "DROP"},
	}
	heal := func() {
		for _, c := range cuts {
			a.Run(context.Background(), append([]string{"iptables", "-D"}, c...)...)
		}
	}
	for _, c := range cuts {
		sh(t, ctx, a, append([]string{"iptables", "-I"}, c...)...)
	}
	t.Cleanup(heal)
	e.eventually("node1 notices etcd is gone", 20*time.Second, func() (bool, string) {
		return strings.Contains(a.proc.Tail(100000), "etcd unreachable"), a.proc.Tail(5)
	})

	leaving.stop()
	if _, err := e.cli.Delete(ctx, e.leaseKey(leaving)); err != nil {
		t.Fatal(err)
	}
	joined := e.addNode("node4", mustPrefix("172.17.42.34/16"))
	jenv := joined.waitSubnetFile(10 * time.Second)
	for i := range 20 {
		if _, err := e.cli.Put(ctx, prefix+"/churn", strconv.Itoa(i)); err != nil {
			t.Fatal(err)
		}
	}
	rev, err := e.cli.Get(ctx, prefix+"/config")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.cli.Compact(ctx, rev.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		t.Fatal(err)
	}

	gw := jenv.Lease().Addr().String()
	time.Sleep(time.Second)
	if has, out := a.hasPeer(ctx, jenv.Lease(), gw); has {
		t.Fatalf("node1 learned of node4 while cut off from etcd: the partition leaks\n%s", out)
	}
	heal()
	took := e.eventually("node1 converges after the partition", 5*time.Second, func() (bool, string) {
		has, out := a.hasPeer(ctx, jenv.Lease(), gw)
		routes, _ := a.Routes(ctx)
		return has && !strings.Contains(routes, gone.String()), out
	})
	t.Logf("node1 added node4 and dropped node3 %v after the partition healed", took.Round(time.Millisecond))
}

// TestEtcdRestoredEmpty replaces etcd with an empty one (a restore from
// nothing): every weftd registers its lease again, with the same subnet.
func TestEtcdRestoredEmpty(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx
	subnets := map[string]string{}
	for _, n := range e.nodes {
		subnets[n.Name] = e.leaseKey(n)
	}
	a, b := e.nodes[0], e.nodes[1]
	stream, err := cluster.StartPingStream(a.containers[0].NS, b.containers[0].Addr, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.etcd.Stop(5 * time.Second); err != nil {
		t.Logf("etcd stop: %v", err)
	}
	if err := os.RemoveAll(filepath.Join(e.etcdDir, "data")); err != nil {
		t.Fatal(err)
	}
	e.startEtcd()
	if _, err := e.cli.Put(ctx, prefix+"/config", netConfig); err != nil {
		t.Fatalf("restoring the network config: %v", err)
	}
	restored := time.Now()
	for _, n := range e.nodes {
		key := subnets[n.Name]
		e.eventually(n.Name+" registers its lease again", 10*time.Second, func() (bool, string) {
			resp, err := e.cli.Get(ctx, key)
			if err != nil || len(resp.Kvs) == 0 {
				return false, fmt.Sprintf("%s absent (%v)", key, err)
			}
			return strings.Contains(string(resp.Kvs[0].Value), n.Addr.Addr().String()), string(resp.Kvs[0].Value)
		})
	}
	took := time.Since(restored)
	if took > 5*time.Second {
		t.Errorf("leases came back %v after the restore, want within 5s", took)
	}
	t.Logf("both leases back with the same subnets %v after the restore", took.Round(time.Millisecond))
	time.Sleep(time.Second)
	res, err := stream.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if res.Received != res.Sent {
		t.Errorf("pings across the restore: %d sent, %d received, lost %v", res.Sent, res.Received, res.Lost)
	}
	t.Logf("%d pings across the etcd restore, %d lost", res.Sent, res.Sent-res.Received)
}

// TestOwnLeaseDeleted: an operator deletes a running node's lease; weftd takes
// the same subnet back instead of exiting.
func TestOwnLeaseDeleted(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2})
	ctx := e.ctx
	a := e.nodes[0]
	key := e.leaseKey(a)
	if _, err := e.cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	took := e.eventually("node1 re-acquires its subnet", 5*time.Second, func() (bool, string) {
		resp, err := e.cli.Get(ctx, key)
		return err == nil && len(resp.Kvs) == 1 && strings.Contains(string(resp.Kvs[0].Value), a.Addr.Addr().String()), fmt.Sprint(resp, err)
	})
	if a.proc.Done() != nil {
		select {
		case <-a.proc.Done():
			t.Fatalf("weftd exited:\n%s", a.proc.Tail(20))
		default:
		}
	}
	t.Logf("lease back %v after deletion", took.Round(time.Millisecond))
}

// TestLeaseConflict: another live node's lease (its value on its own etcd
// lease) overwrites node1's key. weftd logs and counts it and does not fight
// over the key.
func TestLeaseConflict(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2})
	ctx := e.ctx
	a := e.nodes[0]
	key := e.leaseKey(a)
	intruder := `{"PublicIP":"172.17.42.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}`
	g, err := e.cli.Grant(ctx, 600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.cli.Put(ctx, key, intruder, clientv3.WithLease(g.ID)); err != nil {
		t.Fatal(err)
	}
	put, err := e.cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second)
	resp, err := e.cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(resp.Kvs[0].Value); got != intruder || resp.Kvs[0].ModRevision != put.Kvs[0].ModRevision {
		t.Errorf("weftd fought over the key: it now holds %s (mod revision %d, was %d)", got, resp.Kvs[0].ModRevision, put.Kvs[0].ModRevision)
	}
	if n := a.logCount("another node holds this node's subnet"); n < 1 || n > 3 {
		t.Errorf("%d log lines about the conflict in 5 s, want one or two:\n%s", n, a.proc.Tail(10))
	}
	if v := a.metric(ctx, "weft_lease_conflicts_total", ""); v < 1 {
		t.Errorf("weft_lease_conflicts_total = %v, want >= 1", v)
	}
}
