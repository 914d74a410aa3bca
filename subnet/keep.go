package subnet

import (
	"context"
	"fmt"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// keep holds l until it is lost or ctx ends, and says why it was lost.
//
// Loss is seen four ways: the KeepAlive channel closes while ctx is alive
// (the server says the lease is gone), the watch on our own key sees a delete
// or another node's value, a read of our key when etcd comes back from an
// outage or is seen restored (comebackSignal), or the periodic read (every
// verifyEvery) as a safety net. A restored etcd needs the reads: its
// revisions restart, so a watch from our old revision sees nothing, and
// KeepAlive only speaks every TTL/3.
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
				for _, ev := range wr.Events {
					if reason := h.ownEvent(ev.Type == clientv3.EventTypeDelete, ev.Kv.Value); reason != "" {
						return reason
					}
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

// ownEvent interprets a change to our own key; "" means we still hold it.
func (h *holder) ownEvent(deleted bool, value []byte) string {
	if deleted {
		return "key deleted"
	}
	a, err := ParseLeaseAttrs(value)
	if err == nil && a.PublicIP == h.attrs.PublicIP {
		return ""
	}
	h.r.m.conflicts.Inc()
	if err != nil {
		return fmt.Sprintf("key overwritten with an invalid value: %v", err)
	}
	return fmt.Sprintf("key overwritten by node %v", a.PublicIP)
}

// verify reads our key. It returns the revision read at, or a reason if the
// key is no longer ours. etcd errors are outages, not losses.
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
	kv := resp.Kvs[0]
	if reason := h.ownEvent(false, kv.Value); reason != "" {
		return 0, reason
	}
	if kv.Lease != l.EtcdLeaseID {
		return 0, fmt.Sprintf("key now attached to etcd lease %x", kv.Lease)
	}
	return resp.Header.Revision, ""
}
