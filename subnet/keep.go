package subnet

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// keep holds l until it is lost or ctx ends, and says why it was lost.
//
// Loss is seen four ways: the KeepAlive channel closes while ctx is alive
// (the server says the lease is gone), the watch on our own key sees a delete
// or another node's claim, a read of our key when etcd comes back from an
// outage or is seen restored (comebackSignal), or the periodic read (every
// verifyEvery) as a safety net. A restored etcd needs the reads: its
// revisions restart, so a watch from our old revision sees nothing, and
// KeepAlive only speaks every TTL/3.
//
// A foreign value that is no claim (judge) is not a loss: keep writes this
// node's value back over it at once (repair).
func (h *holder) keep(ctx context.Context, l Lease) string {
	r := h.r
	kctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var ka <-chan *clientv3.LeaseKeepAliveResponse
	if l.EtcdLeaseID != 0 {
		var err error
		if ka, err = r.cli.KeepAlive(kctx, clientv3.LeaseID(l.EtcdLeaseID)); err != nil {
			return fmt.Sprintf("starting keepalive: %v", err)
		}
	}
	// Each watch gets its own context so a broken one can be dropped; all
	// of them end with kctx.
	watch := func(rev int64) (clientv3.WatchChan, context.CancelFunc) {
		wctx, wcancel := context.WithCancel(kctx)
		if rev > 0 {
			return r.cli.Watch(wctx, l.Key, clientv3.WithRev(rev+1)), wcancel
		}
		return r.cli.Watch(wctx, l.Key), wcancel
	}
	wch, wcancel := watch(l.ModRevision)
	tick := time.NewTicker(r.verifyEvery)
	defer tick.Stop()
	comeback := r.comebackSignal()
	bo := backoff{min: r.backoffMin, max: r.backoffMax}
	var again <-chan time.Time // a repair that etcd did not answer is tried again

	for {
		select {
		case <-ctx.Done():
			return ""
		case resp, ok := <-ka:
			if !ok {
				return "etcd lease expired or revoked"
			}
			if h.req.OnRenew != nil {
				h.req.OnRenew(time.Now().Add(time.Duration(resp.TTL) * time.Second))
			}
		case wr, ok := <-wch:
			if ok && wr.Err() == nil {
				if len(wr.Events) == 0 {
					continue
				}
				// Only the key's latest value matters.
				ev := wr.Events[len(wr.Events)-1]
				kv := ev.Kv
				if ev.Type == clientv3.EventTypeDelete {
					kv = nil
				}
				if reason, retry := h.settle(ctx, l, kv); reason != "" {
					return reason
				} else if retry {
					again = time.After(bo.next())
				}
				continue
			}
			// Watch broken (compaction, error): re-read the key and re-watch
			// from there, after a pause so a failing etcd costs no CPU.
			wcancel()
			if !sleep(ctx, bo.next()) {
				return ""
			}
			rev, reason := h.verify(ctx, l)
			if reason != "" {
				return reason
			}
			wch, wcancel = watch(rev)
		case <-again:
			if _, reason := h.verify(ctx, l); reason != "" {
				return reason
			}
		case <-comeback:
			// etcd is back or was restored: our key may be gone.
			comeback = r.comebackSignal()
			if _, reason := h.verify(ctx, l); reason != "" {
				return reason
			}
		case <-tick.C:
			if _, reason := h.verify(ctx, l); reason != "" {
				return reason
			}
		}
	}
}

// verdict is what a value found on this node's key means.
type verdict int

const (
	intact  verdict = iota // still ours
	foreign                // not a claim: write ours back (repair)
	claimed                // another live node's claim: give the key up, do not fight
	lost                   // deleted or changed by the operator: re-acquire
)

// judge tells what kv, the current state of our key l (nil: deleted), means,
// and why for anything but intact.
//
// A weftd (and a flanneld) always writes its own lease attached to an etcd
// lease of its own. So a value naming another address is a second claimant
// only when it is attached to another etcd lease, which etcd only accepts
// while that lease is live; weft yields then, as before, and counts a
// conflict. Garbage, a value over the size limit, or another address written
// with no etcd lease or with ours (which its writer cannot be keeping alive
// for itself) is no claim: the key is still ours and gets our value back.
// Our own address on another etcd lease, or on none (a reservation an
// operator made for this node), is re-acquired and adopted, as before. A
// reservation (l has no etcd lease) belongs to the operator and is never
// written back.
func (h *holder) judge(l Lease, kv *mvccpb.KeyValue) (verdict, string) {
	if kv == nil {
		return lost, "key deleted"
	}
	a, err := LeaseAttrs{}, valueSizeErr("lease value", kv.Value)
	if err == nil {
		a, err = ParseLeaseAttrs(kv.Value)
	}
	switch {
	case err == nil && a.PublicIP == h.attrs.PublicIP:
		if kv.Lease != l.EtcdLeaseID {
			return lost, fmt.Sprintf("key now attached to etcd lease %x", kv.Lease)
		}
		if !sameAttrs(a, h.attrs) && l.EtcdLeaseID != 0 {
			return foreign, fmt.Sprintf("key overwritten with this node's address and VtepMAC %v", a.VtepMAC)
		}
		return intact, ""
	case l.EtcdLeaseID == 0 && err != nil:
		return lost, fmt.Sprintf("reservation overwritten with an invalid value: %v", err)
	case l.EtcdLeaseID == 0:
		return lost, fmt.Sprintf("reservation overwritten by node %v", a.PublicIP)
	case err != nil:
		return foreign, fmt.Sprintf("key overwritten with an invalid value: %v", err)
	case kv.Lease != 0 && kv.Lease != l.EtcdLeaseID:
		return claimed, fmt.Sprintf("key overwritten by node %v on its own etcd lease %x", a.PublicIP, kv.Lease)
	case kv.Lease == 0:
		return foreign, fmt.Sprintf("key overwritten with node %v's address and no etcd lease", a.PublicIP)
	}
	return foreign, fmt.Sprintf("key overwritten with node %v's address on this node's etcd lease", a.PublicIP)
}

// settle acts on the state kv of our key: "" while we still hold it (after
// writing our value back if need be), else why it is lost. retry says a
// repair could not be made and should be tried again soon.
func (h *holder) settle(ctx context.Context, l Lease, kv *mvccpb.KeyValue) (reason string, retry bool) {
	v, why := h.judge(l, kv)
	switch v {
	case intact:
		return "", false
	case claimed:
		h.r.m.conflicts.Inc()
		return why, false
	case lost:
		return why, false
	}
	return h.repair(ctx, l, kv, why)
}

// repair writes our value back over kv, attached to our etcd lease, if the
// key has not changed since kv: a compare-and-swap on its mod revision, so a
// newer write is judged on its own instead of being overwritten blind.
func (h *holder) repair(ctx context.Context, l Lease, kv *mvccpb.KeyValue, why string) (string, bool) {
	r := h.r
	if now := time.Now(); now.Sub(h.repairLogged) > time.Minute {
		h.repairLogged = now
		r.log.Warn("writing this node's lease back over a foreign value (logged once a minute)",
			"key", clip(l.Key), "mod_revision", kv.ModRevision, "why", why)
	} else {
		r.log.Debug("writing this node's lease back over a foreign value", "key", clip(l.Key), "mod_revision", kv.ModRevision, "why", why)
	}
	var resp *clientv3.TxnResponse
	err := r.timed("txn", func() (err error) {
		c, cancel := context.WithTimeout(ctx, requestTimeout)
		defer cancel()
		resp, err = r.cli.Txn(c).If(clientv3.Compare(clientv3.ModRevision(l.Key), "=", kv.ModRevision)).
			Then(clientv3.OpPut(l.Key, h.value, clientv3.WithLease(clientv3.LeaseID(l.EtcdLeaseID)))).Commit()
		return
	})
	switch {
	case err != nil && ctx.Err() != nil:
		return "", false
	case err != nil && isLeaseNotFound(err):
		return "etcd lease expired or revoked", false
	case err != nil:
		h.outage(err)
		return "", true
	case resp.Succeeded:
		r.m.repairs.Inc()
	}
	// Not succeeded: the key changed again; the watch brings the change.
	return "", false
}

// verify reads our key, writing our value back if a foreign one is there. It
// returns the revision read at, or a reason if the key is no longer ours.
// etcd errors are outages, not losses.
func (h *holder) verify(ctx context.Context, l Lease) (int64, string) {
	r := h.r
	var resp *clientv3.GetResponse
	err := r.timed("get", func() (err error) {
		c, cancel := context.WithTimeout(ctx, r.probeTimeout)
		defer cancel()
		resp, err = r.cli.Get(c, l.Key)
		return
	})
	if err != nil {
		if ctx.Err() == nil {
			h.outage(err)
		}
		return 0, ""
	}
	h.recovered()
	if len(resp.Kvs) == 0 {
		return 0, "key missing"
	}
	if reason, _ := h.settle(ctx, l, resp.Kvs[0]); reason != "" {
		return 0, reason
	}
	return resp.Header.Revision, ""
}

func isLeaseNotFound(err error) bool { return errors.Is(err, rpctypes.ErrLeaseNotFound) }
