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

// kernel is the table as weft last programmed it, and the batch being
// queued. Only the proxy's loop uses it.
type kernel struct {
	conn   *nftables.Conn
	o      objects
	prog   map[string]*programmed // by port key (chain name)
	hair   map[netip.Addr]int     // backends' addresses, with how many ports use each
	nextID uint32

	// the batch: element changes and deletions that must follow the chain
	// and rule changes already queued on conn
	delElems map[*nftables.Set][]nftables.SetElement
	addElems map[*nftables.Set][]nftables.SetElement
	dels     []func()
	flows    []flowGone
	errs     []error // queueing errors; the batch must not be sent
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
	k.hair = map[netip.Addr]int{}
	k.delElems = map[*nftables.Set][]nftables.SetElement{}
	k.addElems = map[*nftables.Set][]nftables.SetElement{}
	k.dels, k.flows, k.errs = nil, nil, nil
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
	chain := k.o.chain("")
	switch {
	case p == nil:
		chain.Name = old.key
		k.delDispatch(old)
		k.unhair(old.backends)
		k.dels = append(k.dels, func() { k.conn.FlushChain(chain); k.conn.DelChain(chain) })
		if old.affinity > 0 {
			aff := affinitySet(k.o.table, old.id, old.affinity)
			k.dels = append(k.dels, func() { k.conn.DelSet(aff) })
		}
		delete(k.prog, old.key)
		k.gone(&old.svcPort, nil, true)
		return

	case old == nil:
		chain.Name = p.key
		k.nextID++
		np := &programmed{svcPort: *p, id: k.nextID}
		k.conn.AddChain(chain)
		k.rules(chain, np)
		k.addDispatch(np)
		k.rehair(p.backends)
		k.prog[p.key] = np
		k.gone(p, nil, true) // flows that predate the service never saw a DNAT
		return
	}

	chain.Name = p.key
	np := &programmed{svcPort: *p, id: old.id}
	if old.affinity != p.affinity {
		k.nextID++
		np.id = k.nextID
	}
	if !slices.Equal(old.backends, p.backends) || np.id != old.id {
		k.conn.FlushChain(chain)
		k.rules(chain, np)
		if old.affinity > 0 && np.id != old.id {
			aff := affinitySet(k.o.table, old.id, old.affinity)
			k.dels = append(k.dels, func() { k.conn.DelSet(aff) })
		}
	}
	if old.vip != p.vip || old.proto != p.proto || old.port != p.port || (len(old.backends) == 0) != (len(p.backends) == 0) {
		k.delDispatch(old)
		k.addDispatch(np)
	}
	k.rehair(p.backends)
	k.unhair(old.backends)
	var removed []netip.AddrPort
	for _, b := range old.backends {
		if _, found := slices.BinarySearchFunc(p.backends, b, netip.AddrPort.Compare); !found {
			removed = append(removed, b)
		}
	}
	if len(removed) > 0 && old.affinity > 0 && np.id == old.id {
		// Clients pinned to a backend that left must choose again.
		k.conn.FlushSet(affinitySet(k.o.table, old.id, old.affinity))
	}
	k.gone(&old.svcPort, removed, len(old.backends) == 0 && len(p.backends) > 0)
	k.prog[p.key] = np
}

func (k *kernel) gone(p *svcPort, backends []netip.AddrPort, all bool) {
	if p.proto != 17 || (!all && len(backends) == 0) {
		return
	}
	k.flows = append(k.flows, flowGone{vip: p.vip, port: p.port, backends: backends, all: all})
}

func (k *kernel) rules(chain *nftables.Chain, p *programmed) {
	if len(p.backends) == 0 {
		return // never jumped to: the service is in no-endpoints
	}
	var aff *nftables.Set
	if p.affinity > 0 {
		aff = affinitySet(k.o.table, p.id, p.affinity)
		// AddSet fails only for anonymous sets or bad element lists.
		_ = k.conn.AddSet(aff, nil)
	}
	serviceRules(k.conn, k.o, chain, p.backends, aff)
}

func (k *kernel) dispatchSet(p *programmed) *nftables.Set {
	if len(p.backends) == 0 {
		return k.o.noEndpoints
	}
	return k.o.services
}

func (k *kernel) addDispatch(p *programmed) {
	v := &expr.Verdict{Kind: expr.VerdictGoto, Chain: p.key}
	if len(p.backends) == 0 {
		v.Chain = chainReject
	}
	s := k.dispatchSet(p)
	k.addElems[s] = append(k.addElems[s], nftables.SetElement{Key: dispatchElem(p.vip, p.proto, p.port), VerdictData: v})
}

func (k *kernel) delDispatch(p *programmed) {
	s := k.dispatchSet(p)
	k.delElems[s] = append(k.delElems[s], nftables.SetElement{Key: dispatchElem(p.vip, p.proto, p.port)})
}

func (k *kernel) rehair(bs []netip.AddrPort) {
	for _, b := range bs {
		a := b.Addr()
		if k.hair[a] == 0 {
			k.addElems[k.o.hair] = append(k.addElems[k.o.hair], nftables.SetElement{Key: hairpinElem(a)})
		}
		k.hair[a]++
	}
}

func (k *kernel) unhair(bs []netip.AddrPort) {
	for _, b := range bs {
		a := b.Addr()
		if k.hair[a]--; k.hair[a] <= 0 {
			delete(k.hair, a)
			k.delElems[k.o.hair] = append(k.delElems[k.o.hair], nftables.SetElement{Key: hairpinElem(a)})
		}
	}
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
	errs := k.errs
	k.errs = nil
	for _, s := range []*nftables.Set{k.o.services, k.o.noEndpoints, k.o.hair} {
		for els := k.delElems[s]; len(els) > 0; {
			n := chunk(els)
			errs = append(errs, k.conn.SetDeleteElements(s, els[:n]))
			els = els[n:]
		}
	}
	for _, s := range []*nftables.Set{k.o.services, k.o.noEndpoints, k.o.hair} {
		for els := k.addElems[s]; len(els) > 0; {
			n := chunk(els)
			errs = append(errs, k.conn.SetAddElements(s, els[:n]))
			els = els[n:]
		}
	}
	for _, d := range k.dels {
		d()
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
