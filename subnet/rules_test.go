package subnet

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/peer"
)

// The rules of package peer that only the watch can apply, because they
// need every lease in view: a VtepMAC claimed twice is kept by the earlier
// lease, a PublicIP inside a leased subnet is refused, and a route weft did
// not make refuses the subnets it overlaps.

// rulesState is a peerState of node1 in the reference layout, whose log
// goes to the returned buffer, and a put that stamps etcd's revisions: a
// key keeps the CreateRevision of its first put until it is deleted.
type rulesState struct {
	*peerState
	r      *Registry
	log    *lockedBuffer
	rev    int64
	create map[string]int64
	self   netip.Prefix
	selfIP netip.Addr
}

func newRulesState(t testing.TB, foreign func() []netip.Prefix) *rulesState {
	lb := &lockedBuffer{}
	rs := &rulesState{
		r:      NewRegistry(nil, "", slog.New(slog.NewTextHandler(lb, nil)), nil),
		log:    lb,
		create: map[string]int64{},
		self:   netip.MustParsePrefix("172.16.28.0/24"),
		selfIP: netip.MustParseAddr("172.17.42.31"),
	}
	rs.peerState = newPeerState(rs.r, PeerFilter{
		Config:   mustConfig(t, testNet),
		Underlay: []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16")},
		VtepMAC:  []byte{0xb2, 0, 172, 17, 42, 31},
		Self:     func() (netip.Prefix, netip.Addr) { return rs.self, rs.selfIP },
		Foreign:  foreign,
	})
	return rs
}

func (rs *rulesState) put(name, value string) *mvccpb.KeyValue {
	rs.rev++
	key := rs.r.subnetsPrefix() + name
	if rs.create[key] == 0 {
		rs.create[key] = rs.rev
	}
	kv := &mvccpb.KeyValue{Key: []byte(key), Value: []byte(value), CreateRevision: rs.create[key], ModRevision: rs.rev}
	rs.peerState.put(kv)
	return kv
}

func (rs *rulesState) del(name string) {
	rs.rev++
	key := rs.r.subnetsPrefix() + name
	delete(rs.create, key)
	rs.remove(key)
}

// refilter is what the watch does when PeerFilter.Refilter delivers.
func (rs *rulesState) refilter() Snapshot {
	rs.outOK, rs.touched = false, nil
	return rs.snapshot()
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the logged lines that contain every one of subs.
func (l *lockedBuffer) lines(subs ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, line := range strings.Split(l.b.String(), "\n") {
		ok := line != ""
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			out = append(out, line)
		}
	}
	return out
}

// fullPeers renders a snapshot with MACs, one peer a line.
func fullPeers(s Snapshot) string {
	var b strings.Builder
	for _, p := range s.Peers {
		fmt.Fprintf(&b, "%v %v %v\n", p.Subnet, p.PublicIP, p.VtepMAC)
	}
	return b.String()
}

func TestDuplicateMACEarliestLeaseKeepsIt(t *testing.T) {
	rs := newRulesState(t, nil)
	const mac = "b2:00:ac:11:2a:20"
	rs.put("172.16.90.0-24", val("172.17.42.32", mac, 1)) // created first
	rs.put("172.16.78.0-24", val("172.17.42.33", mac, 1)) // sorts first, created later
	rs.put("172.16.79.0-24", val("172.17.42.34", macFor("172.17.42.34"), 1))
	want := "172.16.79.0/24 172.17.42.34 b2:00:ac:11:2a:22\n172.16.90.0/24 172.17.42.32 " + mac + "\n"
	if got := fullPeers(rs.snapshot()); got != want {
		t.Fatalf("peers:\n%s\nwant the earlier claim of %s:\n%s", got, mac, want)
	}
	logged := rs.log.lines("ignoring invalid subnet lease", "172.16.78.0-24", "VtepMAC "+mac, "172.16.90.0/24")
	if len(logged) != 1 {
		t.Fatalf("the refused claim was logged %d times, want once naming the MAC and the earlier lease:\n%s", len(logged), rs.log.lines(""))
	}

	// The later lease renews (a new ModRevision, its CreateRevision stays):
	// it is still the later claim, and is reported once for the new revision.
	rs.put("172.16.78.0-24", val("172.17.42.33", mac, 1))
	rs.snapshot()
	rs.refilter()
	if got := fullPeers(rs.snapshot()); got != want {
		t.Fatalf("after a renewal of the later claim:\n%s\nwant:\n%s", got, want)
	}
	if n := len(rs.log.lines("ignoring invalid subnet lease", "172.16.78.0-24")); n != 2 {
		t.Errorf("the refused claim was logged %d times over two revisions and three snapshots, want 2", n)
	}
	// The earlier one changes its address: it keeps the MAC.
	rs.put("172.16.90.0-24", val("172.17.42.40", mac, 1))
	want = "172.16.79.0/24 172.17.42.34 b2:00:ac:11:2a:22\n172.16.90.0/24 172.17.42.40 " + mac + "\n"
	if got := fullPeers(rs.snapshot()); got != want {
		t.Fatalf("after a change of the earlier claim:\n%s\nwant:\n%s", got, want)
	}

	// The earlier lease goes: the other claim becomes the peer.
	rs.del("172.16.90.0-24")
	want = "172.16.78.0/24 172.17.42.33 " + mac + "\n172.16.79.0/24 172.17.42.34 b2:00:ac:11:2a:22\n"
	if got := fullPeers(rs.snapshot()); got != want {
		t.Fatalf("after the earlier claim went:\n%s\nwant:\n%s", got, want)
	}
	// It comes back: now it is the later claim and is refused.
	rs.put("172.16.90.0-24", val("172.17.42.32", mac, 1))
	if got := fullPeers(rs.snapshot()); got != want {
		t.Fatalf("after the first claim came back later:\n%s\nwant:\n%s", got, want)
	}
}

func TestPublicIPInsideLeasedSubnet(t *testing.T) {
	rs := newRulesState(t, nil)
	rs.put("172.16.78.0-24", val("172.17.42.32", macFor("172.17.42.32"), 1))
	rs.put("172.16.90.0-24", val("172.16.78.9", macFor("172.16.78.9"), 1))   // inside 78's subnet
	rs.put("172.16.91.0-24", val("172.16.120.5", macFor("172.16.120.5"), 1)) // inside Network, unleased
	want := "172.16.78.0/24 172.17.42.32\n172.16.91.0/24 172.16.120.5\n"
	if got := peers(rs.snapshot()); got != want {
		t.Fatalf("peers:\n%s\nwant:\n%s", got, want)
	}
	if n := len(rs.log.lines("172.16.90.0-24", "PublicIP 172.16.78.9", "inside the leased subnet 172.16.78.0/24")); n != 1 {
		t.Errorf("the refusal was logged %d times, want once naming the address and the subnet", n)
	}

	// 172.16.120.0/24 is leased: the PublicIP inside it is refused now.
	rs.put("172.16.120.0-24", val("172.17.42.35", macFor("172.17.42.35"), 1))
	want = "172.16.78.0/24 172.17.42.32\n172.16.120.0/24 172.17.42.35\n"
	if got := peers(rs.snapshot()); got != want {
		t.Fatalf("after 172.16.120.0/24 was leased:\n%s\nwant:\n%s", got, want)
	}
	// A PublicIP inside this node's own lease.
	rs.put("172.16.28.0-24", val("172.17.42.31", "b2:00:ac:11:2a:1f", 1))
	rs.put("172.16.92.0-24", val("172.16.28.7", macFor("172.16.28.7"), 1))
	if got := peers(rs.snapshot()); got != want {
		t.Fatalf("a PublicIP inside our own subnet was taken:\n%s\nwant:\n%s", got, want)
	}

	// The leases go: the addresses inside them are usable again.
	rs.del("172.16.78.0-24")
	rs.del("172.16.120.0-24")
	want = "172.16.90.0/24 172.16.78.9\n172.16.91.0/24 172.16.120.5\n"
	if got := peers(rs.snapshot()); got != want {
		t.Fatalf("after the leases went:\n%s\nwant:\n%s", got, want)
	}
}

func TestForeignRouteRefilter(t *testing.T) {
	var mu sync.Mutex
	var routes []netip.Prefix
	rs := newRulesState(t, func() []netip.Prefix {
		mu.Lock()
		defer mu.Unlock()
		return routes
	})
	setRoutes := func(ps ...string) {
		mu.Lock()
		defer mu.Unlock()
		routes = nil
		for _, p := range ps {
			routes = append(routes, netip.MustParsePrefix(p))
		}
	}
	rs.put("172.16.78.0-24", val("172.17.42.32", macFor("172.17.42.32"), 1))
	rs.put("172.16.99.0-24", val("172.17.42.33", macFor("172.17.42.33"), 1))
	both := "172.16.78.0/24 172.17.42.32\n172.16.99.0/24 172.17.42.33\n"
	if got := peers(rs.snapshot()); got != both {
		t.Fatalf("peers:\n%s\nwant:\n%s", got, both)
	}

	// An operator routes 172.16.99.0/25 elsewhere: that peer is skipped.
	setRoutes("0.0.0.0/0", "172.16.0.0/12", "172.16.99.0/25")
	want := "172.16.78.0/24 172.17.42.32\n"
	if got := peers(rs.refilter()); got != want {
		t.Fatalf("after a foreign route to 172.16.99.0/25:\n%s\nwant:\n%s", got, want)
	}
	if n := len(rs.log.lines("172.16.99.0-24", "overlaps 172.16.99.0/25")); n != 1 {
		t.Errorf("the skip was logged %d times, want once naming the route", n)
	}
	// A new lease under the route is refused as it comes, the others are not.
	rs.put("172.16.99.0-24", val("172.17.42.34", macFor("172.17.42.34"), 1))
	rs.put("172.16.80.0-24", val("172.17.42.35", macFor("172.17.42.35"), 1))
	want = "172.16.78.0/24 172.17.42.32\n172.16.80.0/24 172.17.42.35\n"
	if got := peers(rs.snapshot()); got != want {
		t.Fatalf("after more leases:\n%s\nwant:\n%s", got, want)
	}
	// Only the default and summary routes remain: all are peers again.
	setRoutes("0.0.0.0/0", "172.16.0.0/12")
	want = "172.16.78.0/24 172.17.42.32\n172.16.80.0/24 172.17.42.35\n172.16.99.0/24 172.17.42.34\n"
	if got := peers(rs.refilter()); got != want {
		t.Fatalf("after the route went:\n%s\nwant:\n%s", got, want)
	}
}

// TestForeignRouteRefilterWatch: the same through WatchPeers on a real
// etcd, where a send on Refilter makes the watch check every lease again.
func TestForeignRouteRefilterWatch(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	cfg := mustConfig(t, testNet)
	r := fastRegistry(t, cli)
	if err := r.SetConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	put := func(name, v string) {
		t.Helper()
		if _, err := cli.Put(ctx, r.subnetsPrefix()+name, v); err != nil {
			t.Fatal(err)
		}
	}
	const mac = "b2:00:ac:11:2a:20"
	put("172.16.90.0-24", val("172.17.42.32", mac, 1))
	put("172.16.78.0-24", val("172.17.42.33", mac, 1)) // a later claim of the MAC
	put("172.16.99.0-24", val("172.17.42.34", macFor("172.17.42.34"), 1))
	put("172.16.100.0-24", val("172.16.99.5", macFor("172.16.99.5"), 1)) // inside 99's subnet

	var mu sync.Mutex
	var routes []netip.Prefix
	refilter := make(chan struct{})
	self := func() (netip.Prefix, netip.Addr) {
		return netip.MustParsePrefix("172.16.28.0/24"), netip.MustParseAddr("172.17.42.31")
	}
	w := startWatch(t, r, PeerFilter{Config: cfg, Self: self, Refilter: refilter,
		Foreign: func() []netip.Prefix { mu.Lock(); defer mu.Unlock(); return routes }})
	w.waitPeers(t, "172.16.90.0/24 172.17.42.32\n172.16.99.0/24 172.17.42.34\n")

	mu.Lock()
	routes = []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("172.16.99.0/24")}
	mu.Unlock()
	refilter <- struct{}{}
	w.waitPeers(t, "172.16.90.0/24 172.17.42.32\n")

	// The earlier claim of the MAC goes: the later one takes its place.
	if _, err := cli.Delete(ctx, r.subnetsPrefix()+"172.16.90.0-24"); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "172.16.78.0/24 172.17.42.33\n")
	// The lease that held the PublicIP of 100's goes: 100 is a peer.
	if _, err := cli.Delete(ctx, r.subnetsPrefix()+"172.16.99.0-24"); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "172.16.78.0/24 172.17.42.33\n172.16.100.0/24 172.16.99.5\n")
}

// checkSnapshot fails unless every peer of s passes the rulebook as this
// node sees it, no two share a MAC or a subnet, and none has its PublicIP
// inside a subnet that any kept lease holds.
func checkSnapshot(t testing.TB, ps *peerState, s Snapshot) {
	t.Helper()
	selfNet, selfIP := ps.f.Self()
	self := peer.Self{Subnet: selfNet, PublicIP: selfIP, VtepMAC: ps.f.VtepMAC, Underlay: ps.f.Underlay}
	if ps.f.Foreign != nil {
		self.Foreign = ps.f.Foreign()
	}
	n := ps.f.Config.Rules()
	macs := map[string]netip.Prefix{}
	subnets := map[netip.Prefix]bool{}
	leased := map[netip.Prefix]bool{}
	for _, l := range ps.valid {
		leased[l.Subnet] = true
	}
	for _, h := range ps.held {
		leased[h.Subnet] = true
	}
	for i, p := range s.Peers {
		if err := peer.Check(&p, n, &self); err != nil {
			t.Fatalf("snapshot peer %v (%v, %v) fails the rulebook: %v", p.Subnet, p.PublicIP, p.VtepMAC, err)
		}
		if i > 0 && !s.Peers[i-1].Subnet.Addr().Less(p.Subnet.Addr()) {
			t.Fatalf("snapshot not sorted by subnet: %v before %v", s.Peers[i-1].Subnet, p.Subnet)
		}
		if o, dup := macs[p.VtepMAC.String()]; dup {
			t.Fatalf("peers %v and %v share VtepMAC %v", o, p.Subnet, p.VtepMAC)
		}
		macs[p.VtepMAC.String()] = p.Subnet
		if subnets[p.Subnet] {
			t.Fatalf("subnet %v twice", p.Subnet)
		}
		subnets[p.Subnet] = true
		if b, ok := n.Block(p.PublicIP); ok && leased[b] {
			t.Fatalf("peer %v has PublicIP %v inside the leased subnet %v", p.Subnet, p.PublicIP, b)
		}
	}
}

// The snapshot kept up to date change by change equals one rebuilt from
// scratch when leases collide: shared MACs, PublicIPs inside Network and
// inside each other's subnets, renewals that keep the CreateRevision, our
// own subnet moving, and foreign routes coming and going.
func TestIncrementalSnapshotMatchesRebuildWithCollisions(t *testing.T) {
	var routes []netip.Prefix
	rs := newRulesState(t, func() []netip.Prefix { return routes })
	quiet := NewRegistry(nil, "", nil, nil) // for the rebuilds, which log too
	live := map[string]*mvccpb.KeyValue{}
	rng := rand.New(rand.NewPCG(3, 4))
	ip := func() string {
		switch rng.IntN(4) {
		case 0:
			return fmt.Sprintf("172.16.%d.%d", rng.IntN(40), 1+rng.IntN(3)) // inside Network, maybe leased
		case 1:
			return fmt.Sprintf("172.17.42.%d", 30+rng.IntN(4)) // sometimes our own address
		default:
			return fmt.Sprintf("10.0.0.%d", rng.IntN(12))
		}
	}
	for step := range 3000 {
		name := fmt.Sprintf("172.16.%d.0-24", rng.IntN(40))
		key := rs.r.subnetsPrefix() + name
		switch k := rng.IntN(20); {
		case k < 11:
			a := ip()
			m := macFor(a)
			if rng.IntN(2) == 0 {
				m = fmt.Sprintf("b2:00:00:00:00:%02x", rng.IntN(6)) // a small pool: collisions
			}
			kv := rs.put(name, val(a, m, 1))
			if l := rs.valid[key]; l != nil && l.ModRevision == kv.ModRevision {
				live[key] = kv
			}
		case k < 13:
			rs.put(name, `{"PublicIP":"255.255.255.255"}`) // invalid: the previous value stays
		case k < 17:
			rs.del(name)
			delete(live, key)
		case k < 18:
			rs.self = netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(rng.IntN(40)), 0}), 24)
		case k < 19:
			routes = nil
			if rng.IntN(2) == 0 {
				routes = append(routes, netip.MustParsePrefix("0.0.0.0/0"),
					netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(rng.IntN(40)), 128}), 25))
			}
			rs.refilter()
		default:
			kv := rs.put(name, val("172.17.42.31", "b2:00:ac:11:2a:1f", 1)) // a lease naming our address
			if l := rs.valid[key]; l != nil && l.ModRevision == kv.ModRevision {
				live[key] = kv
			}
		}
		snap := rs.snapshot()
		got := fullPeers(snap)
		checkSnapshot(t, rs.peerState, snap)
		rs.clean = false
		if again := fullPeers(rs.snapshot()); again != got {
			t.Fatalf("step %d: incremental snapshot\n%s\ndiffers from a re-sort\n%s", step, got, again)
		}
		ref := newPeerState(quiet, rs.f)
		for _, kv := range live {
			ref.put(kv)
		}
		if want := fullPeers(ref.snapshot()); got != want {
			t.Fatalf("step %d: incremental snapshot\n%s\ndiffers from a rebuild from scratch\n%s", step, got, want)
		}
	}
	// The run met every rule that needs all leases in view.
	for _, rule := range []string{"already used by the earlier lease", "inside the leased subnet", "did not make", "own subnet"} {
		if n := len(rs.log.lines(rule)); n < 10 {
			t.Errorf("only %d refusals say %q: the run does not exercise that rule", n, rule)
		}
	}
}

// TestHeldLeaseKeepsItsMAC: after etcd comes back empty, the peers it
// forgot are held for the restore grace. A new lease claiming a held
// peer's VtepMAC must not give two peers one MAC: the data plane would
// refuse one and fail the whole Set.
func TestHeldLeaseKeepsItsMAC(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	r := fastRegistry(t, cli)
	const mac = "b2:00:ac:11:00:05"
	if _, err := cli.Put(ctx, r.subnetsPrefix()+"172.16.5.0-24", val("172.17.0.5", mac, 1)); err != nil {
		t.Fatal(err)
	}
	w := &watching{done: make(chan error, 1)}
	var bad []string // snapshots with a MAC twice
	wctx, cancel := context.WithCancel(ctx)
	go func() {
		w.done <- r.WatchPeers(wctx, PeerFilter{Config: mustConfig(t, testNet)}, func(s Snapshot) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.last, w.n = s, w.n+1
			seen := map[string]bool{}
			for _, p := range s.Peers {
				if seen[p.VtepMAC.String()] {
					bad = append(bad, fullPeers(s))
				}
				seen[p.VtepMAC.String()] = true
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	w.waitPeers(t, "172.16.5.0/24 172.17.0.5\n")
	// The watch sees revision 7: any revision of the new etcd below it
	// reads as a restore.
	var rev int64
	for range 5 {
		resp, err := cli.Put(ctx, r.subnetsPrefix()+"172.16.9.0-24", "garbage")
		if err != nil {
			t.Fatal(err)
		}
		rev = resp.Header.Revision
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		w.mu.Lock()
		seen := w.last.Revision
		w.mu.Unlock()
		if seen >= rev {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watch never saw revision %d", rev)
		}
	}

	e.Restart(true)
	if _, err := cli.Put(ctx, r.subnetsPrefix()+"172.16.6.0-24", val("172.17.0.6", mac, 1)); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "172.16.6.0/24 172.17.0.6\n") // once the grace is over
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(bad) > 0 {
		t.Fatalf("%d snapshots had two peers with VtepMAC %s, the first:\n%s", len(bad), mac, bad[0])
	}
}
