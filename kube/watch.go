package kube

import (
	"context"

	"github.com/weft-net/weft/peer"
	"github.com/weft-net/weft/subnet"
)

// WatchPeers calls out with a whole Snapshot of the other Nodes once the
// informer has listed them and this node holds its podCIDR, and again after
// every change, until ctx ends (it returns ctx.Err()). Changes that arrive
// while a snapshot is being made are folded into the next one.
func (m *Manager) WatchPeers(ctx context.Context, f subnet.PeerFilter, out func(subnet.Snapshot)) error {
	if err := m.WaitSynced(ctx); err != nil {
		return err
	}
	for {
		if s, ok := m.snapshot(f); ok {
			out(s)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-m.peerKick:
		case <-f.Refilter:
			m.mu.Lock()
			m.peers.outOK = false // the host's routes changed: judge all again
			m.mu.Unlock()
		}
	}
}

// snapshot makes the peers for the node's current view; false before the
// node holds its podCIDR, whose length every peer's subnet must have.
func (m *Manager) snapshot(f subnet.PeerFilter) (subnet.Snapshot, bool) {
	self := peer.Self{Underlay: f.Underlay, VtepMAC: f.VtepMAC}
	if f.Self != nil {
		self.Subnet, self.PublicIP = f.Self()
	}
	if f.Foreign != nil {
		self.Foreign = f.Foreign()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.own.IsValid() {
		return subnet.Snapshot{}, false
	}
	if !self.Subnet.IsValid() {
		self.Subnet = m.own
	}
	n := peer.Network{Prefix: f.Config.Network, SubnetLen: m.own.Bits()}
	key := outKey{own: m.cfg.NodeName, selfIP: self.PublicIP, self: self.Subnet, n: n}
	rej, events, incremental := m.peers.incremental(key, &self)
	if !incremental {
		// Made afresh, so that the events are counted against the last
		// snapshot's peers; a full snapshot is rare (the first, a burst,
		// two claims on one subnet or MAC, a change of the host's routes).
		peers, r := m.peers.snapshot(make([]peer.Peer, 0, len(m.peers.sorted)), m.cfg.NodeName, n, &self)
		rej, events = r, m.count(m.peers.out, peers)
		m.peers.full(key, peers)
	}
	m.m.peerEvents.WithLabelValues("added").Add(float64(events.added))
	m.m.peerEvents.WithLabelValues("removed").Add(float64(events.removed))
	m.m.peerEvents.WithLabelValues("changed").Add(float64(events.changed))
	peers := append(m.peerBuf(len(m.peers.out)), m.peers.out...)
	seen := make(map[string]bool, len(rej))
	for _, r := range rej {
		seen[r.name] = true
		m.rejectLocked(r.name, r.err, false)
	}
	// A Node that passes again may be reported again if it fails later.
	for name := range m.peers.reported {
		if incremental {
			break
		}
		if _, valid := m.peers.valid[name]; valid && !seen[name] {
			delete(m.peers.reported, name)
		}
	}
	return subnet.Snapshot{Peers: peers, Revision: m.rev}, true
}

func (m *Manager) peerBuf(n int) []peer.Peer {
	if p, ok := m.bufs.Get().(*[]peer.Peer); ok && cap(*p) >= n {
		return (*p)[:0]
	}
	return make([]peer.Peer, 0, n+n/8+16)
}

// count compares two snapshots' peers, both sorted by subnet.
func (m *Manager) count(prev, next []peer.Peer) counts {
	var n counts
	i, j := 0, 0
	for i < len(prev) || j < len(next) {
		c := 0
		switch {
		case i == len(prev):
			c = 1
		case j == len(next):
			c = -1
		default:
			c = prev[i].Subnet.Addr().Compare(next[j].Subnet.Addr())
			if c == 0 && prev[i].Subnet.Bits() != next[j].Subnet.Bits() {
				c = prev[i].Subnet.Bits() - next[j].Subnet.Bits()
			}
		}
		switch {
		case c < 0:
			n.removed++
			i++
		case c > 0:
			n.added++
			j++
		default:
			if !samePeer(prev[i], next[j]) {
				n.changed++
			}
			i++
			j++
		}
	}
	return n
}
