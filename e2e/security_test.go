package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/cluster"
)

// Each test here plays an attacker against the namespace cluster and checks
// what the attacker got (counted at the victim container, not inferred from
// a failed reply) and that nothing else changed.

// icmpCounter makes ct count the ICMP echo requests it receives from src
// (an iptables rule with no target in its own namespace) and returns a
// reader of that count.
func icmpCounter(t *testing.T, ct *cluster.Container, src netip.Addr) func() int {
	t.Helper()
	ctx := context.Background()
	args := []string{"iptables", "-w", "-A", "INPUT", "-p", "icmp", "--icmp-type", "echo-request", "-s", src.String()}
	if out, err := ct.Run(ctx, args...); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return func() int {
		out, err := ct.Run(ctx, "iptables", "-w", "-L", "INPUT", "-v", "-x", "-n")
		if err != nil {
			t.Fatalf("reading counters in %s: %v\n%s", ct.Name, err, out)
		}
		for _, l := range strings.Split(out, "\n") {
			f := strings.Fields(l)
			// "pkts bytes prot opt in out source destination icmptype 8":
			// the rule has no target, and -n prints the protocol as 1.
			if len(f) > 7 && (f[2] == "icmp" || f[2] == "1") && f[6] == src.String() {
				n, _ := strconv.Atoi(f[0])
				return n
			}
		}
		t.Fatalf("no counter rule in %s:\n%s", ct.Name, out)
		return 0
	}
}

// run runs a shell command line in ns (a host or a container), failing the
// test if it fails.
func run(t *testing.T, r interface {
	Run(context.Context, ...string) (string, error)
}, line string) string {
	t.Helper()
	out, err := r.Run(context.Background(), "sh", "-c", line)
	if err != nil {
		t.Fatalf("%s: %v\n%s", line, err, out)
	}
	return out
}

// fakeVTEP makes a VXLAN device "evil" in r's namespace, as a host that
// knows the victim's address and VNI would: the victim's VTEP MAC is
// computable from its address, so the attacker only needs a route, a
// neighbour and an FDB entry to put frames into the victim's overlay with
// any inner source it gives itself.
func fakeVTEP(t *testing.T, r interface {
	Run(context.Context, ...string) (string, error)
}, local string, innerSrc netip.Addr, victim *node, victimMAC string, target netip.Addr) {
	t.Helper()
	gw := victim.subnet().Addr() // the victim's VTEP address, <subnet>.0
	run(t, r, fmt.Sprintf("ip link add evil type vxlan id 1 dstport 8472 local %s dev eth0 nolearning && "+
		"ip link set evil address 02:66:66:00:00:01 mtu 1400 up && ip addr add %s/32 dev evil && "+
		"ip route add %s/32 via %s dev evil onlink && ip neigh add %s lladdr %s dev evil nud permanent && "+
		"bridge fdb add %s dev evil dst %s self permanent",
		local, innerSrc, target, gw, gw, victimMAC, victimMAC, victim.Addr.Addr()))
}

// pingOnce sends n echo requests from r (from its evil device's address when
// src is valid), without caring for replies.
func pingOnce(r interface {
	Run(context.Context, ...string) (string, error)
}, to netip.Addr, src netip.Addr, n int) {
	args := []string{"ping", "-n", "-q", "-c", strconv.Itoa(n), "-i", "0.2", "-W", "1", to.String()}
	if src.IsValid() {
		args = append(args, "-I", src.String())
	}
	r.Run(context.Background(), args...) //nolint:errcheck // replies are not the point
}

// TestVXLANIngressFromUnderlay: a host on the underlay that is no peer
// crafts VXLAN frames for a container on node1; they are dropped before
// decapsulation and counted. The same frames from that host once it holds a
// lease (a real peer) reach the container; once the lease is gone they are
// dropped again. A real peer that spoofs an inner source outside the overlay
// or inside node1's own subnet is dropped too.
func TestVXLANIngressFromUnderlay(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx
	a := e.nodes[0]
	victim := a.containers[0]
	mac := a.vtepMAC()
	before := a.dataplane(ctx)
	evilNet := mustPrefix("172.16.250.0/24")
	src := evilNet.Addr() // the attacker's inner source, inside Network
	fakeVTEP(t, e.outside, outsideAddr, src, a, mac, victim.Addr)
	seen := icmpCounter(t, victim, src)
	dropped0 := a.metric(ctx, "weft_dropped_packets_total", `reason="not_a_peer"`)

	pingOnce(e.outside, victim.Addr, src, 5)
	if n := seen(); n != 0 {
		t.Fatalf("a host that is no peer got %d frames to container %v", n, victim.Addr)
	}
	if d := a.metric(ctx, "weft_dropped_packets_total", `reason="not_a_peer"`) - dropped0; d < 5 {
		t.Errorf("weft_dropped_packets_total{reason=\"not_a_peer\"} grew by %v, want >= 5", d)
	}
	if got := a.dataplane(ctx); got != before {
		t.Errorf("the attack changed node1's data plane:\nbefore:\n%s\nafter:\n%s", before, got)
	}

	// The same host becomes a real peer: a lease names it. Its frames now
	// reach the container, and the container's replies reach it.
	e.putPeer(e.cli, evilNet.String(), outsideAddr, "02:66:66:00:00:01")
	e.eventually("node1 programs the new peer", 5*time.Second, func() (bool, string) {
		return a.hasPeer(ctx, evilNet, evilNet.Addr().String())
	})
	if err := cluster.Ping(ctx, e.outside.NS, victim.Addr, cluster.PingOpts{Count: 3, Source: src}); err != nil {
		t.Fatalf("a real peer cannot reach container %v: %v", victim.Addr, err)
	}
	if n := seen(); n < 3 {
		t.Errorf("container saw %d of the real peer's echo requests, want >= 3", n)
	}

	// A real peer may not claim an inner source outside the overlay, or
	// inside node1's own subnet.
	inner0 := a.metric(ctx, "weft_dropped_packets_total", `reason="inner_source"`)
	outsideSrc := netip.MustParseAddr("10.99.0.1")
	ownSrc := a.subnet().Addr().Next().Next().Next() // .3: nobody's
	for _, s := range []netip.Addr{outsideSrc, ownSrc} {
		run(t, e.outside, fmt.Sprintf("ip addr add %s/32 dev evil", s))
		cnt := icmpCounter(t, victim, s)
		pingOnce(e.outside, victim.Addr, s, 3)
		if n := cnt(); n != 0 {
			t.Errorf("a peer's frames with inner source %v reached the container (%d)", s, n)
		}
	}
	if d := a.metric(ctx, "weft_dropped_packets_total", `reason="inner_source"`) - inner0; d < 6 {
		t.Errorf("weft_dropped_packets_total{reason=\"inner_source\"} grew by %v, want >= 6", d)
	}

	// The lease goes: the host is no peer again, at once.
	if _, err := e.cli.Delete(ctx, fmt.Sprintf("%s/subnets/%s-24", prefix, evilNet.Addr())); err != nil {
		t.Fatal(err)
	}
	e.eventually("node1 drops the peer", 5*time.Second, func() (bool, string) {
		ok, s := a.hasPeer(ctx, evilNet, evilNet.Addr().String())
		return !ok, s
	})
	n0 := seen()
	pingOnce(e.outside, victim.Addr, src, 3)
	if n := seen() - n0; n != 0 {
		t.Errorf("a departed peer's frames still reach the container (%d)", n)
	}
	if got := a.dataplane(ctx); got != before {
		t.Errorf("node1's data plane differs after the peer left:\nbefore:\n%s\nafter:\n%s", before, got)
	}

	// The operator allows the host's address with --vxlan-allow-cidr: its
	// frames pass without a lease.
	a.stop()
	a.args = append(a.args, "--vxlan-allow-cidr", outsideAddr+"/32")
	a.start()
	e.eventually("node1's filter allows the range", 10*time.Second, func() (bool, string) {
		out, _ := a.Run(ctx, "nft", "list", "chain", "inet", "weft", "input")
		return strings.Contains(out, "ip saddr "+outsideAddr+" udp dport 8472 return"), out
	})
	n0 = seen()
	pingOnce(e.outside, victim.Addr, src, 3)
	if n := seen() - n0; n < 3 {
		t.Errorf("frames from a --vxlan-allow-cidr range: container saw %d of 3", n)
	}
}

// TestVXLANIngressFromContainers: a container builds its own VXLAN device and
// sends frames to another node (masqueraded as its own node, a real peer,
// they would pass that node's filter) and to its own node. Both are dropped
// at its node and counted.
func TestVXLANIngressFromContainers(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx
	a, b := e.nodes[0], e.nodes[1]
	attacker := a.containers[0]
	src := mustPrefix("172.16.251.0/24").Addr()
	for _, target := range []struct {
		name   string
		victim *node
	}{{"another node", b}, {"its own node", a}} {
		t.Run(target.name, func(t *testing.T) {
			victimCt := target.victim.containers[1]
			run(t, attacker, "ip link del evil 2>/dev/null; true")
			fakeVTEP(t, attacker, attacker.Addr.String(), src, target.victim, target.victim.vtepMAC(), victimCt.Addr)
			seen := icmpCounter(t, victimCt, src)
			d0 := a.metric(ctx, "weft_dropped_packets_total", `reason="from_containers"`)
			pingOnce(attacker, victimCt.Addr, src, 4)
			if n := seen(); n != 0 {
				t.Fatalf("container %v injected %d frames into %s's overlay", attacker.Addr, n, target.victim.Name)
			}
			if d := a.metric(ctx, "weft_dropped_packets_total", `reason="from_containers"`) - d0; d < 4 {
				t.Errorf("weft_dropped_packets_total{reason=\"from_containers\"} on node1 grew by %v, want >= 4", d)
			}
		})
	}
	// The containers' ordinary traffic is untouched.
	if err := cluster.Ping(ctx, a.containers[1].NS, b.containers[0].Addr, cluster.PingOpts{Count: 2}); err != nil {
		t.Errorf("pod to pod across nodes: %v", err)
	}
}

// TestForwardRules: with the FORWARD policy at DROP (as Docker sets it) and
// an operator's DOCKER-USER restriction above weft's jump, pods still reach
// pods on other nodes and the outside host; the operator's rule still
// decides; and a host that sends node1 packets for node2's subnet is not
// routed into the overlay.
func TestForwardRules(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx
	a, b := e.nodes[0], e.nodes[1]
	for _, n := range e.nodes {
		run(t, n, "iptables -w -P FORWARD DROP && iptables -w -N DOCKER-USER && iptables -w -I FORWARD 1 -j DOCKER-USER")
	}
	// The operator forbids node1's c2 to talk to node2's c1.
	blocked, allowed := a.containers[1], a.containers[0]
	run(t, a, fmt.Sprintf("iptables -w -A DOCKER-USER -s %s -d %s -j DROP", blocked.Addr, b.containers[0].Addr))
	time.Sleep(300 * time.Millisecond) // weft sees the change; it must leave FORWARD's order alone

	fwd := run(t, a, "iptables -w -S FORWARD")
	iUser, iWeft := strings.Index(fwd, "-j DOCKER-USER"), strings.Index(fwd, "-j WEFT-FWD")
	if iUser < 0 || iWeft < 0 || iWeft < iUser {
		t.Fatalf("weft's jump must stay below DOCKER-USER:\n%s", fwd)
	}
	for _, c := range []struct {
		from *cluster.Container
		to   netip.Addr
		ok   bool
	}{
		{allowed, b.containers[0].Addr, true},
		{allowed, b.containers[1].Addr, true},
		{b.containers[0], allowed.Addr, true},
		{allowed, netip.MustParseAddr(outsideAddr), true},
		{blocked, b.containers[1].Addr, true},
		{blocked, b.containers[0].Addr, false}, // the operator's rule
	} {
		err := cluster.Ping(ctx, c.from.NS, c.to, cluster.PingOpts{Count: 1, Timeout: 2 * time.Second})
		if (err == nil) != c.ok {
			t.Errorf("ping %v -> %v with FORWARD policy DROP: err = %v, want reachable = %v", c.from.Addr, c.to, err, c.ok)
		}
	}

	// The outside host routes node2's subnet through node1. Before weft's
	// rules were narrowed, node1 forwarded (and masqueraded) it.
	bs := b.subnet()
	run(t, e.outside, fmt.Sprintf("ip route add %s via %s", bs, a.Addr.Addr()))
	run(t, a, "iptables -w -P FORWARD ACCEPT") // even with an open policy
	if err := cluster.Ping(ctx, e.outside.NS, b.containers[0].Addr, cluster.PingOpts{Count: 2, Timeout: time.Second}); err == nil {
		t.Errorf("node1 routed an outside host's packets into the overlay to %v", b.containers[0].Addr)
	}
	// Hosts themselves still reach every container (OUTPUT, not FORWARD).
	if err := cluster.Ping(ctx, a.NS, b.containers[0].Addr, cluster.PingOpts{Count: 1}); err != nil {
		t.Errorf("node1 -> %v: %v", b.containers[0].Addr, err)
	}

	// --iptables-forward-rules=false: weft takes its chain and jump away
	// and leaves FORWARD to the operator.
	a.stop()
	a.args = append(a.args, "--iptables-forward-rules=false")
	a.start()
	e.eventually("WEFT-FWD removed", 10*time.Second, func() (bool, string) {
		out, _ := a.Run(ctx, "iptables-save", "-t", "filter")
		return !strings.Contains(out, "WEFT-FWD"), out
	})
	if out := run(t, a, "iptables -w -S FORWARD"); !strings.Contains(out, "-j DOCKER-USER") {
		t.Errorf("the operator's jump went with weft's:\n%s", out)
	}
}

// TestDeviceFailureHoldsNoFDs: another VXLAN device holds VNI 1 on port 8472,
// so weftd cannot make flannel.1 and retries every 2 s. Its open file
// descriptors stay constant over several retries, and it comes up once the
// other device is gone.
func TestDeviceFailureHoldsNoFDs(t *testing.T) {
	e := newBareEnv(t)
	e.startEtcd()
	e.cli = e.client()
	if _, err := e.cli.Put(e.ctx, prefix+"/config", netConfig); err != nil {
		t.Fatal(err)
	}
	h, err := e.c.AddHost(e.ctx, "node1", mustPrefix("172.17.42.31/16"))
	if err != nil {
		t.Fatal(err)
	}
	run(t, h, "ip link add blocker type vxlan id 1 dstport 8472 local 172.17.42.31 dev eth0 nolearning && ip link set blocker up")
	n := &node{Host: h, t: t, subnetFile: e.c.Dir + "/node1/subnet.env"}
	n.args = []string{e.bin + "/weftd", "--etcd-endpoints", etcdURL, "--iface", "eth0", "--subnet-file", n.subnetFile}
	n.start()
	e.nodes = append(e.nodes, n)
	n.waitLog(t, "setting up the data plane, will retry", 10*time.Second)
	fds := func() int {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", n.proc.Pid()))
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	time.Sleep(2500 * time.Millisecond) // one retry in: whatever start-up opens is open
	first := fds()
	time.Sleep(7 * time.Second) // three more retries
	if got := fds(); got > first {
		t.Errorf("weftd held %d file descriptors after three more failed set-ups, %d before: it leaks", got, first)
	}
	if c := n.logCount("setting up the data plane, will retry"); c < 4 {
		t.Errorf("only %d failed set-ups logged; the test did not exercise the retry", c)
	}
	run(t, h, "ip link del blocker")
	n.waitSubnetFile(10 * time.Second)
}

// TestLeaseRulebook writes leases that would point traffic somewhere bad, each
// refused by one rule of the lease rulebook: node1 skips them, counts them,
// logs each once, stays ready, and its data plane does not change. An
// operator's route to a peer's subnet makes node1 skip that peer and leave
// the route alone; once the route goes, the peer comes back.
func TestLeaseRulebook(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 3, containers: true, weftdArgs: []string{"--resync-interval", "1s"}})
	ctx := e.ctx
	a, b, c := e.nodes[0], e.nodes[1], e.nodes[2]
	before := a.dataplane(ctx)
	invalid0 := a.metric(ctx, "weft_peer_events_total", `type="invalid"`)
	lease := func(ip, mac string) string {
		return fmt.Sprintf(`{"PublicIP":%q,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, ip, mac)
	}
	hostile := map[string]string{
		"172.16.210.0-24": lease("172.17.42.60", b.vtepMAC()),                        // node2's MAC, a later claim
		"172.16.211.0-24": lease("172.17.42.61", a.vtepMAC()),                        // node1's own MAC
		"172.16.212.0-24": lease("172.17.42.62", "ff:ff:ff:ff:ff:ff"),                // broadcast MAC
		"172.16.213.0-24": lease("240.0.0.1", "02:00:00:00:02:13"),                   // reserved address
		"172.16.214.0-24": lease("172.17.255.255", "02:00:00:00:02:14"),              // the underlay's broadcast
		"172.16.215.0-24": lease(c.containers[0].Addr.String(), "02:00:00:00:02:15"), // inside node3's subnet
	}
	for k, v := range hostile {
		if _, err := e.cli.Put(ctx, prefix+"/subnets/"+k, v); err != nil {
			t.Fatal(err)
		}
	}
	e.eventually("every hostile lease counted", 5*time.Second, func() (bool, string) {
		v := a.metric(ctx, "weft_peer_events_total", `type="invalid"`) - invalid0
		return v >= float64(len(hostile)), fmt.Sprintf("invalid: +%v, want +%d", v, len(hostile))
	})
	// More snapshots (a peer coming and going) must not log them again.
	e.putPeer(e.cli, "172.16.220.0/24", "172.17.42.70", "02:00:00:00:02:20")
	e.eventually("the valid peer programmed", 5*time.Second, func() (bool, string) {
		return a.hasPeer(ctx, mustPrefix("172.16.220.0/24"), "172.16.220.0")
	})
	if _, err := e.cli.Delete(ctx, prefix+"/subnets/172.16.220.0-24"); err != nil {
		t.Fatal(err)
	}
	e.eventually("node1 as before", 5*time.Second, func() (bool, string) {
		got := a.dataplane(ctx)
		return got == before, got
	})
	for k := range hostile {
		if n := a.logCount("key=" + prefix + "/subnets/" + k + " "); n != 1 {
			t.Errorf("lease %s logged %d times, want once", k, n)
		}
	}
	if code, body := a.weftdGet(ctx, "/readyz"); code != 200 {
		t.Errorf("/readyz = %d with hostile leases in etcd: %s", code, body)
	}
	for k := range hostile {
		if _, err := e.cli.Delete(ctx, prefix+"/subnets/"+k); err != nil {
			t.Fatal(err)
		}
	}

	// The operator routes node2's subnet elsewhere.
	bs := b.subnet()
	opRoute := fmt.Sprintf("%s via %s dev eth0", bs, outsideAddr)
	run(t, a, "ip route add "+opRoute)
	e.eventually("node1 skips node2", 5*time.Second, func() (bool, string) {
		ok, s := a.hasPeer(ctx, bs, bs.Addr().String())
		return !ok, s
	})
	if out := run(t, a, "ip route show "+bs.String()); !strings.Contains(out, "via "+outsideAddr+" dev eth0") {
		t.Errorf("the operator's route is gone:\n%s", out)
	}
	if n := a.logCount("overlaps " + bs.String() + ", a route or address of this node that weft did not make"); n != 1 {
		t.Errorf("skipping node2 logged %d times, want once:\n%s", n, a.proc.Tail(20))
	}
	if code, body := a.weftdGet(ctx, "/readyz"); code != 200 {
		t.Errorf("/readyz = %d while a peer is skipped: %s", code, body)
	}
	// node3 is untouched.
	if err := cluster.Ping(ctx, a.containers[0].NS, c.containers[0].Addr, cluster.PingOpts{Count: 1}); err != nil {
		t.Errorf("node1 -> node3 while node2 is skipped: %v", err)
	}
	run(t, a, "ip route del "+opRoute)
	e.eventually("node2 back", 5*time.Second, func() (bool, string) {
		got := a.dataplane(ctx)
		return got == before, got
	})
	if err := cluster.Ping(ctx, a.containers[0].NS, b.containers[0].Addr, cluster.PingOpts{Count: 1}); err != nil {
		t.Errorf("node1 -> node2 after the operator's route went: %v", err)
	}
}
