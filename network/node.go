package network

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/subnet"
)

// Dataplane is the backend as the loop drives it: made for one subnet, checked
// against the kernel on demand. backend/vxlan's Device is the real one.
type Dataplane interface {
	backend.Backend
	// Ensure creates or adopts the device and reports whether it had to change it.
	Ensure(ctx context.Context) (bool, error)
	// Reconcile compares the kernel with the last Set and repairs the difference,
	// returning how many entries of each kind it fixed.
	Reconcile(ctx context.Context) (map[string]int, error)
	// Subscribe calls kick whenever the kernel reports a change that may concern
	// the data plane, until ctx ends.
	Subscribe(ctx context.Context, kick func()) error
	// MTU is the device's MTU, which containers must use.
	MTU() int
	// Name is the device's name, flannel.<VNI>.
	Name() string
	// SetGate makes g hear of the public addresses the data plane starts
	// and stops using (backend.Gate); called before the first Set.
	SetGate(g backend.Gate)
	// Close releases what the data plane holds in this process (sockets,
	// goroutines) and leaves the kernel state in place.
	Close()
}

// IngressFilter is what the loop needs of the VXLAN ingress filter (Ingress).
type IngressFilter interface {
	// Admit lets the VXLAN packets of these public addresses in (before
	// the routes of the peers using them go in); Release takes them back
	// (after the routes are gone). Each counts peers: see Ingress.Admit.
	Admit(addrs []netip.Addr) error
	Release(addrs []netip.Addr) error
	// Settle, after the first snapshot is programmed, drops the addresses
	// a weftd before a restart left that no peer uses any more.
	Settle() error
	// Ensure checks the filter against the kernel and repairs it.
	Ensure() (int, error)
	// Dropped reads the filter's drop counters by reason.
	Dropped() (map[string]uint64, error)
	Close()
}

// leaseHolder and peerWatcher are what the loop needs of subnet.Registry.
type leaseHolder interface {
	Hold(ctx context.Context, req subnet.HoldRequest) error
}

type peerWatcher interface {
	WatchPeers(ctx context.Context, f subnet.PeerFilter, out func(subnet.Snapshot)) error
	// Recycle takes back a snapshot the loop has converted.
	Recycle(subnet.Snapshot)
}

// RuleSet is what the loop needs of Rules.
type RuleSet interface {
	Ensure() (int, error)
}

// NodeConfig is everything the loop is told at start.
type NodeConfig struct {
	Config     subnet.Config
	PublicIP   netip.Addr
	Underlay   []netip.Prefix // the uplink's networks; no peer may sit on them
	UplinkName string         // the uplink, for DirectRouting's rules
	Avoid      []netip.Prefix // addresses and routes of this host weft did not make
	LeaseTTL   time.Duration
	SubnetFile string
	IPMasq     bool

	ResyncInterval time.Duration // full kernel check, default 10s
	RulesInterval  time.Duration // iptables check, default 5s

	Leases subnet.LeaseAttrs // attributes to publish (VtepMAC, VNI)

	Holder  leaseHolder
	Watcher peerWatcher
	// ConfigWatcher follows the config key from ConfigRevision, the mod
	// revision Config was read at; nil leaves the config as it is.
	ConfigWatcher  configWatcher
	ConfigRevision int64
	// EtcdSynced says when the node's view of etcd was last current (for
	// /readyz); subnet.Registry.LastSync.
	EtcdSynced func() time.Time
	// NewDataplane makes the backend for the node's lease (its subnet, and a
	// dual-stack node's IPv6 subnet: see DualStack). It is called again
	// if the node ever has to move to another subnet.
	NewDataplane func(own subnet.Lease) (Dataplane, error)
	// NewRules makes the iptables side.
	NewRules func(RulesConfig) (RuleSet, error)
	// SkipForward leaves the FORWARD chain to others (RulesConfig).
	SkipForward bool
	// NewIngress makes the VXLAN ingress filter; nil runs without one.
	NewIngress func(IngressConfig) (IngressFilter, error)
	// VXLANPort and AllowVXLAN feed the ingress filter (IngressConfig).
	VXLANPort  uint16
	AllowVXLAN []netip.Prefix
	// HostPrefixes lists the destinations of the host's routes and
	// addresses weft did not make (what Avoid holds at start); a peer
	// subnet overlapping one is skipped (peer.Self.Foreign). Read again on
	// kernel route events and every sixth resync.
	HostPrefixes func() ([]netip.Prefix, error)
	// Forwarding turns on IP forwarding; EnableForwarding when nil.
	Forwarding func() error

	Log     *slog.Logger
	Metrics *Metrics
}

// Node is one weftd's main loop.
type Node struct {
	cfg NodeConfig
	log *slog.Logger
	m   *Metrics

	// rulesMu is held while the rules are checked and while they are
	// replaced for a new subnet, so that the check never restores the old
	// subnet's rules over the new ones; rules is the current set.
	rulesMu sync.Mutex
	rules   RuleSet

	ingMu   sync.Mutex    // guards ingress, which the hot path reads
	ingress IngressFilter // nil without a filter or before the data plane is set up
	// setDone says the data plane's Set under way told its gate it was
	// done comparing peers (see apply).
	setDone atomic.Bool

	// refilter asks the peer watch to check every lease again (foreign
	// changed).
	refilter chan struct{}

	mu      sync.Mutex // guards the fields below, read by Status from other goroutines
	st      Status
	foreign []netip.Prefix // the host's routes weft did not make, for the peer rules

	// prev6 is the IPv6 subnet to ask for again (dual-stack): subnet.env's
	// at start, the lease's own after. Only Run's goroutine uses it, while
	// no Hold runs.
	prev6 netip.Prefix
}

// NewNode checks cfg and returns a loop ready to Run.
func NewNode(cfg NodeConfig) (*Node, error) {
	if cfg.Holder == nil || cfg.Watcher == nil || cfg.NewDataplane == nil || cfg.NewRules == nil {
		return nil, errors.New("network: NodeConfig needs Holder, Watcher, NewDataplane and NewRules")
	}
	if cfg.ResyncInterval <= 0 {
		cfg.ResyncInterval = 10 * time.Second
	}
	if cfg.RulesInterval <= 0 {
		cfg.RulesInterval = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Forwarding == nil {
		cfg.Forwarding = EnableForwarding
		if cfg.Config.EnableIPv6() {
			cfg.Forwarding = func() error {
				if cfg.Config.EnableIPv4() {
					if err := EnableForwarding(); err != nil {
						return err
					}
				}
				return EnableForwarding6()
			}
		}
	}
	if cfg.Metrics == nil {
		cfg.Metrics = NewMetrics(nil)
	}
	n := &Node{cfg: cfg, log: cfg.Log.With("component", "node"), m: cfg.Metrics, refilter: make(chan struct{}, 1)}
	n.m.dropped = n.dropped
	// Avoid is the same listing of the host's routes, read at start: the
	// peer rules begin with it rather than a second dump of every route.
	n.foreign = cfg.Avoid
	n.st.PublicIP = cfg.PublicIP
	n.st.VtepMAC = cfg.Leases.VtepMAC.String()
	if cfg.Leases.PublicIP6.IsValid() {
		n.st.PublicIP6 = cfg.Leases.PublicIP6
		n.st.VtepMAC6 = cfg.Leases.VtepMAC6.String()
	}
	n.st.ConfigRevision = cfg.ConfigRevision
	return n, nil
}

// mailbox is a one-slot channel where a newer value replaces an unread older one.
type mailbox[T any] struct{ ch chan T }

func newMailbox[T any]() mailbox[T] { return mailbox[T]{ch: make(chan T, 1)} }

func (m mailbox[T]) put(v T) {
	for {
		select {
		case m.ch <- v:
			return
		default:
		}
		select {
		case <-m.ch:
		default:
		}
	}
}

type snapshotIn struct {
	snap subnet.Snapshot
	at   time.Time
}

// Run holds the lease and keeps the data plane in step with etcd and the
// kernel until ctx ends. It returns nil on a clean stop and leaves the lease,
// device, routes and rules in place.
func (n *Node) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	leases := newMailbox[subnet.Lease]()
	snaps := newMailbox[snapshotIn]()
	prev, prevLease := n.previousSubnet()
	n.prev6 = n.previousSubnet6()
	stopEtcd := n.startEtcdSide(ctx, prev, prevLease, leases, snaps)
	defer func() { stopEtcd() }()
	configs := newMailbox[subnet.ConfigUpdate]()
	if n.cfg.ConfigWatcher != nil {
		wg.Go(func() {
			_ = n.cfg.ConfigWatcher.WatchConfig(ctx, n.cfg.ConfigRevision, func(u subnet.ConfigUpdate) { configs.put(u) })
		})
	}

	n.beat()
	var lease subnet.Lease
	select {
	case <-ctx.Done():
		return nil
	case lease = <-leases.ch:
	}

	var (
		dp       Dataplane
		err      error
		cur      subnet.Snapshot // the latest snapshot, whose peers desired is
		desired  []backend.Peer
		haveSnap bool
		synced   bool // the data plane matches the latest snapshot
	)
	// Every data plane made is closed: the one in use when Run returns, and
	// the one a subnet change replaces (below).
	defer func() {
		if dp != nil {
			dp.Close()
		}
		n.setIngress(nil)
	}()
	for dp == nil {
		n.rulesMu.Lock()
		dp, err = n.setUpLocked(ctx, lease)
		n.rulesMu.Unlock()
		if err != nil {
			n.log.Error("setting up the data plane, will retry", "err", err)
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(2 * time.Second):
			}
		}
	}

	kicks := newMailbox[struct{}]()
	wg.Add(1)
	go func() {
		defer wg.Done()
		n.keepRules(ctx)
	}()
	subCtx, stopSub := context.WithCancel(ctx)
	n.subscribe(subCtx, &wg, dp, kicks)

	resync := time.NewTicker(n.cfg.ResyncInterval)
	defer resync.Stop()
	heartbeat := time.NewTicker(time.Second)
	defer heartbeat.Stop()
	var debounce <-chan time.Time
	resyncs := 0

	for {
		select {
		case <-ctx.Done():
			stopSub()
			n.log.Info("stopping; lease, device, routes and rules stay in place")
			return nil

		case <-heartbeat.C:
			n.beat()

		case l := <-leases.ch:
			if l.Subnet == lease.Subnet && l.Subnet6 == lease.Subnet6 {
				renewed := l.EtcdLeaseID != lease.EtcdLeaseID
				lease = l
				n.setLease(l)
				if renewed && n.envWritten() {
					n.writeEnv(dp, lease) // subnet.env records the etcd lease
				}
				continue
			}
			n.log.Warn("the node's subnet changed; containers must be restarted on the new one",
				"old", lease.Subnet, "new", l.Subnet)
			n.rulesMu.Lock()
			ndp, err := n.setUpLocked(ctx, l)
			n.rulesMu.Unlock()
			if err != nil {
				n.log.Error("moving the data plane to the new subnet, will retry", "err", err)
				time.AfterFunc(2*time.Second, func() { leases.put(l) })
				continue
			}
			stopSub()
			lease = l
			dp.Close()
			dp = ndp
			synced, haveSnap = false, false
			n.markEnvWritten(false)
			subCtx, stopSub = context.WithCancel(ctx)
			n.subscribe(subCtx, &wg, dp, kicks)

		case u := <-configs.ch:
			if next, apply := n.configChange(u); apply {
				// Hold and the peer watch start again with the new
				// config: the lease is adopted as it is, the peers are
				// listed again and judged by the new range.
				stopEtcd()
				n.cfg.Config = next
				n.prev6 = lease.Subnet6
				stopEtcd = n.startEtcdSide(ctx, lease.Subnet, lease.EtcdLeaseID, leases, snaps)
			}

		case in := <-snaps.ch:
			// The snapshot's peers are the desired state as they are
			// (Set keeps no reference); the previous snapshot's memory goes
			// back to the watcher for the next one.
			n.cfg.Watcher.Recycle(cur)
			cur = in.snap
			desired = cur.Peers
			haveSnap = true
			synced = n.apply(ctx, dp, desired, in.at)
			if synced && !n.envWritten() {
				n.writeEnv(dp, lease)
			}

		case <-kicks.ch:
			if debounce == nil {
				debounce = time.After(100 * time.Millisecond)
			}

		case <-debounce:
			debounce = nil
			// A kick may be a route of someone else's: read the host's
			// routes again for the lease rules.
			n.refreshForeign()
			synced = n.check(ctx, dp, desired, haveSnap) && haveSnap

		case <-resync.C:
			// The host's routes are read on kicks; every sixth resync too,
			// as a safety net (a dump of every route is not free at
			// thousands of peers).
			if resyncs++; resyncs%6 == 0 {
				n.refreshForeign()
			}
			synced = n.check(ctx, dp, desired, haveSnap) && haveSnap
			if synced && !n.envWritten() {
				n.writeEnv(dp, lease)
			}

		}
		n.setSynced(synced)
	}
}

// keepRules checks the iptables rules when nf_tables reports a change, and
// every RulesInterval, until ctx ends. It runs apart from the loop that
// programs peers: a check runs iptables four times, tens of milliseconds on
// a busy node, and a peer's change must not wait for it.
func (n *Node) keepRules(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	kicks := newMailbox[struct{}]()
	wg.Go(func() {
		if err := WatchRuleChanges(ctx, func() { kicks.put(struct{}{}) }); err != nil {
			n.log.Info("no nf_tables events; iptables rules are checked every --iptables-resync only", "err", err)
		}
	})
	tick := time.NewTicker(n.cfg.RulesInterval)
	defer tick.Stop()
	var debounce <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-kicks.ch:
			if debounce == nil {
				debounce = time.After(50 * time.Millisecond)
			}
			continue
		case <-debounce:
			debounce = nil
		case <-tick.C:
		}
		n.rulesMu.Lock()
		if n.rules != nil {
			n.ensureRules(n.rules)
		}
		n.rulesMu.Unlock()
		if g := n.getIngress(); g != nil {
			n.ensureIngress(g)
		}
	}
}

func (n *Node) getIngress() IngressFilter {
	n.ingMu.Lock()
	defer n.ingMu.Unlock()
	return n.ingress
}

// setIngress makes g the filter in use and closes the one before.
func (n *Node) setIngress(g IngressFilter) {
	n.ingMu.Lock()
	old := n.ingress
	n.ingress = g
	n.ingMu.Unlock()
	if old != nil && old != g {
		old.Close()
	}
}

func (n *Node) ensureIngress(g IngressFilter) {
	k, err := g.Ensure()
	if k > 0 {
		n.m.repairs.WithLabelValues("rule").Add(float64(k))
		n.log.Info("repaired the VXLAN ingress filter", "fixed", k)
	}
	if err != nil {
		n.log.Error("checking the VXLAN ingress filter", "err", err)
	}
}

// dropped reads the ingress filter's counters for the metrics.
func (n *Node) dropped() map[string]uint64 {
	g := n.getIngress()
	if g == nil {
		return nil
	}
	d, err := g.Dropped()
	if err != nil {
		return nil
	}
	return d
}

// previousSubnet is the subnet this node had before, and the etcd lease it
// held it with, according to subnet.env.
func (n *Node) previousSubnet() (netip.Prefix, int64) {
	if n.cfg.SubnetFile == "" {
		return netip.Prefix{}, 0
	}
	env, err := ReadSubnetEnv(n.cfg.SubnetFile)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return netip.Prefix{}, 0
	case err != nil:
		n.log.Warn("ignoring unreadable subnet file", "err", err)
		return netip.Prefix{}, 0
	}
	return env.Lease(), env.EtcdLease
}

// holdLease keeps the node's lease until ctx ends, retrying acquisition
// failures (an exhausted range, etcd down at start) with backoff.
func (n *Node) holdLease(ctx context.Context, prev, prev6 netip.Prefix, prevLease int64, out mailbox[subnet.Lease]) {
	backoff := time.Second
	for ctx.Err() == nil {
		err := n.cfg.Holder.Hold(ctx, subnet.HoldRequest{
			Config:        n.cfg.Config,
			PublicIP:      n.cfg.PublicIP,
			VtepMAC:       n.cfg.Leases.VtepMAC,
			PublicIP6:     n.cfg.Leases.PublicIP6,
			VtepMAC6:      n.cfg.Leases.VtepMAC6,
			Previous6:     prev6,
			TTL:           n.cfg.LeaseTTL,
			Previous:      prev,
			PreviousLease: prevLease,
			Avoid:         avoidExcept(n.cfg.Avoid, prev),
			OnLease: func(l subnet.Lease) {
				n.setLease(l)
				out.put(l)
			},
			OnRenew: n.setLeaseExpiry,
		})
		if ctx.Err() != nil {
			return
		}
		n.log.Error("acquiring the node's lease, will retry", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 30*time.Second)
	}
}

// avoidExcept drops from avoid what lies inside the node's previous subnet:
// after a restart, docker0 still carries <subnet>.1/24, which is the node's
// own doing, not a reason to move it elsewhere.
func avoidExcept(avoid []netip.Prefix, prev netip.Prefix) []netip.Prefix {
	if !prev.IsValid() {
		return avoid
	}
	var out []netip.Prefix
	for _, p := range avoid {
		if p.Bits() >= prev.Bits() && prev.Contains(p.Addr()) {
			continue
		}
		out = append(out, p)
	}
	return out
}

// setUpLocked makes the device, the rules and the ingress filter for the
// node's subnet, and makes those rules the ones keepRules checks. Whatever
// it made is closed again if a later step fails. n.rulesMu must be held.
func (n *Node) setUpLocked(ctx context.Context, l subnet.Lease) (_ Dataplane, err error) {
	if err := n.cfg.Forwarding(); err != nil {
		return nil, err
	}
	dp, err := n.cfg.NewDataplane(l)
	if err != nil {
		return nil, fmt.Errorf("making the VXLAN device: %w", err)
	}
	defer func() {
		if err != nil {
			dp.Close()
		}
	}()
	created, err := dp.Ensure(ctx)
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", dp.Name(), err)
	}
	how := "adopted"
	if created {
		how = "created or fixed"
	}
	n.log.Info("VXLAN device ready", "device", dp.Name(), "how", how, "mtu", dp.MTU())
	var g IngressFilter
	if n.cfg.NewIngress != nil {
		ic := IngressConfig{Network: n.cfg.Config.Network, Subnet: l.Subnet, Device: dp.Name(),
			Port: n.cfg.VXLANPort, Allow: n.cfg.AllowVXLAN}
		if ds, ok := dp.(interface{ Name6() string }); ok && l.Subnet6.IsValid() {
			ic.Network6, ic.Subnet6, ic.Device6 = n.cfg.Config.IPv6.Network, l.Subnet6, ds.Name6()
		}
		g, err = n.cfg.NewIngress(ic)
		if err != nil {
			return nil, fmt.Errorf("setting up the VXLAN ingress filter: %w", err)
		}
		if _, err := g.Ensure(); err != nil {
			g.Close()
			return nil, fmt.Errorf("installing the VXLAN ingress filter: %w", err)
		}
	}
	rc := RulesConfig{Network: n.cfg.Config.Network, Subnet: l.Subnet, Device: dp.Name(), IPMasq: n.cfg.IPMasq, SkipForward: n.cfg.SkipForward}
	if n.cfg.Config.Backend.DirectRouting {
		rc.Uplink, rc.Underlay = n.cfg.UplinkName, n.cfg.Underlay
	}
	rules, err := n.newRules(rc, dp, l)
	if err == nil {
		_, err = rules.Ensure()
	}
	if err != nil {
		if g != nil {
			g.Close()
		}
		return nil, fmt.Errorf("installing iptables rules: %w", err)
	}
	n.rules = rules
	if g != nil {
		dp.SetGate(gate{n: n, g: g})
	}
	n.setIngress(g)
	return dp, nil
}

// watchPeers feeds whole peer snapshots from etcd into snaps until ctx ends.
// The node's own lease is told apart by Self, which follows the lease.
func (n *Node) watchPeers(ctx context.Context, snaps mailbox[snapshotIn]) {
	filter := subnet.PeerFilter{
		Config:   n.cfg.Config,
		Underlay: n.cfg.Underlay,
		VtepMAC:  n.cfg.Leases.VtepMAC,
		VtepMAC6: n.cfg.Leases.VtepMAC6,
		Self6: func() (netip.Prefix, netip.Addr) {
			n.mu.Lock()
			defer n.mu.Unlock()
			return n.st.Subnet6, n.cfg.Leases.PublicIP6
		},
		Foreign: func() []netip.Prefix {
			n.mu.Lock()
			defer n.mu.Unlock()
			return n.foreign
		},
		Refilter: n.refilter,
		Self: func() (netip.Prefix, netip.Addr) {
			n.mu.Lock()
			defer n.mu.Unlock()
			return n.st.Subnet, n.cfg.PublicIP
		},
	}
	err := n.cfg.Watcher.WatchPeers(ctx, filter, func(s subnet.Snapshot) {
		snaps.put(snapshotIn{snap: s, at: time.Now()})
	})
	if err != nil && ctx.Err() == nil {
		n.log.Error("peer watch stopped", "err", err)
	}
}

// subscribe has the data plane kick the loop on kernel changes until ctx ends.
func (n *Node) subscribe(ctx context.Context, wg *sync.WaitGroup, dp Dataplane, kicks mailbox[struct{}]) {
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			// Subscribe returns once the subscriptions are in place; they
			// last, renewing themselves, until ctx ends.
			err := dp.Subscribe(ctx, func() { kicks.put(struct{}{}) })
			if err == nil || ctx.Err() != nil {
				return
			}
			n.m.netlinkErrors.WithLabelValues("subscribe").Inc()
			n.log.Warn("subscribing to kernel events, will retry", "err", err)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
}

// apply programs a snapshot and reports whether the kernel now matches it.
// The data plane tells the ingress filter of the peers it adds and removes
// (see gate); once a snapshot is programmed the filter settles.
func (n *Node) apply(ctx context.Context, dp Dataplane, peers []backend.Peer, received time.Time) bool {
	n.setDone.Store(false)
	err := dp.Set(ctx, peers)
	// Every wanted peer is admitted once a Set compared its peers, even if
	// some kernel change failed (the gate heard its last Release): the
	// addresses a weftd before left go then, not at the first Set that
	// fully succeeds, which one failing peer could put off for good.
	if g := n.getIngress(); g != nil && (err == nil || n.setDone.Load()) {
		if serr := g.Settle(); serr != nil {
			n.ingressFailed("removing the addresses of former peers from the VXLAN ingress filter", serr)
		}
	}
	if err != nil {
		n.m.netlinkErrors.WithLabelValues("set").Inc()
		n.log.Error("programming peers", "peers", len(peers), "err", err)
		n.setPeers(len(peers), -1)
		return false
	}
	n.m.programLatency.Observe(time.Since(received).Seconds())
	n.setPeers(len(peers), len(peers))
	n.log.Debug("programmed peers", "peers", len(peers))
	return true
}

// gate is the data plane's backend.Gate to the ingress filter: a failure is
// counted and logged, and the rules goroutine's next check of the filter
// compares its elements and writes it whole from the counts.
type gate struct {
	n *Node
	g IngressFilter
}

func (a gate) Admit(addrs []netip.Addr) {
	if err := a.g.Admit(addrs); err != nil {
		a.n.ingressFailed("admitting peers to the VXLAN ingress filter", err)
	}
}

func (a gate) Release(addrs []netip.Addr) {
	a.n.setDone.Store(true)
	if len(addrs) == 0 {
		return
	}
	if err := a.g.Release(addrs); err != nil {
		a.n.ingressFailed("removing departed peers from the VXLAN ingress filter", err)
	}
}

func (n *Node) ingressFailed(what string, err error) {
	n.m.netlinkErrors.WithLabelValues("ingress").Inc()
	n.log.Error(what, "err", err)
}

// check re-creates the device if it was broken and repairs the entries.
func (n *Node) check(ctx context.Context, dp Dataplane, peers []backend.Peer, haveSnap bool) bool {
	start := time.Now()
	// Reconcile ensures the device first: a deleted or altered flannel.1 is
	// recreated and refilled, and counted as a link repair.
	repairs, err := dp.Reconcile(ctx)
	n.m.reconcileDuration.Observe(time.Since(start).Seconds())
	total := 0
	args := []any{}
	for _, kind := range []string{"link", "fdb", "neigh", "route"} {
		if k := repairs[kind]; k > 0 {
			n.m.repairs.WithLabelValues(kind).Add(float64(k))
			total += k
			args = append(args, kind, k)
		}
	}
	if total > 0 {
		n.log.Info("repaired the data plane", append([]any{"device", dp.Name(), "total", total}, args...)...)
	}
	if err != nil {
		n.m.netlinkErrors.WithLabelValues("reconcile").Inc()
		n.log.Error("reconciling the data plane", "err", err)
		return false
	}
	if !haveSnap {
		return false
	}
	n.m.lastReconcile.SetToCurrentTime()
	n.mu.Lock()
	n.st.LastReconcile = time.Now()
	n.mu.Unlock()
	n.setPeers(len(peers), len(peers))
	return true
}

func (n *Node) ensureRules(r RuleSet) {
	k, err := r.Ensure()
	if k > 0 {
		n.m.repairs.WithLabelValues("rule").Add(float64(k))
		n.log.Info("repaired iptables rules", "fixed", k)
	}
	if err != nil {
		n.log.Error("checking iptables rules", "err", err)
	}
}

func (n *Node) writeEnv(dp Dataplane, l subnet.Lease) {
	env := leaseEnv(n.cfg.Config, l)
	env.MTU, env.IPMasq, env.EtcdLease = dp.MTU(), n.cfg.IPMasq, l.EtcdLeaseID
	if err := WriteSubnetEnv(n.cfg.SubnetFile, env); err != nil {
		n.log.Error("writing the subnet file", "err", err)
		return
	}
	n.log.Info("data plane ready", "subnet", l.Subnet, "mtu", env.MTU, "subnet_file", n.cfg.SubnetFile)
	n.markEnvWritten(true)
}

// refreshForeign reads the host's routes weft did not make again, and asks
// the peer watch to check every lease if they changed: an operator's route
// to a peer's subnet makes weft skip that peer (and leave the route alone).
func (n *Node) refreshForeign() {
	if n.cfg.HostPrefixes == nil {
		return
	}
	f, err := n.cfg.HostPrefixes()
	if err != nil {
		n.log.Debug("listing the host's routes", "err", err)
		return
	}
	n.mu.Lock()
	changed := !slices.Equal(f, n.foreign)
	if changed {
		n.foreign = f
	}
	n.mu.Unlock()
	if changed {
		select {
		case n.refilter <- struct{}{}:
		default:
		}
	}
}
