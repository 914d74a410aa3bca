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
	inNet  int             // valid records whose public IP lies inside the Network
	net    netip.Prefix    // the Network, for inNet
	// reported is the rejection last logged for a Node, so that a Node is
	// logged and counted once per new verdict, not once per snapshot.
	reported map[string]string

	// out is the last snapshot's peers, made for outKey; while outOK,
	// changes are applied to it one by one (pending), in O(log N) each,
	// rather than checking every peer again. A change that can alter
	// another peer's verdict (a shared MAC, a public IP inside a subnet,
	// two claims on one subnet) makes the next snapshot a full one.
	out     []peer.Peer
	outOK   bool
	outKey  outKey
	pending []change
}

// outKey is what a snapshot's verdicts depend on besides the peers.
type outKey struct {
	own    string
	selfIP netip.Addr
	self   netip.Prefix
	n      peer.Network
}

// change is one Node's record before and after (nil: none).
type change struct{ old, new *entry }

// maxPending is how many changes are applied one by one before a full
// snapshot is cheaper.
const maxPending = 64

// note records a change for the next snapshot.
func (ps *peerSet) note(old, new *entry) {
	if !ps.outOK {
		return
	}
	if len(ps.pending) >= maxPending {
		ps.outOK, ps.pending = false, nil
		return
	}
	ps.pending = append(ps.pending, change{old, new})
}

// counts are the peer events of one snapshot: peers added, removed and
// changed (same subnet, another public IP or MAC) since the last one.
type counts struct{ added, removed, changed int }

// incremental applies the pending changes to out and counts what they did
// to it; false means a full snapshot is needed, and out is then untouched.
// Called after the changes are in sorted and macs.
func (ps *peerSet) incremental(key outKey, self *peer.Self) ([]rejection, counts, bool) {
	var n counts
	if !ps.outOK || key != ps.outKey {
		return nil, n, false
	}
	for _, c := range ps.pending {
		if !ps.alone(c, key) {
			return nil, n, false
		}
	}
	var rej []rejection
	for _, c := range ps.pending {
		var was *peer.Peer // the change's old peer, taken out of out
		if c.old != nil && c.old.name != key.own {
			if j, found := slices.BinarySearchFunc(ps.out, c.old.peer.Subnet, peerAt); found && ps.out[j].Subnet == c.old.peer.Subnet {
				old := ps.out[j]
				was = &old
				ps.out = slices.Delete(ps.out, j, j+1)
			}
		}
		var is *peer.Peer // the change's new peer, put into out
		if c.new != nil && c.new.name != key.own {
			p := c.new.peer
			if err := peer.Check(&p, key.n, self); err != nil {
				rej = append(rej, rejection{c.new.name, err})
			} else {
				j, found := slices.BinarySearchFunc(ps.out, p.Subnet, peerAt)
				if found {
					ps.out[j] = p
				} else {
					ps.out = slices.Insert(ps.out, j, p)
				}
				is = &p
			}
		}
		switch {
		case was != nil && is != nil && was.Subnet == is.Subnet:
			if !samePeer(*was, *is) {
				n.changed++
			}
		default:
			if was != nil {
				n.removed++
			}
			if is != nil {
				n.added++
			}
		}
	}
	ps.pending = ps.pending[:0]
	return rej, n, true
}

func samePeer(a, b peer.Peer) bool {
	return a.PublicIP == b.PublicIP && string(a.VtepMAC) == string(b.VtepMAC)
}

// alone reports whether change c can alter no other record's verdict, so
// that it can be applied by itself. It is judged against the state after
// every pending change, which is stricter than at the change's own time.
func (ps *peerSet) alone(c change, key outKey) bool {
	if c.new != nil {
		e := c.new
		if ps.macs[[6]byte(e.peer.VtepMAC)] != 1 || ps.claims(e.peer.Subnet) != 1 {
			return false // two claims: the older wins, judged in full
		}
		if _, in := key.n.Block(e.peer.PublicIP); in || ps.publicIn(e.peer.Subnet) {
			return false // a public IP inside a subnet: judged in full
		}
	}
	if c.old != nil {
		e := c.old
		mac, claims := 0, 0
		if c.new != nil && [6]byte(c.new.peer.VtepMAC) == [6]byte(e.peer.VtepMAC) {
			mac = 1
		}
		if c.new != nil && c.new.peer.Subnet == e.peer.Subnet {
			claims = 1
		}
		// Another claim on the old MAC or subnet may win now.
		if ps.macs[[6]byte(e.peer.VtepMAC)] != mac || ps.claims(e.peer.Subnet) != claims {
			return false
		}
		if _, in := key.n.Block(e.peer.PublicIP); in || ps.publicIn(e.peer.Subnet) {
			return false
		}
	}
	return true
}

func peerAt(p peer.Peer, s netip.Prefix) int { return p.Subnet.Addr().Compare(s.Addr()) }

// claims counts the records on subnet s.
func (ps *peerSet) claims(s netip.Prefix) int {
	i, _ := slices.BinarySearchFunc(ps.sorted, s, entryAt)
	n := 0
	for ; i < len(ps.sorted) && ps.sorted[i].peer.Subnet.Addr() == s.Addr(); i++ {
		n++
	}
	return n
}

// publicIn reports whether a record's public IP lies in subnet s. Public IPs
// are the underlay's and lie outside the Network, so this is answered from
// the Network alone unless s holds one.
func (ps *peerSet) publicIn(s netip.Prefix) bool {
	if ps.inNet == 0 {
		return false
	}
	for _, e := range ps.sorted {
		if s.Contains(e.peer.PublicIP.Unmap()) {
			return true
		}
	}
	return false
}

// full makes peers, the result of a full snapshot, the base of the next
// ones (peers is kept, not copied).
func (ps *peerSet) full(key outKey, peers []peer.Peer) {
	ps.out = peers
	ps.outOK, ps.outKey, ps.pending = true, key, ps.pending[:0]
}

func newPeerSet(network netip.Prefix) *peerSet {
	return &peerSet{valid: map[string]*entry{}, macs: map[[6]byte]int{}, reported: map[string]string{}, net: network}
}

func (ps *peerSet) put(e *entry) {
	ps.remove(e.name)
	ps.valid[e.name] = e
	ps.macs[[6]byte(e.peer.VtepMAC)]++
	if ps.net.Contains(e.peer.PublicIP.Unmap()) {
		ps.inNet++
	}
	i, _ := slices.BinarySearchFunc(ps.sorted, e, byClaim)
	ps.sorted = slices.Insert(ps.sorted, i, e)
}

func (ps *peerSet) remove(name string) {
	e, ok := ps.valid[name]
	if !ok {
		return
	}
	delete(ps.valid, name)
	if ps.net.Contains(e.peer.PublicIP.Unmap()) {
		ps.inNet--
	}
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
