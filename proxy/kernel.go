package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// programmed is a port as it is in the kernel.
type programmed struct {
	svcPort
	id uint32 // names its affinity map
}

// The three forms a port takes in the kernel.
const (
	formReject   = iota // no backends: in no-endpoints, goto reject
	formPick            // goto pick-<n>, backends in the shared map
	formAffinity        // its own chain and timed map (ClientIP affinity)
)

func (p *svcPort) form() int {
	switch {
	case len(p.backends) == 0:
		return formReject
	case p.affinity > 0:
		return formAffinity
	}
	return formPick
}

// kernel is the table as weft last programmed it, and the batch being
// queued. Only the proxy's loop uses it.
type kernel struct {
	conn   *nftables.Conn
	o      objects
	prog   map[string]*programmed // by port key (chain name)
	picks  map[int]int            // pick-<n> chains, with how many ports use each
	nextID uint32

	// the batch: element changes and deletions that must follow the chain
	// and rule changes already queued on conn
	delElems map[*nftables.Set][]nftables.SetElement
	addElems map[*nftables.Set][]nftables.SetElement
	dels     []func()
	flows    []flowGone
}

// flowGone is UDP conntrack state to delete once the batch is in: flows to
// vip:port that went to one of backends, or every flow when all is set.
type flowGone struct {
	vip      netip.Addr
	port     uint16
	backends []netip.AddrPort
	all      bool
}

func newKernel(conn *nftables.Conn) *kernel {
	k := &kernel{conn: conn, o: newObjects()}
	k.reset()
	return k
}

func (k *kernel) reset() {
	k.prog = map[string]*programmed{}
	k.picks = map[int]int{}
	k.delElems = map[*nftables.Set][]nftables.SetElement{}
	k.addElems = map[*nftables.Set][]nftables.SetElement{}
	k.dels, k.flows = nil, nil
}

// rebuild queues the whole table with ports, replacing what is there in the
// same transaction.
func (k *kernel) rebuild(svcNet, own netip.Prefix, ports map[string]*svcPort) error {
	k.reset()
	k.o = newObjects()
	if err := k.o.build(k.conn, svcNet, own); err != nil {
		return err
	}
	for _, p := range ports {
		k.change(nil, p)
	}
	return nil
}

// change queues what turns old into p; either may be nil.
func (k *kernel) change(old *programmed, p *svcPort) {
	var np *programmed
	if p != nil {
		np = &programmed{svcPort: *p}
		if old != nil && old.affinity == p.affinity {
			np.id = old.id
		} else {
			k.nextID++
			np.id = k.nextID
		}
	}
	k.chains(old, np)
	k.dispatch(old, np)
	k.backends(old, np)
	if np != nil {
		k.prog[np.key] = np
	}
	if old != nil {
		if np == nil {
			delete(k.prog, old.key)
		}
	}
	switch {
	case old == nil:
		k.gone(&np.svcPort, nil, true) // flows that predate the service never saw a DNAT
	case np == nil:
		k.gone(&old.svcPort, nil, true)
	default:
		var removed []netip.AddrPort
		for _, b := range old.backends {
			if _, found := slices.BinarySearchFunc(np.backends, b, netip.AddrPort.Compare); !found {
				removed = append(removed, b)
			}
		}
		if len(removed) > 0 && old.form() == formAffinity && np.form() == formAffinity && np.id == old.id {
			// Clients pinned to a backend that left must choose again.
			k.conn.FlushSet(affinitySet(k.o.table, old.id, old.affinity))
		}
		k.gone(&old.svcPort, removed, len(old.backends) == 0 && len(np.backends) > 0)
	}
}

// chains keeps a port's own chain (ClientIP affinity) and the shared pick
// chains' use counts.
func (k *kernel) chains(old, np *programmed) {
	chain := k.o.chain("")
	oldAff := old != nil && old.form() == formAffinity
	newAff := np != nil && np.form() == formAffinity
	switch {
	case newAff && !oldAff:
		chain.Name = np.key
		k.conn.AddChain(chain)
		k.affRules(chain, np)
	case newAff && oldAff && (!slices.Equal(old.backends, np.backends) || old.id != np.id):
		chain.Name = np.key
		k.conn.FlushChain(chain)
		k.affRules(chain, np)
	case oldAff && !newAff:
		chain.Name = old.key
		k.dels = append(k.dels, func() { k.conn.FlushChain(chain); k.conn.DelChain(chain) })
	}
	if oldAff && (!newAff || old.id != np.id) {
		aff := affinitySet(k.o.table, old.id, old.affinity)
		k.dels = append(k.dels, func() { k.conn.DelSet(aff) })
	}
	if np != nil && np.form() == formPick {
		n := len(np.backends)
		if k.picks[n] == 0 {
			// Created when first used; an unused one is deleted by commit.
			if _, there := k.picks[n]; !there {
				pc := k.conn.AddChain(k.o.chain(pickChain(n)))
				k.conn.AddRule(pickRule(k.o, pc, n))
			}
		}
		k.picks[n]++
	}
	if old != nil && old.form() == formPick {
		k.picks[len(old.backends)]--
	}
}

func (k *kernel) affRules(chain *nftables.Chain, p *programmed) {
	aff := affinitySet(k.o.table, p.id, p.affinity)
	// AddSet fails only for anonymous sets or bad element lists.
	_ = k.conn.AddSet(aff, nil)
	serviceRules(k.conn, k.o, chain, p.backends, aff)
}

// dispatchOf is where a port's packets go from the dispatch maps.
func (k *kernel) dispatchOf(p *programmed) (*nftables.Set, string) {
	switch p.form() {
	case formReject:
		return k.o.noEndpoints, chainReject
	case formAffinity:
		return k.o.services, p.key
	}
	return k.o.services, pickChain(len(p.backends))
}

func (k *kernel) dispatch(old, np *programmed) {
	var os, ns *nftables.Set
	var ov, nv string
	if old != nil {
		os, ov = k.dispatchOf(old)
	}
	if np != nil {
		ns, nv = k.dispatchOf(np)
	}
	if old != nil && np != nil && os == ns && ov == nv && old.vip == np.vip && old.proto == np.proto && old.port == np.port {
		return
	}
	if old != nil {
		k.delElems[os] = append(k.delElems[os], nftables.SetElement{Key: dispatchElem(old.vip, old.proto, old.port)})
	}
	if np != nil {
		k.addElems[ns] = append(k.addElems[ns], nftables.SetElement{Key: dispatchElem(np.vip, np.proto, np.port),
			VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: nv}})
	}
}

// backends swaps the shared map's elements that differ.
func (k *kernel) backends(old, np *programmed) {
	type elem struct{ key, val []byte }
	elems := func(p *programmed) map[string]elem {
		if p == nil || p.form() != formPick {
			return nil
		}
		m := make(map[string]elem, len(p.backends))
		for i, b := range p.backends {
			key := backendKeyOf(p.vip, p.proto, p.port, i)
			m[string(key)] = elem{key, backendElemVal(b)}
		}
		return m
	}
	was, is := elems(old), elems(np)
	s := k.o.backends
	for key, e := range was {
		if n, ok := is[key]; !ok || string(n.val) != string(e.val) {
			k.delElems[s] = append(k.delElems[s], nftables.SetElement{Key: e.key})
		}
	}
	for key, e := range is {
		if o, ok := was[key]; !ok || string(o.val) != string(e.val) {
			k.addElems[s] = append(k.addElems[s], nftables.SetElement{Key: e.key, Val: e.val})
		}
	}
}

func (k *kernel) gone(p *svcPort, backends []netip.AddrPort, all bool) {
	if p.proto != 17 || (!all && len(backends) == 0) {
		return
	}
	k.flows = append(k.flows, flowGone{vip: p.vip, port: p.port, backends: backends, all: all})
}

// elemBytes bounds the elements of one netlink message: they travel in one
// nested attribute, whose length field has 16 bits.
const elemBytes = 60000

// chunk returns how many of els fit in one message.
func chunk(els []nftables.SetElement) int {
	size := 0
	for i, e := range els {
		size += 64 + len(e.Key) + len(e.Val)
		if e.VerdictData != nil {
			size += len(e.VerdictData.Chain)
		}
		if size > elemBytes {
			return i
		}
	}
	return len(els)
}

// commit sends the batch as one transaction and returns the conntrack
// clean-up it calls for.
func (k *kernel) commit() ([]flowGone, error) {
	var errs []error
	for _, s := range []*nftables.Set{k.o.services, k.o.noEndpoints, k.o.backends} {
		for els := k.delElems[s]; len(els) > 0; {
			n := chunk(els)
			errs = append(errs, k.conn.SetDeleteElements(s, els[:n]))
			els = els[n:]
		}
	}
	for _, s := range []*nftables.Set{k.o.services, k.o.noEndpoints, k.o.backends} {
		for els := k.addElems[s]; len(els) > 0; {
			n := chunk(els)
			errs = append(errs, k.conn.SetAddElements(s, els[:n]))
			els = els[n:]
		}
	}
	for _, d := range k.dels {
		d()
	}
	for n, users := range k.picks {
		if users == 0 {
			c := k.o.chain(pickChain(n))
			k.conn.FlushChain(c)
			k.conn.DelChain(c)
			delete(k.picks, n)
		}
	}
	flows := k.flows
	clear(k.delElems)
	clear(k.addElems)
	k.dels, k.flows = nil, nil
	if err := errors.Join(errs...); err != nil {
		// The caller drops this connection with what it queued, and rebuilds.
		return nil, fmt.Errorf("queueing set elements: %w", err)
	}
	if err := k.conn.Flush(); err != nil {
		return nil, fmt.Errorf("programming table %s: %w", TableName, err)
	}
	return flows, nil
}
