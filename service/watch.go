package service

import (
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Change is what changed under <prefix>/services/ since the last Change.
type Change struct {
	// Full means the maps hold every service and endpoints there is: forget
	// the rest. It is set on the first Change and after a re-listing.
	Full bool
	// Network is the service network.
	Network netip.Prefix
	// Services and Endpoints map "<ns>/<name>" to the new value; nil means
	// deleted.
	Services  map[string]*Service
	Endpoints map[string]*Endpoints
	Revision  int64
}

// Merge folds a later change into c.
func (c *Change) Merge(later Change) {
	if later.Full || c.Services == nil {
		*c = later
		return
	}
	for k, v := range later.Services {
		c.Services[k] = v
	}
	for k, v := range later.Endpoints {
		c.Endpoints[k] = v
	}
	c.Network, c.Revision = later.Network, later.Revision
}

// Watch lists the services and endpoints, then follows etcd, calling out
// with each Change from its own goroutine, until ctx ends. A value that does
// not parse is logged and ignored: the last good one stays, as a malformed
// lease is never read as a deletion.
func (s *Store) Watch(ctx context.Context, log *slog.Logger, out func(Change)) error {
	log = log.With("component", "services")
	w := watcher{s: s, log: log, out: out, network: DefaultNetwork, goodSvc: map[string]*Service{}, goodEp: map[string]*Endpoints{}}
	delay := 100 * time.Millisecond
	lastErr := "" // a failure repeating itself (etcd refusing a read) is logged once
	for ctx.Err() == nil {
		rev, err := w.list(ctx)
		if err == nil {
			delay, lastErr = 100*time.Millisecond, ""
			err = w.follow(ctx, rev)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && err.Error() == lastErr {
			log.Debug("service watch interrupted; listing again", "err", err)
		} else {
			log.Warn("service watch interrupted; listing again", "err", err)
		}
		if err != nil {
			lastErr = err.Error()
		}
		select {
		case <-ctx.Done():
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
	}
	return nil
}

type watcher struct {
	s       *Store
	log     *slog.Logger
	out     func(Change)
	network netip.Prefix
	// the last good value of every key, so that a re-listing that finds
	// garbage where a good value was keeps the good one, as a watch event
	// does
	goodSvc map[string]*Service
	goodEp  map[string]*Endpoints
}

func (w *watcher) list(ctx context.Context) (int64, error) {
	lctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	resp, err := w.s.cli.Get(lctx, w.s.root(), clientv3.WithPrefix())
	if err != nil {
		return 0, err
	}
	c := Change{Full: true, Services: map[string]*Service{}, Endpoints: map[string]*Endpoints{}, Revision: resp.Header.Revision}
	w.network = DefaultNetwork
	present := map[string]bool{}
	for _, kv := range resp.Kvs {
		kind, ref, _ := w.split(string(kv.Key))
		present[kind+"/"+ref] = true
		w.put(&c, kv)
	}
	// Keys that are gone are gone; keys that hold garbage keep their last
	// good value.
	for ref, sv := range w.goodSvc {
		if !present["specs/"+ref] {
			delete(w.goodSvc, ref)
		} else if c.Services[ref] == nil {
			c.Services[ref] = sv
		}
	}
	for ref, ep := range w.goodEp {
		if !present["endpoints/"+ref] {
			delete(w.goodEp, ref)
		} else if c.Endpoints[ref] == nil {
			c.Endpoints[ref] = ep
		}
	}
	c.Network = w.network
	w.out(c)
	return resp.Header.Revision, nil
}

func (w *watcher) follow(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	for resp := range w.s.cli.Watch(wctx, w.s.root(), clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := resp.Err(); err != nil {
			return err
		}
		if len(resp.Events) == 0 {
			continue
		}
		c := Change{Services: map[string]*Service{}, Endpoints: map[string]*Endpoints{}, Revision: resp.Header.Revision}
		for _, ev := range resp.Events {
			if ev.Type == mvccpb.DELETE {
				w.del(&c, string(ev.Kv.Key))
				continue
			}
			w.put(&c, ev.Kv)
		}
		c.Network = w.network
		w.out(c)
	}
	return ctx.Err()
}

// split tells a key's kind and "<ns>/<name>".
func (w *watcher) split(key string) (kind, ref, ns string) {
	rest := strings.TrimPrefix(key, w.s.root())
	kind, ref, _ = strings.Cut(rest, "/")
	ns, _, _ = strings.Cut(ref, "/")
	return kind, ref, ns
}

func (w *watcher) put(c *Change, kv *mvccpb.KeyValue) {
	kind, ref, ns := w.split(string(kv.Key))
	switch kind {
	case "config":
		p, err := ParseNetworkConfig(kv.Value)
		if err != nil {
			w.log.Warn("ignoring invalid service config", "key", string(kv.Key), "err", err)
			return
		}
		w.network = p
	case "specs":
		sv, err := ParseService(kv.Value, ns)
		if err == nil && sv.Ref() != ref {
			err = &FieldError{Field: "metadata", Reason: "does not match the key " + ref}
		}
		if err == nil && !sv.ClusterIP.IsValid() {
			err = &FieldError{Field: "spec.clusterIP", Reason: "is not allocated"}
		}
		if err != nil {
			w.log.Warn("ignoring invalid service", "key", string(kv.Key), "err", err)
			return
		}
		c.Services[ref] = &sv
		w.goodSvc[ref] = &sv
	case "endpoints":
		ep, err := ParseEndpoints(kv.Value, ns)
		if err == nil && ep.Ref() != ref {
			err = &FieldError{Field: "metadata", Reason: "does not match the key " + ref}
		}
		if err != nil {
			w.log.Warn("ignoring invalid endpoints", "key", string(kv.Key), "err", err)
			return
		}
		c.Endpoints[ref] = &ep
		w.goodEp[ref] = &ep
	}
}

func (w *watcher) del(c *Change, key string) {
	kind, ref, _ := w.split(key)
	switch kind {
	case "config":
		w.network = DefaultNetwork
	case "specs":
		c.Services[ref] = nil
		delete(w.goodSvc, ref)
	case "endpoints":
		c.Endpoints[ref] = nil
		delete(w.goodEp, ref)
	}
}
