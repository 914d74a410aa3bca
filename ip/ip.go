// Package ip holds weft's address math: iterating the subnets of a network,
// overlap tests, the n-th address of a prefix, the deterministic VTEP MAC of a
// node, and the allocator that picks a free subnet for a node.
//
// Everything here is pure: no I/O, no clocks, no globals. Randomness is
// injected (*rand.Rand) so allocation is reproducible in tests. Addresses are
// netip values throughout, and IPv4 and IPv6 share one code path: an address
// is treated as a 128-bit number (IPv4 in the low 32 bits) and a subnet step is
// 1<<(bits-of-family - prefix length).
package ip

import (
	"iter"
	"math/bits"
	"net/netip"
)

// u128 is an unsigned 128-bit integer, the common arithmetic form of IPv4 and
// IPv6 addresses.
type u128 struct{ hi, lo uint64 }

func (a u128) add(b u128) (u128, bool) {
	lo, c := bits.Add64(a.lo, b.lo, 0)
	hi, c2 := bits.Add64(a.hi, b.hi, c)
	return u128{hi, lo}, c2 != 0
}

func (a u128) sub(b u128) u128 {
	lo, c := bits.Sub64(a.lo, b.lo, 0)
	hi, _ := bits.Sub64(a.hi, b.hi, c)
	return u128{hi, lo}
}

func (a u128) less(b u128) bool { return a.hi < b.hi || (a.hi == b.hi && a.lo < b.lo) }

// shl1 returns 1<<n for n in [0,128).
func shl1(n int) u128 {
	if n >= 64 {
		return u128{hi: 1 << (n - 64)}
	}
	return u128{lo: 1 << n}
}

func toU128(a netip.Addr) u128 {
	if a.Is4() {
		b := a.As4()
		return u128{lo: uint64(b[0])<<24 | uint64(b[1])<<16 | uint64(b[2])<<8 | uint64(b[3])}
	}
	b := a.As16()
	var v u128
	for i := 0; i < 8; i++ {
		v.hi = v.hi<<8 | uint64(b[i])
		v.lo = v.lo<<8 | uint64(b[8+i])
	}
	return v
}

// fromU128 converts v back to an address of the same family as like. The
// second result is false if v does not fit that family.
func fromU128(v u128, like netip.Addr) (netip.Addr, bool) {
	if like.Is4() {
		if v.hi != 0 || v.lo > 0xffffffff {
			return netip.Addr{}, false
		}
		return netip.AddrFrom4([4]byte{byte(v.lo >> 24), byte(v.lo >> 16), byte(v.lo >> 8), byte(v.lo)}), true
	}
	var b [16]byte
	for i := 0; i < 8; i++ {
		b[7-i] = byte(v.hi >> (8 * i))
		b[15-i] = byte(v.lo >> (8 * i))
	}
	return netip.AddrFrom16(b), true
}

// step is the distance between consecutive subnets of length bits in a's family.
func step(a netip.Addr, bits int) u128 { return shl1(a.BitLen() - bits) }

// Overlaps reports whether a and b share any address. Prefixes of different
// families never overlap. Invalid prefixes overlap nothing.
func Overlaps(a, b netip.Prefix) bool {
	if !a.IsValid() || !b.IsValid() {
		return false
	}
	return a.Masked().Overlaps(b.Masked())
}

// Nth returns the n-th address of p counting from its network address (n=0 is
// ".0", n=1 is ".1"). The second result is false if n is outside p.
func Nth(p netip.Prefix, n uint64) (netip.Addr, bool) {
	if !p.IsValid() {
		return netip.Addr{}, false
	}
	host := p.Addr().BitLen() - p.Bits()
	if host < 64 && n >= 1<<host {
		return netip.Addr{}, false
	}
	v, overflow := toU128(p.Masked().Addr()).add(u128{lo: n})
	if overflow {
		return netip.Addr{}, false
	}
	return fromU128(v, p.Addr())
}

// Subnets yields every subnet of network with prefix length bits, in address
// order. It yields nothing if bits is shorter than the network's prefix or
// longer than the address.
func Subnets(network netip.Prefix, bits int) iter.Seq[netip.Prefix] {
	if !network.IsValid() || bits < network.Bits() || bits > network.Addr().BitLen() {
		return func(func(netip.Prefix) bool) {}
	}
	first := network.Masked().Addr()
	last := lastAddr(network)
	return SubnetRange(bits, first, last)
}

// SubnetRange yields the subnets of length bits from the one containing first
// up to and including the one containing last, in address order. first and
// last must be of the same family.
func SubnetRange(bits int, first, last netip.Addr) iter.Seq[netip.Prefix] {
	return func(yield func(netip.Prefix) bool) {
		if !first.IsValid() || first.Is4() != last.Is4() || bits < 0 || bits > first.BitLen() {
			return
		}
		p, _ := first.Prefix(bits)
		lp, _ := last.Prefix(bits)
		cur, end, st := toU128(p.Addr()), toU128(lp.Addr()), step(first, bits)
		for !end.less(cur) {
			a, _ := fromU128(cur, first)
			if !yield(netip.PrefixFrom(a, bits)) {
				return
			}
			var overflow bool
			if cur, overflow = cur.add(st); overflow {
				return
			}
		}
	}
}

// lastAddr is the highest address of p.
func lastAddr(p netip.Prefix) netip.Addr {
	v, _ := toU128(p.Masked().Addr()).add(step(p.Addr(), p.Bits()).sub(u128{lo: 1}))
	a, _ := fromU128(v, p.Addr())
	return a
}

// Last returns the highest address of p (its broadcast address for IPv4).
func Last(p netip.Prefix) netip.Addr {
	if !p.IsValid() {
		return netip.Addr{}
	}
	return lastAddr(p)
}

// Count returns how many subnets of length bits lie between the subnets
// containing first and last inclusive, saturating at max uint64.
func Count(bits int, first, last netip.Addr) uint64 {
	if !first.IsValid() || first.Is4() != last.Is4() || bits < 0 || bits > first.BitLen() {
		return 0
	}
	p, _ := first.Prefix(bits)
	lp, _ := last.Prefix(bits)
	a, b := toU128(p.Addr()), toU128(lp.Addr())
	if b.less(a) {
		return 0
	}
	d := b.sub(a)
	sh := first.BitLen() - bits
	// d >> sh, then +1
	var n u128
	if sh >= 64 {
		n = u128{lo: d.hi >> (sh - 64)}
	} else if sh > 0 {
		n = u128{hi: d.hi >> sh, lo: d.lo>>sh | d.hi<<(64-sh)}
	} else {
		n = d
	}
	if n.hi != 0 || n.lo == ^uint64(0) {
		return ^uint64(0)
	}
	return n.lo + 1
}
