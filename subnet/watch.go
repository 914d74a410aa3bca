package subnet

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/peer"
)

// PeerFilter says which leases are usable peers for this node.
type PeerFilter struct {
	Config Config
	// Self returns this node's subnet and public address; either may be
	// zero before the first lease. Called for every snapshot, so it may change.
	Self func() (netip.Prefix, netip.Addr)
	// Underlay lists the prefixes of the underlay network; a peer subnet
	// overlapping one would hijack underlay traffic and is rejected.
	Underlay []netip.Prefix
	// VtepMAC is this node's VTEP MAC, which no peer may claim.
	VtepMAC []byte
	// Self6 and VtepMAC6 are this node's IPv6 half in a dual-stack
	// network: its IPv6 subnet and address, and the MAC of its
	// flannel-v6 device. Self6 may be nil (no IPv6 half yet).
	Self6    func() (netip.Prefix, netip.Addr)
	VtepMAC6 []byte
	// Foreign returns the destinations of this node's routes and addresses
	// that weft did not make (see peer.Self); nil means none. It is called
	// for every full re-check, so it may change.
	Foreign func() []netip.Prefix
	// Refilter, when it delivers, makes the watch check every lease again
	// and send a snapshot: Foreign changed.
	Refilter <-chan struct{}
}

// Snapshot is the whole set of usable peers at an etcd revision.
type Snapshot struct {
	Peers    []Peer // sorted by subnet; own lease and invalid leases excluded
	Revision int64
}

// Peer is what the data plane needs of a valid lease: backend.Peer itself,
// so that the loop hands a snapshot's peers to the data plane as they are.
// Snapshots carry these rather than whole Leases: a snapshot of 4,000 peers
// is made for every change, and its size is garbage the collector must chase
// on the hot path.
type Peer = peer.Peer

func samePeer(p, q Peer) bool {
	return p.PublicIP == q.PublicIP && bytes.Equal(p.VtepMAC, q.VtepMAC) &&
		(p.V6 == nil) == (q.V6 == nil) && (p.V6 == nil || p.V6.Subnet == q.V6.Subnet && p.V6.PublicIP == q.V6.PublicIP && bytes.Equal(p.V6.VtepMAC, q.V6.VtepMAC))
}

// peerState is what WatchPeers knows between snapshots.
type peerState struct {
	r      *Registry
	f      PeerFilter
	valid  map[string]*Lease // key -> last value that passed the static checks
	logged map[string]int64  // key -> ModRevision last reported invalid
	last   []Peer            // the peers of the last snapshot, for count
	rev    int64
	listed bool         // a listing succeeded: later ones read on their own
	seen   atomic.Int64 // rev, for the probe goroutine
	// held keeps, for restoreGrace, the peers an etcd restored from a
	// backup or from nothing no longer lists: their nodes are alive and will
	// register again within seconds, and dropping them meanwhile would cut
	// traffic that still works. A new value or a delete event ends the hold.
	held map[string]heldLease

	// sorted is valid and held by subnet, the earliest claim of a subnet
	// only, kept up to date by put and delete while clean (else the next
	// snapshot rebuilds it); touched are the subnets changed since the last
	// snapshot, for count (nil: count everything). It points into valid
	// and held rather than copying leases: a third of the memory, and a
	// rebuild sorts pointers.
	sorted []*Lease
	clean  bool
	// out is sorted less the leases that fail the checks depending on who we
	// are: the peers of the next snapshot, kept up to date by put and delete
	// while outOK, so that one change costs O(log N) plus a copy.
	out   []Peer
	outOK bool
	dups  int // claims of an already claimed subnet that sorted left out
	// touched maps each subnet changed since the last snapshot to its key
	// (a dual-stack key names two subnets, so the key is not the subnet's
	// KeyName); a subnet touched under two keys makes it nil.
	touched map[netip.Prefix]string
	selfNet netip.Prefix // Self() at the last snapshot
	selfIP  netip.Addr
	self    peer.Self // the rules' view of this node, at the last full check
	// self6 is the rules' view of this node's IPv6 half (dual-stack), from
	// Self6 at the last full check.
	self6 peer.Self
	// winners6 is v6Winners at the last full check.
	winners6 map[claim6]*Lease
	selfSet  bool // the first snapshot was made

	// macs counts the valid leases by VtepMAC and blocks counts them by
	// the subnet-sized block their PublicIP falls in (when inside Network):
	// one lease's change can make another invalid (two claims on one MAC,
	// a PublicIP inside a leased subnet), and these say in O(1) when a
	// change needs the full check instead of the one-lease update.
	macs   map[[6]byte]int
	blocks map[netip.Prefix]int
	// claims6 counts the valid leases' IPv6 halves (dual-stack) by VtepMAC
	// and by subnet: what macs does for the first half, and the duplicate
	// claims that sorted settles for the first subnet.
	claims6 map[claim6]int
}

func newPeerState(r *Registry, f PeerFilter) *peerState {
	return &peerState{r: r, f: f, valid: map[string]*Lease{}, logged: map[string]int64{}, held: map[string]heldLease{},
		macs: map[[6]byte]int{}, blocks: map[netip.Prefix]int{}, claims6: map[claim6]int{}}
}

type heldLease struct {
	*Lease
	until time.Time
}

// WatchPeers lists the subnet keys, then watches them, and calls out with a
// whole Snapshot after the list and after every watch response. It re-lists
// when the watch is compacted, fails, or etcd comes back after an outage seen
// by a health probe (a read of the config key every few seconds). It returns
// ctx.Err() when ctx ends.
func (r *Registry) WatchPeers(ctx context.Context, f PeerFilter, out func(Snapshot)) error {
	if f.Config.SubnetLen == 0 {
		return errors.New("watching peers: config has no SubnetLen (use ParseConfig)")
	}
	if f.Self == nil {
		f.Self = func() (netip.Prefix, netip.Addr) { return netip.Prefix{}, netip.Addr{} }
	}
	ps := newPeerState(r, f)

	reconnect := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Go(func() { r.probe(ctx, reconnect, &ps.seen) })
	defer wg.Wait()

	bo := backoff{min: r.backoffMin, max: r.backoffMax}
	for ctx.Err() == nil {
		if err := ps.list(ctx); err != nil {
			if ctx.Err() == nil {
				r.log.Debug("listing peers failed", "err", err)
			}
			sleep(ctx, bo.next())
			continue
		}
		out(ps.snapshot())
		if r.hookAfterList != nil {
			r.hookAfterList()
		}
		reason := ps.watch(ctx, reconnect, out, &bo)
		if reason == "" {
			break
		}
		r.m.watchRestarts.WithLabelValues(reason).Inc()
		r.log.Debug("re-listing peers", "reason", reason)
		if reason == "error" {
			sleep(ctx, bo.next())
		}
	}
	return ctx.Err()
}

// list replaces the state with one read of the subnets prefix. A key that is
// invalid now but was valid before keeps its previous value.
func (ps *peerState) list(ctx context.Context) error {
	r := ps.r
	resp, err := r.listSubnets(ctx, !ps.listed)
	if err != nil {
		return err
	}
	ps.listed = true
	old := ps.valid
	ps.clean, ps.touched = false, nil // rebuilt and counted whole by the next snapshot
	ps.valid = make(map[string]*Lease, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		if prev, ok := old[string(kv.Key)]; ok {
			ps.valid[string(kv.Key)] = prev
		}
		ps.put(kv)
	}
	if restored := resp.Header.Revision < ps.rev; restored {
		until := time.Now().Add(r.restoreGrace)
		for k, l := range old {
			if _, listed := ps.valid[k]; !listed {
				ps.held[k] = heldLease{Lease: l, until: until}
			}
		}
		if len(ps.held) > 0 {
			r.log.Warn("etcd was restored: keeping peers it no longer lists until they register again",
				"peers", len(ps.held), "grace", r.restoreGrace)
		}
	}
	ps.rev = resp.Header.Revision
	ps.seen.Store(ps.rev)
	r.markSync()
	ps.clean, ps.touched, ps.outOK = false, nil, false
	clear(ps.macs)
	clear(ps.blocks)
	for _, l := range ps.valid {
		ps.account(l, 1)
	}
	for _, h := range ps.held { // held keys are never in valid
		ps.account(h.Lease, 1)
	}
	return nil
}

// account adds (d = 1) or takes away (d = -1) l's claims in macs and
// blocks, and reports whether another valid lease shares them, or has its
// PublicIP inside l's subnet: then other leases' verdicts may change with
// l, and only a full check can tell.
func (ps *peerState) account(l *Lease, d int) (shared bool) {
	if m := l.Attrs.VtepMAC; len(m) == 6 {
		k := [6]byte(m)
		before := ps.macs[k]
		ps.macs[k] = before + d
		if ps.macs[k] <= 0 {
			delete(ps.macs, k)
		}
		shared = max(before, before+d) > 1
	}
	if b, ok := ps.f.Config.Rules().Block(l.Attrs.PublicIP); ok {
		ps.blocks[b] += d
		if ps.blocks[b] <= 0 {
			delete(ps.blocks, b)
		}
	}
	if l.Subnet6.IsValid() && ps.f.Config.Dual() {
		for _, k := range []claim6{{mac: macKey(l.Attrs.VtepMAC6)}, {sub: l.Subnet6}} {
			before := ps.claims6[k]
			ps.claims6[k] = before + d
			if ps.claims6[k] <= 0 {
				delete(ps.claims6, k)
			}
			shared = shared || max(before, before+d) > 1
		}
	}
	return shared || ps.blocks[l.Subnet] > 0
}

// expireHeld drops held peers whose grace is over and returns the time the
// next one ends (zero if none is held).
func (ps *peerState) expireHeld(now time.Time) time.Time {
	var next time.Time
	for k, h := range ps.held {
		if !now.Before(h.until) {
			ps.account(h.Lease, -1)
			delete(ps.held, k)
			ps.clean, ps.touched = false, nil
			continue
		}
		if next.IsZero() || h.until.Before(next) {
			next = h.until
		}
	}
	return next
}

// put applies a new value for a key.
func (ps *peerState) put(kv *mvccpb.KeyValue) {
	l := parseKV(ps.r.subnetsPrefix(), kv.Key, kv.Value, kv.Lease, kv.CreateRevision, kv.ModRevision)
	if err := ps.f.Config.checkLease(l); err != nil {
		_, kept := ps.valid[l.Key]
		ps.invalid(l, err, kept)
		return
	}
	shared := false
	if old, ok := ps.valid[l.Key]; ok {
		shared = ps.account(old, -1)
	} else if h, held := ps.held[l.Key]; held {
		shared = ps.account(h.Lease, -1)
	}
	if ps.account(&l, 1) || shared {
		ps.outOK, ps.touched = false, nil // others' verdicts may change: check all
	}
	ps.valid[l.Key] = &l
	if _, held := ps.held[l.Key]; held {
		delete(ps.held, l.Key)
		ps.clean = false
	}
	ps.upsert(&l)
}

// touch records that l's subnet changed, under l's key.
func (ps *peerState) touch(l *Lease) {
	if ps.touched == nil {
		return
	}
	if k, ok := ps.touched[l.Subnet]; ok && k != l.Key {
		ps.clean, ps.touched = false, nil // two keys for one subnet: rebuild
		return
	}
	ps.touched[l.Subnet] = l.Key
}

// peerOf is the peer a valid lease makes: with its IPv6 half in a
// dual-stack network when it has one.
func (ps *peerState) peerOf(l *Lease) Peer {
	p := Peer{Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP, VtepMAC: l.Attrs.VtepMAC}
	if l.Subnet6.IsValid() && ps.f.Config.Dual() {
		p.V6 = &Peer{Subnet: l.Subnet6, PublicIP: l.Attrs.PublicIP6, VtepMAC: l.Attrs.VtepMAC6}
	}
	return p
}

// upsert puts l into sorted at its subnet.
func (ps *peerState) upsert(l *Lease) {
	ps.touch(l)
	if !ps.clean {
		return
	}
	i, found := slices.BinarySearchFunc(ps.sorted, l.Subnet, leaseAt)
	if found {
		if ps.sorted[i].Key != l.Key {
			ps.clean = false // a second claim on a subnet: let a rebuild decide
			return
		}
		ps.sorted[i] = l
	} else {
		ps.sorted = slices.Insert(ps.sorted, i, l)
	}
	if ps.outOK {
		ps.setOut(*l)
	}
}

func leaseAt(e *Lease, s netip.Prefix) int { return e.Subnet.Addr().Compare(s.Addr()) }

func peerAt(e Peer, s netip.Prefix) int { return e.Subnet.Addr().Compare(s.Addr()) }

// setOut puts l into out, or takes its subnet out if l fails the checks.
func (ps *peerState) setOut(l Lease) {
	j, found := slices.BinarySearchFunc(ps.out, l.Subnet, peerAt)
	if err := ps.checkDynamic(&l, nil); err != nil {
		if !errors.Is(err, errOwn) {
			ps.invalid(l, err, false)
		}
		if found {
			ps.out = slices.Delete(ps.out, j, j+1)
		}
		return
	}
	p := ps.peerOf(&l)
	if found {
		ps.out[j] = p
	} else {
		ps.out = slices.Insert(ps.out, j, p)
	}
}

// remove takes key's lease out of valid, held and sorted.
func (ps *peerState) remove(key string) {
	l, ok := ps.valid[key]
	if h, held := ps.held[key]; held && !ok {
		l, ok = h.Lease, true
	}
	if v, inValid := ps.valid[key]; inValid && ps.account(v, -1) {
		ps.outOK, ps.touched = false, nil
	} else if h, held := ps.held[key]; held && !inValid && ps.account(h.Lease, -1) {
		ps.outOK, ps.touched = false, nil
	}
	delete(ps.valid, key)
	delete(ps.held, key)
	delete(ps.logged, key)
	if !ok {
		return
	}
	ps.touch(l)
	if !ps.clean {
		return
	}
	if i, found := slices.BinarySearchFunc(ps.sorted, l.Subnet, leaseAt); found {
		if ps.sorted[i].Key != key {
			ps.clean = false // a left-out claim went: let a rebuild recount
			return
		}
		if ps.dups > 0 {
			ps.clean = false // another key may claim this subnet: let a rebuild decide
			return
		}
		ps.sorted = slices.Delete(ps.sorted, i, i+1)
		if j, found := slices.BinarySearchFunc(ps.out, l.Subnet, peerAt); found && ps.outOK {
			ps.out = slices.Delete(ps.out, j, j+1)
		}
	}
}

// invalid logs and counts a rejected lease once per key and ModRevision.
func (ps *peerState) invalid(l Lease, err error, kept bool) {
	if ps.logged[l.Key] == l.ModRevision {
		return
	}
	ps.logged[l.Key] = l.ModRevision
	ps.r.m.peerEvents.WithLabelValues("invalid").Inc()
	ps.r.log.Warn("ignoring invalid subnet lease", "key", clip(l.Key), "mod_revision", l.ModRevision,
		"err", err, "kept_previous_value", kept)
}

// watch follows changes from ps.rev+1 until the watch must be restarted; it
// returns why ("compacted", "error", "reconnect"), or "" when ctx ends.
func (ps *peerState) watch(ctx context.Context, reconnect <-chan struct{}, out func(Snapshot), bo *backoff) string {
	r := ps.r
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	wch := r.cli.Watch(wctx, r.subnetsPrefix(), clientv3.WithPrefix(), clientv3.WithRev(ps.rev+1))
	for {
		var expire <-chan time.Time
		if next := ps.expireHeld(time.Now()); !next.IsZero() {
			expire = time.After(time.Until(next))
		}
		select {
		case <-ctx.Done():
			return ""
		case <-reconnect:
			return "reconnect"
		case <-expire:
			ps.expireHeld(time.Now())
			out(ps.snapshot())
		case <-ps.f.Refilter:
			ps.outOK, ps.touched = false, nil
			out(ps.snapshot())
		case wr, ok := <-wch:
			switch {
			case ctx.Err() != nil:
				return ""
			case !ok:
				return "error"
			case wr.CompactRevision != 0 || errors.Is(wr.Err(), rpctypes.ErrCompacted):
				return "compacted"
			case wr.Err() != nil:
				return "error"
			case len(wr.Events) == 0:
				continue // progress notification
			}
			bo.reset()
			if len(wr.Events) > bulkEvents {
				ps.clean = false // merged once by the snapshot
			}
			for _, ev := range wr.Events {
				capKey(ev.Kv)
				if ev.Type == clientv3.EventTypeDelete {
					ps.remove(string(ev.Kv.Key))
					continue
				}
				ps.put(ev.Kv)
			}
			ps.rev = wr.Header.Revision
			ps.seen.Store(ps.rev)
			r.markSync()
			out(ps.snapshot())
		}
	}
}

// snapshot applies the checks that depend on who we are, counts changes
// since the last snapshot, and returns the peers. Keys name their subnets
// strictly (ParseKey) and every valid subnet has the network's SubnetLen,
// so two valid leases never claim one subnet.
func (ps *peerState) snapshot() Snapshot {
	selfNet, selfIP := ps.f.Self()
	switch {
	case !ps.clean && ps.touched != nil && ps.dups == 0:
		ps.merge()
		ps.clean, ps.outOK = true, false
	case !ps.clean:
		ps.sorted = slices.Grow(ps.sorted[:0], len(ps.valid)+len(ps.held))
		for _, l := range ps.valid {
			ps.sorted = append(ps.sorted, l)
		}
		for k, h := range ps.held {
			if _, ok := ps.valid[k]; !ok {
				ps.sorted = append(ps.sorted, h.Lease)
			}
		}
		// By subnet; of two claims on one subnet the earliest comes first
		// and is the one kept.
		slices.SortFunc(ps.sorted, func(a, b *Lease) int {
			return cmp.Or(a.Subnet.Addr().Compare(b.Subnet.Addr()), cmp.Compare(a.CreateRevision, b.CreateRevision), cmp.Compare(a.Key, b.Key))
		})
		n := len(ps.sorted)
		ps.sorted = slices.CompactFunc(ps.sorted, func(a, b *Lease) bool { return a.Subnet == b.Subnet })
		ps.dups = n - len(ps.sorted)
		ps.clean, ps.outOK = true, false
	}
	if selfNet != ps.selfNet || selfIP != ps.selfIP || !ps.selfSet {
		ps.selfNet, ps.selfIP, ps.touched = selfNet, selfIP, nil
		ps.outOK, ps.selfSet = false, true
	}
	if !ps.outOK {
		ps.self = peer.Self{Subnet: selfNet, PublicIP: selfIP, VtepMAC: ps.f.VtepMAC, Underlay: ps.f.Underlay}
		if ps.f.Foreign != nil {
			ps.self.Foreign = ps.f.Foreign()
		}
		ps.self6 = peer.Self{VtepMAC: ps.f.VtepMAC6, Underlay: ps.f.Underlay, Foreign: ps.self.Foreign}
		if ps.f.Self6 != nil {
			ps.self6.Subnet, ps.self6.PublicIP = ps.f.Self6()
		}
		winners := ps.macWinners()
		ps.winners6 = ps.v6Winners()
		ps.out = ps.out[:0]
		for _, l := range ps.sorted {
			if err := ps.checkDynamic(l, winners); err != nil {
				if !errors.Is(err, errOwn) {
					ps.invalid(*l, err, false)
				}
				continue
			}
			ps.out = append(ps.out, ps.peerOf(l))
		}
		ps.outOK = true
	}
	peers := append(ps.r.peerBuf(len(ps.out)), ps.out...)
	ps.count(peers)
	return Snapshot{Peers: peers, Revision: ps.rev}
}

// merge brings sorted up to date with the subnets in touched, every change
// since sorted was last right, in one pass over it: a watch response with a
// thousand events would otherwise shift sorted a thousand times. A key names
// its subnet, so each touched subnet's lease is found by its key.
func (ps *peerState) merge() {
	subs := make([]netip.Prefix, 0, len(ps.touched))
	for s := range ps.touched {
		subs = append(subs, s)
	}
	slices.SortFunc(subs, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })
	next := make([]*Lease, 0, len(ps.sorted)+len(subs))
	i := 0
	for _, s := range subs {
		for i < len(ps.sorted) && ps.sorted[i].Subnet.Addr().Less(s.Addr()) {
			next = append(next, ps.sorted[i])
			i++
		}
		if i < len(ps.sorted) && ps.sorted[i].Subnet == s {
			i++ // its current lease, if any, follows
		}
		key := ps.touched[s]
		if l, ok := ps.valid[key]; ok {
			next = append(next, l)
		} else if h, ok := ps.held[key]; ok {
			next = append(next, h.Lease)
		}
	}
	ps.sorted = append(next, ps.sorted[i:]...)
}

var errOwn = errors.New("own lease")

// bulkEvents is how many events a watch response may carry before its
// changes are merged into the sorted leases at once rather than one by one.
const bulkEvents = 16

// checkDynamic applies the rules that depend on who we are and on the other
// leases: the node's own subnet, address, MAC and routes (peer.CheckAgainst),
// a VtepMAC that an earlier lease already uses (winners: the earliest claim
// of each MAC with more than one; nil when there are none), and a PublicIP
// inside a leased subnet. (A second claim on a subnet is settled when sorted
// is built: the earliest claim is kept.)
func (ps *peerState) checkDynamic(l *Lease, winners map[[6]byte]*Lease) error {
	// Our own lease; before we hold one (the watch starts alongside the
	// acquisition), any lease naming our address is ours too.
	if l.Attrs.PublicIP == ps.selfIP && (l.Subnet == ps.selfNet || !ps.selfNet.IsValid()) {
		return errOwn
	}
	p := Peer{Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP, VtepMAC: l.Attrs.VtepMAC}
	if err := peer.CheckAgainst(&p, ps.f.Config.Rules(), &ps.self); err != nil {
		return err
	}
	if w := winners[macKey(l.Attrs.VtepMAC)]; w != nil && w != l {
		return fmt.Errorf("VtepMAC %v: already used by the earlier lease of %v", l.Attrs.VtepMAC, w.Subnet)
	}
	if l.Subnet6.IsValid() && ps.f.Config.Dual() {
		p6 := Peer{Subnet: l.Subnet6, PublicIP: l.Attrs.PublicIP6, VtepMAC: l.Attrs.VtepMAC6}
		if err := peer.CheckAgainst(&p6, ps.f.Config.Rules6(), &ps.self6); err != nil {
			return fmt.Errorf("IPv6 half: %w", err)
		}
		if w := ps.winners6[claim6{mac: macKey(l.Attrs.VtepMAC6)}]; w != nil && w != l {
			return fmt.Errorf("IPv6 half: VtepMAC %v: already used by the earlier lease of %v", l.Attrs.VtepMAC6, w.Subnet)
		}
		if w := ps.winners6[claim6{sub: l.Subnet6}]; w != nil && w != l {
			return fmt.Errorf("IPv6 half: subnet %v: also claimed by the earlier lease of %v", l.Subnet6, w.Subnet)
		}
		if b, ok := ps.f.Config.Rules6().Block(l.Attrs.PublicIP6); ok && ps.claims6[claim6{sub: b}] > 0 {
			return fmt.Errorf("IPv6 half: PublicIP %v: inside the leased subnet %v", l.Attrs.PublicIP6, b)
		}
	}
	if b, ok := ps.f.Config.Rules().Block(l.Attrs.PublicIP); ok {
		if i, found := slices.BinarySearchFunc(ps.sorted, b, leaseAt); found && ps.sorted[i].Subnet == b {
			return fmt.Errorf("PublicIP %v: inside the leased subnet %v", l.Attrs.PublicIP, b)
		}
	}
	return nil
}

// claim6 is one claim of a lease's IPv6 half: its VtepMAC or its subnet.
type claim6 struct {
	mac [6]byte
	sub netip.Prefix
}

// v6Winners returns, for each IPv6 claim more than one valid lease makes,
// the lease that keeps it (the earliest, as macWinners); nil when none is
// shared.
func (ps *peerState) v6Winners() map[claim6]*Lease {
	var w map[claim6]*Lease
	for _, n := range ps.claims6 {
		if n > 1 {
			w = map[claim6]*Lease{}
			break
		}
	}
	if w == nil {
		return nil
	}
	for _, l := range ps.sorted {
		if !l.Subnet6.IsValid() {
			continue
		}
		for _, k := range []claim6{{mac: macKey(l.Attrs.VtepMAC6)}, {sub: l.Subnet6}} {
			if ps.claims6[k] < 2 {
				continue
			}
			if cur := w[k]; cur == nil || l.CreateRevision < cur.CreateRevision ||
				l.CreateRevision == cur.CreateRevision && l.Key < cur.Key {
				w[k] = l
			}
		}
	}
	return w
}

// macKey is m as a map key; the zero key for anything but 6 bytes (which
// no valid lease has).
func macKey(m []byte) [6]byte {
	if len(m) != 6 {
		return [6]byte{}
	}
	return [6]byte(m)
}

// macWinners returns, for each VtepMAC that more than one valid lease
// claims, the claim that keeps it: the earliest by etcd create revision
// (then by key). nil when every MAC has one claim, the usual case.
func (ps *peerState) macWinners() map[[6]byte]*Lease {
	var w map[[6]byte]*Lease
	for _, n := range ps.macs {
		if n > 1 {
			w = map[[6]byte]*Lease{}
			break
		}
	}
	if w == nil {
		return nil
	}
	for _, l := range ps.sorted {
		k := macKey(l.Attrs.VtepMAC)
		if ps.macs[k] < 2 {
			continue
		}
		if cur := w[k]; cur == nil || l.CreateRevision < cur.CreateRevision ||
			l.CreateRevision == cur.CreateRevision && l.Key < cur.Key {
			w[k] = l
		}
	}
	return w
}

// count updates weft_peer_events_total from the difference to the last
// snapshot: for the subnets events touched, or for all after a listing.
// last is kept as a sorted copy of the peers rather than a map: at 4,000
// peers that is a third of the memory, and a listing compares the two in
// one walk.
func (ps *peerState) count(peers []Peer) {
	if ps.touched == nil {
		ps.countAll(peers)
		ps.touched = map[netip.Prefix]string{}
	} else {
		for s := range ps.touched {
			i, is := slices.BinarySearchFunc(peers, s, peerAt)
			j, was := slices.BinarySearchFunc(ps.last, s, peerAt)
			switch {
			case is && !was:
				ps.added(peers[i])
			case is && !samePeer(ps.last[j], peers[i]):
				ps.changed(peers[i])
			case !is && was:
				ps.removed(s)
			}
		}
		clear(ps.touched)
	}
	ps.last = append(ps.last[:0], peers...)
}

func (ps *peerState) countAll(peers []Peer) {
	i, j := 0, 0
	for i < len(peers) || j < len(ps.last) {
		c := -1 // peers[i] is new
		switch {
		case i == len(peers):
			c = 1 // last[j] is gone
		case j < len(ps.last):
			c = peers[i].Subnet.Addr().Compare(ps.last[j].Subnet.Addr())
		}
		switch {
		case c < 0:
			ps.added(peers[i])
			i++
		case c > 0:
			ps.removed(ps.last[j].Subnet)
			j++
		default:
			if !samePeer(ps.last[j], peers[i]) {
				ps.changed(peers[i])
			}
			i, j = i+1, j+1
		}
	}
}

func (ps *peerState) added(p Peer) {
	ps.r.m.peerEvents.WithLabelValues("added").Inc()
	ps.r.log.Debug("peer added", "subnet", p.Subnet, "public_ip", p.PublicIP)
}

func (ps *peerState) changed(p Peer) {
	ps.r.m.peerEvents.WithLabelValues("changed").Inc()
	ps.r.log.Debug("peer changed", "subnet", p.Subnet, "public_ip", p.PublicIP)
}

func (ps *peerState) removed(s netip.Prefix) {
	ps.r.m.peerEvents.WithLabelValues("removed").Inc()
	ps.r.log.Debug("peer removed", "subnet", s)
}

// probe reads the config key every probeEvery to tell whether etcd answers. It sets weft_etcd_up, logs the start and end of an outage
// once each, and asks the watch to re-list when etcd comes back: it may have
// been restored from a backup or from nothing, so an old watch revision means
// nothing. A restart quicker than the probe period is caught by etcd's
// revision going below the one the watch has seen.
func (r *Registry) probe(ctx context.Context, reconnect chan<- struct{}, seen *atomic.Int64) {
	up := true
	for {
		var resp *clientv3.GetResponse
		err := r.timed("probe", func() (err error) {
			c, cancel := context.WithTimeout(ctx, r.probeTimeout)
			defer cancel()
			// Linearizable, not serializable: the client spreads reads over
			// the endpoints, and a member a little behind would answer with
			// a revision below the watch's, which reads as a restore; a
			// member cut off from its cluster would still answer too.
			// Count only: the probe wants the revision, not the value.
			resp, err = r.cli.Get(c, r.configKey(), clientv3.WithCountOnly())
			return
		})
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			r.markSync()
		}
		if err == nil && up && resp.Header.Revision < seen.Load() {
			r.log.Warn("etcd revision went backwards (restored?), re-listing peers",
				"revision", resp.Header.Revision, "seen", seen.Load())
			seen.Store(resp.Header.Revision)
			r.signalComeback()
			select {
			case reconnect <- struct{}{}:
			default:
			}
		}
		switch {
		case err != nil && up:
			up = false
			r.m.etcdUp.Set(0)
			r.log.Warn("etcd unreachable", "err", err)
		case err == nil && !up:
			up = true
			r.log.Info("etcd reachable again, re-listing peers")
			r.signalComeback()
			select {
			case reconnect <- struct{}{}:
			default:
			}
			fallthrough
		case err == nil:
			r.m.etcdUp.Set(1)
		}
		if !sleep(ctx, r.probeEvery) {
			return
		}
	}
}
