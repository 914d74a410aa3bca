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

func (g *Ingress) chains(t *nftables.Table, set, set6 *nftables.Set) map[string]ingressChain {
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

	var preRules, inRules, fwdRules []*nftables.Rule
	for _, f := range c.families() {
		ip, peers, peersID := "ip", set.Name, set.ID
		if f.v6 {
			ip, peers, peersID = "ip6", set6.Name, set6.ID
		}
		sub := f.subnet.String()
		preRules = append(preRules,
			rule(pre, fmt.Sprintf("iifname %s %s saddr != %s drop (inner source outside the overlay)", f.device, ip, f.network),
				cat(iif(f.device), saddrIn(f.network, false), drop(dropInnerSource))...),
			rule(pre, fmt.Sprintf("iifname %s %s saddr %s drop (inner source is this node's)", f.device, ip, sub),
				cat(iif(f.device), saddrIn(f.subnet, true), drop(dropInnerSource))...))
		inRules = append(inRules, rule(in, fmt.Sprintf("%s saddr %s udp dport %d drop (from this node's containers)", ip, sub, c.Port),
			cat(saddrIn(f.subnet, true), vxlanPort, drop(dropFromContainers))...))
		for _, a := range c.Allow {
			if a.Addr().Is6() != f.v6 {
				continue
			}
			inRules = append(inRules, rule(in, fmt.Sprintf("%s saddr %s udp dport %d return (--vxlan-allow-cidr)", ip, a.Masked(), c.Port),
				cat(saddrIn(a.Masked(), true), vxlanPort, []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}})...))
		}
		inRules = append(inRules, rule(in, fmt.Sprintf("%s saddr != @%s udp dport %d drop (not a peer)", ip, peers, c.Port),
			cat(saddr(f.v6), []expr.Any{&expr.Lookup{SourceRegister: 1, SetName: peers, SetID: peersID, Invert: true}}, vxlanPort, drop(dropNotAPeer))...))
		fwdRules = append(fwdRules, rule(fwd, fmt.Sprintf("%s saddr %s udp dport %d drop (from this node's containers)", ip, sub, c.Port),
			cat(saddrIn(f.subnet, true), vxlanPort, drop(dropFromContainers))...))
	}
	return map[string]ingressChain{
		"prerouting": {chain: pre, rules: preRules},
		"input":      {chain: in, rules: inRules},
		"forward":    {chain: fwd, rules: fwdRules},
	}
}

// saddr loads the source address of a packet of the family (IPv6 if v6)
// into register 1, and ends the rule for the other family: the table is
// inet.
func saddr(v6 bool) []expr.Any {
	if v6 {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV6}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
		}
	}
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.NFPROTO_IPV4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
	}
}

// saddrIn matches a source inside p (in true) or outside it, for packets of
// p's family.
func saddrIn(p netip.Prefix, in bool) []expr.Any {
	n := p.Addr().BitLen() / 8
	mask := make([]byte, n)
	for i := range p.Bits() {
		mask[i/8] |= 0x80 >> (i % 8)
	}
	net := p.Masked().Addr().AsSlice()
	op := expr.CmpOpEq
	if !in {
		op = expr.CmpOpNeq
	}
	return append(saddr(p.Addr().Is6()),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: uint32(n), Mask: mask, Xor: make([]byte, n)},
		&expr.Cmp{Op: op, Register: 1, Data: net},
	)
}
