package service

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// errConflict means a transaction's conditions failed: someone wrote the
// same keys meanwhile. apply reads again and retries.
var errConflict = errors.New("conflict")

// unit is the comparisons and writes of one object; a unit never spans two
// transactions.
type unit struct {
	cmps []clientv3.Cmp
	ops  []clientv3.Op
}

type existing struct {
	svc Service
	rev int64
}

func (s *Store) apply(ctx context.Context, objs []Object, replace bool) (ApplyResult, error) {
	seen := map[string]bool{}
	for _, o := range objs {
		k := "Endpoints "
		if o.Service != nil {
			k = "Service "
		}
		if o.Service != nil {
			k += o.Service.Ref()
		} else {
			k += o.Endpoints.Ref()
		}
		if seen[k] {
			return ApplyResult{}, fmt.Errorf("%s is given twice", k)
		}
		seen[k] = true
	}
	var res ApplyResult
	for attempt := 0; ; attempt++ {
		r, err := s.applyOnce(ctx, objs, replace)
		res.Transactions += r.Transactions
		if !errors.Is(err, errConflict) || attempt == 4 {
			r.Transactions = res.Transactions
			if errors.Is(err, errConflict) {
				err = errors.New("services changed concurrently five times in a row: try again")
			}
			return r, err
		}
	}
}

func (s *Store) applyOnce(ctx context.Context, objs []Object, replace bool) (ApplyResult, error) {
	var res ApplyResult
	nsvc := 0
	for _, o := range objs {
		if o.Service != nil {
			nsvc++
		}
	}
	// Units go out in the order given, so that a List of each Service
	// followed by its Endpoints reaches the nodes as whole services: a
	// node then programs each one once, not first without endpoints.
	units := make([]unit, len(objs))
	if nsvc > 0 {
		network, err := s.Network(ctx)
		if err != nil {
			return res, err
		}
		have, err := s.existing(ctx, objs, nsvc)
		if err != nil {
			return res, err
		}
		taken, _, err := s.takenIPs(ctx)
		if err != nil {
			return res, err
		}
		rnd := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
		for i, o := range objs {
			if o.Service == nil {
				continue
			}
			svc := *o.Service
			u, created, err := s.serviceUnit(&svc, have, taken, network, replace, rnd)
			if err != nil {
				return res, err
			}
			if created {
				res.Created++
			}
			units[i] = u
			res.Services = append(res.Services, svc)
		}
	}
	for i, o := range objs {
		if o.Endpoints == nil {
			continue
		}
		val, err := json.Marshal(o.Endpoints)
		if err != nil {
			return res, err
		}
		units[i] = unit{ops: []clientv3.Op{clientv3.OpPut(s.epKey(o.Endpoints.Namespace, o.Endpoints.Name), string(val))}}
		res.Endpoints++
	}
	return res, s.commit(ctx, units, &res.Transactions)
}

// existing reads the stored versions of the services among objs: one by one
// for a few, with one listing for many.
func (s *Store) existing(ctx context.Context, objs []Object, nsvc int) (map[string]existing, error) {
	have := map[string]existing{}
	add := func(key string, val []byte, rev int64) {
		if sv, err := ParseService(val, ""); err == nil {
			have[key] = existing{svc: sv, rev: rev}
		} else {
			have[key] = existing{rev: rev} // garbage: replaced, its IP (if any) unknown
		}
	}
	if nsvc <= 16 {
		for _, o := range objs {
			if o.Service == nil {
				continue
			}
			k := s.specKey(o.Service.Namespace, o.Service.Name)
			resp, err := s.cli.Get(ctx, k)
			if err != nil {
				return nil, fmt.Errorf("reading %s: %w", k, err)
			}
			for _, kv := range resp.Kvs {
				add(k, kv.Value, kv.ModRevision)
			}
		}
		return have, nil
	}
	resp, err := s.cli.Get(ctx, s.root()+"specs/", clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("listing services: %w", err)
	}
	for _, kv := range resp.Kvs {
		add(string(kv.Key), kv.Value, kv.ModRevision)
	}
	return have, nil
}

// serviceUnit decides svc's ClusterIP and returns the writes that store it.
func (s *Store) serviceUnit(svc *Service, have map[string]existing, taken map[netip.Addr]string,
	network netip.Prefix, replace bool, rnd *rand.Rand) (unit, bool, error) {
	key := s.specKey(svc.Namespace, svc.Name)
	ipErr := func(reason string) error {
		return &FieldError{Object: "Service " + svc.Ref(), Field: "spec.clusterIP", Value: svc.ClusterIP.String(), Reason: reason}
	}
	var u unit
	old, exists := have[key]
	if exists && !replace {
		return u, false, fmt.Errorf("service %s already exists (use apply to replace it)", svc.Ref())
	}
	if exists && old.svc.ClusterIP.IsValid() {
		if svc.ClusterIP.IsValid() && svc.ClusterIP != old.svc.ClusterIP {
			return u, false, ipErr(fmt.Sprintf("cannot be changed: the service holds %s (delete it first)", old.svc.ClusterIP))
		}
		svc.ClusterIP = old.svc.ClusterIP
		u.cmps = append(u.cmps, clientv3.Compare(clientv3.ModRevision(key), "=", old.rev))
	} else {
		if exists {
			u.cmps = append(u.cmps, clientv3.Compare(clientv3.ModRevision(key), "=", old.rev))
		} else {
			u.cmps = append(u.cmps, clientv3.Compare(clientv3.CreateRevision(key), "=", 0))
		}
		if svc.ClusterIP.IsValid() {
			switch {
			case !network.Contains(svc.ClusterIP):
				return u, false, ipErr("is not in the service network " + network.String())
			case svc.ClusterIP == network.Addr() || svc.ClusterIP == lastAddr(network):
				return u, false, ipErr("is the service network's network or broadcast address")
			case taken[svc.ClusterIP] != "":
				return u, false, ipErr("is already allocated to service " + taken[svc.ClusterIP])
			}
		} else {
			size := 1<<(32-network.Bits()) - 2
			if len(taken) >= size {
				return u, false, fmt.Errorf("service %s: no free ClusterIP left in %s", svc.Ref(), network)
			}
			for {
				a := randomIn(rnd, network)
				if taken[a] == "" {
					svc.ClusterIP = a
					break
				}
			}
		}
		taken[svc.ClusterIP] = svc.Ref()
		ik := s.ipKey(svc.ClusterIP)
		u.cmps = append(u.cmps, clientv3.Compare(clientv3.CreateRevision(ik), "=", 0))
		u.ops = append(u.ops, clientv3.OpPut(ik, svc.Ref()))
	}
	val, err := json.Marshal(svc)
	if err != nil {
		return u, false, err
	}
	u.ops = append(u.ops, clientv3.OpPut(key, string(val)))
	return u, !exists, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	host := uint32(1)<<(32-p.Bits()) - 1
	n := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | host
	return netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
}

// commit writes units in as few transactions as etcd's limits allow. It
// first tries large transactions (up to bigTxnOps operations, 1 MiB); an
// etcd that refuses them (its --max-txn-ops is 128 by default) is written in
// transactions of 128 from then on.
func (s *Store) commit(ctx context.Context, units []unit, count *int) error {
	const maxBytes = 1 << 20 // under etcd's default 1.5 MiB request limit
	for len(units) > 0 {
		limit := int(s.txnOps.Load())
		if limit == 0 {
			limit = bigTxnOps
		}
		var cmps []clientv3.Cmp
		var ops []clientv3.Op
		size, n := 0, 0
		for _, u := range units {
			usize := 0
			for _, op := range u.ops {
				usize += len(op.KeyBytes()) + len(op.ValueBytes())
			}
			if n > 0 && (len(cmps)+len(u.cmps) > limit || len(ops)+len(u.ops) > limit || size+usize > maxBytes) {
				break
			}
			cmps = append(cmps, u.cmps...)
			ops = append(ops, u.ops...)
			size += usize
			n++
		}
		if len(ops) == 0 {
			units = units[n:]
			continue
		}
		resp, err := s.cli.Txn(ctx).If(cmps...).Then(ops...).Commit()
		if err != nil && limit > maxTxnOps && errors.Is(err, rpctypes.ErrTooManyOps) {
			s.txnOps.Store(maxTxnOps)
			continue
		}
		if err != nil {
			return fmt.Errorf("writing services: %w", err)
		}
		*count++
		if !resp.Succeeded {
			return errConflict
		}
		units = units[n:]
	}
	return nil
}
