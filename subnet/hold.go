package subnet

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/ip"
)

// DefaultTTL is the etcd lease TTL of a subnet, flannel's 24 hours.
const DefaultTTL = 24 * time.Hour

// requestTimeout bounds each etcd request Hold makes, so that a hung etcd
// (stopped process, dead peer) is seen as an outage and retried.
const requestTimeout = 10 * time.Second

// HoldRequest describes the subnet this node wants.
type HoldRequest struct {
	Config   Config
	PublicIP netip.Addr       // this node's underlay address; identifies the node
	VtepMAC  net.HardwareAddr // written into the lease
	// PublicIP6 and VtepMAC6 are the node's IPv6 half in a dual-stack
	// network (Config.Dual); in an IPv6-only network PublicIP and VtepMAC
	// are IPv6 already.
	PublicIP6 netip.Addr
	VtepMAC6  net.HardwareAddr
	// Previous6 is the IPv6 subnet from the last run in a dual-stack
	// network; it is taken again if still free.
	Previous6 netip.Prefix
	TTL       time.Duration // etcd lease TTL; 0 means DefaultTTL
	// Previous is the subnet from the last run (subnet.env); it is taken
	// again if still free. May be zero.
	Previous netip.Prefix
	// PreviousLease is the etcd lease this node held Previous with
	// (subnet.env records it); 0 if unknown. A key at Previous attached to
	// it was this node's, whatever address it names now.
	PreviousLease int64
	// Avoid lists prefixes the node uses for something else (its own
	// addresses and routes weft did not make); no subnet overlapping them is
	// ever taken.
	Avoid []netip.Prefix
	// OnLease is called with the lease after every (re-)acquisition, from
	// Hold's goroutine.
	OnLease func(Lease)
	// OnRenew is called after each keep-alive etcd answered, with when the
	// etcd lease expires unless renewed again (now plus the TTL etcd
	// reports), from Hold's goroutine. Never called for a reservation.
	OnRenew func(expiry time.Time)
	// Rand chooses among free subnets; nil uses a random source.
	Rand *rand.Rand
}

// holder is the state of one Hold call.
type holder struct {
	r            *Registry
	req          HoldRequest
	attrs        LeaseAttrs
	value        string // attrs as JSON
	down         bool   // etcd unreachable; logged once when it starts and ends
	deniedLogged bool   // etcd refused us a write; logged once (deniedWrite)
	// repairLogged is when a repair of our key was last logged at warning
	// level: a writer overwriting it in a loop gets one line a minute.
	repairLogged time.Time
	// prev6 is the IPv6 subnet to take again (dual-stack): Previous6, then
	// the lease's own after a loss.
	prev6 netip.Prefix
}

// Hold acquires a subnet for this node and keeps it for as long as ctx lives:
// it keeps the etcd lease alive and, if etcd loses the key (lease expired or
// revoked, key deleted, etcd restored empty), takes the same subnet again
// and calls OnLease again. While etcd is unreachable it waits quietly.
//
// Hold returns an error only if the first acquisition cannot succeed (the
// request is invalid or no subnet is free); otherwise it returns ctx.Err()
// when ctx ends, or nil after Release. Ending ctx does not release the
// subnet: a restarted agent adopts its own key and etcd lease.
func (r *Registry) Hold(ctx context.Context, req HoldRequest) error {
	if err := usablePublicIP(req.PublicIP); err != nil {
		return fmt.Errorf("holding a subnet: %w", err)
	}
	if len(req.VtepMAC) != 6 {
		return fmt.Errorf("holding a subnet: VtepMAC %q: not a 6-byte MAC", req.VtepMAC)
	}
	if req.Config.SubnetLen == 0 || !req.Config.SubnetMin.IsValid() {
		return errors.New("holding a subnet: config has no subnet range (use ParseConfig)")
	}
	if req.PublicIP.Unmap().Is4() != req.Config.Network.Addr().Is4() {
		return fmt.Errorf("holding a subnet: PublicIP %v is not of the family of Network %v", req.PublicIP, req.Config.Network)
	}
	if req.Config.Dual() {
		if !req.PublicIP6.Is6() || req.PublicIP6.Is4In6() {
			return fmt.Errorf("holding a subnet: the network is dual-stack and this node has no IPv6 address (--public-ipv6), got %v", req.PublicIP6)
		}
		if err := usablePublicIP(req.PublicIP6); err != nil {
			return fmt.Errorf("holding a subnet: IPv6 %w", err)
		}
		if len(req.VtepMAC6) != 6 {
			return fmt.Errorf("holding a subnet: VtepMAC6 %q: not a 6-byte MAC", req.VtepMAC6)
		}
	} else {
		req.PublicIP6, req.VtepMAC6, req.Previous6 = netip.Addr{}, nil, netip.Prefix{}
	}
	if req.TTL <= 0 {
		req.TTL = DefaultTTL
	}
	if req.Rand == nil {
		req.Rand = rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
	}
	h := &holder{r: r, req: req, attrs: LeaseAttrs{
		PublicIP: req.PublicIP, BackendType: "vxlan", VNI: req.Config.Backend.VNI, VtepMAC: req.VtepMAC,
		PublicIP6: req.PublicIP6, VtepMAC6: req.VtepMAC6,
	}, prev6: req.Previous6}
	b, err := h.attrs.MarshalJSON()
	if err != nil {
		return fmt.Errorf("holding a subnet: encoding lease value: %w", err)
	}
	h.value = string(b)

	l, err := h.acquire(ctx, req.Previous, false)
	for err == nil {
		r.mu.Lock()
		r.held = l
		r.mu.Unlock()
		args := []any{"subnet", l.Subnet, "key", l.Key, "etcd_lease", fmt.Sprintf("%x", l.EtcdLeaseID)}
		if l.Subnet6.IsValid() {
			args = append(args, "subnet6", l.Subnet6)
		}
		r.log.Info("holding subnet", args...)
		if req.OnLease != nil {
			req.OnLease(l)
		}
		reason := h.keep(ctx, l)
		if ctx.Err() != nil || r.isReleased() {
			break
		}
		r.log.Warn("lost subnet lease, re-acquiring", "subnet", l.Subnet, "reason", reason)
		h.revoke(l.EtcdLeaseID)
		h.prev6 = l.Subnet6
		l, err = h.acquire(ctx, l.Subnet, true)
	}
	if r.isReleased() {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return err
}

// outage records an etcd error: the first one of a series is logged.
func (h *holder) outage(err error) {
	if h.deniedWrite(err) {
		return
	}
	if !h.down {
		h.down = true
		// The peer watch's probe tells the operator; this is its echo.
		h.r.log.Debug("etcd unreachable, waiting", "err", err)
	}
}

func (h *holder) recovered() {
	if h.down {
		h.down = false
		h.r.log.Debug("etcd reachable again")
	}
}

func (h *holder) revoke(id int64) {
	if id == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = h.r.timed("revoke", func() error { _, err := h.r.cli.Revoke(ctx, clientv3.LeaseID(id)); return err })
}

type decision int

const (
	create   decision = iota // create the key for subnet
	adopt                    // an existing key is ours
	conflict                 // sticky subnet held by another node: wait
	full                     // nothing free
)

// decide chooses what to do given every subnet key (one consistent read).
func (h *holder) decide(kvs []*mvccpb.KeyValue, prev netip.Prefix, sticky bool) (decision, Lease, error) {
	alloc := h.req.Config.alloc()
	alloc.Avoid = h.req.Avoid
	alloc.Rand = h.req.Rand
	inRange := h.req.Config.alloc()

	// exact holds the subnet of every key of the network's SubnetLen: at
	// 4,000 keys a map of whole Leases was a megabyte and a half of start-up
	// heap for nothing.
	exact := make(map[netip.Prefix]struct{}, len(kvs))
	var odd []netip.Prefix // keys of another length: checked by overlap
	dual := h.req.Config.Dual()
	var exact6 map[netip.Prefix]struct{}
	var odd6 []netip.Prefix
	if dual {
		exact6 = make(map[netip.Prefix]struct{}, len(kvs))
	}
	var mine []Lease
	var prevLease Lease // the previous subnet's key, decoded, if there is one
	// Only values that can matter are decoded: those naming our address, and
	// the previous subnet's. Every other key counts as taken by its name
	// alone, which keeps a start at 4,000 peers from decoding 4,000 values.
	ours := []byte(`"` + h.req.PublicIP.String() + `"`)
	pfx := []byte(h.r.subnetsPrefix())
	for _, kv := range kvs {
		name, ok := bytes.CutPrefix(kv.Key, pfx)
		if !ok {
			continue
		}
		sub, sub6, err := ParseDualKey(string(name))
		if err != nil {
			continue // unparseable key: cannot overlap-check it
		}
		if sub.Bits() == alloc.Bits {
			exact[sub] = struct{}{}
		} else {
			odd = append(odd, sub)
		}
		if dual && sub6.IsValid() {
			if sub6.Bits() == h.req.Config.IPv6.SubnetLen {
				exact6[sub6] = struct{}{}
			} else {
				odd6 = append(odd6, sub6)
			}
		}
		if sub != prev && !bytes.Contains(kv.Value, ours) {
			continue
		}
		l := parseKV(h.r.subnetsPrefix(), kv.Key, kv.Value, kv.Lease, kv.CreateRevision, kv.ModRevision)
		if sub == prev {
			prevLease = l
		}
		// Our own key is adopted even if Avoid covers it: addresses inside it
		// (docker0's .1 after a reboot wiped subnet.env) are most likely ours,
		// and it was not avoided when we took it.
		if l.Err == nil && l.Attrs.PublicIP == h.req.PublicIP && inRange.Eligible(l.Subnet) && h.shapeFits(l) {
			mine = append(mine, l)
		}
	}
	alloc.Taken = func(p netip.Prefix) bool {
		if _, ok := exact[p]; ok {
			return true
		}
		for _, o := range odd {
			if ip.Overlaps(p, o) {
				return true
			}
		}
		return false
	}

	// Our own key: at the previous subnet, else a reservation, else the oldest.
	slices.SortFunc(mine, func(a, b Lease) int {
		return cmp.Or(
			cmpBool(a.Subnet == prev, b.Subnet == prev),
			cmpBool(a.EtcdLeaseID == 0, b.EtcdLeaseID == 0),
			cmp.Compare(a.CreateRevision, b.CreateRevision))
	})
	if len(mine) > 0 && (!sticky || mine[0].Subnet == prev || !alloc.Eligible(prev)) {
		return adopt, mine[0], nil
	}
	// The previous subnet's key names another address, or garbage, but is
	// attached to the etcd lease this node held it with (subnet.env, the
	// node's own record, says so): this node's address changed, or its key
	// was overwritten while it was down. Take the key over, so peers switch
	// to the new address instead of keeping a dead lease for a day. A key
	// on any other etcd lease may be a live node's and is never taken:
	// the node gets another subnet. Reservations are never taken over:
	// they belong to the address they name.
	if l := prevLease; l.Subnet == prev && prev.IsValid() && !sticky && l.EtcdLeaseID != 0 && l.Subnet6.IsValid() == dual &&
		l.EtcdLeaseID == h.req.PreviousLease && inRange.Eligible(prev) {
		h.r.log.Info("taking over the previous subnet's lease for this node's new address",
			"subnet", prev, "old_public_ip", l.Attrs.PublicIP, "public_ip", h.req.PublicIP)
		return adopt, l, nil
	}
	p6, err := h.pick6(exact6, odd6)
	if err != nil {
		return full, Lease{}, err
	}
	if prev.IsValid() && alloc.Eligible(prev) {
		if !alloc.Taken(prev) {
			return create, Lease{Subnet: prev, Subnet6: p6}, nil
		}
		if sticky {
			return conflict, prevLease, nil
		}
	}
	p, err := alloc.Pick()
	if err != nil {
		var fe *ip.FullError
		if errors.As(err, &fe) {
			return full, Lease{}, fmt.Errorf("no free /%d left in %v between %v and %v: %d taken",
				fe.Bits, h.req.Config.Network, fe.First, fe.Last, fe.Taken)
		}
		return full, Lease{}, err
	}
	return create, Lease{Subnet: p, Subnet6: p6}, nil
}

// cmpBool orders true before false.
func cmpBool(a, b bool) int {
	switch {
	case a == b:
		return 0
	case a:
		return -1
	}
	return 1
}

// acquire gets a subnet: one listing of the prefix, then transactions; a
// failed comparison lists again for the next attempt. It retries etcd errors forever
// (quietly) and lost races immediately. It returns an error only when no
// subnet is free on a first acquisition, or ctx ends.
func (h *holder) acquire(ctx context.Context, prev netip.Prefix, sticky bool) (Lease, error) {
	r := h.r
	var granted int64 // our own etcd lease, granted once and reused across retries
	used := false
	defer func() {
		if granted != 0 && !used {
			h.revoke(granted)
		}
	}()
	bo := backoff{min: r.backoffMin, max: r.backoffMax}
	var kvs []*mvccpb.KeyValue
	fresh, listed := false, false
	conflictLogged := false
	retry := func(err error) bool {
		h.outage(err)
		fresh = false
		return sleep(ctx, bo.next())
	}
	for ctx.Err() == nil {
		if !fresh {
			// The first listing of a first acquisition may be the peer
			// watch's: nothing was written yet that it must see.
			resp, err := r.listSubnets(ctx, !sticky && !listed)
			if err != nil {
				retry(err)
				continue
			}
			kvs, fresh, listed = resp.Kvs, true, true
		}
		h.recovered()
		what, l, err := h.decide(kvs, prev, sticky)
		switch what {
		case full:
			if !sticky {
				return Lease{}, err
			}
			r.log.Error("cannot re-acquire a subnet, retrying", "err", err)
			retry(err)
			continue
		case conflict:
			r.m.conflicts.Inc()
			if !conflictLogged {
				conflictLogged = true
				r.log.Error("another node holds this node's subnet; waiting for it to be freed",
					"subnet", prev, "holder", l.Attrs.PublicIP, "key", l.Key)
			}
			fresh = false
			sleep(ctx, bo.next())
			continue
		case adopt:
			if l.EtcdLeaseID == 0 {
				r.log.Info("using reservation", "subnet", l.Subnet)
			}
			if sameAttrs(l.Attrs, h.attrs) {
				return l, nil
			}
			var opts []clientv3.OpOption
			if l.EtcdLeaseID != 0 {
				opts = append(opts, clientv3.WithLease(clientv3.LeaseID(l.EtcdLeaseID)))
			}
			ok, rev, err := h.txn(ctx, clientv3.Compare(clientv3.ModRevision(l.Key), "=", l.ModRevision),
				clientv3.OpPut(l.Key, h.value, opts...), &kvs)
			if err != nil {
				retry(err)
				continue
			}
			if !ok {
				continue // kvs now holds a fresh listing
			}
			l.Attrs, l.ModRevision = h.attrs, rev
			return l, nil
		case create:
			if granted == 0 {
				var g *clientv3.LeaseGrantResponse
				err := r.timed("grant", func() (err error) {
					c, cancel := context.WithTimeout(ctx, requestTimeout)
					defer cancel()
					g, err = r.cli.Grant(c, int64(h.req.TTL/time.Second))
					return
				})
				if err != nil {
					retry(err)
					continue
				}
				granted = int64(g.ID)
			}
			key := r.subnetsPrefix() + KeyNameOf(l)
			if r.hookBeforeCreate != nil {
				r.hookBeforeCreate(key)
			}
			ok, rev, err := h.txn(ctx, clientv3.Compare(clientv3.CreateRevision(key), "=", 0),
				clientv3.OpPut(key, h.value, clientv3.WithLease(clientv3.LeaseID(granted))), &kvs)
			if err != nil {
				retry(err)
				continue
			}
			if !ok {
				continue // lost the race; retry from the fresh listing
			}
			used = true
			return Lease{Subnet: l.Subnet, Subnet6: l.Subnet6, Attrs: h.attrs, EtcdLeaseID: granted, Key: key,
				CreateRevision: rev, ModRevision: rev}, nil
		}
	}
	return Lease{}, ctx.Err()
}

// txn runs If(cmp).Then(then). On failure of the comparison it lists the
// subnets prefix again into *kvs, in pages: an Else branch reading the whole
// prefix in one response would be unbounded (a prefix of megabyte values
// would fail the transaction forever).
func (h *holder) txn(ctx context.Context, c clientv3.Cmp, then clientv3.Op, kvs *[]*mvccpb.KeyValue) (bool, int64, error) {
	r := h.r
	var resp *clientv3.TxnResponse
	err := r.timed("txn", func() (err error) {
		tc, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		resp, err = r.cli.Txn(tc).If(c).Then(then).Commit()
		return
	})
	if err != nil {
		return false, 0, err
	}
	if !resp.Succeeded {
		list, err := r.listSubnets(ctx, false)
		if err != nil {
			return false, 0, err
		}
		*kvs = list.Kvs
	}
	return resp.Succeeded, resp.Header.Revision, nil
}
