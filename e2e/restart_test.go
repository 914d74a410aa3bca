package e2e

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/cluster"
)

// streams pings every node's first container from the previous node's, at 20
// pings/s, until stop.
type streams struct {
	t    *testing.T
	list []*cluster.PingStream
	name []string
}

func startStreams(t *testing.T, e *env) *streams {
	t.Helper()
	s := &streams{t: t}
	for i, n := range e.nodes {
		from := e.nodes[(i+len(e.nodes)-1)%len(e.nodes)]
		ps, err := cluster.StartPingStream(from.containers[0].NS, n.containers[0].Addr, 50*time.Millisecond)
		if err != nil {
			t.Fatal(err)
		}
		s.list = append(s.list, ps)
		s.name = append(s.name, from.Name+"->"+n.Name)
	}
	return s
}

// stop ends every stream and fails the test if any ping was lost.
func (s *streams) stop() {
	s.t.Helper()
	total := 0
	for i, ps := range s.list {
		res, err := ps.Stop()
		if err != nil {
			s.t.Fatal(err)
		}
		total += res.Sent
		if res.Sent < 20 || res.Received != res.Sent {
			s.t.Errorf("%s: %d pings sent, %d received, lost %v", s.name[i], res.Sent, res.Received, res.Lost)
		}
	}
	s.t.Logf("%d pings in %d streams, none lost", total, len(s.list))
}

// restart stops weftd on n with sig, starts it again (from bin if given) and
// waits until it reports the data plane ready.
func (n *node) restart(sig syscall.Signal, bin string) {
	n.t.Helper()
	readyBefore := n.logCount("data plane ready")
	if sig == syscall.SIGTERM {
		n.stop()
	} else {
		n.proc.Signal(sig)
		<-n.proc.Done()
	}
	if bin != "" {
		n.args[0] = bin
	}
	n.start()
	err := cluster.WaitFor(context.Background(), 20*time.Second, 20*time.Millisecond, func() (bool, string) {
		return n.logCount("data plane ready") > readyBefore, n.proc.Tail(10)
	})
	if err != nil {
		n.t.Fatalf("weftd on %s not ready after restart: %v", n.Name, err)
	}
}

// TestRestartsWithoutLoss restarts weftd in every way an operator does, under
// 20 pings/s between containers on every pair of neighbouring nodes: no ping
// may be lost, and no node may move to another subnet.
func TestRestartsWithoutLoss(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 3, containers: true})
	subnets := map[string]string{}
	for _, n := range e.nodes {
		subnets[n.Name] = n.subnet().String()
	}
	check := func(t *testing.T) {
		for _, n := range e.nodes {
			if got := n.subnet().String(); got != subnets[n.Name] {
				t.Errorf("%s moved from %s to %s", n.Name, subnets[n.Name], got)
			}
		}
	}

	t.Run("SIGKILL", func(t *testing.T) {
		s := startStreams(t, e)
		time.Sleep(time.Second)
		e.nodes[1].restart(syscall.SIGKILL, "")
		time.Sleep(time.Second)
		s.stop()
		check(t)
	})

	t.Run("upgrade in place", func(t *testing.T) {
		// A new binary at a new path, as a package upgrade leaves it.
		newBin := filepath.Join(e.c.Dir, "weftd-next")
		copyFile(t, e.nodes[0].args[0], newBin)
		s := startStreams(t, e)
		time.Sleep(time.Second)
		e.nodes[0].restart(syscall.SIGTERM, newBin)
		time.Sleep(time.Second)
		s.stop()
		check(t)
		if !strings.Contains(e.nodes[0].proc.Tail(200), "weftd-next") {
			t.Errorf("node1 does not run the new binary:\n%s", e.nodes[0].proc.Tail(5))
		}
	})

	t.Run("rolling restart of every node", func(t *testing.T) {
		s := startStreams(t, e)
		time.Sleep(time.Second)
		for _, n := range e.nodes {
			n.restart(syscall.SIGTERM, "")
		}
		time.Sleep(time.Second)
		s.stop()
		check(t)
	})
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestPeerNewAddress: node2 comes back on a new underlay address. It keeps its
// subnet; node1 switches its FDB entry and neighbour to the new address and
// MAC, and nothing of the old ones remains.
func TestPeerNewAddress(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx
	a, b := e.nodes[0], e.nodes[1]
	sub, oldMAC := b.subnet(), b.vtepMAC()
	b.stop()
	sh(t, ctx, b, "ip", "addr", "flush", "dev", "eth0")
	sh(t, ctx, b, "ip", "addr", "add", "172.17.42.52/16", "dev", "eth0")
	b.Addr = mustPrefix("172.17.42.52/16")
	b.start()
	e.eventually("node2 ready on its new address", 10*time.Second, func() (bool, string) {
		return b.logCount("data plane ready") >= 2, b.proc.Tail(10)
	})
	e.eventually("node2 publishes its new address", 10*time.Second, func() (bool, string) {
		resp, err := e.cli.Get(ctx, e.leaseKey(b))
		return err == nil && len(resp.Kvs) == 1 && strings.Contains(string(resp.Kvs[0].Value), "172.17.42.52"), fmt.Sprint(resp, err)
	})
	if got := b.subnet(); got != sub {
		t.Fatalf("node2 moved from %v to %v", sub, got)
	}
	newMAC := b.vtepMAC()
	if newMAC == oldMAC {
		t.Fatalf("the VTEP MAC did not change with the address (%s)", newMAC)
	}
	gw := sub.Addr().String()
	e.eventually("node1 switches to node2's new address", 5*time.Second, func() (bool, string) {
		fdb, _ := a.FDB(ctx)
		neigh, _ := a.Neigh(ctx)
		ok := strings.Contains(fdb, newMAC+" dst 172.17.42.52 self permanent") &&
			!strings.Contains(fdb, oldMAC) && !strings.Contains(fdb, "172.17.42.32") &&
			strings.Contains(neigh, gw+" lladdr "+newMAC+" PERMANENT")
		return ok, fdb + neigh
	})
	e.eventually("containers reach each other again", 5*time.Second, func() (bool, string) {
		err := cluster.Ping(ctx, a.containers[0].NS, b.containers[0].Addr, cluster.PingOpts{Timeout: 300 * time.Millisecond})
		return err == nil, fmt.Sprint(err)
	})
}

// TestPeerNewMAC: node2's lease carries a MAC from before weft (as after a
// switch from flanneld, whose device MAC is random). When weftd starts there
// it publishes its own MAC; node1 adds the new entries before the old go, and
// nothing stale remains.
func TestPeerNewMAC(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx
	a, b := e.nodes[0], e.nodes[1]
	weftMAC := b.vtepMAC()
	const flannelMAC = "0e:11:22:33:44:55"
	b.stop()
	sh(t, ctx, b, "ip", "link", "set", "flannel.1", "address", flannelMAC)
	resp, err := e.cli.Get(ctx, e.leaseKey(b))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading node2's lease: %v", err)
	}
	kv := resp.Kvs[0]
	if _, err := e.cli.Put(ctx, string(kv.Key), strings.Replace(string(kv.Value), weftMAC, flannelMAC, 1), clientv3.WithLease(clientv3.LeaseID(kv.Lease))); err != nil {
		t.Fatal(err)
	}
	e.eventually("node1 programs the flannel-era MAC", 5*time.Second, func() (bool, string) {
		fdb, _ := a.FDB(ctx)
		return strings.Contains(fdb, flannelMAC+" dst 172.17.42.32") && !strings.Contains(fdb, weftMAC), fdb
	})
	b.start()
	gw := b.subnet().Addr().String()
	e.eventually("node1 switches to weft's MAC with nothing stale", 10*time.Second, func() (bool, string) {
		fdb, _ := a.FDB(ctx)
		neigh, _ := a.Neigh(ctx)
		ok := strings.Contains(fdb, weftMAC+" dst 172.17.42.32 self permanent") && !strings.Contains(fdb, flannelMAC) &&
			strings.Contains(neigh, gw+" lladdr "+weftMAC+" PERMANENT") && !strings.Contains(neigh, flannelMAC)
		return ok, fdb + neigh
	})
	e.eventually("containers reach each other", 5*time.Second, func() (bool, string) {
		err := cluster.Ping(ctx, a.containers[0].NS, b.containers[0].Addr, cluster.PingOpts{Timeout: 300 * time.Millisecond})
		return err == nil, fmt.Sprint(err)
	})
}
