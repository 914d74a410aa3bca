package vxlan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/rtnl"
)

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

// peer n has subnet 172.16.n.0/24, public IP 172.17.42.n and MAC 0a:00:00:00:00:n.
func peer(n int) backend.Peer {
	return backend.Peer{
		Subnet:   netip.MustParsePrefix(fmt.Sprintf("172.16.%d.0/24", n)),
		PublicIP: netip.MustParseAddr(fmt.Sprintf("172.17.42.%d", n)),
		VtepMAC:  net.HardwareAddr{0x0a, 0, 0, 0, 0, byte(n)},
	}
}

func peers(ns ...int) []backend.Peer {
	var ps []backend.Peer
	for _, n := range ns {
		ps = append(ps, peer(n))
	}
	return ps
}

// entriesFor is the fake's text for peer n.
func entriesFor(ns ...int) string {
	var fdb, neigh, route []string
	for _, n := range ns {
		fdb = append(fdb, fmt.Sprintf("bridge fdb add 0a:00:00:00:00:%02x dev flannel.1 dst 172.17.42.%d self permanent", n, n))
		neigh = append(neigh, fmt.Sprintf("ip neigh add 172.16.%d.0 lladdr 0a:00:00:00:00:%02x dev flannel.1 nud permanent", n, n))
		route = append(route, fmt.Sprintf("ip route add 172.16.%d.0/24 via 172.16.%d.0 dev flannel.1 onlink metric %d", n, n, 0x1000+n+1))
	}
	slices.Sort(fdb)
	slices.Sort(neigh)
	slices.Sort(route)
	return strings.Join(slices.Concat(fdb, neigh, route), "\n")
}

var testMAC = net.HardwareAddr{0x0a, 0, 0, 0, 0, 1}

func testConfig() Config {
	return Config{
		Local:       netip.MustParseAddr("172.17.42.1"),
		UplinkIndex: 2,
		MAC:         testMAC,
		Subnet:      netip.MustParsePrefix("172.16.1.0/24"),
	}
}

func newFakeDevice(t *testing.T, f *fakeNL) *Device {
	t.Helper()
	d, err := New(testConfig(), testLogger(t), withNL(f))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.takeOps()
	return d
}

func TestEnsureCreates(t *testing.T) {
	f := newFakeNL()
	d, err := New(testConfig(), testLogger(t), withNL(f))
	if err != nil {
		t.Fatal(err)
	}
	changed, err := d.Ensure(context.Background())
	if err != nil || !changed {
		t.Fatalf("Ensure = %v, %v; want true, nil", changed, err)
	}
	want := "ip addr add 172.16.1.0/32 dev flannel.1\n" +
		"ip link add flannel.1 address 0a:00:00:00:00:01 mtu 1450 type vxlan id 1 local 172.17.42.1 dev eth0 dstport 8472 nolearning up\n"
	if got := f.String(); got != want {
		t.Errorf("state:\n%s\nwant:\n%s", got, want)
	}
	if d.MTU() != 1450 || d.Name() != "flannel.1" || d.Index() == 0 {
		t.Errorf("MTU, Name, Index = %d, %q, %d", d.MTU(), d.Name(), d.Index())
	}

	// A second Ensure adopts the device as it is.
	f.takeOps()
	changed, err = d.Ensure(context.Background())
	if err != nil || changed {
		t.Fatalf("second Ensure = %v, %v; want false, nil", changed, err)
	}
	if ops := f.takeOps(); len(ops) != 0 {
		t.Errorf("second Ensure changed the kernel: %q", ops)
	}
}

func TestEnsureFixesInPlace(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	if err := d.Set(context.Background(), peers(2)); err != nil {
		t.Fatal(err)
	}
	l := f.links[d.Index()]
	l.Attrs().MTU = 1400
	l.Attrs().HardwareAddr = net.HardwareAddr{2, 2, 2, 2, 2, 2}
	l.Attrs().Flags &^= net.FlagUp
	f.addrs[d.Index()] = []netip.Prefix{netip.MustParsePrefix("172.16.99.0/32")}
	f.takeOps()

	changed, err := d.Ensure(context.Background())
	if err != nil || !changed {
		t.Fatalf("Ensure = %v, %v; want true, nil", changed, err)
	}
	want := []string{
		"link set flannel.1 mtu 1450",
		"link set flannel.1 address 0a:00:00:00:00:01",
		"addr del 172.16.99.0/32 dev flannel.1",
		"addr add 172.16.1.0/32 dev flannel.1",
		"link set flannel.1 up",
	}
	if ops := f.takeOps(); !slices.Equal(ops, want) {
		t.Errorf("ops = %q\nwant %q", ops, want)
	}
	if got := f.entries(); got != entriesFor(2) {
		t.Errorf("entries changed by an in-place fix:\n%s", got)
	}
}

func TestEnsureRecreatesMismatch(t *testing.T) {
	for name, spoil := range map[string]func(vx *netlink.Vxlan){
		"vni":      func(vx *netlink.Vxlan) { vx.VxlanId = 7 },
		"port":     func(vx *netlink.Vxlan) { vx.Port = 4789 },
		"local":    func(vx *netlink.Vxlan) { vx.SrcAddr = net.IPv4(172, 17, 42, 99) },
		"uplink":   func(vx *netlink.Vxlan) { vx.VtepDevIndex = 3 },
		"learning": func(vx *netlink.Vxlan) { vx.Learning = true },
		"l2miss":   func(vx *netlink.Vxlan) { vx.L2miss = true },
	} {
		t.Run(name, func(t *testing.T) {
			f := newFakeNL()
			d := newFakeDevice(t, f)
			ctx := context.Background()
			if err := d.Set(ctx, peers(2, 3)); err != nil {
				t.Fatal(err)
			}
			spoil(f.links[d.Index()].(*netlink.Vxlan))
			f.takeOps()
			changed, err := d.Ensure(ctx)
			if err != nil || !changed {
				t.Fatalf("Ensure = %v, %v; want true, nil", changed, err)
			}
			if ops := f.takeOps(); !slices.Equal(ops[:2], []string{"link del flannel.1", "link add flannel.1"}) {
				t.Errorf("ops = %q, want link del, link add first", ops)
			}
			if !strings.Contains(f.String(), "address 0a:00:00:00:00:01 mtu 1450 type vxlan id 1 local 172.17.42.1 dev eth0 dstport 8472 nolearning up") {
				t.Errorf("device not recreated as configured:\n%s", f)
			}
			// The entries went with the old device; the same peers are
			// reprogrammed by the next Set although they did not change.
			if err := d.Set(ctx, peers(2, 3)); err != nil {
				t.Fatal(err)
			}
			if got := f.entries(); got != entriesFor(2, 3) {
				t.Errorf("entries after recreate:\n%s\nwant:\n%s", got, entriesFor(2, 3))
			}
		})
	}
}

func TestEnsureReplacesNonVXLAN(t *testing.T) {
	f := newFakeNL()
	f.links[5] = &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: 5, Name: "flannel.1", MTU: 1500}}
	d, err := New(testConfig(), testLogger(t), withNL(f))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Ensure(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := f.links[d.Index()].(*netlink.Vxlan); !ok || d.Index() == 5 {
		t.Errorf("dummy flannel.1 not replaced by a vxlan device:\n%s", f)
	}
}

// TestSetStates replays a sequence of desired peer sets, in order and then
// shuffled: the kernel must always hold exactly the entries of the current
// set, whatever came before.
func TestSetStates(t *testing.T) {
	states := []struct {
		name  string
		peers []backend.Peer
	}{
		{"empty", nil},
		{"one", peers(2)},
		{"two", peers(2, 3)},
		{"many", peers(2, 3, 4, 5, 6, 7)},
		{"some left", peers(3, 6)},
		{"others", peers(8, 9)},
		{"changed mac", []backend.Peer{peer(2), {Subnet: peer(3).Subnet, PublicIP: peer(3).PublicIP, VtepMAC: peer(30).VtepMAC}}},
		{"changed ip", []backend.Peer{peer(2), {Subnet: peer(3).Subnet, PublicIP: peer(30).PublicIP, VtepMAC: peer(3).VtepMAC}}},
	}
	expect := func(ps []backend.Peer) string {
		var fdb, neigh, route []string
		for _, p := range ps {
			fdb = append(fdb, fmt.Sprintf("bridge fdb add %v dev flannel.1 dst %v self permanent", p.VtepMAC, p.PublicIP))
			neigh = append(neigh, fmt.Sprintf("ip neigh add %v lladdr %v dev flannel.1 nud permanent", p.Subnet.Addr(), p.VtepMAC))
			route = append(route, fmt.Sprintf("ip route add %v via %v dev flannel.1 onlink metric %d", p.Subnet, p.Subnet.Addr(), metricOf(p.Subnet)))
		}
		slices.Sort(fdb)
		slices.Sort(neigh)
		slices.Sort(route)
		return strings.Join(slices.Concat(fdb, neigh, route), "\n")
	}
	// The hand-written form of one state, to keep expect honest.
	if got := expect(peers(2, 3)); got != entriesFor(2, 3) {
		t.Fatalf("expect(2, 3) = \n%s\nwant\n%s", got, entriesFor(2, 3))
	}
	run := func(t *testing.T, order []int) {
		f := newFakeNL()
		d := newFakeDevice(t, f)
		ctx := context.Background()
		for _, i := range order {
			st := states[i]
			if err := d.Set(ctx, st.peers); err != nil {
				t.Fatalf("%s: Set: %v", st.name, err)
			}
			if got, want := f.entries(), expect(st.peers); got != want {
				t.Fatalf("after %s:\n%s\nwant:\n%s", st.name, got, want)
			}
			// The record matches the kernel: a Reconcile finds nothing.
			rep, err := d.Reconcile(ctx)
			if err != nil || rep.Total() != 0 {
				t.Fatalf("after %s: Reconcile = %+v, %v; want no repairs", st.name, rep, err)
			}
			// Setting the same peers again changes nothing.
			f.takeOps()
			if err := d.Set(ctx, st.peers); err != nil {
				t.Fatal(err)
			}
			if ops := f.takeOps(); len(ops) != 0 {
				t.Fatalf("after %s: repeated Set made changes: %q", st.name, ops)
			}
		}
	}
	t.Run("in order", func(t *testing.T) {
		var order []int
		for i := range states {
			order = append(order, i)
		}
		run(t, order)
	})
	for seed := range uint64(20) {
		t.Run(fmt.Sprintf("random %d", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 0))
			var order []int
			for range 3 * len(states) {
				order = append(order, r.IntN(len(states)))
			}
			run(t, order)
		})
	}
}

func TestSetOrder(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	ctx := context.Background()
	if err := d.Set(ctx, peers(2)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"fdb replace 0a:00:00:00:00:02 dst 172.17.42.2",
		"neigh replace 172.16.2.0 lladdr 0a:00:00:00:00:02",
		"route replace 172.16.2.0/24",
	}
	if ops := f.takeOps(); !slices.Equal(ops, want) {
		t.Errorf("adding a peer: ops = %q\nwant %q", ops, want)
	}
	if err := d.Set(ctx, nil); err != nil {
		t.Fatal(err)
	}
	want = []string{
		"route del 172.16.2.0/24",
		"neigh del 172.16.2.0",
		"fdb del 0a:00:00:00:00:02 dst 172.17.42.2",
	}
	if ops := f.takeOps(); !slices.Equal(ops, want) {
		t.Errorf("removing a peer: ops = %q\nwant %q", ops, want)
	}
}

// TestSetMakeBeforeBreak checks that a changed peer gets its new entries
// before its old ones go, and that nothing else is touched.
func TestSetMakeBeforeBreak(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	ctx := context.Background()
	if err := d.Set(ctx, peers(2, 3)); err != nil {
		t.Fatal(err)
	}
	f.takeOps()

	moved := peer(3)
	moved.PublicIP = netip.MustParseAddr("172.17.42.33")
	moved.VtepMAC = net.HardwareAddr{0x0a, 0, 0, 0, 0, 0x33}
	if err := d.Set(ctx, []backend.Peer{peer(2), moved}); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"fdb replace 0a:00:00:00:00:33 dst 172.17.42.33",
		"neigh replace 172.16.3.0 lladdr 0a:00:00:00:00:33",
		"fdb del 0a:00:00:00:00:03 dst 172.17.42.3",
	}
	if ops := f.takeOps(); !slices.Equal(ops, want) {
		t.Errorf("new MAC and IP: ops = %q\nwant %q", ops, want)
	}

	// Same MAC, new underlay address: one atomic FDB replace.
	moved.PublicIP = netip.MustParseAddr("172.17.42.34")
	if err := d.Set(ctx, []backend.Peer{peer(2), moved}); err != nil {
		t.Fatal(err)
	}
	want = []string{"fdb replace 0a:00:00:00:00:33 dst 172.17.42.34"}
	if ops := f.takeOps(); !slices.Equal(ops, want) {
		t.Errorf("new IP: ops = %q\nwant %q", ops, want)
	}
	if !strings.Contains(f.entries(), "bridge fdb add 0a:00:00:00:00:33 dev flannel.1 dst 172.17.42.34 self permanent") ||
		strings.Count(f.entries(), "bridge fdb") != 2 {
		t.Errorf("entries:\n%s", f.entries())
	}
}

// TestSetIsIncremental checks that Set does not read the kernel once it has
// a record, and touches only the new peer's entries.
func TestSetIsIncremental(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	ctx := context.Background()
	var ns []int
	for n := 2; n < 200; n++ {
		ns = append(ns, n)
	}
	if err := d.Set(ctx, peers(ns...)); err != nil {
		t.Fatal(err)
	}
	f.takeOps()
	dumps := f.dumps
	if err := d.Set(ctx, peers(append(ns, 200)...)); err != nil {
		t.Fatal(err)
	}
	if f.dumps != dumps {
		t.Errorf("Set dumped the kernel %d times", f.dumps-dumps)
	}
	if ops := f.takeOps(); len(ops) != 3 {
		t.Errorf("adding one peer to %d: ops = %q, want 3", len(ns), ops)
	}
}

// TestFirstSetAdopts starts a Device on a kernel left by an earlier weftd:
// right entries stay untouched, wrong ones are fixed, leftovers go.
func TestFirstSetAdopts(t *testing.T) {
	f := newFakeNL()
	old := newFakeDevice(t, f)
	ctx := context.Background()
	if err := old.Set(ctx, peers(2, 3, 4, 9)); err != nil {
		t.Fatal(err)
	}
	idx := old.Index()
	// Peer 4's neighbour was altered, peer 3's route hand-deleted, and a
	// stray route with another metric points into the device.
	f.neighTab[neighKey{idx, netip.MustParseAddr("172.16.4.0")}] = rtnl.Neigh{
		IP: netip.MustParseAddr("172.16.4.0"), MAC: mustMAC("0a:00:00:00:00:44"), State: unix.NUD_STALE, Index: idx,
	}
	p3 := netip.MustParsePrefix("172.16.3.0/24")
	delete(f.routeTab, routeKey{p3, metricOf(p3), 0})
	p2 := netip.MustParsePrefix("172.16.2.0/24")
	stray := f.routeTab[routeKey{p2, metricOf(p2), 0}]
	stray.Metric = 100
	f.routeTab[routeKey{p2, 100, 0}] = stray
	f.takeOps()

	// Restart: peer 9 left while weftd was down.
	d := newFakeDevice(t, f)
	if d.Index() != idx {
		t.Fatalf("restart recreated the device")
	}
	if err := d.Set(ctx, peers(2, 3, 4)); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"neigh replace 172.16.4.0 lladdr 0a:00:00:00:00:04",
		"route replace 172.16.3.0/24",
		"route del 172.16.2.0/24",
		"route del 172.16.9.0/24",
		"neigh del 172.16.9.0",
		"fdb del 0a:00:00:00:00:09 dst 172.17.42.9",
	}
	if ops := f.takeOps(); !slices.Equal(ops, want) {
		t.Errorf("ops = %q\nwant %q", ops, want)
	}
	if got := f.entries(); got != entriesFor(2, 3, 4) {
		t.Errorf("entries:\n%s\nwant:\n%s", got, entriesFor(2, 3, 4))
	}
}

func TestReconcileRepairs(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	ctx := context.Background()
	if rep, err := d.Reconcile(ctx); err != nil || rep.Total() != 0 {
		t.Fatalf("Reconcile before Set = %+v, %v; want nothing", rep, err)
	}
	if err := d.Set(ctx, peers(2, 3, 4)); err != nil {
		t.Fatal(err)
	}
	idx := d.Index()
	p2 := netip.MustParsePrefix("172.16.2.0/24")
	delete(f.routeTab, routeKey{p2, metricOf(p2), 0})
	delete(f.neighTab, neighKey{idx, netip.MustParseAddr("172.16.3.0")})
	// Peer 4's MAC pointed elsewhere, and an FDB entry nobody wants.
	for _, e := range []struct{ mac, dst string }{{"0a:00:00:00:00:04", "172.17.42.99"}, {"0a:00:00:00:00:77", "172.17.42.77"}} {
		m := mustMAC(e.mac)
		f.fdbTab[fdbKey{idx, m}] = []rtnl.FDB{{MAC: m, Dst: netip.MustParseAddr(e.dst), State: unix.NUD_PERMANENT, Index: idx}}
	}

	// Routes to peer 3's subnet through the uplink, one that would take its
	// traffic (a lower metric than ours) and one that would not: neither is
	// weft's, so neither is touched (the loop's lease rules skip a peer an
	// operator routes elsewhere).
	p3 := netip.MustParsePrefix("172.16.3.0/24")
	f.routeTab[routeKey{p3, 0, 0}] = rtnl.Route{Dst: p3, Proto: unix.RTPROT_BOOT, Type: unix.RTN_UNICAST, Table: unix.RT_TABLE_MAIN, Index: 2}
	f.routeTab[routeKey{p3, 65537, 0}] = rtnl.Route{Dst: p3, Metric: 65537, Proto: unix.RTPROT_BOOT, Type: unix.RTN_UNICAST, Table: unix.RT_TABLE_MAIN, Index: 2}

	rep, err := d.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := f.routeTab[routeKey{p3, 0, 0}]; !ok {
		t.Errorf("a route weft did not make (shadowing peer 3's) was removed")
	}
	if _, ok := f.routeTab[routeKey{p3, 65537, 0}]; !ok {
		t.Errorf("a route behind peer 3's was removed")
	}
	delete(f.routeTab, routeKey{p3, 0, 0})
	delete(f.routeTab, routeKey{p3, 65537, 0})
	if want := (Repairs{Route: 1, Neigh: 1, FDB: 2}); rep != want {
		t.Errorf("repairs = %+v, want %+v", rep, want)
	}
	if got := f.entries(); got != entriesFor(2, 3, 4) {
		t.Errorf("entries:\n%s\nwant:\n%s", got, entriesFor(2, 3, 4))
	}

	// A deleted device is recreated and refilled.
	if err := f.LinkDel(f.links[idx]); err != nil {
		t.Fatal(err)
	}
	rep, err = d.Reconcile(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Repairs{Link: 1, Route: 3, Neigh: 3, FDB: 3}); rep != want {
		t.Errorf("repairs after link deletion = %+v, want %+v", rep, want)
	}
	if got := f.entries(); got != entriesFor(2, 3, 4) {
		t.Errorf("entries:\n%s\nwant:\n%s", got, entriesFor(2, 3, 4))
	}
}

// TestSetErrors checks that one failure does not stop the rest, that every
// failure is reported, and that the next Set retries what failed.
func TestSetErrors(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	ctx := context.Background()
	if err := d.Set(ctx, peers(2)); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("boom")
	f.fail = func(op string) error {
		if op == "route replace 172.16.3.0/24" || op == "fdb del 0a:00:00:00:00:02 dst 172.17.42.2" {
			return boom
		}
		return nil
	}
	err := d.Set(ctx, peers(3, 4))
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), "adding route to 172.16.3.0/24") ||
		!strings.Contains(err.Error(), "removing FDB entry 0a:00:00:00:00:02") {
		t.Fatalf("Set error = %v", err)
	}
	if !strings.Contains(f.entries(), "ip route add 172.16.4.0/24") {
		t.Errorf("a failure stopped the other peers:\n%s", f.entries())
	}
	f.fail = nil
	f.takeOps()
	if err := d.Set(ctx, peers(3, 4)); err != nil {
		t.Fatal(err)
	}
	want := []string{"route replace 172.16.3.0/24", "fdb del 0a:00:00:00:00:02 dst 172.17.42.2"}
	if ops := f.takeOps(); !slices.Equal(ops, want) {
		t.Errorf("retry ops = %q, want %q", ops, want)
	}
	if got := f.entries(); got != entriesFor(3, 4) {
		t.Errorf("entries:\n%s\nwant:\n%s", got, entriesFor(3, 4))
	}
}

func TestSetSkipsBadPeers(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	dupMAC := peer(5)
	dupMAC.VtepMAC = peer(2).VtepMAC
	ownSubnet := peer(6)
	ownSubnet.Subnet = netip.MustParsePrefix("172.16.1.0/24")
	v6 := peer(7)
	v6.PublicIP = netip.MustParseAddr("fd00::7")
	noMAC := peer(8)
	noMAC.VtepMAC = nil
	err := d.Set(context.Background(), []backend.Peer{peer(2), dupMAC, ownSubnet, peer(3), v6, noMAC, peer(3)})
	for _, s := range []string{"172.16.5.0/24", "172.16.1.0/24", "172.16.7.0/24", "172.16.8.0/24", "172.16.3.0/24"} {
		if err == nil || !strings.Contains(err.Error(), "skipping peer "+s) {
			t.Errorf("error does not mention peer %s: %v", s, err)
		}
	}
	if got := f.entries(); got != entriesFor(2, 3) {
		t.Errorf("entries:\n%s\nwant:\n%s", got, entriesFor(2, 3))
	}
}

func TestRetryDump(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	ctx := context.Background()
	if err := d.Set(ctx, peers(2, 3)); err != nil {
		t.Fatal(err)
	}
	// Interrupted dumps are retried: the comparison sees the whole table.
	f.interrupt = 3
	if rep, err := d.Reconcile(ctx); err != nil || rep.Total() != 0 {
		t.Errorf("3 interruptions: Reconcile = %+v, %v; want no repairs", rep, err)
	}
	f.interrupt = rtnl.DumpAttempts
	if _, err := d.Reconcile(ctx); !errors.Is(err, rtnl.ErrDumpInterrupted) {
		t.Errorf("%d interruptions: err = %v, want rtnl.ErrDumpInterrupted", rtnl.DumpAttempts, err)
	}
}

func TestSetBeforeEnsure(t *testing.T) {
	d, err := New(testConfig(), testLogger(t), withNL(newFakeNL()))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Set(context.Background(), peers(2)); !errors.Is(err, errNoDevice) {
		t.Errorf("Set before Ensure = %v, want errNoDevice", err)
	}
}

func TestNewValidates(t *testing.T) {
	for name, c := range map[string]func(*Config){
		"no local":  func(c *Config) { c.Local = netip.Addr{} },
		"no uplink": func(c *Config) { c.UplinkIndex = 0 },
		"no subnet": func(c *Config) { c.Subnet = netip.Prefix{} },
		"big vni":   func(c *Config) { c.VNI = 1 << 24 },
		"long name": func(c *Config) { c.Name = "flannel.1234567890" },
		"bad mac":   func(c *Config) { c.MAC = net.HardwareAddr{1, 2} },
	} {
		cfg := testConfig()
		c(&cfg)
		if _, err := New(cfg, nil, withNL(newFakeNL())); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	d, err := New(Config{Local: netip.MustParseAddr("10.0.0.1"), UplinkIndex: 2, Subnet: netip.MustParsePrefix("10.1.0.0/24"), VNI: 4}, nil, withNL(newFakeNL()))
	if err != nil || d.Name() != "flannel.4" || d.cfg.Port != 8472 {
		t.Errorf("defaults: %v, %+v", err, d)
	}
}

func mustMAC(s string) rtnl.MAC {
	hw, err := net.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return rtnl.MACOf(hw)
}

// TxChecksum is kept like the MTU: set at Ensure, and set again by the next
// Reconcile when someone turned it back.
func TestTxChecksumKept(t *testing.T) {
	f := newFakeNL()
	cfg := testConfig()
	off := false
	cfg.TxChecksum = &off
	d, err := New(cfg, testLogger(t), withNL(f))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Ensure(ctx); err != nil {
		t.Fatal(err)
	}
	if on, _ := f.TxChecksum("flannel.1"); on {
		t.Fatalf("offload on after Ensure with TxChecksum off; ops %q", f.ops)
	}
	f.txOff["flannel.1"] = false // someone turned it on
	rep, err := d.Reconcile(ctx)
	if err != nil || rep.Link != 1 {
		t.Errorf("Reconcile = %+v, %v; want one link repair", rep, err)
	}
	if on, _ := f.TxChecksum("flannel.1"); on {
		t.Errorf("offload not turned off again")
	}
	if rep, _ := d.Reconcile(ctx); rep.Link != 0 {
		t.Errorf("a second Reconcile repaired %+v", rep)
	}
}
