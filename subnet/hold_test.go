package subnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/ip"
)

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// fastRegistry returns a registry with short timers for tests.
func fastRegistry(t testing.TB, cli *clientv3.Client) *Registry {
	r := NewRegistry(cli, "", testLogger(t), prometheus.NewRegistry())
	r.probeEvery, r.probeTimeout, r.verifyEvery = 150*time.Millisecond, 300*time.Millisecond, 200*time.Millisecond
	r.backoffMin, r.backoffMax = 20*time.Millisecond, 300*time.Millisecond
	r.restoreGrace = 2 * time.Second
	return r
}

// holding runs Hold in the background and returns a channel of its leases.
type holding struct {
	leases chan Lease
	done   chan error
	cancel context.CancelFunc
}

func startHold(t testing.TB, r *Registry, req HoldRequest) *holding {
	ctx, cancel := context.WithCancel(context.Background())
	h := &holding{leases: make(chan Lease, 16), done: make(chan error, 1), cancel: cancel}
	req.OnLease = func(l Lease) { h.leases <- l }
	go func() { h.done <- r.Hold(ctx, req) }()
	t.Cleanup(func() { cancel(); <-h.done })
	return h
}

func (h *holding) next(t testing.TB) Lease {
	t.Helper()
	select {
	case l := <-h.leases:
		return l
	case err := <-h.done:
		t.Fatalf("Hold returned: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatalf("no lease after 10s")
	}
	return Lease{}
}

func node(n int, cfg Config) HoldRequest {
	a := netip.AddrFrom4([4]byte{172, 17, byte(n >> 8), byte(n)})
	return HoldRequest{Config: cfg, PublicIP: a, VtepMAC: ip.VTEPMAC(a, cfg.Backend.VNI), TTL: time.Minute}
}

func countLeases(t testing.TB, cli *clientv3.Client) int {
	t.Helper()
	resp, err := cli.Leases(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return len(resp.Leases)
}

func getKey(t testing.TB, cli *clientv3.Client, key string) (LeaseAttrs, int64, bool) {
	t.Helper()
	resp, err := cli.Get(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return LeaseAttrs{}, 0, false
	}
	a, err := ParseLeaseAttrs(resp.Kvs[0].Value)
	if err != nil {
		t.Fatalf("our own value does not parse: %v", err)
	}
	return a, resp.Kvs[0].Lease, true
}

func TestHoldRestartKeepsSubnetAndLease(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cfg := mustConfig(t, testNet)
	cli := e.Client(t)
	r1 := fastRegistry(t, cli)
	if err := r1.SetConfig(context.Background(), cfg); err != nil {
		t.Fatal(err)
	}
	if got, err := r1.GetConfig(context.Background()); err != nil || got != cfg {
		t.Fatalf("GetConfig = %+v %v", got, err)
	}
	req := node(31, cfg)
	h1 := startHold(t, r1, req)
	l1 := h1.next(t)
	if !cfg.alloc().Eligible(l1.Subnet) || l1.EtcdLeaseID == 0 {
		t.Fatalf("bad lease %+v", l1)
	}
	a, lid, ok := getKey(t, cli, l1.Key)
	if !ok || a.PublicIP != req.PublicIP || lid != l1.EtcdLeaseID {
		t.Fatalf("key %s: %+v lease %x ok %v", l1.Key, a, lid, ok)
	}
	h1.cancel()
	<-h1.done
	h1.done <- nil // for the cleanup

	// A restart (new client, new registry, no Previous) adopts key and lease;
	// a new MAC is written into the same key.
	r2 := fastRegistry(t, e.Client(t))
	req.VtepMAC = ip.VTEPMAC(netip.MustParseAddr("1.1.1.1"), 1)
	l2 := startHold(t, r2, req).next(t)
	if l2.Subnet != l1.Subnet || l2.EtcdLeaseID != l1.EtcdLeaseID {
		t.Fatalf("restart moved: %+v -> %+v", l1, l2)
	}
	if a, _, _ := getKey(t, cli, l1.Key); a.VtepMAC.String() != req.VtepMAC.String() {
		t.Fatalf("MAC not updated: %v", a.VtepMAC)
	}
	if n := countLeases(t, cli); n != 1 {
		t.Fatalf("%d etcd leases after restart, want 1", n)
	}
	// After a reboot (no Previous, docker0 still holding .1 of our subnet in
	// Avoid), the own key is still adopted.
	req.Avoid = []netip.Prefix{netip.PrefixFrom(netip.MustParseAddr(l1.Subnet.Addr().Next().String()), 24)}
	c3, cancel3 := context.WithCancel(context.Background())
	defer cancel3()
	got := make(chan Lease, 1)
	req3 := req
	req3.OnLease = func(l Lease) { got <- l; cancel3() }
	_ = fastRegistry(t, e.Client(t)).Hold(c3, req3)
	if l3 := <-got; l3.Subnet != l1.Subnet {
		t.Fatalf("reboot with own subnet in Avoid moved to %v", l3.Subnet)
	}
	ls, _, err := r2.ListLeases(context.Background())
	if err != nil || len(ls) != 1 || ls[0].Err != nil || ls[0].TTL <= 0 {
		t.Fatalf("ListLeases = %+v %v", ls, err)
	}
}

func TestHoldReservationPreviousAvoidExhaustion(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	// /26 of /28s: subnets .16, .32, .48 are allocatable.
	cfg := mustConfig(t, `{"Network":"10.9.0.0/26"}`)
	r := fastRegistry(t, cli)
	resKey := r.SubnetKey(netip.MustParsePrefix("10.9.0.32/28"))
	a1 := node(1, cfg)
	if _, err := cli.Put(ctx, resKey, val(a1.PublicIP.String(), "b2:69:2c:67:63:b8", 1)); err != nil {
		t.Fatal(err)
	}
	// The reservation's owner gets it, with no etcd lease, and the value updated.
	l := startHold(t, r, a1).next(t)
	if l.Key != resKey || l.EtcdLeaseID != 0 {
		t.Fatalf("reservation not honoured: %+v", l)
	}
	if a, lid, _ := getKey(t, cli, resKey); lid != 0 || a.VtepMAC.String() != a1.VtepMAC.String() {
		t.Fatalf("reservation changed badly: lease %x attrs %+v", lid, a)
	}
	// Another node asking for it (Previous) does not get it; Avoid is respected.
	a2 := node(2, cfg)
	a2.Previous = netip.MustParsePrefix("10.9.0.32/28")
	a2.Avoid = []netip.Prefix{netip.MustParsePrefix("10.9.0.20/32")}
	if l := startHold(t, fastRegistry(t, e.Client(t)), a2).next(t); l.Subnet != netip.MustParsePrefix("10.9.0.48/28") {
		t.Fatalf("node 2 got %v, want 10.9.0.48/28", l.Subnet)
	}
	// Previous honoured when free.
	a3 := node(3, cfg)
	a3.Previous = netip.MustParsePrefix("10.9.0.16/28")
	if l := startHold(t, fastRegistry(t, e.Client(t)), a3).next(t); l.Subnet != a3.Previous {
		t.Fatalf("node 3 got %v, want Previous %v", l.Subnet, a3.Previous)
	}
	// Full.
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err := fastRegistry(t, e.Client(t)).Hold(c, node(4, cfg))
	want := "no free /28 left in 10.9.0.0/26 between 10.9.0.16 and 10.9.0.48: 3 taken"
	if err == nil || err.Error() != want {
		t.Fatalf("exhausted: %v, want %q", err, want)
	}
	if n := countLeases(t, cli); n != 2 {
		t.Fatalf("%d etcd leases, want 2 (the failed Hold must revoke its grant)", n)
	}
}

func TestHoldLostRaceRetries(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	cfg := mustConfig(t, testNet)
	r := fastRegistry(t, cli)
	req := node(1, cfg)
	req.Previous = netip.MustParsePrefix("172.16.50.0/24")
	var once sync.Once
	r.hookBeforeCreate = func(key string) {
		once.Do(func() { // someone else wins the race for our Previous
			if _, err := cli.Put(context.Background(), key, val("172.17.9.9", "b2:69:2c:67:63:b8", 1)); err != nil {
				t.Error(err)
			}
		})
	}
	l := startHold(t, r, req).next(t)
	if l.Subnet == req.Previous || !cfg.alloc().Eligible(l.Subnet) {
		t.Fatalf("got %v after losing the race for %v", l.Subnet, req.Previous)
	}
	if n := countLeases(t, cli); n != 1 {
		t.Fatalf("%d etcd leases, want 1 (grant reused across retries)", n)
	}
}

func TestHoldReacquires(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	cfg := mustConfig(t, testNet)
	r := fastRegistry(t, cli)
	h := startHold(t, r, node(1, cfg))
	l := h.next(t)

	// Key deleted: same subnet again.
	if _, err := cli.Delete(ctx, l.Key); err != nil {
		t.Fatal(err)
	}
	l2 := h.next(t)
	if l2.Subnet != l.Subnet {
		t.Fatalf("after delete got %v, want %v", l2.Subnet, l.Subnet)
	}
	// etcd lease revoked: same subnet again.
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(l2.EtcdLeaseID)); err != nil {
		t.Fatal(err)
	}
	l3 := h.next(t)
	if l3.Subnet != l.Subnet || l3.EtcdLeaseID == l2.EtcdLeaseID {
		t.Fatalf("after revoke got %+v", l3)
	}
	// Another live node's claim lands on our key (its value on its own etcd
	// lease): we do not fight, we wait.
	if _, err := cli.Delete(ctx, l3.Key); err != nil {
		t.Fatal(err)
	}
	other, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, l3.Key, val("172.17.9.9", "b2:69:2c:67:63:b8", 1), clientv3.WithLease(other.ID)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if a, _, _ := getKey(t, cli, l3.Key); a.PublicIP != netip.MustParseAddr("172.17.9.9") {
		t.Fatalf("we fought for the key: %v", a.PublicIP)
	}
	if n := counterValue(t, r.m.conflicts); n < 1 {
		t.Fatalf("conflicts = %v", n)
	}
	select {
	case l := <-h.leases:
		t.Fatalf("took another subnet while ours was held by someone else: %v", l.Subnet)
	default:
	}
	// Freed: ours again.
	if _, err := cli.Delete(ctx, l3.Key); err != nil {
		t.Fatal(err)
	}
	if l4 := h.next(t); l4.Subnet != l.Subnet {
		t.Fatalf("after conflict got %v", l4.Subnet)
	}
	if _, err := cli.Revoke(ctx, other.ID); err != nil {
		t.Fatal(err)
	}
	if n := countLeases(t, cli); n != 1 {
		t.Fatalf("%d etcd leases, want 1", n)
	}
	// Release deletes the key and stops Hold.
	if err := r.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-h.done:
		h.done <- err
		if err != nil {
			t.Fatalf("Hold after Release: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("Hold did not stop after Release")
	}
	if _, _, ok := getKey(t, cli, l.Key); ok {
		t.Fatalf("key still there after Release")
	}
}

func TestHoldEtcdRestartedEmpty(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cfg := mustConfig(t, testNet)
	h := startHold(t, fastRegistry(t, e.Client(t)), node(1, cfg))
	l := h.next(t)
	e.Restart(true)
	l2 := h.next(t)
	if l2.Subnet != l.Subnet {
		t.Fatalf("after etcd wipe got %v, want %v", l2.Subnet, l.Subnet)
	}
	if _, _, ok := getKey(t, e.Client(t), l.Key); !ok {
		t.Fatalf("key not re-created")
	}
}

func TestConcurrentAcquire100(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cfg := mustConfig(t, testNet)
	const n = 100
	clis := make([]*clientv3.Client, n)
	for i := range clis {
		clis[i] = e.Client(t)
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	results := make([]Lease, n)
	errs := make([]error, n)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var holds sync.WaitGroup
	for i := range n {
		wg.Add(1)
		holds.Go(func() {
			r := NewRegistry(clis[i], "", nil, nil)
			req := node(i+1, cfg)
			req.OnLease = func(l Lease) { results[i] = l; wg.Done() }
			<-start
			if err := r.Hold(ctx, req); err != nil && !errors.Is(err, context.Canceled) {
				errs[i] = err
				wg.Done()
			}
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	t.Logf("100 concurrent acquisitions took %v", time.Since(t0))
	cancel()
	holds.Wait()
	seen := map[netip.Prefix]int{}
	for i, l := range results {
		if errs[i] != nil {
			t.Errorf("node %d: %v", i, errs[i])
			continue
		}
		if j, dup := seen[l.Subnet]; dup {
			t.Errorf("nodes %d and %d both got %v", j, i, l.Subnet)
		}
		seen[l.Subnet] = i
	}
	ls, _, err := NewRegistry(clis[0], "", nil, nil).ListLeases(context.Background())
	if err != nil || len(ls) != n {
		t.Fatalf("ListLeases: %d %v", len(ls), err)
	}
	var bad []string
	for _, l := range ls {
		if l.Err != nil {
			bad = append(bad, fmt.Sprint(l.Key, l.Err))
		}
	}
	if len(bad) > 0 {
		t.Fatalf("invalid: %s", strings.Join(bad, "\n"))
	}
}

func counterValue(t testing.TB, m prometheus.Metric) float64 {
	t.Helper()
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		t.Fatal(err)
	}
	if d.Counter != nil {
		return d.Counter.GetValue()
	}
	return d.Gauge.GetValue()
}

// A node whose address changed finds its subnet through subnet.env and takes
// the lease over, keeping the subnet and leaking no etcd lease; a reservation
// for another address is never taken over that way.
func TestHoldTakesOverPreviousSubnetAfterAddressChange(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cfg := mustConfig(t, testNet)
	cli := e.Client(t)
	old := node(31, cfg)
	h1 := startHold(t, fastRegistry(t, cli), old)
	first := h1.next(t)
	h1.cancel()
	h1.done <- <-h1.done // stopped; leave the result for the cleanup

	// Without the etcd lease subnet.env records, the key may be a live
	// node's: another subnet, the key left alone.
	stranger := node(51, cfg)
	stranger.Previous = first.Subnet
	hs := startHold(t, fastRegistry(t, cli), stranger)
	ls := hs.next(t)
	if ls.Subnet == first.Subnet {
		t.Fatalf("took %v over without proof it was ours", ls.Subnet)
	}
	hs.cancel()
	hs.done <- <-hs.done
	if a, _, _ := getKey(t, cli, first.Key); a.PublicIP != old.PublicIP {
		t.Fatalf("key now names %v, want %v", a.PublicIP, old.PublicIP)
	}
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(ls.EtcdLeaseID)); err != nil {
		t.Fatal(err)
	}

	moved := node(51, cfg)
	moved.Previous, moved.PreviousLease = first.Subnet, first.EtcdLeaseID
	h2 := startHold(t, fastRegistry(t, cli), moved)
	got := h2.next(t)
	if got.Subnet != first.Subnet || got.EtcdLeaseID != first.EtcdLeaseID {
		t.Fatalf("after the address change got %v (etcd lease %x), want %v (etcd lease %x)", got.Subnet, got.EtcdLeaseID, first.Subnet, first.EtcdLeaseID)
	}
	attrs, _, ok := getKey(t, cli, first.Key)
	if !ok || attrs.PublicIP != moved.PublicIP || attrs.VtepMAC.String() != moved.VtepMAC.String() {
		t.Fatalf("key holds %+v, want the new address and MAC", attrs)
	}
	if n := countLeases(t, cli); n != 1 {
		t.Errorf("%d etcd leases, want 1", n)
	}

	// A reservation names its owner; subnet.env elsewhere does not override it.
	res := netip.MustParsePrefix("172.16.99.0/24")
	if _, err := cli.Put(context.Background(), fastRegistry(t, cli).SubnetKey(res), val("172.17.0.77", macFor("172.17.0.77"), 1)); err != nil {
		t.Fatal(err)
	}
	other := node(52, cfg)
	other.Previous = res
	if l := startHold(t, fastRegistry(t, cli), other).next(t); l.Subnet == res {
		t.Fatalf("took over the reservation for 172.17.0.77")
	}
}

// TestListSubnetsShares checks who may answer from a listing already in
// flight: first listings may, later ones read etcd themselves.
func TestListSubnetsShares(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	r := fastRegistry(t, cli)
	ctx := context.Background()
	key := r.subnetsPrefix() + "172.16.5.0-24"
	if _, err := cli.Put(ctx, key, val("10.0.0.5", "b2:69:2c:67:63:b8", 1)); err != nil {
		t.Fatal(err)
	}

	// A listing in flight that answers only when told to.
	inFlight := &listCall{done: make(chan struct{})}
	r.mu.Lock()
	r.listing = inFlight
	r.mu.Unlock()

	// One that must see etcd now does not wait for it.
	c, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := r.listSubnets(c, false)
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Key) != key {
		t.Fatalf("unshared listing: %v %v", resp, err)
	}

	// A first listing takes the one in flight, whatever it says.
	shared := &clientv3.GetResponse{}
	go func() {
		time.Sleep(20 * time.Millisecond)
		inFlight.resp = shared
		close(inFlight.done)
	}()
	if resp, err := r.listSubnets(c, true); err != nil || resp != shared {
		t.Fatalf("shared listing: got %p %v, want the one in flight (%p)", resp, err, shared)
	}

	// With none in flight, a shareable listing reads etcd and is then gone.
	r.mu.Lock()
	r.listing = nil
	r.mu.Unlock()
	if resp, err := r.listSubnets(c, true); err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("first listing: %v %v", resp, err)
	}
	r.mu.Lock()
	left := r.listing
	r.mu.Unlock()
	if left != nil {
		t.Fatal("a finished listing is still offered to others")
	}
}
