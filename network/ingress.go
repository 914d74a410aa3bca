package network

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// weft's VXLAN ingress filter.
//
// The kernel's VXLAN socket takes a frame from anyone who can reach the UDP
// port, and the inner destination MAC is computable from a node's address:
// without a filter any host on the underlay, and any container masqueraded
// as its node, can put packets into the overlay with any inner source. weft
// keeps an nftables table of its own, "inet weft", that admits the VXLAN
// port only from the current peers' PublicIPs (a kernel set, one lookup per
// packet whatever the number of peers) and from the operator's
// --vxlan-allow-cidr ranges:
//
//	table inet weft {
//	  set peers { type ipv4_addr }                         # the peers' PublicIPs
//	  chain input   { type filter hook input priority filter - 5
//	    ip saddr 172.16.28.0/24 udp dport 8472 counter name from_containers drop
//	    ip saddr 10.9.0.0/16 udp dport 8472 return           # --vxlan-allow-cidr
//	    ip saddr != @peers udp dport 8472 counter name not_a_peer drop }
//	  chain forward { type filter hook forward priority filter - 5
//	    ip saddr 172.16.28.0/24 udp dport 8472 counter name from_containers drop }
//	  chain prerouting { type filter hook prerouting priority raw
//	    iifname "flannel.1" ip saddr != 172.16.0.0/12 counter name inner_source drop
//	    iifname "flannel.1" ip saddr 172.16.28.0/24 counter name inner_source drop }
//	}
//
// Containers are stopped in forward before their node masquerades them (on
// another node they would look like a peer), and in input when they aim at
// their own node. A decapsulated packet must come from inside the overlay
// and not from this node's own subnet, which only this node's containers
// hold. The sets follow the data plane: backend/vxlan's Device tells its
// Gate the public addresses of the peers a Set adds before their entries go
// in (Admit), and those of the peers it removed once their entries are gone
// (Release), so no packet of a live peer is ever dropped, and a change costs
// what its size costs, whatever the number of peers. Everything else in the table is checked and rebuilt atomically
// (one nf_tables transaction) by the rules goroutine when nf_tables reports
// a change, or every --iptables-resync.

const (
	ingressTable = "weft"
	peersSet     = "peers"
	peers6Set    = "peers6" // the IPv6 twin, in dual-stack and IPv6-only networks
	// Counter names; they become weft_dropped_packets_total{reason}.
	dropFromContainers = "from_containers"
	dropNotAPeer       = "not_a_peer"
	dropInnerSource    = "inner_source"
)

// IngressConfig is the desired state of the filter.
type IngressConfig struct {
	Network netip.Prefix // the whole overlay (IPv4, or IPv6 in an IPv6-only network)
	Subnet  netip.Prefix // this node's containers
	Device  string       // flannel.<VNI>, or flannel-v6.<VNI> in an IPv6-only network
	// Network6, Subnet6 and Device6 are a dual-stack node's IPv6 twin: the
	// same rules for ip6 packets, with the peers' PublicIPv6 in set peers6.
	Network6 netip.Prefix
	Subnet6  netip.Prefix
	Device6  string
	Port     uint16         // the VXLAN UDP port
	Allow    []netip.Prefix // --vxlan-allow-cidr
	// NetNSFd, when not 0, makes the filter live in that network namespace
	// (tests); weftd uses its own.
	NetNSFd int
}

// Ingress keeps weft's VXLAN ingress filter. It is safe for concurrent use.
type Ingress struct {
	log *slog.Logger

	mu   sync.Mutex // guards the fields below and serialises kernel changes
	cfg  IngressConfig
	conn *nftables.Conn
	// refs counts the admitted peers by PublicIP: two leases may name one
	// address, which stays allowed while either is a peer.
	refs map[netip.Addr]int
	// w writes the sets' elements (the hot path); conn does the rest.
	w *elementWriter
	// add and gone are scratch lists of Admit and Release, v4 and v6 of
	// elementsLocked.
	add, gone, v4, v6 []netip.Addr
	// settled is false until the first Settle: until then the addresses
	// already in the kernel's sets (left by the weftd before a restart) are
	// kept, so a restart drops no peer's packet; Settle removes the ones
	// that are no peer any more.
	settled bool
	checks  int // Ensure calls, for the element comparison's period
	// dirty says an element update failed and was not repaired: the next
	// Ensure compares the elements whatever its period.
	dirty bool
}

// elementsEvery is how often Ensure compares the set's elements: every
// 12th check (a minute at the default --iptables-resync of 5 s).
const elementsEvery = 12

// family is one address family's share of the filter.
type family struct {
	network, subnet netip.Prefix
	device          string
	v6              bool
}

// families lists the filter's families: the first, and a dual-stack IPv6 one.
func (c IngressConfig) families() []family {
	fs := []family{{c.Network, c.Subnet, c.Device, c.Subnet.Addr().Is6()}}
	if c.Subnet6.IsValid() {
		fs = append(fs, family{c.Network6, c.Subnet6, c.Device6, true})
	}
	return fs
}

// hasV6 reports whether the filter has an IPv6 family (and set peers6).
func (c IngressConfig) hasV6() bool { return c.Subnet.Addr().Is6() || c.Subnet6.IsValid() }

// NewIngress returns the filter for cfg; it changes nothing in the kernel
// until Ensure or Admit.
func NewIngress(cfg IngressConfig, log *slog.Logger) (*Ingress, error) {
	if !cfg.Network.IsValid() || !cfg.Subnet.IsValid() || cfg.Subnet.Addr().Is4() != cfg.Network.Addr().Is4() {
		return nil, fmt.Errorf("ingress filter needs a Network and a Subnet of one family, have %v and %v", cfg.Network, cfg.Subnet)
	}
	if cfg.Subnet6.IsValid() && (!cfg.Subnet6.Addr().Is6() || !cfg.Network6.Addr().Is6() || cfg.Subnet.Addr().Is6()) {
		return nil, fmt.Errorf("ingress filter: the IPv6 twin needs an IPv4 first family and IPv6 Network6 and Subnet6, have %v and %v", cfg.Network6, cfg.Subnet6)
	}
	for _, f := range cfg.families() {
		if f.device == "" || len(f.device) >= unix.IFNAMSIZ {
			return nil, fmt.Errorf("ingress filter: device name %q is not a valid interface name", f.device)
		}
	}
	if cfg.Port == 0 {
		return nil, errors.New("ingress filter: no VXLAN port")
	}
	for _, a := range cfg.Allow {
		if !a.IsValid() || a.Addr().Is4In6() || a.Addr().Zone() != "" {
			return nil, fmt.Errorf("--vxlan-allow-cidr %v: not an IPv4 or IPv6 prefix", a)
		}
	}
	cfg.Network, cfg.Subnet = cfg.Network.Masked(), cfg.Subnet.Masked()
	cfg.Network6, cfg.Subnet6 = cfg.Network6.Masked(), cfg.Subnet6.Masked()
	opts := []nftables.ConnOption{nftables.AsLasting()}
	if cfg.NetNSFd != 0 {
		opts = append(opts, nftables.WithNetNSFd(cfg.NetNSFd))
	}
	conn, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening nf_tables: %w", err)
	}
	w, err := openElementWriter(cfg.NetNSFd)
	if err != nil {
		_ = conn.CloseLasting()
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Ingress{log: log.With("component", "ingress"), cfg: cfg, conn: conn, w: w, refs: map[netip.Addr]int{}}, nil
}

// Close releases the netlink socket. The table stays, so the filter keeps
// working while weftd restarts.
func (g *Ingress) Close() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn != nil {
		_ = g.conn.CloseLasting()
		g.conn = nil
		g.w.close()
	}
}

// Admit lets the VXLAN packets from addrs in: they are in the kernel's sets
// when it returns nil. Each address is counted once per call that names it
// (one per peer using it) until Release takes the count back down, since
// two leases may name one address. Its cost follows len(addrs), not the
// number of peers.
func (g *Ingress) Admit(addrs []netip.Addr) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn == nil {
		return errors.New("ingress filter closed")
	}
	add := g.add[:0]
	for _, a := range addrs {
		add = g.ref(add, a, 1)
	}
	g.add = add[:0]
	if len(add) == 0 {
		return nil
	}
	return g.elementsLocked(add, true)
}

// Release takes back one count of each of addrs (see Admit); the addresses
// no peer uses any more leave the kernel's sets. Call it once the departed
// peers' routes are gone.
func (g *Ingress) Release(addrs []netip.Addr) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn == nil {
		return errors.New("ingress filter closed")
	}
	gone := g.gone[:0]
	for _, a := range addrs {
		gone = g.ref(gone, a, -1)
	}
	g.gone = gone[:0]
	if len(gone) == 0 {
		return nil
	}
	return g.elementsLocked(gone, false)
}

// Settle ends the adoption of a restart: the first call, made once every
// peer of the first snapshot is admitted and programmed, takes out of the
// kernel's sets the addresses the weftd before left there that no peer
// uses any more. Later calls do nothing.
func (g *Ingress) Settle() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.settled {
		return nil
	}
	if g.conn == nil {
		return errors.New("ingress filter closed")
	}
	g.settled = true
	var stale []netip.Addr
	for _, s := range g.sets() {
		elems, err := g.conn.GetSetElements(s)
		if err != nil {
			continue // no set: the next Ensure writes it from the counts
		}
		for _, e := range elems {
			if a, ok := netip.AddrFromSlice(e.Key); ok && g.refs[a] == 0 {
				stale = append(stale, a)
			}
		}
	}
	if len(stale) == 0 {
		return nil
	}
	return g.elementsLocked(stale, false)
}

// ref changes a's count by d and appends it to list when it crosses zero.
// A count never goes below zero: a Release without its Admit changes
// nothing.
func (g *Ingress) ref(list []netip.Addr, a netip.Addr, d int) []netip.Addr {
	a = a.Unmap()
	if !a.IsValid() || a.Is6() && !g.cfg.hasV6() {
		return list
	}
	n, had := g.refs[a]
	if !had && d < 0 {
		return list
	}
	n += d
	if n <= 0 {
		delete(g.refs, a)
	} else {
		g.refs[a] = n
	}
	if (d > 0 && n == 1) || (d < 0 && n == 0) {
		list = append(list, a)
	}
	return list
}

// elementsChunk is how many addresses go in one nf_tables transaction: the
// library builds every message of a transaction before sending it, and
// 4,000 addresses at once would be 2 MB of heap at weftd's start.
const elementsChunk = 512

// elementsLocked adds or deletes set elements, elementsChunk per
// transaction. A table that is missing (flushed by someone) is rebuilt whole
// instead.
func (g *Ingress) elementsLocked(addrs []netip.Addr, add bool) error {
	for len(addrs) > 0 {
		n := min(len(addrs), elementsChunk)
		v4, v6 := g.v4[:0], g.v6[:0]
		for _, a := range addrs[:n] {
			if a.Is4() {
				v4 = append(v4, a)
			} else {
				v6 = append(v6, a)
			}
		}
		addrs = addrs[n:]
		g.v4, g.v6 = v4[:0], v6[:0]
		if err := g.w.write(add, v4, v6); err != nil {
			// The table or set is gone, or an element was already
			// missing: write the whole table as it should be. If that
			// fails too, the next Ensure compares the elements.
			g.log.Debug("updating the peers set failed; rebuilding the table", "table", ingressTable, "err", err)
			if err := g.rebuildLocked(); err != nil {
				g.dirty = true
				return err
			}
		}
	}
	return nil
}

func (g *Ingress) names() (*nftables.Table, *nftables.Set) {
	t := &nftables.Table{Name: ingressTable, Family: nftables.TableFamilyINet}
	// A size makes the kernel pick its fixed hash over the resizable one:
	// 4,000 addresses go in three times faster.
	return t, &nftables.Set{Table: t, Name: peersSet, KeyType: nftables.TypeIPAddr, Size: setSize}
}

// setSize is the most addresses a peer set holds.
const setSize = 1 << 16

// set6 is the IPv6 peers' set.
func (g *Ingress) set6(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: peers6Set, KeyType: nftables.TypeIP6Addr, Size: setSize}
}

// sets are the peer sets the filter has: peers, and peers6 with IPv6.
func (g *Ingress) sets() []*nftables.Set {
	t, s := g.names()
	if g.cfg.hasV6() {
		return []*nftables.Set{s, g.set6(t)}
	}
	return []*nftables.Set{s}
}

// Ensure checks the table against the configuration and the admitted peers,
// and rebuilds it when anything differs. It returns 1 if it had to, 0 when
// all was right.
func (g *Ingress) Ensure() (int, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn == nil {
		return 0, errors.New("ingress filter closed")
	}
	if g.intactLocked() {
		return 0, nil
	}
	return 1, g.rebuildLocked()
}

// intactLocked reports whether the kernel holds the table exactly as
// rebuildLocked would write it: the chains with their rules (recognised by
// the description each carries), the counters and the set's elements.
func (g *Ingress) intactLocked() bool {
	t, s := g.names()
	chains, err := g.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false
	}
	want := g.chains(t, s, g.set6(t))
	found := 0
	for _, c := range chains {
		if c.Table.Name != ingressTable {
			continue
		}
		found++
		w, ok := want[c.Name]
		if !ok || c.Hooknum == nil || *c.Hooknum != *w.chain.Hooknum || c.Priority == nil || *c.Priority != *w.chain.Priority {
			return false
		}
		rules, err := g.conn.GetRules(t, c)
		if err != nil || len(rules) != len(w.rules) {
			return false
		}
		for i, r := range rules {
			if !bytes.Equal(r.UserData, w.rules[i].UserData) {
				return false
			}
		}
	}
	if found != len(want) {
		return false
	}
	objs, err := g.conn.GetObjects(t)
	if err != nil || len(objs) != len(counterNames) {
		return false
	}
	// The sets' elements are compared on the first check and every
	// elementsEvery-th after it: a dump of thousands of addresses is the
	// costly part of the check, and weft's own updates (which the element
	// changes mostly are) keep the sets right in between.
	g.checks++
	if g.checks%elementsEvery != 1 && !g.dirty {
		return true
	}
	_ = s
	var elems []nftables.SetElement
	for _, set := range g.sets() {
		e, err := g.conn.GetSetElements(set)
		if err != nil {
			return false
		}
		elems = append(elems, e...)
	}
	if !g.settled {
		return true // the elements are adopted as they are until Settle
	}
	if len(elems) != len(g.refs) {
		return false
	}
	for _, e := range elems {
		a, ok := netip.AddrFromSlice(e.Key)
		if !ok || g.refs[a] == 0 {
			return false
		}
	}
	return true
}

var counterNames = []string{dropFromContainers, dropNotAPeer, dropInnerSource}

// rebuildLocked replaces the table whole in one transaction: there is no
// moment without the filter. Adding the table first makes the delete that
// follows succeed whether or not it existed.
func (g *Ingress) rebuildLocked() error {
	t, s := g.names()
	s6 := g.set6(t)
	var elems, elems6 []nftables.SetElement
	for a := range g.refs {
		if a.Is4() {
			elems = append(elems, nftables.SetElement{Key: a.AsSlice()})
		} else {
			elems6 = append(elems6, nftables.SetElement{Key: a.AsSlice()})
		}
	}
	if !g.settled {
		// Before Settle, keep what the sets hold (a restart).
		if old, err := g.conn.GetSetElements(s); err == nil {
			elems = append(elems, old...)
		}
		if old, err := g.conn.GetSetElements(s6); err == nil && g.cfg.hasV6() {
			elems6 = append(elems6, old...)
		}
	}
	g.conn.AddTable(t)
	g.conn.DelTable(t)
	g.conn.AddTable(t)
	if err := g.conn.AddSet(s, elems); err != nil {
		return fmt.Errorf("adding set %s: %w", peersSet, err)
	}
	if g.cfg.hasV6() {
		if err := g.conn.AddSet(s6, elems6); err != nil {
			return fmt.Errorf("adding set %s: %w", peers6Set, err)
		}
	}
	for _, name := range counterNames {
		g.conn.AddObj(&nftables.CounterObj{Table: t, Name: name})
	}
	for _, name := range []string{"prerouting", "input", "forward"} {
		c := g.chains(t, s, s6)[name]
		g.conn.AddChain(c.chain)
		for _, r := range c.rules {
			g.conn.AddRule(r)
		}
	}
	if err := g.conn.Flush(); err != nil {
		return fmt.Errorf("writing nftables table inet %s: %w", ingressTable, err)
	}
	g.dirty = false
	return nil
}

// Remove deletes the table. weftd does not call it on exit; it is for
// --vxlan-ingress-filter=false, tests and demo teardown.
func (g *Ingress) Remove() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn == nil {
		return errors.New("ingress filter closed")
	}
	t, _ := g.names()
	g.conn.AddTable(t)
	g.conn.DelTable(t)
	return g.conn.Flush()
}

// Dropped reads the table's counters: packets dropped by reason.
func (g *Ingress) Dropped() (map[string]uint64, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.conn == nil {
		return nil, errors.New("ingress filter closed")
	}
	t, _ := g.names()
	objs, err := g.conn.GetObjects(t)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	for _, o := range objs {
		if c, ok := o.(*nftables.CounterObj); ok {
			out[c.Name] = c.Packets
		}
	}
	return out, nil
}
