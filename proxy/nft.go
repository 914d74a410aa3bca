package proxy

import (
	"encoding/binary"
	"fmt"
	"maps"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table (family ip) that holds every service rule.
// weft's other nftables table is "weft"; this one is apart so that each side
// can be flushed and rebuilt without the other.
const TableName = "weft-svc"

// Names of the table's fixed objects.
const (
	setServices    = "services"     // vip . proto . port : goto svc-…
	setNoEndpoints = "no-endpoints" // vip . proto . port : goto reject
	setBackends    = "backends"     // vip . proto . port . index : backend ip . port
	chainServices  = "services"
	chainReject    = "reject"
)

// Registers. NFT_REG32_00 (8) onward are 32-bit registers; a concatenation
// takes one per field, padded to 4 bytes.
const (
	reg1  = 1 // the 128-bit register 1, for simple comparisons
	reg8  = 8
	reg9  = 9
	reg10 = 10
	reg11 = 11
	reg12 = 12
	reg13 = 13
)

// rtnLocal is RTN_LOCAL, fib's answer for an address of this host.
const rtnLocal = 2

var (
	dispatchKey = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	backendData = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	backendKey  = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeInteger)
)

// nftConn opens a netlink connection to nf_tables with buffers large enough
// for a whole rebuild at tens of thousands of services in one transaction:
// the batch goes out in one sendmsg, and the kernel acknowledges every
// message before weft reads any of the acknowledgements.
func nftConn(netnsFd int) (*nftables.Conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting(), nftables.WithSockOptions(func(c *netlink.Conn) error {
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		err = rc.Control(func(fd uintptr) {
			for _, o := range []int{unix.SO_SNDBUFFORCE, unix.SO_RCVBUFFORCE} {
				if e := unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, o, 256<<20); e != nil {
					serr = e
				}
			}
		})
		if err != nil {
			return err
		}
		return serr
	})}
	if netnsFd > 0 {
		opts = append(opts, nftables.WithNetNSFd(netnsFd))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("opening nf_tables netlink: %w", err)
	}
	return c, nil
}

// objects is the table and its named objects, as google/nftables wants them
// to refer to by name.
type objects struct {
	rules                 map[string]int // base chain -> rules, as built
	table                 *nftables.Table
	services, noEndpoints *nftables.Set
	backends              *nftables.Set
}

func newObjects() objects {
	t := &nftables.Table{Name: TableName, Family: nftables.TableFamilyIPv4}
	return objects{
		table:       t,
		services:    &nftables.Set{Table: t, Name: setServices, IsMap: true, Concatenation: true, KeyType: dispatchKey, DataType: nftables.TypeVerdict},
		noEndpoints: &nftables.Set{Table: t, Name: setNoEndpoints, IsMap: true, Concatenation: true, KeyType: dispatchKey, DataType: nftables.TypeVerdict},
		backends:    &nftables.Set{Table: t, Name: setBackends, IsMap: true, Concatenation: true, KeyType: backendKey, DataType: backendData},
	}
}

func (o objects) chain(name string) *nftables.Chain {
	return &nftables.Chain{Name: name, Table: o.table}
}

func affinitySet(t *nftables.Table, id uint32, timeout int) *nftables.Set {
	return &nftables.Set{Table: t, Name: fmt.Sprintf("affinity-%d", id), IsMap: true, Dynamic: true, HasTimeout: true,
		Timeout: time.Duration(timeout) * time.Second, KeyType: nftables.TypeIPAddr, DataType: backendData, Concatenation: false}
}

// build queues the whole table from nothing: the table is created (so that
// deleting it cannot fail), deleted and made again in the same transaction,
// so packets see either the old rules or the new, never none.
func (o *objects) build(c *nftables.Conn, svcNet, own netip.Prefix) error {
	c.AddTable(o.table)
	c.DelTable(o.table)
	c.AddTable(o.table)
	for _, s := range []*nftables.Set{o.services, o.noEndpoints, o.backends} {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("queueing set %s: %w", s.Name, err)
		}
	}
	services := c.AddChain(o.chain(chainServices))
	reject := c.AddChain(o.chain(chainReject))
	base := func(name string, hook *nftables.ChainHook, typ nftables.ChainType, prio int32) *nftables.Chain {
		return c.AddChain(&nftables.Chain{Name: name, Table: o.table, Hooknum: hook, Type: typ,
			Priority: nftables.ChainPriorityRef(nftables.ChainPriority(prio))})
	}
	inNet := inNetwork(svcNet, func(r uint32) expr.Any {
		return &expr.Payload{DestRegister: r, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
	})
	toServices := append(inNet, &expr.Verdict{Kind: expr.VerdictJump, Chain: chainServices})
	for _, b := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"nat-prerouting", nftables.ChainHookPrerouting}, {"nat-output", nftables.ChainHookOutput}} {
		c.AddRule(&nftables.Rule{Table: o.table, Chain: base(b.name, b.hook, nftables.ChainTypeNAT, -100), Exprs: toServices})
	}
	c.AddRule(&nftables.Rule{Table: o.table, Chain: services, Exprs: dispatch(o.services)})

	post := base("nat-postrouting", nftables.ChainHookPostrouting, nftables.ChainTypeNAT, 100)
	serviceConn := append([]expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATUS},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(0x20), Xor: make([]byte, 4)}, // IPS_DST_NAT
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
	}, inNetwork(svcNet, func(r uint32) expr.Any { return &expr.Ct{Register: r, Key: expr.CtKeyDST, Direction: 0} })...)
	// The host's own connections leave with an address the backend can
	// answer; a container's keep its own.
	c.AddRule(&nftables.Rule{Table: o.table, Chain: post, Exprs: append(clone(serviceConn),
		&expr.Fib{Register: reg1, FlagSADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(rtnLocal)},
		&expr.Masq{})})
	// A client and a backend both behind this node's bridge, the same
	// container included (hairpin): the backend would answer across the
	// bridge, around the DNAT (unless br_netfilter is loaded), or to itself.
	// Masqueraded, the answer comes back through this host. Clients on
	// other nodes keep their address.
	nodeRules := 0
	if own.IsValid() {
		nodeRules = 1
		saddr := func(r uint32) expr.Any {
			return &expr.Payload{DestRegister: r, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
		}
		daddr := func(r uint32) expr.Any {
			return &expr.Payload{DestRegister: r, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4}
		}
		e := append(clone(serviceConn), inNetwork(own.Masked(), saddr)...)
		e = append(e, inNetwork(own.Masked(), daddr)...)
		c.AddRule(&nftables.Rule{Table: o.table, Chain: post, Exprs: append(e, &expr.Masq{})})
	}
	o.rules = maps.Clone(baseChains)
	o.rules["nat-postrouting"] += nodeRules

	// A service without endpoints refuses at once, as kube-proxy does.
	noEP := append([]expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(8), Xor: make([]byte, 4)}, // new
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: make([]byte, 4)},
	}, dispatch(o.noEndpoints)...)
	for _, b := range []struct {
		name string
		hook *nftables.ChainHook
	}{{"filter-forward", nftables.ChainHookForward}, {"filter-output", nftables.ChainHookOutput}} {
		c.AddRule(&nftables.Rule{Table: o.table, Chain: base(b.name, b.hook, nftables.ChainTypeFilter, -10), Exprs: clone(noEP)})
	}
	c.AddRule(&nftables.Rule{Table: o.table, Chain: reject, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
	}})
	c.AddRule(&nftables.Rule{Table: o.table, Chain: reject, Exprs: []expr.Any{
		&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}, // port unreachable
	}})
	return nil
}

// baseChains and their rule counts (without the node's own masquerade rule).
var baseChains = map[string]int{
	"nat-prerouting": 1, "nat-output": 1, "nat-postrouting": 1,
	"filter-forward": 1, "filter-output": 1, chainServices: 1, chainReject: 2,
}

func clone(e []expr.Any) []expr.Any { return append([]expr.Any(nil), e...) }

// inNetwork matches the address load puts in a register against p.
func inNetwork(p netip.Prefix, load func(reg uint32) expr.Any) []expr.Any {
	m := make([]byte, 4)
	binary.BigEndian.PutUint32(m, ^uint32(0)<<(32-p.Bits()))
	a := p.Addr().As4()
	return []expr.Any{
		load(reg1),
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: m, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: a[:]},
	}
}

// dispatch is `ip daddr . meta l4proto . th dport vmap @set`.
func dispatch(set *nftables.Set) []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: reg8, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg9},
		&expr.Payload{DestRegister: reg10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Lookup{SourceRegister: reg8, SetName: set.Name, SetID: set.ID, DestRegister: 0, IsDestRegSet: true},
	}
}

func dispatchElem(vip netip.Addr, proto uint8, port uint16) []byte {
	k := make([]byte, 12)
	a := vip.As4()
	copy(k, a[:])
	k[4] = proto
	binary.BigEndian.PutUint16(k[8:], port)
	return k
}

func backendElemVal(b netip.AddrPort) []byte {
	v := make([]byte, 8)
	a := b.Addr().As4()
	copy(v, a[:])
	binary.BigEndian.PutUint16(v[4:], b.Port())
	return v
}

// serviceRules queues the rules of the chain of a port with ClientIP
// affinity: a first rule sends a client to the backend its port's timed map
// remembers (and refreshes the entry), then one rule per backend, the i-th
// taken with probability 1/(n-i) (so each with 1/n), DNATs to it and
// remembers the pick. Backends are immediates, not a map: a map per service
// means thousands of sets in a table, which the kernel finds by name with a
// list walk. Only the first packet of a connection is evaluated.
func serviceRules(c *nftables.Conn, o objects, chain *nftables.Chain, backends []netip.AddrPort, aff *nftables.Set) {
	dnat := &expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg10, RegProtoMin: reg11, Specified: true}
	saddr := &expr.Payload{DestRegister: reg9, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
	var update expr.Any
	if aff != nil {
		update = &expr.Dynset{SrcRegKey: reg9, SrcRegData: reg10, SetName: aff.Name, SetID: aff.ID,
			Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: aff.Timeout}
		c.AddRule(&nftables.Rule{Table: o.table, Chain: chain, Exprs: []expr.Any{
			saddr, &expr.Lookup{SourceRegister: reg9, SetName: aff.Name, SetID: aff.ID, DestRegister: reg10, IsDestRegSet: true}, update, dnat,
		}})
	}
	n := len(backends)
	for i, b := range backends {
		var e []expr.Any
		if i < n-1 {
			e = append(e,
				&expr.Numgen{Register: reg8, Modulus: uint32(n - i), Type: unix.NFT_NG_RANDOM},
				&expr.Cmp{Op: expr.CmpOpEq, Register: reg8, Data: make([]byte, 4)})
		}
		v := backendElemVal(b)
		e = append(e, &expr.Immediate{Register: reg10, Data: v[:4]}, &expr.Immediate{Register: reg11, Data: v[4:]})
		if update != nil {
			e = append(e, saddr, update)
		}
		c.AddRule(&nftables.Rule{Table: o.table, Chain: chain, Exprs: append(e, dnat)})
	}
}

// pickChain is the chain shared by every service port with n backends
// (without ClientIP affinity): one rule that draws an index below n and
// looks the backend up by the packet's own destination and the index, in
// one map for all services. Everything the lookup needs is in the packet or
// drawn in the same rule, so the map is bound once per distinct n, not once
// per service: adding an element makes the kernel check every binding of
// its map, and per-service bindings made a 10,000-service rebuild take
// 40 s. An endpoint change is then a few element swaps, whatever the number
// of services.
func pickChain(n int) string { return "pick-" + itoa(n) }

func pickRule(o objects, chain *nftables.Chain, n int) *nftables.Rule {
	return &nftables.Rule{Table: o.table, Chain: chain, Exprs: []expr.Any{
		&expr.Payload{DestRegister: reg8, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg9},
		&expr.Payload{DestRegister: reg10, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Numgen{Register: reg11, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg8, SetName: o.backends.Name, SetID: o.backends.ID, DestRegister: reg12, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg12, RegProtoMin: reg13, Specified: true},
	}}
}

// backendKeyOf is the backends map's key: vip . proto . port . index, the
// index in host order as numgen writes it.
func backendKeyOf(vip netip.Addr, proto uint8, port uint16, i int) []byte {
	k := make([]byte, 16)
	copy(k, dispatchElem(vip, proto, port))
	copy(k[12:], binaryutil.NativeEndian.PutUint32(uint32(i)))
	return k
}
