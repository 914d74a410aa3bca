package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/backend/vxlan"
	wnet "github.com/weft-net/weft/network"
	"github.com/weft-net/weft/subnet"
)

// Pipeline is where the time of one hot change goes. The bench runs weftd's
// path in its own process, with the same packages: subnet.Registry's peer
// watch, whose snapshot's peers network.Node hands to the data plane as
// they are, and vxlan.Device.Set on a device in a namespace of its own, and times each
// step of every single add and delete; a raw etcd watch on the same prefix
// tells when etcd delivered the change. A CPU profile of those changes is
// written to weft-bench-pipeline.pprof in the temporary directory. Then the
// same for a burst of 1,000 leases in one transaction, and for the start-up.
type Pipeline struct {
	N int `json:"n"`
	// From the Put or Delete returning to the raw watch's event.
	Delivery Percentiles `json:"etcd_delivery"`
	// From the raw event to the registry's Snapshot reaching the caller:
	// subnet.(*peerState).snapshot and whatever precedes it.
	Snapshot Percentiles `json:"snapshot"`
	// vxlan.Device.Set with one change among N.
	Set Percentiles `json:"set"`
	// network.Ingress: Admit before the Set and its prune after, with one
	// change among N (the VXLAN ingress filter's share of the path).
	Ingress Percentiles `json:"ingress"`
	// The whole path, Put returning to Set returning.
	Total   Percentiles `json:"total"`
	Profile string      `json:"profile,omitempty"`

	// The start-up path with N leases in etcd: subnet.Registry.Hold to its
	// first lease, WatchPeers to its first Snapshot (the listing, parsing
	// and filtering of N leases), and the Set of that snapshot.
	ColdHold     Dur `json:"cold_hold_ms"`
	ColdSnapshot Dur `json:"cold_snapshot_ms"`
	ColdSet      Dur `json:"cold_set_ms"`
	ColdIngress  Dur `json:"cold_ingress_ms"` // the first Admit: N addresses into the set

	// A burst of BurstK leases in one transaction, added then deleted.
	BurstK   int         `json:"burst_k"`
	BurstAdd burstStamps `json:"burst_add"`
	BurstDel burstStamps `json:"burst_delete"`
}

func (p *Pipeline) table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "one change at %d peers, in process\tp50\tp90\tp99\tmax\n", p.N)
	for _, row := range []struct {
		name string
		p    Percentiles
	}{
		{"etcd: call returns -> watch event", p.Delivery},
		{"subnet: event -> Snapshot delivered", p.Snapshot},
		{"vxlan: Set", p.Set},
		{"ingress filter: Admit + prune", p.Ingress},
		{"total: call returns -> Set returns", p.Total},
	} {
		fmt.Fprintf(tw, "%s\t%v\t%v\t%v\t%v\n", row.name, row.p.P50, row.p.P90, row.p.P99, row.p.Max)
	}
	tw.Flush()
	for _, b := range []struct {
		name string
		s    burstStamps
	}{{"adds", p.BurstAdd}, {"deletes", p.BurstDel}} {
		fmt.Fprintf(w, "burst of %d %s, in process: etcd %v, subnet %v, vxlan Set %v, ingress filter %v; total %v\n",
			p.BurstK, b.name, b.s.Delivery, b.s.Snapshot, b.s.Set, b.s.Ingress, b.s.Total)
	}
	fmt.Fprintf(w, "start-up at %d peers, in process: Hold to its lease %v; WatchPeers to its first Snapshot %v; Set of it %v; ingress filter's first Admit %v\n",
		p.N, p.ColdHold, p.ColdSnapshot, p.ColdSet, p.ColdIngress)
	if p.Profile != "" {
		fmt.Fprintf(w, "CPU profile of these changes: go tool pprof -top %s\n", p.Profile)
	}
}

// pipeline measures rounds single adds and deletes of free peers through
// the in-process path, against nd's etcd (which holds the N peers). weftd
// must not run meanwhile.
func (e *env) pipeline(ctx context.Context, nd *node, n int, free []synth, rounds int) (*Pipeline, error) {
	cfg, err := subnet.ParseConfig([]byte(network))
	if err != nil {
		return nil, err
	}
	h, err := e.c.AddHost(ctx, "pipe", netip.MustParsePrefix("10.250.0.2/16"))
	if err != nil {
		return nil, err
	}
	idx, err := linkIndex(ctx, h, "eth0")
	if err != nil {
		return nil, err
	}
	nsh, err := netns.GetFromName(h.NS)
	if err != nil {
		return nil, err
	}
	defer nsh.Close()
	own := free[len(free)-1] // never added to etcd: the pipeline's own subnet
	free = free[:len(free)-1]
	dev, err := vxlan.New(vxlan.Config{
		Local: netip.MustParseAddr("10.250.0.2"), UplinkIndex: idx,
		MAC: net.HardwareAddr{0x0e, 0x55, 0, 0, 0, 2}, Subnet: own.subnet,
	}, slog.New(slog.DiscardHandler), vxlan.WithNamespace(nsh))
	if err != nil {
		return nil, err
	}
	defer dev.Close()
	defer func() { _, _ = h.IP(context.Background(), "link", "del", "flannel.1") }()
	if _, err := dev.Ensure(ctx); err != nil {
		return nil, err
	}
	// The VXLAN ingress filter, as network.Node drives it: Admit before Set,
	// prune after.
	ing, err := wnet.NewIngress(wnet.IngressConfig{
		Network: netip.MustParsePrefix("172.16.0.0/12"), Subnet: own.subnet, Device: "flannel.1", Port: 8472, NetNSFd: int(nsh),
	}, nil)
	if err != nil {
		return nil, err
	}
	defer ing.Close()
	if _, err := ing.Ensure(); err != nil {
		return nil, err
	}

	// Every step's time, by etcd revision.
	type stamps struct {
		event, snap, set time.Time
		ingress          time.Duration
	}
	var mu sync.Mutex
	byRev := map[int64]*stamps{}
	at := func(rev int64) *stamps {
		s := byRev[rev]
		if s == nil {
			s = &stamps{}
			byRev[rev] = s
		}
		return s
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()

	raw := nd.cli.Watch(wctx, prefix+"/subnets/", clientv3.WithPrefix())
	wg.Go(func() {
		for wr := range raw {
			now := time.Now()
			mu.Lock()
			at(wr.Header.Revision).event = now
			mu.Unlock()
		}
	})
	setDone := make(chan int64, 16)
	reg := subnet.NewRegistry(nd.cli, prefix, nil, nil)

	// Start-up: the node's own lease first, as network.Node does.
	held := make(chan struct{}, 1)
	holdStart := time.Now()
	wg.Go(func() {
		pub := netip.MustParseAddr("10.250.0.2")
		_ = reg.Hold(wctx, subnet.HoldRequest{
			Config: cfg, PublicIP: pub, VtepMAC: net.HardwareAddr{0x0e, 0x55, 0, 0, 0, 2}, TTL: time.Minute,
			Previous: own.subnet, OnLease: func(subnet.Lease) {
				select {
				case held <- struct{}{}:
				default:
				}
			},
		})
	})
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		return nil, errors.New("pipeline: no lease within 10 s")
	}
	coldHold := time.Since(holdStart)
	var coldSnap, coldSet, coldIngress time.Duration
	watchStart := time.Now()
	filter := subnet.PeerFilter{
		Config: cfg, Underlay: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")},
		Self: func() (netip.Prefix, netip.Addr) { return own.subnet, netip.MustParseAddr("10.250.0.2") },
	}
	var prev subnet.Snapshot
	wg.Go(func() {
		_ = reg.WatchPeers(wctx, filter, func(s subnet.Snapshot) {
			t0 := time.Now()
			first := coldSnap == 0
			if first {
				coldSnap = t0.Sub(watchStart)
			}
			// As network.Node: the ingress filter admits the peers, they go
			// to Set as they are, the filter prunes the departed, and the
			// previous snapshot's memory goes back to the registry.
			prune, aerr := ing.Admit(s.Peers)
			ta := time.Since(t0)
			err := dev.Set(wctx, s.Peers)
			tp := time.Now()
			if aerr == nil {
				aerr = prune()
			}
			t1 := time.Now()
			if aerr != nil && wctx.Err() == nil {
				logf("pipeline: ingress: %v", aerr)
			}
			reg.Recycle(prev)
			prev = s
			mu.Lock()
			st := at(s.Revision)
			st.snap, st.set, st.ingress = t0, t1, ta+t1.Sub(tp)
			if first {
				coldSet, coldIngress = t1.Sub(t0)-st.ingress, ta
			}
			mu.Unlock()
			if err != nil && wctx.Err() == nil {
				logf("pipeline: Set: %v", err)
			}
			select {
			case setDone <- s.Revision:
			default:
			}
		})
	})
	// The first snapshot programs the N peers.
	if err := waitRev(ctx, setDone, 0); err != nil {
		return nil, fmt.Errorf("pipeline: first snapshot: %w", err)
	}

	profPath := filepath.Join(os.TempDir(), "weft-bench-pipeline.pprof")
	prof, err := os.Create(profPath)
	if err != nil {
		return nil, err
	}
	defer prof.Close()
	if err := pprof.StartCPUProfile(prof); err != nil {
		return nil, err
	}
	var deliv, snap, set, ingress, total []time.Duration
	record := func(rev int64, called time.Time) {
		mu.Lock()
		st := *at(rev)
		mu.Unlock()
		if !st.event.IsZero() { // the raw watch may merge two revisions
			deliv = append(deliv, st.event.Sub(called))
			snap = append(snap, st.snap.Sub(st.event))
		}
		set = append(set, st.set.Sub(st.snap)-st.ingress)
		ingress = append(ingress, st.ingress)
		total = append(total, st.set.Sub(called))
	}
	for i := range rounds {
		p := free[i%len(free)]
		resp, err := nd.cli.Put(ctx, p.key(), p.value(), clientv3.WithLease(nd.etcdLease))
		called := time.Now()
		if err != nil {
			pprof.StopCPUProfile()
			return nil, err
		}
		if err := waitRev(ctx, setDone, resp.Header.Revision); err != nil {
			pprof.StopCPUProfile()
			return nil, err
		}
		record(resp.Header.Revision, called)
		time.Sleep(5 * time.Millisecond)
		dresp, err := nd.cli.Delete(ctx, p.key())
		called = time.Now()
		if err != nil {
			pprof.StopCPUProfile()
			return nil, err
		}
		if err := waitRev(ctx, setDone, dresp.Header.Revision); err != nil {
			pprof.StopCPUProfile()
			return nil, err
		}
		record(dresp.Header.Revision, called)
		time.Sleep(5 * time.Millisecond)
	}
	pprof.StopCPUProfile()

	// A burst: k leases in one transaction, then deleted in one.
	burst := func(ops []clientv3.Op) (burstStamps, error) {
		resp, err := nd.cli.Txn(ctx).Then(ops...).Commit()
		called := time.Now()
		if err != nil {
			return burstStamps{}, err
		}
		if err := waitRev(ctx, setDone, resp.Header.Revision); err != nil {
			return burstStamps{}, err
		}
		mu.Lock()
		defer mu.Unlock()
		st := at(resp.Header.Revision)
		return burstStamps{Delivery: Dur(st.event.Sub(called)), Snapshot: Dur(st.snap.Sub(st.event)),
			Set: Dur(st.set.Sub(st.snap) - st.ingress), Ingress: Dur(st.ingress), Total: Dur(st.set.Sub(called))}, nil
	}
	some := e.burstPeers
	var puts, dels []clientv3.Op
	for _, p := range some {
		dels = append(dels, clientv3.OpDelete(p.key()))
		puts = append(puts, clientv3.OpPut(p.key(), p.value(), clientv3.WithLease(nd.etcdLease)))
	}
	if _, err := burst(dels); err != nil { // make room, unmeasured
		return nil, err
	}
	time.Sleep(200 * time.Millisecond)
	badd, err := burst(puts)
	if err != nil {
		return nil, err
	}
	time.Sleep(200 * time.Millisecond)
	bdel, err := burst(dels)
	if err != nil {
		return nil, err
	}

	mu.Lock()
	defer mu.Unlock()
	return &Pipeline{
		N: n, Delivery: percentiles(deliv), Snapshot: percentiles(snap),
		Set: percentiles(set), Ingress: percentiles(ingress), Total: percentiles(total), Profile: profPath,
		ColdHold: Dur(coldHold), ColdSnapshot: Dur(coldSnap), ColdSet: Dur(coldSet), ColdIngress: Dur(coldIngress),
		BurstAdd: badd, BurstDel: bdel, BurstK: len(some),
	}, nil
}

// burstStamps is where the time of one burst goes.
type burstStamps struct {
	Delivery Dur `json:"etcd_delivery_ms"`
	Snapshot Dur `json:"snapshot_ms"`
	Set      Dur `json:"set_ms"`
	Ingress  Dur `json:"ingress_ms"`
	Total    Dur `json:"total_ms"`
}

// waitRev waits until a Set for revision rev or later has returned.
func waitRev(ctx context.Context, done <-chan int64, rev int64) error {
	timeout := time.After(10 * time.Second)
	for {
		select {
		case r := <-done:
			if r >= rev {
				return nil
			}
		case <-timeout:
			return fmt.Errorf("no Set for revision %d within 10 s", rev)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
