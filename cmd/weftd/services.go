package main

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"runtime/debug"
	"slices"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/proxy"
	"github.com/weft-net/weft/service"
	"github.com/weft-net/weft/subnet"
)

// memoryLimit is weftd's soft memory limit with services on: the
// collector works harder only as the heap nears it. Lower (48 MiB) made the
// collector run without pause through a 10,000-service apply (4.5 s of
// weftd's time instead of 0.8 s); the steady state is lower anyway, as the
// proxy returns a burst's garbage to the OS after it.
const memoryLimit = 80 << 20

// services is weftd's service proxy, wired to what the node already knows:
// the services come from their own etcd watch, and which subnets have a live
// lease comes from the node's lease and peer snapshots (no second watch of
// the subnets).
type services struct {
	p     *proxy.Proxy
	store *service.Store
	log   *slog.Logger

	mu    sync.Mutex // guards the fields below
	own   netip.Prefix
	peers []netip.Prefix
	known bool // a peer snapshot has arrived
	// names holds the services there are: while there is none, the live
	// subnets go to the proxy only once (its first rules wait for them),
	// not with every peer change, which at 4,000 peers cost the node
	// three copies of every subnet and two more goroutines' wake-ups
	// for each change.
	names map[string]struct{}

	// changed wakes the goroutine that hands the live subnets to the
	// proxy: the peer watch only notes them, so a peer change reaches the
	// data plane without waiting for the proxy's bookkeeping.
	changed chan struct{}
}

func newServices(st *service.Store, overlay netip.Prefix, underlay []netip.Prefix, log *slog.Logger, reg prometheus.Registerer) *services {
	if os.Getenv("GOMEMLIMIT") == "" {
		// Tens of thousands of services make batches of garbage far larger
		// than weftd's live heap; without a limit the collector lets the
		// heap double past the live set. GOMEMLIMIT overrides.
		debug.SetMemoryLimit(memoryLimit)
	}
	return &services{p: proxy.New(proxy.Config{Overlay: overlay, Underlay: underlay, Log: log, Metrics: reg}), store: st, log: log,
		changed: make(chan struct{}, 1), names: map[string]struct{}{}}
}

// run runs the watch and the proxy until ctx ends.
func (s *services) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := s.store.Watch(ctx, s.log, s.update); err != nil {
			s.log.Error("service watch stopped", "err", err)
		}
	})
	wg.Go(func() {
		if err := s.p.Run(ctx); err != nil {
			s.log.Error("service proxy stopped", "err", err)
		}
	})
	wg.Go(func() {
		var buf []netip.Prefix
		var sentOwn netip.Prefix // the own subnet of the last SetLive
		for {
			select {
			case <-ctx.Done():
				return
			case <-s.changed:
			}
			own, ok := s.live(sentOwn, &buf)
			if !ok {
				continue
			}
			s.p.SetLive(own, buf) // SetLive keeps a copy of its own
			sentOwn = own
		}
	})
	wg.Wait()
}

// live copies the live subnets into *buf when the proxy needs them: once
// the node's subnet and a peer snapshot are known, the first time and
// whenever the node's subnet changed (sentOwn is the one last sent), and
// with every peer change while there are services.
func (s *services) live(sentOwn netip.Prefix, buf *[]netip.Prefix) (netip.Prefix, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.known || !s.own.IsValid() || (len(s.names) == 0 && s.own == sentOwn) {
		return netip.Prefix{}, false
	}
	*buf = append((*buf)[:0], s.peers...)
	return s.own, true
}

// update passes a change of the services to the proxy, noting which
// services there are; the first one goes with the live subnets of the
// moment.
func (s *services) update(c service.Change) {
	s.mu.Lock()
	had := len(s.names) > 0
	if c.Full {
		clear(s.names)
	}
	for name, svc := range c.Services {
		if svc == nil {
			delete(s.names, name)
		} else {
			s.names[name] = struct{}{}
		}
	}
	first := !had && len(s.names) > 0
	var own netip.Prefix
	var peers []netip.Prefix
	if first && s.known && s.own.IsValid() {
		own, peers = s.own, slices.Clone(s.peers)
	}
	s.mu.Unlock()
	if own.IsValid() {
		// Before the proxy hears of the service: it must not program
		// it with the subnets of start-up, which it holds until then.
		s.p.SetLive(own, peers)
	}
	s.p.Update(c)
}

// tell wakes the goroutine that passes the live subnets to the proxy.
func (s *services) tell() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

// leaseTee wraps the lease holder to learn the node's own subnet.
type leaseTee struct {
	inner interface {
		Hold(ctx context.Context, req subnet.HoldRequest) error
	}
	s *services
}

func (t *leaseTee) Hold(ctx context.Context, req subnet.HoldRequest) error {
	next := req.OnLease
	req.OnLease = func(l subnet.Lease) {
		t.s.mu.Lock()
		t.s.own = l.Subnet
		t.s.mu.Unlock()
		t.s.tell()
		if next != nil {
			next(l)
		}
	}
	return t.inner.Hold(ctx, req)
}

// peerTee passes the node's peer snapshots on, noting their subnets first.
type peerTee struct {
	*subnet.Registry
	s *services
}

func (t *peerTee) WatchPeers(ctx context.Context, f subnet.PeerFilter, out func(subnet.Snapshot)) error {
	return t.Registry.WatchPeers(ctx, f, func(snap subnet.Snapshot) {
		// The subnets are noted before the snapshot goes on: the loop
		// recycles its memory once the next one arrives.
		t.s.mu.Lock()
		t.s.peers = t.s.peers[:0]
		for i := range snap.Peers {
			t.s.peers = append(t.s.peers, snap.Peers[i].Subnet)
		}
		t.s.known = true
		t.s.mu.Unlock()
		// The proxy's goroutine is woken first: of two goroutines this
		// one wakes, Go's scheduler runs the later one next, and that
		// must be the data plane's loop (it waited 0.13 ms for the
		// proxy's bookkeeping of 4,000 subnets otherwise).
		t.s.tell()
		out(snap)
	})
}
