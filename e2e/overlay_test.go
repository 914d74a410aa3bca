package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/cluster"
)

var (
	cluster12  = netip.MustParsePrefix("172.16.0.0/12")
	underlay16 = netip.MustParsePrefix("172.17.0.0/16")
)

// TestOverlay is issue 2's picture: three nodes, two containers each, and
// everything REFERENCE.md shows, checked as a user would.
func TestOverlay(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 3, containers: true})
	ctx := e.ctx

	t.Run("distinct subnets", func(t *testing.T) {
		seen := map[netip.Prefix]string{}
		for _, n := range e.nodes {
			s := n.subnet()
			if s.Bits() != 24 || !cluster12.Contains(s.Addr()) {
				t.Errorf("%s got %v, want a /24 of %v", n.Name, s, cluster12)
			}
			if s.Overlaps(underlay16) {
				t.Errorf("%s got %v, which overlaps its own underlay %v", n.Name, s, underlay16)
			}
			if other, dup := seen[s]; dup {
				t.Errorf("%s and %s both got %v", n.Name, other, s)
			}
			seen[s] = n.Name
		}
	})

	t.Run("subnet.env", func(t *testing.T) {
		n := e.nodes[0]
		// flannel's four lines, and the etcd lease of the node's key (weft's own line).
		resp, err := e.cli.Get(ctx, e.leaseKey(n))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("reading the node's key: %v", err)
		}
		want := fmt.Sprintf("FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\nWEFT_ETCD_LEASE=%x\n",
			netip.PrefixFrom(n.subnet().Addr().Next(), 24), resp.Kvs[0].Lease)
		out, err := exec.Command("cat", n.subnetFile).Output()
		if err != nil || string(out) != want {
			t.Errorf("subnet.env is %q (%v), want %q", out, err, want)
		}
	})

	t.Run("flannel.1 device", func(t *testing.T) {
		for _, n := range e.nodes {
			out, err := n.LinkDetail(ctx)
			if err != nil {
				t.Fatal(err)
			}
			local := n.Addr.Addr().String()
			for _, want := range []string{
				"mtu 1450",
				"vxlan id 1 local " + local + " dev eth0",
				"dstport 8472",
				"nolearning",
				",UP,",
			} {
				if !strings.Contains(out, want) {
					t.Errorf("%s: `ip -d link show flannel.1` lacks %q:\n%s", n.Name, want, out)
				}
			}
			addr, _ := n.IP(ctx, "-4", "-br", "addr", "show", "flannel.1")
			if want := n.subnet().Addr().String() + "/32"; !strings.Contains(addr, want) {
				t.Errorf("%s: flannel.1 address is %q, want %s", n.Name, addr, want)
			}
		}
	})

	t.Run("route, neighbour and FDB entry per peer", func(t *testing.T) {
		for _, n := range e.nodes {
			routes, _ := n.Routes(ctx)
			neigh, _ := n.Neigh(ctx)
			fdb, _ := n.FDB(ctx)
			for _, p := range e.nodes {
				if p == n {
					continue
				}
				s, mac := p.subnet(), p.vtepMAC()
				gw := s.Addr().String()
				if !hasRoute(routes, s) {
					t.Errorf("%s: ip route lacks \"%s via %s dev flannel.1 onlink\":\n%s", n.Name, s, gw, routes)
				}
				if want := fmt.Sprintf("%s lladdr %s PERMANENT", gw, mac); !strings.Contains(neigh, want) {
					t.Errorf("%s: ip neigh lacks %q:\n%s", n.Name, want, neigh)
				}
				if want := fmt.Sprintf("%s dst %s self permanent", mac, p.Addr.Addr()); !strings.Contains(fdb, want) {
					t.Errorf("%s: bridge fdb lacks %q:\n%s", n.Name, want, fdb)
				}
			}
			if own := n.subnet().String() + " via"; strings.Contains(routes, own) {
				t.Errorf("%s routes its own subnet over the overlay:\n%s", n.Name, routes)
			}
		}
	})

	t.Run("container to container, every pair of nodes", func(t *testing.T) {
		for _, a := range e.nodes {
			for _, b := range e.nodes {
				if a == b {
					continue
				}
				for _, src := range a.containers {
					for _, dst := range b.containers {
						if err := cluster.Ping(ctx, src.NS, dst.Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
							t.Errorf("%s/%s -> %s/%s: %v", a.Name, src.Name, b.Name, dst.Name, err)
						}
					}
				}
			}
		}
	})

	t.Run("node to container on another node", func(t *testing.T) {
		for _, a := range e.nodes {
			for _, b := range e.nodes {
				if a == b {
					continue
				}
				if err := cluster.Ping(ctx, a.NS, b.containers[0].Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
					t.Errorf("%s -> %s/%s: %v", a.Name, b.Name, b.containers[0].Name, err)
				}
			}
		}
	})

	t.Run("1400-byte don't-fragment pings", func(t *testing.T) {
		src, dst := e.nodes[0].containers[0], e.nodes[1].containers[1]
		if err := cluster.Ping(ctx, src.NS, dst.Addr, cluster.PingOpts{Size: 1400, DontFragment: true, Count: 3, Timeout: 5 * time.Second}); err != nil {
			t.Errorf("%v", err)
		}
	})

	t.Run("container keeps its source address inside the overlay", func(t *testing.T) {
		src, dst := e.nodes[0].containers[0], e.nodes[1].containers[1]
		got := connectFrom(t, ctx, src.NS, dst.NS, dst.Addr)
		if got != src.Addr.String() {
			t.Errorf("%s saw the connection from %q, want the container's own address %s", dst.Addr, got, src.Addr)
		}
	})

	t.Run("masquerade to an underlay host inside Network", func(t *testing.T) {
		src := e.nodes[0].containers[0]
		got := connectFrom(t, ctx, src.NS, e.outside.NS, netip.MustParseAddr(outsideAddr))
		if want := e.nodes[0].Addr.Addr().String(); got != want {
			t.Errorf("%s saw the connection from %q, want node1's address %s", outsideAddr, got, want)
		}
	})
}

// connectFrom opens a TCP connection from namespace fromNS to addr:80, where a
// server in namespace serverNS answers with the address it saw, and returns it.
func connectFrom(t *testing.T, ctx context.Context, fromNS, serverNS string, addr netip.Addr) string {
	t.Helper()
	srv := exec.Command("ip", "netns", "exec", serverNS, "ncat", "-l", "-k", "-p", "80", "--sh-exec", "echo $NCAT_REMOTE_ADDR")
	if err := srv.Start(); err != nil {
		t.Fatalf("starting ncat in %s: %v", serverNS, err)
	}
	t.Cleanup(func() { srv.Process.Kill(); srv.Wait() })
	var got string
	err := cluster.WaitFor(ctx, 10*time.Second, 100*time.Millisecond, func() (bool, string) {
		out, err := exec.CommandContext(ctx, "ip", "netns", "exec", fromNS, "ncat", "-w", "2", "--recv-only", addr.String(), "80").CombinedOutput()
		if err != nil {
			return false, fmt.Sprintf("%v: %s", err, out)
		}
		got = strings.TrimSpace(string(out))
		return got != "", "empty answer"
	})
	if err != nil {
		t.Fatalf("connecting from %s to %s:80: %v", fromNS, addr, err)
	}
	return got
}

// TestLeaseDeletionRemovesPeer: a node that is gone (weftd stopped, its lease
// deleted by the operator) disappears from every other node within 5 s.
func TestLeaseDeletionRemovesPeer(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 3})
	gone := e.nodes[2]
	s, mac := gone.subnet(), gone.vtepMAC()
	gone.stop()
	key := fmt.Sprintf("%s/subnets/%s-%d", prefix, s.Addr(), s.Bits())
	if _, err := e.cli.Delete(e.ctx, key); err != nil {
		t.Fatal(err)
	}
	deleted := time.Now()
	for _, n := range e.nodes[:2] {
		e.eventually(n.Name+" forgets "+s.String(), 5*time.Second-time.Since(deleted), func() (bool, string) {
			routes, _ := n.Routes(e.ctx)
			neigh, _ := n.Neigh(e.ctx)
			fdb, _ := n.FDB(e.ctx)
			all := routes + neigh + fdb
			return !strings.Contains(all, s.Addr().String()) && !strings.Contains(fdb, mac), all
		})
	}
	t.Logf("both nodes removed %v within %v", s, time.Since(deleted).Round(time.Millisecond))
	// The other peer is untouched.
	a, b := e.nodes[0], e.nodes[1]
	routes, _ := a.Routes(e.ctx)
	if want := b.subnet().String() + " via"; !strings.Contains(routes, want) {
		t.Errorf("%s lost its route to %s:\n%s", a.Name, b.Name, routes)
	}
}

// TestRestartKeepsSubnetWithoutLoss restarts weftd under a 20 pings/s stream.
func TestRestartKeepsSubnetWithoutLoss(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	a, b := e.nodes[0], e.nodes[1]
	before := b.subnet()
	if err := cluster.Ping(e.ctx, a.containers[0].NS, b.containers[0].Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
		t.Fatal(err)
	}
	stream, err := cluster.StartPingStream(a.containers[0].NS, b.containers[0].Addr, 50*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	b.stop()
	time.Sleep(300 * time.Millisecond)
	b.start()
	e.eventually("restarted weftd ready", 20*time.Second, func() (bool, string) {
		log := b.proc.Tail(200)
		return strings.Count(log, "data plane ready") >= 2, log
	})
	time.Sleep(500 * time.Millisecond)
	res, err := stream.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent < 20 || res.Received != res.Sent {
		t.Errorf("ping stream across the restart: %d sent, %d received, lost %v", res.Sent, res.Received, res.Lost)
	}
	if after := b.subnet(); after != before {
		t.Errorf("restart moved %s from %v to %v", b.Name, before, after)
	}
	t.Logf("%d pings across the restart, none lost", res.Sent)
}
