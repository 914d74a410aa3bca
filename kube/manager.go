package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/tools/cache"

	"github.com/weft-net/weft/peer"
	"github.com/weft-net/weft/subnet"
)

// Config is what a Manager is told at start.
type Config struct {
	Nodes    NodeAPI // a Client, or client-go's CoreV1().Nodes()
	NodeName string  // this node's Node object
	// Prefix is the annotation prefix; DefaultPrefix when empty.
	Prefix string
	// Network is the cluster's network config (net-conf.json).
	Network subnet.Config
	Log     *slog.Logger
	// Registerer takes the Manager's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Manager is the Kubernetes subnet manager: Hold and WatchPeers for
// network.Node, fed by one informer on Nodes. Run must be running.
type Manager struct {
	cfg Config
	ann annotations
	log *slog.Logger
	m   *metrics

	ctrl cache.Controller

	selfKick chan struct{} // the own Node changed (for Hold)
	peerKick chan struct{} // another Node changed (for WatchPeers)
	bufs     sync.Pool     // recycled snapshot slices

	mu       sync.Mutex // guards the fields below
	peers    *peerSet
	self     *nodeRecord  // this node's Node, trimmed; nil until seen
	own      netip.Prefix // the subnet Hold handed out
	rev      int64        // counts changes, the snapshots' Revision
	healthy  bool         // the last list or watch request succeeded
	lastGood time.Time    // when a request last succeeded
}

// New makes a Manager; Run starts its informer.
func New(cfg Config) (*Manager, error) {
	if cfg.Nodes == nil || cfg.NodeName == "" {
		return nil, errors.New("kube: Config needs Nodes and NodeName")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if err := CheckPrefix(cfg.Prefix); err != nil {
		return nil, err
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		cfg:      cfg,
		ann:      newAnnotations(cfg.Prefix),
		log:      cfg.Log.With("component", "kube"),
		m:        newMetrics(cfg.Registerer),
		selfKick: make(chan struct{}, 1),
		peerKick: make(chan struct{}, 1),
		peers:    newPeerSet(cfg.Network.Network),
	}
	nodes := cfg.Nodes
	lw := &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			l, err := nodes.List(ctx, o)
			m.contact(err)
			m.m.lists.Inc()
			return l, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			w, err := nodes.Watch(ctx, o)
			m.contact(err)
			if o.SendInitialEvents != nil && *o.SendInitialEvents {
				m.m.lists.Inc() // a listing streamed as watch events
			}
			return w, err
		},
	}
	_, m.ctrl = cache.NewInformerWithOptions(cache.InformerOptions{
		ListerWatcher: cache.ToListWatcherWithWatchListSemantics(lw, cfg.Nodes),
		ObjectType:    &Node{},
		Transform:     m.trim,
		Handler: cache.ResourceEventHandlerDetailedFuncs{
			AddFunc:    func(obj any, _ bool) { m.update(obj) },
			UpdateFunc: func(_, obj any) { m.update(obj) },
			DeleteFunc: m.delete,
		},
	})
	return m, nil
}

// Run runs the informer until ctx ends.
func (m *Manager) Run(ctx context.Context) {
	m.ctrl.RunWithContext(ctx)
}

// WaitSynced waits until the informer has listed every Node once.
func (m *Manager) WaitSynced(ctx context.Context) error {
	if !cache.WaitForCacheSync(ctx.Done(), m.ctrl.HasSynced) {
		return ctx.Err()
	}
	return nil
}

// contact records the outcome of a list or watch request, for LastSync.
func (m *Manager) contact(err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.healthy = err == nil
	if err == nil {
		m.lastGood = time.Now()
	} else {
		m.m.apiErrors.Inc()
	}
}

// LastSync says when weftd's view of the Nodes was last known current: now
// while the informer's watch is open, else when a request last succeeded.
// It backs /readyz (--ready-etcd-grace applies to it).
func (m *Manager) LastSync() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.healthy && m.ctrl.HasSynced() {
		return time.Now()
	}
	return m.lastGood
}

// nodeRecord is what the informer keeps of a Node: its name, creation time,
// podCIDR and the annotations weft reads, in fields rather than a map (a
// third of the memory of a record with metav1.ObjectMeta and a map, 0.6 KB
// a Node before). It is a runtime.Object whose metadata, for the
// informer's keys, is made when asked for.
type nodeRecord struct {
	Name, ResourceVersion, PodCIDR string
	Created                        time.Time
	ann                            [numAnn]string // by annotations.names' index
	has                            uint8          // bit i: the Node carries ann[i]
}

// GetObjectKind makes nodeRecord a runtime.Object; it carries no kind.
func (n *nodeRecord) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

// DeepCopyObject makes nodeRecord a runtime.Object.
func (n *nodeRecord) DeepCopyObject() runtime.Object {
	c := *n
	return &c
}

// GetObjectMeta is the metadata the informer's store keys records by.
func (n *nodeRecord) GetObjectMeta() metav1.Object {
	return &metav1.ObjectMeta{Name: n.Name, ResourceVersion: n.ResourceVersion}
}

// annotations returns weft's annotations of the Node as a map.
func (n *nodeRecord) annotations(a annotations) map[string]string {
	if n.has == 0 {
		return nil
	}
	m := make(map[string]string, numAnn)
	for i, k := range a.names() {
		if n.has&(1<<i) != 0 {
			m[k] = n.ann[i]
		}
	}
	return m
}

// trim keeps of a Node only what weft reads: name, resourceVersion,
// creation time, podCIDR and the annotations under the prefix.
func (m *Manager) trim(obj any) (any, error) {
	n, ok := obj.(*Node)
	if !ok {
		return obj, nil
	}
	return m.ann.record(n), nil
}

func (a annotations) record(n *Node) *nodeRecord {
	t := &nodeRecord{Name: n.Name, ResourceVersion: n.ResourceVersion, PodCIDR: n.Spec.PodCIDR, Created: n.CreationTimestamp.Time}
	names := a.names()
	for k, v := range n.Annotations {
		for i, name := range names {
			if k == name {
				t.ann[i] = v
				t.has |= 1 << i
			}
		}
	}
	return t
}

// update takes a Node's new state: this node's own goes to Hold, another's
// is checked and becomes its peer record. A Node whose annotations are bad
// keeps its last good record.
func (m *Manager) update(obj any) {
	n, ok := obj.(*nodeRecord)
	if !ok {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rev++
	if n.Name == m.cfg.NodeName {
		m.self = n
		kick(m.selfKick)
	}
	p, err := m.ann.parsePeer(n.PodCIDR, n.annotations(m.ann), m.cfg.Network.Backend.VNI, m.staticRules())
	switch {
	case errors.Is(err, errNotPublished):
		return
	case err != nil:
		_, kept := m.peers.valid[n.Name]
		m.rejectLocked(n.Name, err, kept)
		return
	}
	if old, ok := m.peers.valid[n.Name]; ok && old.peer.Subnet == p.Subnet && old.peer.PublicIP == p.PublicIP &&
		string(old.peer.VtepMAC) == string(p.VtepMAC) {
		return // a re-list or a change weft does not read
	}
	delete(m.peers.reported, n.Name)
	e := &entry{name: n.Name, created: n.Created, peer: p}
	m.peers.note(m.peers.valid[n.Name], e)
	m.peers.put(e)
	kick(m.peerKick)
}

func (m *Manager) delete(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	n, ok := obj.(*nodeRecord)
	if !ok {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.rev++
	if n.Name == m.cfg.NodeName {
		m.self = nil
		kick(m.selfKick)
	}
	delete(m.peers.reported, n.Name)
	if _, ok := m.peers.valid[n.Name]; ok {
		m.peers.note(m.peers.valid[n.Name], nil)
		m.peers.remove(n.Name)
		kick(m.peerKick)
	}
}

// rejectLocked logs and counts a rejected Node once per verdict.
func (m *Manager) rejectLocked(name string, err error, kept bool) {
	msg := err.Error()
	if m.peers.reported[name] == msg {
		return
	}
	m.peers.reported[name] = msg
	m.m.peerEvents.WithLabelValues("invalid").Inc()
	m.log.Warn("ignoring a Node's invalid peer data", "node", name, "err", err, "kept_previous_value", kept)
}

// staticRules is the network a Node's own data is checked against before
// the node knows its own podCIDR: the Network only. The controller manager
// hands out podCIDRs across the whole cluster CIDR, so net-conf.json's
// SubnetMin and SubnetMax do not apply, and the subnet length is the one of
// this node's podCIDR (checked in the snapshot).
func (m *Manager) staticRules() peer.Network {
	return peer.Network{Prefix: m.cfg.Network.Network}
}

func kick(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// Recycle takes back a snapshot's memory for the next one.
func (m *Manager) Recycle(s subnet.Snapshot) {
	if cap(s.Peers) == 0 {
		return
	}
	b := s.Peers[:0]
	m.bufs.Put(&b)
}

func errf(format string, args ...any) error { return fmt.Errorf(format, args...) }
