package vxlan

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/rtnl"
)

func directConfig() Config {
	c := testConfig()
	c.DirectRouting = true
	c.OnLink = []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16")}
	c.Network = netip.MustParsePrefix("172.16.0.0/12")
	return c
}

// offLink is peer n behind a router: its PublicIP is outside the uplink's
// network, so it stays on VXLAN.
func offLink(n int) backend.Peer {
	p := peer(n)
	p.PublicIP = netip.AddrFrom4([4]byte{192, 168, 77, byte(n)})
	return p
}

// With DirectRouting, an on-link peer gets one route via its PublicIP on
// the uplink and no neighbour or FDB entry; an off-link one its three VXLAN
// entries. Switching either way is make-before-break (the route is
// replaced in one step before the VXLAN entries go; they are in place
// before the route switches back) and leaves nothing stale.
func TestDirectRouting(t *testing.T) {
	f := newFakeNL()
	d, err := New(directConfig(), testLogger(t), withNL(f))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d.Set(ctx, []backend.Peer{peer(2), offLink(3)}); err != nil {
		t.Fatal(err)
	}
	const (
		direct2 = "ip route add 172.16.2.0/24 via 172.17.42.2 dev eth0 metric 4099"
		vx3     = "bridge fdb add 0a:00:00:00:00:03 dev flannel.1 dst 192.168.77.3 self permanent\n" +
			"ip neigh add 172.16.3.0 lladdr 0a:00:00:00:00:03 dev flannel.1 nud permanent\n"
		vx3route = "ip route add 172.16.3.0/24 via 172.16.3.0 dev flannel.1 onlink metric 4100"
	)
	if got, want := f.entries(), vx3+direct2+"\n"+vx3route; got != want {
		t.Fatalf("entries:\n%s\nwant:\n%s", got, want)
	}
	f.takeOps()

	// Peer 3 moves onto the uplink's network: its route is replaced by the
	// direct one first, then its neighbour and FDB entry go.
	p3 := peer(3)
	if err := d.Set(ctx, []backend.Peer{peer(2), p3}); err != nil {
		t.Fatal(err)
	}
	ops := f.takeOps()
	want := []string{"route replace 172.16.3.0/24 via 172.17.42.3 dev 2", "neigh del 172.16.3.0", "fdb del 0a:00:00:00:00:03 dst 192.168.77.3"}
	if !slices.Equal(ops, want) {
		t.Errorf("to direct: ops %q, want %q", ops, want)
	}
	if got := f.entries(); strings.Contains(got, "flannel.1") {
		t.Errorf("stale VXLAN entries after the switch:\n%s", got)
	}
	// And back behind the router: FDB and neighbour first, then the route.
	if err := d.Set(ctx, []backend.Peer{peer(2), offLink(3)}); err != nil {
		t.Fatal(err)
	}
	ops = f.takeOps()
	want = []string{"fdb replace 0a:00:00:00:00:03 dst 192.168.77.3", "neigh replace 172.16.3.0 lladdr 0a:00:00:00:00:03", "route replace 172.16.3.0/24"}
	if !slices.Equal(ops, want) {
		t.Errorf("to VXLAN: ops %q, want %q", ops, want)
	}
	if got, want := f.entries(), vx3+direct2+"\n"+vx3route; got != want {
		t.Errorf("entries:\n%s\nwant:\n%s", got, want)
	}

	// Repair: a deleted direct route comes back; a neighbour and an FDB
	// entry for the direct peer (left from its VXLAN days) are removed.
	delete(f.routeTab, routeKey{peer(2).Subnet, metricOf(peer(2).Subnet), 0})
	f.takeOps()
	stale := rtnl.Op{Kind: rtnl.NeighSet, IP: peer(2).Subnet.Addr(), MAC: rtnl.MAC(peer(2).VtepMAC)}
	if err := f.apply(d.Index(), &stale); err != nil {
		t.Fatal(err)
	}
	rep, err := d.Reconcile(ctx)
	if err != nil || rep.Route != 1 || rep.Neigh != 1 {
		t.Errorf("Reconcile = %+v, %v; want the route restored and the neighbour removed", rep, err)
	}
	if got, want := f.entries(), vx3+direct2+"\n"+vx3route; got != want {
		t.Errorf("after repair:\n%s\nwant:\n%s", got, want)
	}

	// A peer that left while weftd was down: its direct route is removed
	// by a new Device's first Set.
	d2, err := New(directConfig(), testLogger(t), withNL(f))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d2.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if err := d2.Set(ctx, []backend.Peer{offLink(3)}); err != nil {
		t.Fatal(err)
	}
	if got, want := f.entries(), vx3+vx3route; got != want {
		t.Errorf("after peer 2 left:\n%s\nwant:\n%s", got, want)
	}
}

// Hostile leases: a PublicIP that is not a plausible next hop never becomes
// one. The underlay's broadcast and network address, this node's own
// address: refused, or (the network address) kept on VXLAN.
func TestDirectRoutingHostile(t *testing.T) {
	f := newFakeNL()
	d, err := New(directConfig(), testLogger(t), withNL(f))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	bcast, netAddr, own := peer(4), peer(5), peer(6)
	bcast.PublicIP = netip.MustParseAddr("172.17.255.255")
	netAddr.PublicIP = netip.MustParseAddr("172.17.0.0")
	own.PublicIP = netip.MustParseAddr("172.17.42.1")
	err = d.Set(ctx, []backend.Peer{bcast, netAddr, own})
	if err == nil || !strings.Contains(err.Error(), "broadcast") || !strings.Contains(err.Error(), "own address") {
		t.Errorf("Set: %v; want the broadcast and own-address peers refused", err)
	}
	if got := f.entries(); strings.Contains(got, "via 172.17.255.255") || strings.Contains(got, "via 172.17.42.1") || strings.Contains(got, "via 172.17.0.0 dev eth0") {
		t.Errorf("a hostile PublicIP became a next hop:\n%s", got)
	}
}

// A restart with DirectRouting turned on adopts nothing of the VXLAN
// entries of an on-link peer: its route is replaced by the direct one,
// its neighbour and FDB entry removed.
func TestDirectRoutingTurnedOnAtRestart(t *testing.T) {
	f := newFakeNL()
	ctx := context.Background()
	vx, err := New(testConfig(), testLogger(t), withNL(f))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := vx.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if err := vx.Set(ctx, []backend.Peer{peer(2)}); err != nil {
		t.Fatal(err)
	}
	d, err := New(directConfig(), testLogger(t), withNL(f))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	f.takeOps()
	if err := d.Set(ctx, []backend.Peer{peer(2)}); err != nil {
		t.Fatal(err)
	}
	if got, want := f.entries(), "ip route add 172.16.2.0/24 via 172.17.42.2 dev eth0 metric 4099"; got != want {
		t.Errorf("entries:\n%s\nwant:\n%s", got, want)
	}
	if ops := f.takeOps(); len(ops) == 0 || !strings.HasPrefix(ops[0], "route replace 172.16.2.0/24 via 172.17.42.2") {
		t.Errorf("ops %q: the direct route must come first", ops)
	}
}

// The same for an IPv6 device: an on-link peer's /64 is routed straight to
// its PublicIPv6, an off-link one through flannel-v6.1.
func TestDirectRoutingIPv6(t *testing.T) {
	f := newFakeNL()
	cfg := Config{Local: netip.MustParseAddr("fd00:17::1"), UplinkIndex: 2, MAC: testMAC,
		Subnet: netip.MustParsePrefix("fd42:0:0:1::/64"), DirectRouting: true,
		OnLink: []netip.Prefix{netip.MustParsePrefix("fd00:17::/64")}, Network: netip.MustParsePrefix("fd42::/48")}
	d, err := New(cfg, testLogger(t), withNL(f))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	on := backend.Peer{Subnet: netip.MustParsePrefix("fd42:0:0:2::/64"), PublicIP: netip.MustParseAddr("fd00:17::2"), VtepMAC: peer(2).VtepMAC}
	off := backend.Peer{Subnet: netip.MustParsePrefix("fd42:0:0:3::/64"), PublicIP: netip.MustParseAddr("fd00:99::3"), VtepMAC: peer(3).VtepMAC}
	if err := d.Set(ctx, []backend.Peer{on, off}); err != nil {
		t.Fatal(err)
	}
	want := "bridge fdb add 0a:00:00:00:00:03 dev flannel-v6.1 dst fd00:99::3 self permanent\n" +
		"ip neigh add fd42:0:0:3:: lladdr 0a:00:00:00:00:03 dev flannel-v6.1 nud permanent\n" +
		"ip route add fd42:0:0:2::/64 via fd00:17::2 dev eth0 metric 3\n" +
		"ip route add fd42:0:0:3::/64 via fd42:0:0:3:: dev flannel-v6.1 onlink metric 4"
	if got := f.entries(); got != want {
		t.Errorf("entries:\n%s\nwant:\n%s", got, want)
	}
}
