package kube

import (
	"cmp"
	"net/netip"
	"slices"
	"time"

	"github.com/weft-net/weft/peer"
)

// entry is a Node's last good peer record.
type entry struct {
	name    string
	created time.Time
	peer    peer.Peer
}

// byClaim orders entries by subnet, then by age and name: of two claims on
// one subnet (or one MAC) the older Node keeps it, as the older etcd lease
// does in etcd mode.
func byClaim(a, b *entry) int {
	return cmp.Or(a.peer.Subnet.Addr().Compare(b.peer.Subnet.Addr()), a.created.Compare(b.created), cmp.Compare(a.name, b.name))
}

// peerSet is what the Manager knows of the other Nodes between snapshots.
// It is not safe for concurrent use; Manager.mu guards it.
type peerSet struct {
	valid map[string]*entry // Node name -> last good record
	// sorted is valid ordered by byClaim, kept up to date by put and
	// remove: a change costs a binary search and a copy, not a sort.
	sorted []*entry
	macs   map[[6]byte]int // valid records by VtepMAC: more than one needs winners
	// reported is the rejection last logged for a Node, so that a Node is
	// logged and counted once per new verdict, not once per snapshot.
	reported map[string]string
}

func newPeerSet() *peerSet {
	return &peerSet{valid: map[string]*entry{}, macs: map[[6]byte]int{}, reported: map[string]string{}}
}

func (ps *peerSet) put(e *entry) {
	ps.remove(e.name)
	ps.valid[e.name] = e
	ps.macs[[6]byte(e.peer.VtepMAC)]++
	i, _ := slices.BinarySearchFunc(ps.sorted, e, byClaim)
	ps.sorted = slices.Insert(ps.sorted, i, e)
}

func (ps *peerSet) remove(name string) {
	e, ok := ps.valid[name]
	if !ok {
		return
	}
	delete(ps.valid, name)
	k := [6]byte(e.peer.VtepMAC)
	if ps.macs[k]--; ps.macs[k] <= 0 {
		delete(ps.macs, k)
	}
	if i, found := slices.BinarySearchFunc(ps.sorted, e, byClaim); found {
		ps.sorted = slices.Delete(ps.sorted, i, i+1)
	}
}

// rejection is a peer the snapshot left out, and why.
type rejection struct {
	name string
	err  error
}

// snapshot appends to out the peers that pass the whole rulebook against
// this node (peer.Check with the network, whose SubnetLen is the node's own
// podCIDR's) and against each other: of two claims on one subnet or one
// VtepMAC the older Node's is kept, and a public IP inside another peer's
// subnet is refused. own is this Node's name, never a peer of itself.
func (ps *peerSet) snapshot(out []peer.Peer, own string, n peer.Network, self *peer.Self) ([]peer.Peer, []rejection) {
	var winners map[[6]byte]*entry
	for _, c := range ps.macs {
		if c > 1 {
			winners = ps.macWinners()
			break
		}
	}
	var rej []rejection
	var last netip.Prefix
	for i, e := range ps.sorted {
		if e.name == own {
			continue
		}
		p := &e.peer
		if i > 0 && p.Subnet == last {
			rej = append(rej, rejection{e.name, errf("subnet %v: already claimed by an older Node", p.Subnet)})
			continue
		}
		last = p.Subnet
		if err := peer.Check(p, n, self); err != nil {
			rej = append(rej, rejection{e.name, err})
			continue
		}
		if w := winners[[6]byte(p.VtepMAC)]; w != nil && w != e {
			rej = append(rej, rejection{e.name, errf("VtepMAC %v: already used by the older Node %s", p.VtepMAC, w.name)})
			continue
		}
		if b, ok := n.Block(p.PublicIP); ok {
			if j, found := slices.BinarySearchFunc(ps.sorted, b, entryAt); found && ps.sorted[j].peer.Subnet == b {
				rej = append(rej, rejection{e.name, errf("PublicIP %v: inside the subnet %v of Node %s", p.PublicIP, b, ps.sorted[j].name)})
				continue
			}
		}
		out = append(out, *p)
	}
	return out, rej
}

func entryAt(e *entry, s netip.Prefix) int { return e.peer.Subnet.Addr().Compare(s.Addr()) }

// macWinners returns, for each VtepMAC more than one Node claims, the
// oldest claim.
func (ps *peerSet) macWinners() map[[6]byte]*entry {
	w := map[[6]byte]*entry{}
	for _, e := range ps.sorted {
		k := [6]byte(e.peer.VtepMAC)
		if ps.macs[k] < 2 {
			continue
		}
		if cur := w[k]; cur == nil || e.created.Before(cur.created) || e.created.Equal(cur.created) && e.name < cur.name {
			w[k] = e
		}
	}
	return w
}
