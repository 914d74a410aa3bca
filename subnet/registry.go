// Package subnet speaks flannel's etcd v3 schema: the network config at
// <prefix>/config, one key per node subnet at <prefix>/subnets/A.B.C.D-LEN
// holding that node's public address and VTEP MAC, attached to an etcd lease
// that the node keeps alive.
//
// Three things live here. ParseConfig, ParseKey and ParseLeaseAttrs turn
// outside bytes into validated values; every error names the field. Hold
// acquires this node's subnet with a constant number of etcd requests
// whatever the cluster size (one listing of the prefix, then a
// create-if-absent transaction; a lost race lists again), keeps the etcd
// lease alive, re-acquires the same subnet when etcd forgets it (lease
// expired, key deleted, etcd restored empty), and writes its value back when
// someone overwrites its key with anything that cannot be a live node's claim
// (keep.go, judge). WatchPeers lists once,
// watches from the next revision and hands the caller a whole Snapshot of
// usable peers after every change, so the consumer is a plain "make the kernel
// look like this" function and never has to interpret events.
//
// The code never trusts etcd content: a peer value that fails validation is
// logged once, counted, and ignored; if the key had a valid value before, that
// value stays in effect, so a corrupt write cannot tear down a working route.
// Only a delete removes a peer. Nothing under the prefix can make weftd's
// memory grow without bound: listings come in pages (page.go) that fit the
// client's receive limit, and values over MaxValueSize are never parsed or
// kept. WatchConfig follows the config key; LiveChange says which changes a
// running node may apply. etcd outages are waited out quietly: one log
// line when one starts, one when it ends, and a full re-list afterwards
// because etcd may have come back from a backup or from nothing.
//
// The server's clock judges lease expiry (KeepAlive), never ours. weft writes
// leases flanneld can read and reads flanneld's leases, so the two can share a
// network during a migration (note flannel's own default backend is "udp";
// weft defaults to and only supports "vxlan").
package subnet

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// DefaultPrefix is flannel's default etcd prefix.
const DefaultPrefix = "/coreos.com/network"

// ErrNoConfig is returned by GetConfig when <prefix>/config does not exist.
var ErrNoConfig = errors.New("no network config in etcd")

// Registry reads and writes one network's keys in etcd.
type Registry struct {
	cli    *clientv3.Client
	prefix string // without trailing slash
	log    *slog.Logger
	m      *metrics

	// Tunables; tests shorten them.
	probeEvery   time.Duration // health probe period (WatchPeers)
	probeTimeout time.Duration
	verifyEvery  time.Duration // how often Hold re-reads its own key
	restoreGrace time.Duration // how long peers a restored etcd forgot stay programmed
	backoffMin   time.Duration
	backoffMax   time.Duration
	pageMax      int // most keys one listing request asks for
	// pageLimit is the page size the last listing ended with (rangeAll).
	pageLimit atomic.Int64
	// Test hooks, nil in production.
	hookBeforeCreate func(key string) // before a create-if-absent txn
	hookAfterList    func()           // after WatchPeers lists, before it watches

	// peerBufs holds snapshots' peer slices handed back by Recycle (*[]Peer).
	peerBufs sync.Pool

	mu       sync.Mutex    // guards the fields below
	held     Lease         // the lease Hold currently holds
	released bool          // Release was called: Hold must not re-acquire
	lastSync time.Time     // when etcd last answered the watch or the probe
	comeback chan struct{} // closed (and replaced) when etcd returns from an outage or a restore
	listing  *listCall     // a shareable listing of the subnets prefix in flight, or nil
}

// listCall is one listing of the subnets prefix that several readers wait for.
type listCall struct {
	done chan struct{}
	resp *clientv3.GetResponse
	err  error
}

// listSubnets reads every key under the subnets prefix. With share, a
// shareable listing already in flight answers instead of a new one: at
// start-up Hold and WatchPeers each need the whole prefix at the same
// moment, and at 4,000 keys one read instead of two saves etcd a megabyte
// of response and weftd a megabyte or two of heap. Only the first listing of
// an acquisition and of a peer watch share; any later one (after a conflict,
// an outage, a compaction) must see etcd as it is when it asks, and reads on
// its own. (A Hold restarted after an error may share again: its
// create-if-absent transaction still compares against etcd itself.) The
// result must not be modified: other callers read it too.
func (r *Registry) listSubnets(ctx context.Context, share bool) (*clientv3.GetResponse, error) {
	var c *listCall
	if share {
		r.mu.Lock()
		if in := r.listing; in != nil {
			r.mu.Unlock()
			select {
			case <-in.done:
				return in.resp, in.err
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		c = &listCall{done: make(chan struct{})}
		r.listing = c
		r.mu.Unlock()
	}
	resp, err := r.rangeAll(ctx, r.subnetsPrefix())
	if c != nil {
		c.resp, c.err = resp, err
		r.mu.Lock()
		r.listing = nil
		r.mu.Unlock()
		close(c.done)
	}
	return resp, err
}

// Recycle hands back a snapshot's peers once the caller is done with them,
// so that the next snapshot reuses the memory: at 4,000 peers a snapshot is
// a third of a megabyte, made for every change, and as garbage it shows up as
// collector pauses in the tail of the hot path. The caller must not use s
// afterwards. Not calling it is fine; the memory is then collected.
func (r *Registry) Recycle(s Snapshot) {
	if cap(s.Peers) == 0 {
		return
	}
	b := s.Peers[:0]
	r.peerBufs.Put(&b)
}

// peerBuf returns an empty slice with room for n peers, reused if possible.
func (r *Registry) peerBuf(n int) []Peer {
	if p, ok := r.peerBufs.Get().(*[]Peer); ok && cap(*p) >= n {
		return (*p)[:0]
	}
	return make([]Peer, 0, n+n/8+16)
}

// LastSync is when this node's view of etcd was last known to be current: the
// last listing, watch event or successful health probe of WatchPeers.
func (r *Registry) LastSync() time.Time {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastSync
}

func (r *Registry) markSync() {
	r.mu.Lock()
	r.lastSync = time.Now()
	r.mu.Unlock()
}

// comebackSignal returns a channel closed the next time etcd comes back from
// an outage or is seen restored, so that Hold checks its own key at once
// instead of at its next periodic read.
func (r *Registry) comebackSignal() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.comeback == nil {
		r.comeback = make(chan struct{})
	}
	return r.comeback
}

func (r *Registry) signalComeback() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.comeback != nil {
		close(r.comeback)
	}
	r.comeback = make(chan struct{})
}

// NewRegistry returns a Registry for the network under prefix (DefaultPrefix
// if empty). reg may be nil, then metrics are not registered.
func NewRegistry(cli *clientv3.Client, prefix string, log *slog.Logger, reg prometheus.Registerer) *Registry {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Registry{
		cli:          cli,
		prefix:       strings.TrimRight(prefix, "/"),
		log:          log.With("component", "subnet"),
		m:            newMetrics(reg),
		probeEvery:   3 * time.Second,
		probeTimeout: 2 * time.Second,
		// A safety net only: deletions arrive on the key's watch and a
		// restored etcd triggers a check at once (comebackSignal). Every
		// node reads its key this often, so at 4,000 nodes it is etcd load.
		verifyEvery:  60 * time.Second,
		restoreGrace: 30 * time.Second,
		backoffMin:   200 * time.Millisecond,
		backoffMax:   30 * time.Second,
		pageMax:      pageMax,
	}
}

func (r *Registry) configKey() string     { return r.prefix + "/config" }
func (r *Registry) subnetsPrefix() string { return r.prefix + "/subnets/" }

// SubnetKey is the full etcd key of a subnet.
func (r *Registry) SubnetKey(p netip.Prefix) string { return r.subnetsPrefix() + KeyName(p) }

// timed runs one etcd request and records its duration under op.
func (r *Registry) timed(op string, f func() error) error {
	start := time.Now()
	err := f()
	r.m.reqDuration.WithLabelValues(op).Observe(time.Since(start).Seconds())
	return err
}

// GetConfig reads and parses the network config.
func (r *Registry) GetConfig(ctx context.Context) (Config, error) {
	c, _, err := r.ReadConfig(ctx)
	return c, err
}

// SetConfig writes the network config (defaults spelled out).
func (r *Registry) SetConfig(ctx context.Context, c Config) error {
	err := r.timed("put", func() error { _, err := r.cli.Put(ctx, r.configKey(), string(c.JSON())); return err })
	if err != nil {
		return fmt.Errorf("writing %s: %w", r.configKey(), err)
	}
	return nil
}

// ListLeases returns every key under <prefix>/subnets/ with the etcd revision
// read at, including keys that are invalid (Lease.Err says why; when the
// config is readable, leases that don't fit it are flagged too). TTL is filled
// in with one LeaseTimeToLive per distinct etcd lease: this is for operators,
// not for the agent.
func (r *Registry) ListLeases(ctx context.Context) ([]Lease, int64, error) {
	resp, err := r.rangeAll(ctx, r.subnetsPrefix())
	if err != nil {
		return nil, 0, err
	}
	cfg, cfgErr := r.GetConfig(ctx)
	ttls := map[int64]time.Duration{}
	out := make([]Lease, 0, len(resp.Kvs))
	seen := map[netip.Prefix]string{}
	for _, kv := range resp.Kvs { // sorted by key, not by CreateRevision; fine for a listing
		l := parseKV(r.subnetsPrefix(), kv.Key, kv.Value, kv.Lease, kv.CreateRevision, kv.ModRevision)
		if l.Err == nil && cfgErr == nil {
			l.Err = cfg.checkLease(l)
		}
		if l.Err == nil {
			if other, dup := seen[l.Subnet]; dup {
				l.Err = fmt.Errorf("subnet %v also claimed by %s", l.Subnet, other)
			}
			seen[l.Subnet] = l.Key
		}
		l.TTL = -1
		if l.EtcdLeaseID != 0 {
			ttl, ok := ttls[l.EtcdLeaseID]
			if !ok {
				ttl = -1
				tr, err := r.cli.TimeToLive(ctx, clientv3.LeaseID(l.EtcdLeaseID))
				if err == nil && tr.TTL >= 0 {
					ttl = time.Duration(tr.TTL) * time.Second
				}
				ttls[l.EtcdLeaseID] = ttl
			}
			l.TTL = ttl
		}
		out = append(out, l)
	}
	return out, resp.Header.Revision, nil
}

// Release deletes the key Hold holds and revokes its etcd lease (a
// reservation's key is left alone), and stops Hold from re-acquiring. For
// tools and tests: weftd keeps its lease across restarts and never releases.
func (r *Registry) Release(ctx context.Context) error {
	r.mu.Lock()
	l := r.held
	r.released = true
	r.mu.Unlock()
	if l.Key == "" || l.EtcdLeaseID == 0 {
		return nil
	}
	var errs []error
	if _, err := r.cli.Delete(ctx, l.Key); err != nil {
		errs = append(errs, fmt.Errorf("deleting %s: %w", l.Key, err))
	}
	if _, err := r.cli.Revoke(ctx, clientv3.LeaseID(l.EtcdLeaseID)); err != nil {
		errs = append(errs, fmt.Errorf("revoking etcd lease %x: %w", l.EtcdLeaseID, err))
	}
	return errors.Join(errs...)
}

func (r *Registry) isReleased() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.released
}

// backoff is a capped exponential delay with full jitter.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) next() time.Duration {
	if b.cur < b.min {
		b.cur = b.min
	} else if b.cur *= 2; b.cur > b.max {
		b.cur = b.max
	}
	return b.cur/2 + rand.N(b.cur/2+1)
}

func (b *backoff) reset() { b.cur = 0 }

// sleep waits d or until ctx ends; it reports whether ctx is still alive.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
