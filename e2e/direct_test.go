package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/cluster"
)

const directConfig = `{"Network":"172.16.0.0/12","Backend":{"Type":"vxlan","DirectRouting":true}}`

// directCluster: node1 and node2 on the main underlay (br0), node3 behind a
// router on 192.168.77.0/24 (br1); a container on each.
func directCluster(t *testing.T, config string) (*env, []*node) {
	e := newBareEnv(t)
	ctx := e.ctx
	e.startEtcd()
	e.cli = e.client()
	if _, err := e.cli.Put(ctx, prefix+"/config", config); err != nil {
		t.Fatal(err)
	}
	if err := e.c.AddSegment(ctx, "br1"); err != nil {
		t.Fatal(err)
	}
	if _, err := e.c.AddRouter(ctx, "router", mustPrefix("172.17.42.254/16"), "br1", mustPrefix("192.168.77.1/24")); err != nil {
		t.Fatal(err)
	}
	if out, err := e.master.Run(ctx, "ip", "route", "add", "192.168.77.0/24", "via", "172.17.42.254"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	n1, n2 := e.addNode("node1", mustPrefix("172.17.42.31/16")), e.addNode("node2", mustPrefix("172.17.42.32/16"))
	for _, n := range []*node{n1, n2} {
		if out, err := n.Run(ctx, "ip", "route", "add", "192.168.77.0/24", "via", "172.17.42.254"); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	h3, err := e.c.AddHostOn(ctx, "node3", mustPrefix("192.168.77.33/24"), "br1")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := h3.Run(ctx, "ip", "route", "add", "default", "via", "192.168.77.1"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	n3 := &node{Host: h3, t: t, subnetFile: filepath.Join(e.c.Dir, "node3", "subnet.env")}
	n3.args = []string{filepath.Join(e.bin, "weftd"), "--etcd-endpoints", etcdURL, "--iface", "eth0", "--ip-masq",
		"--subnet-file", n3.subnetFile, "--log-level", "debug"}
	n3.start()
	e.nodes = append(e.nodes, n3)
	nodes := []*node{n1, n2, n3}
	for _, n := range nodes {
		n.waitSubnetFile(30 * time.Second)
		n.dockerUp()
		n.addContainer("c1", 5)
	}
	return e, nodes
}

func pingNodes(t *testing.T, nodes []*node) {
	t.Helper()
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				if err := cluster.Ping(context.Background(), a.containers[0].NS, b.containers[0].Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
					t.Errorf("%s -> %s: %v", a.Name, b.Name, err)
				}
			}
		}
	}
}

// directRouteTo reports whether n routes peer subnet s straight to gw on
// eth0, with no neighbour on flannel.1 for it.
func directRouteTo(n *node, s netip.Prefix, gw string) (bool, string) {
	ctx := context.Background()
	routes, _ := n.IP(ctx, "route", "show", s.String())
	neigh, _ := n.IP(ctx, "neigh", "show", "dev", "flannel.1")
	ok := strings.Contains(routes, s.String()+" via "+gw+" dev eth0 metric ") && !strings.Contains(neigh, s.Addr().String()+" ")
	return ok, routes + neigh
}

// TestDirectRouting: with Backend.DirectRouting, node1 and node2 (same
// underlay network) route to each other directly, and both reach node3
// (behind a router) through VXLAN; all pods reach all pods, containers keep
// their addresses across the direct route, and a deleted direct route is
// repaired.
func TestDirectRouting(t *testing.T) {
	e, nodes := directCluster(t, directConfig)
	ctx := e.ctx
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	e.eventually("node1's direct route to node2", 10*time.Second, func() (bool, string) { return directRouteTo(n1, n2.subnet(), "172.17.42.32") })
	e.eventually("node2's direct route to node1", 10*time.Second, func() (bool, string) { return directRouteTo(n2, n1.subnet(), "172.17.42.31") })
	for _, n := range []*node{n1, n2} {
		routes, _ := n.Routes(ctx)
		if !hasRoute(routes, n3.subnet()) {
			t.Errorf("%s has no VXLAN route to node3 behind the router:\n%s", n.Name, routes)
		}
		fdb, _ := n.FDB(ctx)
		if strings.Contains(fdb, "dst 172.17.42.3") {
			t.Errorf("%s has FDB entries for a direct peer:\n%s", n.Name, fdb)
		}
	}
	routes3, _ := n3.Routes(ctx)
	if !hasRoute(routes3, n1.subnet()) || !hasRoute(routes3, n2.subnet()) {
		t.Errorf("node3 lacks VXLAN routes:\n%s", routes3)
	}
	pingNodes(t, nodes)
	// Directly routed overlay traffic keeps the container's address.
	if out, err := n2.Run(ctx, "iptables-save", "-t", "nat"); err != nil || !strings.Contains(out, "directly routed overlay traffic keeps its source") {
		t.Errorf("node2's nat rules lack the direct-routing RETURN: %v\n%s", err, out)
	}

	// Repair of a direct route.
	if out, err := n1.Run(ctx, "ip", "route", "del", n2.subnet().String()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	took := e.eventually("direct route repaired", time.Second, func() (bool, string) { return directRouteTo(n1, n2.subnet(), "172.17.42.32") })
	t.Logf("direct route repaired in %v", took)
}

// TestDirectRoutingSwitch: DirectRouting turned off in the config, then on
// again, each applied by restarting weftd node by node (a Backend change
// needs a restart) while pods ping each other every 20 ms: no ping is lost,
// and nothing of the other mode stays behind.
func TestDirectRoutingSwitch(t *testing.T) {
	e, nodes := directCluster(t, directConfig)
	ctx := e.ctx
	n1, n2 := nodes[0], nodes[1]
	e.eventually("direct routes", 10*time.Second, func() (bool, string) { return directRouteTo(n1, n2.subnet(), "172.17.42.32") })
	for _, step := range []struct {
		config string
		direct bool
	}{
		{netConfig, false},
		{directConfig, true},
	} {
		var streams []*cluster.PingStream
		for _, pair := range [][2]*node{{n1, n2}, {n2, n1}, {n1, nodes[2]}} {
			s, err := cluster.StartPingStream(pair[0].containers[0].NS, pair[1].containers[0].Addr, 20*time.Millisecond)
			if err != nil {
				t.Fatal(err)
			}
			streams = append(streams, s)
		}
		time.Sleep(300 * time.Millisecond)
		if _, err := e.cli.Put(ctx, prefix+"/config", step.config); err != nil {
			t.Fatal(err)
		}
		for _, n := range nodes {
			n.stop()
			n.start()
			n.waitLog(t, "data plane ready", 10*time.Second)
		}
		for _, pair := range [][2]*node{{n1, n2}, {n2, n1}} {
			a, b := pair[0], pair[1]
			e.eventually(fmt.Sprintf("%s's route to %s with DirectRouting %v", a.Name, b.Name, step.direct), 10*time.Second, func() (bool, string) {
				routes, _ := a.Routes(ctx)
				ok, why := directRouteTo(a, b.subnet(), b.Addr.Addr().String())
				if !step.direct {
					fdb, _ := a.FDB(ctx)
					ok = hasRoute(routes, b.subnet()) && strings.Contains(fdb, "dst "+b.Addr.Addr().String())
					why = routes + fdb
				}
				return ok, why
			})
		}
		time.Sleep(300 * time.Millisecond)
		for i, s := range streams {
			res, err := s.Stop()
			if err != nil {
				t.Fatal(err)
			}
			if res.Received < res.Sent || res.Sent < 10 {
				t.Errorf("DirectRouting -> %v, stream %d: %d of %d pings answered, lost %v", step.direct, i, res.Received, res.Sent, res.Lost)
			}
		}
		if !step.direct {
			if out, _ := n1.IP(ctx, "route", "show", "proto", "boot", "dev", "eth0"); strings.Contains(out, n2.subnet().String()) {
				t.Errorf("a stale direct route stayed:\n%s", out)
			}
		} else {
			if out, _ := n1.FDB(ctx); strings.Contains(out, "dst 172.17.42.32") {
				t.Errorf("a stale FDB entry stayed:\n%s", out)
			}
		}
	}
}
