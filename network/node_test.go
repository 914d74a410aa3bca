package network

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// fakeHolder hands out one lease.
type fakeHolder struct{ lease subnet.Lease }

func (f *fakeHolder) Hold(ctx context.Context, req subnet.HoldRequest) error {
	req.OnLease(f.lease)
	<-ctx.Done()
	return ctx.Err()
}

// fakeWatcher forwards snapshots the test sends.
type fakeWatcher struct{ snaps chan subnet.Snapshot }

func (f *fakeWatcher) WatchPeers(ctx context.Context, _ subnet.PeerFilter, out func(subnet.Snapshot)) error {
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case s := <-f.snaps:
			out(s)
		}
	}
}

func (f *fakeWatcher) Recycle(subnet.Snapshot) {}

// fakeDataplane records what it was asked to program.
type fakeDataplane struct {
	mu         sync.Mutex // guards the fields below
	peers      []backend.Peer
	sets       int
	failSet    error
	repairs    map[string]int
	reconcile  int
	kick       func()
	failEnsure error
	closed     int
	// gate, when SetGate gave one, hears of every Set's peers as a vxlan
	// Device tells it; failEarly fails a Set before that (no device).
	gate      backend.Gate
	failEarly error
}

var _ Dataplane = (*fakeDataplane)(nil)

func (f *fakeDataplane) Set(_ context.Context, p []backend.Peer) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sets++
	if f.failEarly != nil {
		return f.failEarly
	}
	if f.gate != nil {
		var addrs []netip.Addr
		for _, q := range p {
			addrs = append(addrs, q.PublicIP)
		}
		f.gate.Admit(addrs)
		defer f.gate.Release(nil)
	}
	if f.failSet != nil {
		return f.failSet
	}
	f.peers = p
	return nil
}
func (f *fakeDataplane) SetGate(g backend.Gate) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.gate = g
}
func (f *fakeDataplane) Ensure(context.Context) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return false, f.failEnsure
}
func (f *fakeDataplane) Close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed++
}
func (f *fakeDataplane) Reconcile(context.Context) (map[string]int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reconcile++
	r := f.repairs
	f.repairs = nil
	return r, nil
}
func (f *fakeDataplane) Subscribe(_ context.Context, kick func()) error {
	f.mu.Lock()
	f.kick = kick
	f.mu.Unlock()
	return nil
}
func (f *fakeDataplane) MTU() int     { return 1450 }
func (f *fakeDataplane) Name() string { return "flannel.1" }

type fakeRules struct{}

func (fakeRules) Ensure() (int, error) { return 0, nil }

type loop struct {
	node  *Node
	dp    *fakeDataplane
	snaps chan subnet.Snapshot
	file  string
	reg   *prometheus.Registry
}

func startLoop(t *testing.T, dp *fakeDataplane) *loop {
	t.Helper()
	return startLoopRules(t, dp, fakeRules{}, 0)
}

func startLoopRules(t *testing.T, dp *fakeDataplane, rules RuleSet, rulesEvery time.Duration) *loop {
	t.Helper()
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"172.16.0.0/12"}`))
	if err != nil {
		t.Fatal(err)
	}
	l := &loop{dp: dp, snaps: make(chan subnet.Snapshot), file: filepath.Join(t.TempDir(), "subnet.env"), reg: prometheus.NewRegistry()}
	n, err := NewNode(NodeConfig{
		Config:        cfg,
		PublicIP:      netip.MustParseAddr("172.17.42.31"),
		SubnetFile:    l.file,
		IPMasq:        true,
		Leases:        subnet.LeaseAttrs{VtepMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}},
		Holder:        &fakeHolder{lease: subnet.Lease{Subnet: netip.MustParsePrefix("172.16.28.0/24")}},
		Watcher:       &fakeWatcher{snaps: l.snaps},
		NewDataplane:  func(subnet.Lease) (Dataplane, error) { return dp, nil },
		NewRules:      func(RulesConfig) (RuleSet, error) { return rules, nil },
		RulesInterval: rulesEvery,
		Forwarding:    func() error { return nil },
		EtcdSynced:    time.Now,
		Metrics:       NewMetrics(l.reg),
	})
	if err != nil {
		t.Fatal(err)
	}
	l.node = n
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return l
}

func peer(s string) subnet.Peer {
	return subnet.Peer{Subnet: netip.MustParsePrefix(s), PublicIP: netip.MustParseAddr("172.17.42.32"), VtepMAC: net.HardwareAddr{2, 0, 0, 0, 0, 2}}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within 5s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// subnet.env appears only once the first snapshot is in the kernel, and the
// node is ready from then on.
func TestSubnetFileWaitsForTheDataPlane(t *testing.T) {
	dp := &fakeDataplane{failSet: errors.New("kernel says no")}
	l := startLoop(t, dp)
	l.snaps <- subnet.Snapshot{Peers: []subnet.Peer{peer("172.16.78.0/24")}}
	waitFor(t, "a failed Set", func() bool { dp.mu.Lock(); defer dp.mu.Unlock(); return dp.sets > 0 })
	time.Sleep(50 * time.Millisecond)
	if _, err := os.Stat(l.file); err == nil {
		t.Fatal("subnet.env written although programming the peers failed")
	}
	if got := value(l.node.m.netlinkErrors.WithLabelValues("set")); got < 1 {
		t.Errorf("weft_netlink_errors_total{op=set} = %v after a refused Set", got)
	}
	why := strings.Join(l.node.Status().NotReady(time.Now(), time.Minute), "\n")
	if !strings.Contains(why, "subnet file not written") || !strings.Contains(why, "data plane does not match") {
		t.Errorf("not-ready reasons: %q", why)
	}

	dp.mu.Lock()
	dp.failSet = nil
	dp.mu.Unlock()
	l.snaps <- subnet.Snapshot{Peers: []subnet.Peer{peer("172.16.78.0/24")}}
	waitFor(t, "subnet.env", func() bool { _, err := os.Stat(l.file); return err == nil })
	env, err := ReadSubnetEnv(l.file)
	if err != nil {
		t.Fatal(err)
	}
	if env.Subnet.String() != "172.16.28.1/24" || env.MTU != 1450 || !env.IPMasq {
		t.Errorf("subnet.env = %+v", env)
	}
	waitFor(t, "ready", func() bool { return len(l.node.Status().NotReady(time.Now(), time.Minute)) == 0 })
	if got := value(l.node.m.peersProgrammed); got != 1 {
		t.Errorf("weft_peers{state=programmed} = %v, want 1", got)
	}
}

// A kernel event leads to a reconcile, and what it repaired is counted.
func TestKernelEventRepairsAreCounted(t *testing.T) {
	dp := &fakeDataplane{}
	l := startLoop(t, dp)
	l.snaps <- subnet.Snapshot{Peers: []subnet.Peer{peer("172.16.78.0/24")}}
	waitFor(t, "subscription", func() bool { dp.mu.Lock(); defer dp.mu.Unlock(); return dp.kick != nil })
	dp.mu.Lock()
	dp.repairs = map[string]int{"route": 1}
	kick := dp.kick
	dp.mu.Unlock()
	kick()
	waitFor(t, "repair counted", func() bool {
		return value(l.node.m.repairs.WithLabelValues("route")) == 1
	})
}

func value(m prometheus.Metric) float64 {
	var d dto.Metric
	if err := m.Write(&d); err != nil {
		return -1
	}
	if d.Gauge != nil {
		return d.Gauge.GetValue()
	}
	return d.Counter.GetValue()
}

// stuckRules installs at once; every later check blocks until released.
type stuckRules struct {
	calls   chan struct{} // one value per call after the first
	release chan struct{}
	mu      sync.Mutex
	n       int
}

func (r *stuckRules) Ensure() (int, error) {
	r.mu.Lock()
	r.n++
	first := r.n == 1
	r.mu.Unlock()
	if first {
		return 1, nil
	}
	r.calls <- struct{}{}
	<-r.release
	return 0, nil
}

// A peer's change does not wait for an iptables check, however long that
// takes (it runs iptables four times).
func TestPeersDoNotWaitForRules(t *testing.T) {
	dp := &fakeDataplane{}
	rules := &stuckRules{calls: make(chan struct{}, 100), release: make(chan struct{})}
	l := startLoopRules(t, dp, rules, 10*time.Millisecond)
	defer close(rules.release) // before the loop's cleanup: the check must end for Run to return
	select {
	case <-rules.calls:
	case <-time.After(5 * time.Second):
		t.Fatal("no periodic rules check")
	}
	// A check is under way and will not end until released.
	start := time.Now()
	l.snaps <- subnet.Snapshot{Peers: []subnet.Peer{peer("172.16.78.0/24")}}
	waitFor(t, "the peer programmed during a rules check", func() bool {
		dp.mu.Lock()
		defer dp.mu.Unlock()
		return len(dp.peers) == 1
	})
	if d := time.Since(start); d > time.Second {
		t.Errorf("the peer took %v", d)
	}
}

// A data plane that cannot be set up is closed on every failed attempt, and
// the one in use is closed when the loop stops: nothing leaks while a
// device keeps failing.
func TestNodeClosesEveryDataplane(t *testing.T) {
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"172.16.0.0/12"}`))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var made []*fakeDataplane
	failing := true
	n, err := NewNode(NodeConfig{
		Config:   cfg,
		PublicIP: netip.MustParseAddr("172.17.42.31"),
		Holder:   &fakeHolder{lease: subnet.Lease{Subnet: netip.MustParsePrefix("172.16.28.0/24")}},
		Watcher:  &fakeWatcher{snaps: make(chan subnet.Snapshot)},
		NewDataplane: func(subnet.Lease) (Dataplane, error) {
			mu.Lock()
			defer mu.Unlock()
			dp := &fakeDataplane{}
			if failing {
				dp.failEnsure = errors.New("vxlan: VNI 1 taken")
			}
			made = append(made, dp)
			if len(made) == 2 {
				failing = false
			}
			return dp, nil
		},
		NewRules:   func(RulesConfig) (RuleSet, error) { return fakeRules{}, nil },
		Forwarding: func() error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		k := len(made)
		mu.Unlock()
		if k == 3 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("made %d data planes in 10 s, want 3 (two failing)", k)
		}
		time.Sleep(20 * time.Millisecond)
	}
	mu.Lock()
	for i, dp := range made[:2] {
		if dp.closed != 1 {
			t.Errorf("failed data plane %d closed %d times, want 1", i, dp.closed)
		}
	}
	mu.Unlock()
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if c := made[2].closed; c != 1 {
		t.Errorf("the data plane in use was closed %d times when Run returned, want 1", c)
	}
}

// fakeIngress records what the loop asks of the ingress filter.
type fakeIngress struct {
	mu      sync.Mutex
	admits  int
	settles int
}

func (g *fakeIngress) Admit([]netip.Addr) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.admits++
	return nil
}
func (g *fakeIngress) Release([]netip.Addr) error { return nil }
func (g *fakeIngress) Settle() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.settles++
	return nil
}
func (g *fakeIngress) Ensure() (int, error)                { return 0, nil }
func (g *fakeIngress) Dropped() (map[string]uint64, error) { return nil, nil }
func (g *fakeIngress) Close()                              {}

// The filter settles (drops what a weftd before left in its sets) once a
// Set has admitted every peer, even when some kernel change of that Set
// failed, but not after a Set that failed before looking at its peers.
func TestIngressSettlesOnceEveryPeerIsAdmitted(t *testing.T) {
	dp := &fakeDataplane{failEarly: errors.New("no device")}
	ing := &fakeIngress{}
	cfg, err := subnet.ParseConfig([]byte(`{"Network":"172.16.0.0/12"}`))
	if err != nil {
		t.Fatal(err)
	}
	snaps := make(chan subnet.Snapshot)
	n, err := NewNode(NodeConfig{
		Config: cfg, PublicIP: netip.MustParseAddr("172.17.42.31"), SubnetFile: filepath.Join(t.TempDir(), "subnet.env"),
		Leases:       subnet.LeaseAttrs{VtepMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}},
		Holder:       &fakeHolder{lease: subnet.Lease{Subnet: netip.MustParsePrefix("172.16.28.0/24")}},
		Watcher:      &fakeWatcher{snaps: snaps},
		NewDataplane: func(subnet.Lease) (Dataplane, error) { return dp, nil },
		NewRules:     func(RulesConfig) (RuleSet, error) { return fakeRules{}, nil },
		NewIngress:   func(IngressConfig) (IngressFilter, error) { return ing, nil },
		VXLANPort:    8472,
		Forwarding:   func() error { return nil },
		EtcdSynced:   time.Now,
		Metrics:      NewMetrics(prometheus.NewRegistry()),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	settles := func() int { ing.mu.Lock(); defer ing.mu.Unlock(); return ing.settles }
	sets := func() int { dp.mu.Lock(); defer dp.mu.Unlock(); return dp.sets }

	snaps <- subnet.Snapshot{Peers: []subnet.Peer{peer("172.16.78.0/24")}}
	waitFor(t, "a Set that failed early", func() bool { return sets() >= 1 })
	time.Sleep(20 * time.Millisecond)
	if s := settles(); s != 0 {
		t.Fatalf("settled %d times after a Set that admitted nobody", s)
	}
	dp.mu.Lock()
	dp.failEarly, dp.failSet = nil, errors.New("one route refused")
	dp.mu.Unlock()
	snaps <- subnet.Snapshot{Peers: []subnet.Peer{peer("172.16.78.0/24")}}
	waitFor(t, "settled after a Set that admitted every peer but failed a change", func() bool { return settles() >= 1 })
	ing.mu.Lock()
	admits := ing.admits
	ing.mu.Unlock()
	if admits == 0 {
		t.Fatal("settled without an Admit")
	}
}
