package ip

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
)

// Candidates is how many free subnets Pick chooses among at random. flannel
// picks at random among the first 100 free subnets so that nodes starting
// together rarely race for the same key; weft does the same.
const Candidates = 100

// maxScan bounds the walk through a range whose Taken predicate rejects
// everything (a predicate is not a finite set); no real cluster comes close.
const maxScan = 1 << 22

// Alloc describes one allocation: which subnets are eligible and which are
// not free.
type Alloc struct {
	Bits        int        // prefix length of every subnet
	First, Last netip.Addr // network addresses of the lowest and highest eligible subnet
	// Taken reports whether a subnet is already held by someone. nil means
	// nothing is taken.
	Taken func(netip.Prefix) bool
	// Avoid lists prefixes no allocated subnet may overlap (the node's own
	// addresses and routes, for example).
	Avoid []netip.Prefix
	// Prefer is returned if it is eligible and free.
	Prefer netip.Prefix
	// Rand chooses among the first Candidates free subnets. nil picks the
	// lowest free subnet.
	Rand *rand.Rand
}

// FullError reports that no eligible subnet is free.
type FullError struct {
	Bits        int
	First, Last netip.Addr
	Taken       uint64 // eligible subnets that were taken or avoided
}

func (e *FullError) Error() string {
	return fmt.Sprintf("no free /%d left between %v and %v: %d taken", e.Bits, e.First, e.Last, e.Taken)
}

// Eligible reports whether p is a subnet of the right length within
// [First, Last] that overlaps nothing in Avoid. It does not consult Taken.
func (a Alloc) Eligible(p netip.Prefix) bool {
	if !p.IsValid() || p.Bits() != a.Bits || p.Masked() != p || p.Addr().Is4() != a.First.Is4() {
		return false
	}
	if p.Addr().Less(a.First) || a.Last.Less(p.Addr()) {
		return false
	}
	for _, av := range a.Avoid {
		if Overlaps(p, av) {
			return false
		}
	}
	return true
}

func (a Alloc) free(p netip.Prefix) bool {
	return a.Eligible(p) && (a.Taken == nil || !a.Taken(p))
}

// Pick returns a free subnet: Prefer if it is eligible and free, otherwise a
// random one among the first Candidates free subnets in address order. If no
// subnet is free it returns a *FullError.
func (a Alloc) Pick() (netip.Prefix, error) {
	if !a.First.IsValid() || !a.Last.IsValid() || a.First.Is4() != a.Last.Is4() ||
		a.Bits < 0 || a.Bits > a.First.BitLen() {
		return netip.Prefix{}, fmt.Errorf("invalid allocation range /%d between %v and %v", a.Bits, a.First, a.Last)
	}
	if a.Prefer.IsValid() && a.free(a.Prefer) {
		return a.Prefer, nil
	}
	var free []netip.Prefix
	scanned := 0
	for p := range a.walk() {
		if scanned++; scanned > maxScan {
			break
		}
		if a.Taken != nil && a.Taken(p) {
			continue
		}
		free = append(free, p)
		if len(free) == Candidates {
			break
		}
	}
	if len(free) == 0 {
		return netip.Prefix{}, &FullError{Bits: a.Bits, First: a.First, Last: a.Last, Taken: Count(a.Bits, a.First, a.Last)}
	}
	if a.Rand == nil {
		return free[0], nil
	}
	return free[a.Rand.IntN(len(free))], nil
}

// walk yields eligible subnets in address order, jumping over avoided
// prefixes larger than a subnet instead of visiting each subnet inside them.
func (a Alloc) walk() func(func(netip.Prefix) bool) {
	return func(yield func(netip.Prefix) bool) {
		first, _ := a.First.Prefix(a.Bits)
		cur := toU128(first.Addr())
		end := toU128(a.Last)
		st := step(a.First, a.Bits)
		for !end.less(cur) {
			addr, _ := fromU128(cur, a.First)
			p := netip.PrefixFrom(addr, a.Bits)
			next := cur
			skip := false
			for _, av := range a.Avoid {
				if !Overlaps(p, av) {
					continue
				}
				skip = true
				if av.Bits() < a.Bits {
					// Jump to the first subnet after av.
					if n := toU128(lastAddr(av)); next.less(n) {
						next = n
					}
				}
			}
			if !skip && !yield(p) {
				return
			}
			// Advance to the subnet after next (next is inside the current
			// subnet or at the end of an avoided prefix, both aligned below).
			np, _ := fromU128(next, a.First)
			npp, _ := np.Prefix(a.Bits)
			var overflow bool
			if cur, overflow = toU128(npp.Addr()).add(st); overflow {
				return
			}
		}
	}
}
