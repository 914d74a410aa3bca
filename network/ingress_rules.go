package network

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// The ingress table's chains and rules as nf_tables expressions. Each rule
// carries its own description (as nft's comment does) in its user data:
// Ensure compares those with what it would write, so a rule that was
// deleted, added or rewritten for another subnet is noticed by its text.

type ingressChain struct {
	chain *nftables.Chain
	rules []*nftables.Rule
}

// ingressPriority puts the input and forward chains just before iptables'
// filter chains (priority 0): a drop here is final either way, and the
// VXLAN check is one set lookup.
var ingressPriority = nftables.ChainPriorityRef(-5)

func (g *Ingress) chains(t *nftables.Table, set *nftables.Set) map[string]ingressChain {
	c := g.cfg
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, c.Port)
	base := func(name string, hook *nftables.ChainHook, prio *nftables.ChainPriority) *nftables.Chain {
		return &nftables.Chain{Name: name, Table: t, Type: nftables.ChainTypeFilter, Hooknum: hook, Priority: prio}
	}
	rule := func(ch *nftables.Chain, desc string, exprs ...expr.Any) *nftables.Rule {
		return &nftables.Rule{Table: t, Chain: ch, Exprs: exprs, UserData: []byte("weft: " + desc)}
	}
	vxlanPort := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_UDP}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
	}
	counted := func(counter string, verdict expr.VerdictKind) []expr.Any {
		return []expr.Any{&expr.Objref{Type: 1 /* NFT_OBJECT_COUNTER */, Name: counter}, &expr.Verdict{Kind: verdict}}
	}
	drop := func(counter string) []expr.Any { return counted(counter, expr.VerdictDrop) }
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	iif := func(name string) []expr.Any {
		b := make([]byte, unix.IFNAMSIZ)
		copy(b, name)
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: b},
		}
	}

	pre := base("prerouting", nftables.ChainHookPrerouting, nftables.ChainPriorityRaw)
	in := base("input", nftables.ChainHookInput, ingressPriority)
	fwd := base("forward", nftables.ChainHookForward, ingressPriority)
	sub := c.Subnet.String()

	inRules := []*nftables.Rule{
		rule(in, fmt.Sprintf("ip saddr %s udp dport %d drop (from this node's containers)", sub, c.Port),
			cat(saddrIn(c.Subnet, true), vxlanPort, drop(dropFromContainers))...),
	}
	for _, a := range c.Allow {
		inRules = append(inRules, rule(in, fmt.Sprintf("ip saddr %s udp dport %d return (--vxlan-allow-cidr)", a.Masked(), c.Port),
			cat(saddrIn(a.Masked(), true), vxlanPort, []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}})...))
	}
	inRules = append(inRules, rule(in, fmt.Sprintf("ip saddr != @%s udp dport %d drop (not a peer)", peersSet, c.Port),
		cat(saddr(), []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: true}}, vxlanPort, drop(dropNotAPeer))...))

	return map[string]ingressChain{
		"prerouting": {chain: pre, rules: []*nftables.Rule{
			rule(pre, fmt.Sprintf("iifname %s ip saddr != %s drop (inner source outside the overlay)", c.Device, c.Network),
				cat(iif(c.Device), saddrIn(c.Network, false), drop(dropInnerSource))...),
			rule(pre, fmt.Sprintf("iifname %s ip saddr %s drop (inner source is this node's)", c.Device, sub),
				cat(iif(c.Device), saddrIn(c.Subnet, true), drop(dropInnerSource))...),
		}},
		"input": {chain: in, rules: inRules},
		"forward": {chain: fwd, rules: []*nftables.Rule{
			rule(fwd, fmt.Sprintf("ip saddr %s udp dport %d drop (from this node's containers)", sub, c.Port),
				cat(saddrIn(c.Subnet, true), vxlanPort, drop(dropFromContainers))...),
		}},
	}
}

// saddr loads an IPv4 packet's source address into register 1 (and ends
// the rule for any other family: the table is inet).
func saddr() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
	}
}

// saddrIn matches an IPv4 source inside p (in true) or outside it.
func saddrIn(p netip.Prefix, in bool) []expr.Any {
	mask := make([]byte, 4)
	binary.BigEndian.PutUint32(mask, ^uint32(0)<<(32-p.Bits()))
	if p.Bits() == 0 {
		mask = []byte{0, 0, 0, 0}
	}
	net := p.Masked().Addr().As4()
	op := expr.CmpOpEq
	if !in {
		op = expr.CmpOpNeq
	}
	return append(saddr(),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: op, Register: 1, Data: net[:]},
	)
}
