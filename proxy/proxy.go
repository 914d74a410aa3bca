package proxy

import (
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"runtime/debug"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/service"
)

// Config is what the proxy is told at start.
type Config struct {
	// Overlay is the cluster network. An endpoint inside it is served only
	// while a live lease holds its subnet (see SetLive); with no Overlay,
	// every endpoint is served.
	Overlay netip.Prefix
	// Underlay lists the hosts' own networks. No lease ever covers them
	// (even inside Overlay, as in the reference layout), so an endpoint on
	// a host address is always served.
	Underlay []netip.Prefix
	// CheckInterval is how often the table is compared with what weft
	// programmed (default 5s); changes by others are noticed at once anyway.
	CheckInterval time.Duration
	// NetNS, when set, is the namespace to program instead of the current
	// one (tests).
	NetNS netns.NsHandle
	Log   *slog.Logger
	// Metrics, when set, receives the proxy's series.
	Metrics prometheus.Registerer
}

// Proxy keeps the kernel's service rules in step with the registry.
type Proxy struct {
	cfg Config
	log *slog.Logger
	m   *metrics
	// freeAfter fires a second after the last big batch; the loop's
	freeAfter *time.Timer
	burst     int // element changes since the memory was last returned
	kick      chan struct{}
	foreign   chan struct{} // someone else changed the table
	tw        *tableWatch   // nil without a subscription; the loop's
	recheck   chan struct{} // the table may have changed

	mu       sync.Mutex // guards the fields below, written by the watchers
	pending  service.Change
	havePend bool
	subnets  []netip.Prefix
	own      netip.Prefix
	ownNew   bool
	liveNew  bool
	haveLive bool
	st       Status

	// the loop's own state
	services  map[string]*service.Service
	endpoints map[string]*service.Endpoints
	network   netip.Prefix
	lv        *live               // built from lvSubnets when a plan first needs it
	lvSubnets []netip.Prefix      // the live subnets of the last SetLive
	desired   map[string]*svcPort // by port key
	byRef     map[string][]string // service -> its port keys
}

// Status is what the proxy tells /status and the tests.
type Status struct {
	Services   int       // service ports programmed
	Revision   int64     // etcd revision of the services programmed
	LastChange time.Time // when the kernel last changed
	Rebuilds   int       // whole-table rebuilds (start, repairs)
	Err        string    // the last programming error, if the last attempt failed
}

// New returns a proxy ready to Run.
func New(cfg Config) *Proxy {
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = 5 * time.Second
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	return &Proxy{
		cfg: cfg, log: cfg.Log.With("component", "services"), m: newMetrics(cfg.Metrics), kick: make(chan struct{}, 1), foreign: make(chan struct{}, 1), recheck: make(chan struct{}, 1),
		services: map[string]*service.Service{}, endpoints: map[string]*service.Endpoints{},
		desired: map[string]*svcPort{}, byRef: map[string][]string{},
	}
}

func (p *Proxy) wake() {
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// Update hands the proxy a change from service.Store.Watch.
func (p *Proxy) Update(c service.Change) {
	p.mu.Lock()
	if p.havePend {
		p.pending.Merge(c)
	} else {
		p.pending, p.havePend = c, true
	}
	p.mu.Unlock()
	p.wake()
}

// SetLive tells the proxy which subnets have a live lease: the node's own
// and its peers'. Until the first call no rule is programmed, so that a
// restarted weftd never drops a live node's endpoints for a moment. A client
// in the node's own subnet reaching a backend in it is masqueraded: the
// backend's answer would otherwise cross the bridge straight back, around
// the DNAT.
func (p *Proxy) SetLive(own netip.Prefix, peers []netip.Prefix) {
	byAddr := func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) }
	s := make([]netip.Prefix, 0, len(peers)+1)
	s = append(s, peers...)
	if !slices.IsSortedFunc(s, byAddr) { // peer snapshots come sorted
		slices.SortFunc(s, byAddr)
	}
	i, _ := slices.BinarySearchFunc(s, own, byAddr)
	s = slices.Insert(s, i, own)
	p.mu.Lock()
	if !p.haveLive || !slices.Equal(s, p.subnets) || own != p.own {
		p.subnets, p.liveNew, p.haveLive = s, true, true
	}
	if own != p.own {
		p.own, p.ownNew = own, true
	}
	p.mu.Unlock()
	p.wake()
}

// Status returns the proxy's state.
func (p *Proxy) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// Run programs the services until ctx ends. On a stop it leaves the rules in
// place: a restarted weftd adopts them by replacing the table in one
// transaction, so no connection sees a moment without them.
func (p *Proxy) Run(ctx context.Context) error {
	conn, nl, err := p.open()
	if err != nil {
		return err
	}
	defer func() { _ = conn.CloseLasting() }()
	defer nl.Close()
	k := newKernel(conn)

	tw, err := openTableWatch(int(p.cfg.NetNS))
	if err != nil {
		p.log.Warn("not watching nf_tables changes; relying on the periodic check", "err", err)
		tw = nil
	} else {
		defer tw.close()
		done := make(chan struct{})
		defer func() { <-done }()
		go func() {
			defer close(done)
			err := tw.run(ctx, p.log, func(sure bool) {
				ch := p.recheck
				if sure {
					ch = p.foreign
				}
				select {
				case ch <- struct{}{}:
				default:
				}
			})
			if err != nil && ctx.Err() == nil {
				p.log.Warn("stopped watching nf_tables changes; relying on the periodic check", "err", err)
			}
		}()
	}
	p.tw = tw
	check := time.NewTicker(p.cfg.CheckInterval)
	defer check.Stop()
	p.freeAfter = time.NewTimer(time.Hour)
	p.freeAfter.Stop()
	defer p.freeAfter.Stop()
	started, broken := false, true
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.kick:
		case <-p.foreign:
			// A rebuild is one transaction and always right, whatever
			// was done to the table.
			if started && !broken {
				p.log.Info("service rules changed by someone else; rebuilding")
				broken = true
			}
		case <-p.recheck:
			if started && !broken {
				if why := p.verify(conn, k); why != "" {
					p.log.Info("service rules changed by someone else; rebuilding", "what", why)
					broken = true
				}
			}
		case <-p.freeAfter.C:
			debug.FreeOSMemory()
			p.burst = 0
			continue
		case <-check.C:
			if started && !broken {
				if why := p.verify(conn, k); why != "" {
					p.log.Info("service rules changed by someone else; rebuilding", "what", why)
					broken = true
				}
				p.route(nl)
			}
		}
		p.mu.Lock()
		ch, haveCh := p.pending, p.havePend
		p.pending, p.havePend = service.Change{}, false
		subnets, liveNew, haveLive, own, ownNew := p.subnets, p.liveNew, p.haveLive, p.own, p.ownNew
		p.liveNew, p.ownNew = false, false
		p.mu.Unlock()

		if haveCh {
			p.absorb(ch)
			if ch.Full || ch.Network != p.network {
				broken = broken || ch.Network != p.network
				p.network = ch.Network
			}
		}
		if liveNew {
			// Built when a plan needs it: a node without services pays
			// nothing for a peer change.
			p.lv, p.lvSubnets = nil, subnets
		}
		if ownNew {
			broken = true // the masquerade rule names the node's subnet
		}
		if !haveLive && p.cfg.Overlay.IsValid() || p.network == (netip.Prefix{}) {
			continue // not ready: touch nothing yet
		}
		if !started || broken {
			if !started || liveNew || haveCh {
				p.replanAll()
			}
			p.route(nl)
			start := time.Now()
			err := k.rebuild(p.network, own, p.desired)
			p.log.Debug("rebuild queued", "took", time.Since(start))
			if err == nil {
				err = p.commit(k, nl, ch.Revision)
			}
			if err != nil {
				p.log.Error("rebuilding the service rules, will retry", "err", err)
				conn, k = p.reopen(conn, k)
				select {
				case <-ctx.Done():
					return nil
				case <-time.After(time.Second):
				}
				p.wake()
				continue
			}
			p.mu.Lock()
			p.st.Rebuilds++
			p.mu.Unlock()
			p.m.rebuilds.Inc()
			p.log.Info("service rules programmed", "ports", len(k.prog), "took", time.Since(start).Round(time.Millisecond))
			started, broken = true, false
			continue
		}
		if liveNew && !haveCh && len(p.services) == 0 && len(k.prog) == 0 {
			continue // no service to replan for a peer change
		}
		if liveNew || ch.Full {
			// A new live set, or a fresh listing (after an etcd outage or
			// compaction): anything may differ, deletions included.
			p.replanAll()
			for key := range k.prog {
				p.diffKey(k, key)
			}
			for key := range p.desired {
				p.diffKey(k, key)
			}
		} else if haveCh {
			for ref := range ch.Services {
				p.replan(k, ref)
			}
			for ref := range ch.Endpoints {
				if _, done := ch.Services[ref]; !done {
					p.replan(k, ref)
				}
			}
		}
		if haveCh || liveNew {
			if err := p.commit(k, nl, ch.Revision); err != nil {
				conn, k = p.reopen(conn, k)
				broken = true
				p.wake()
			}
		}
	}
}

// liveSet is the live subnets as plans read them, built on first use after
// each SetLive.
func (p *Proxy) liveSet() *live {
	if p.lv == nil && p.lvSubnets != nil {
		p.lv = newLive(p.cfg.Overlay, p.cfg.Underlay, p.lvSubnets)
	}
	return p.lv
}

// route makes sure the host can send to the service network (see ensureRoute).
func (p *Proxy) route(nl *netlink.Handle) {
	if added, err := ensureRoute(nl, p.network); err != nil {
		p.log.Warn("service network route", "err", err)
	} else if added {
		p.log.Info("added a route for the service network", "network", p.network, "dev", "lo")
	}
}

func (p *Proxy) open() (*nftables.Conn, *netlink.Handle, error) {
	conn, err := nftConn(int(p.cfg.NetNS))
	if err != nil {
		return nil, nil, err
	}
	var nl *netlink.Handle
	if p.cfg.NetNS != 0 {
		nl, err = netlink.NewHandleAt(p.cfg.NetNS)
	} else {
		nl, err = netlink.NewHandle()
	}
	if err != nil {
		_ = conn.CloseLasting()
		return nil, nil, fmt.Errorf("opening rtnetlink: %w", err)
	}
	return conn, nl, nil
}

// bigBatch is the number of element changes in a burst of commits above
// which the loop returns the garbage to the OS, a second after the burst.
const bigBatch = 20000

// reopen drops a connection whose batch failed, with whatever it queued.
func (p *Proxy) reopen(conn *nftables.Conn, k *kernel) (*nftables.Conn, *kernel) {
	_ = conn.CloseLasting()
	for {
		c, err := nftConn(int(p.cfg.NetNS))
		if err == nil {
			return c, newKernel(c)
		}
		p.log.Error("reopening nf_tables netlink", "err", err)
		time.Sleep(time.Second)
	}
}

// commit sends the queued batch, then deletes the UDP flows it calls for.
func (p *Proxy) commit(k *kernel, nl *netlink.Handle, rev int64) error {
	t0 := time.Now()
	nadd := 0
	for _, e := range k.addElems {
		nadd += len(e)
	}
	for _, e := range k.delElems {
		nadd += len(e)
	}
	p.tw.pause()
	flows, err := k.commit()
	p.tw.resume()
	p.m.commit.Observe(time.Since(t0).Seconds())
	if err != nil {
		p.m.errors.Inc()
	} else {
		p.m.ports.Set(float64(len(k.prog)))
	}
	p.log.Debug("committed", "took", time.Since(t0), "elements", nadd)
	if p.burst += nadd; p.burst > bigBatch {
		// A batch this size leaves tens of MiB of garbage (the messages,
		// the plan) that the runtime would keep mapped for minutes: give it
		// back once the burst is over, so that a node's footprint is its
		// steady state.
		p.freeAfter.Reset(time.Second)
	}
	p.mu.Lock()
	if err != nil {
		p.st.Err = err.Error()
	} else {
		p.st.Err = ""
		p.st.Services = len(k.prog)
		p.st.LastChange = time.Now()
		if rev > 0 {
			p.st.Revision = rev
		}
	}
	p.mu.Unlock()
	if err != nil {
		p.log.Error("programming service rules; rebuilding the table", "err", err)
		return err
	}
	if n, err := deleteFlows(nl, flows); err != nil {
		p.log.Warn("conntrack clean-up", "err", err)
	} else if n > 0 {
		p.log.Debug("deleted UDP conntrack entries of removed endpoints", "entries", n)
	}
	return nil
}

// absorb applies a registry change to the proxy's copy of the registry.
func (p *Proxy) absorb(c service.Change) {
	if c.Full {
		p.services = map[string]*service.Service{}
		p.endpoints = map[string]*service.Endpoints{}
	}
	for ref, s := range c.Services {
		if s == nil {
			delete(p.services, ref)
		} else {
			p.services[ref] = s
		}
	}
	for ref, e := range c.Endpoints {
		if e == nil {
			delete(p.endpoints, ref)
		} else {
			p.endpoints[ref] = e
		}
	}
}

// replanAll recomputes every port's desired state.
func (p *Proxy) replanAll() {
	p.desired = make(map[string]*svcPort, len(p.desired))
	p.byRef = make(map[string][]string, len(p.services))
	for ref, s := range p.services {
		for _, sp := range plan(s, p.endpoints[ref], p.liveSet()) {
			p.desired[sp.key] = sp
			p.byRef[ref] = append(p.byRef[ref], sp.key)
		}
	}
}

// replan recomputes one service's ports and queues their changes.
func (p *Proxy) replan(k *kernel, ref string) {
	old := p.byRef[ref]
	for _, key := range old {
		delete(p.desired, key)
	}
	delete(p.byRef, ref)
	for _, sp := range plan(p.services[ref], p.endpoints[ref], p.liveSet()) {
		p.desired[sp.key] = sp
		p.byRef[ref] = append(p.byRef[ref], sp.key)
	}
	for _, key := range old {
		p.diffKey(k, key)
	}
	for _, key := range p.byRef[ref] {
		p.diffKey(k, key)
	}
}

// diffKey queues the change of one port if the kernel differs from desired.
func (p *Proxy) diffKey(k *kernel, key string) {
	want, have := p.desired[key], k.prog[key]
	switch {
	case want == nil && have == nil:
	case want == nil:
		k.change(have, nil)
	case have == nil:
		k.change(nil, want)
	case !samePort(&have.svcPort, want):
		k.change(have, want)
	}
}

func samePort(a, b *svcPort) bool {
	return a.vip == b.vip && a.proto == b.proto && a.port == b.port && a.affinity == b.affinity && slices.Equal(a.backends, b.backends)
}
