package ip

import (
	"errors"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func TestSubnets(t *testing.T) {
	got := slices.Collect(Subnets(pfx("10.0.0.0/22"), 24))
	want := []netip.Prefix{pfx("10.0.0.0/24"), pfx("10.0.1.0/24"), pfx("10.0.2.0/24"), pfx("10.0.3.0/24")}
	if !slices.Equal(got, want) {
		t.Fatalf("Subnets = %v, want %v", got, want)
	}
	got = slices.Collect(Subnets(pfx("fd00::/62"), 64))
	want = []netip.Prefix{pfx("fd00::/64"), pfx("fd00:0:0:1::/64"), pfx("fd00:0:0:2::/64"), pfx("fd00:0:0:3::/64")}
	if !slices.Equal(got, want) {
		t.Fatalf("Subnets v6 = %v, want %v", got, want)
	}
	// The top of the address space must terminate, not wrap.
	if n := len(slices.Collect(Subnets(pfx("255.255.255.0/24"), 26))); n != 4 {
		t.Fatalf("Subnets at top of space yielded %d, want 4", n)
	}
	if n := len(slices.Collect(Subnets(pfx("10.0.0.0/24"), 23))); n != 0 {
		t.Fatalf("Subnets with bits < network yielded %d", n)
	}
	if n := Count(24, addr("172.16.1.0"), addr("172.31.255.0")); n != 4095 {
		t.Fatalf("Count = %d, want 4095", n)
	}
	if n := Count(64, addr("fd00::"), addr("fd00:0:0:ffff::")); n != 65536 {
		t.Fatalf("Count v6 = %d", n)
	}
}

func TestOverlapsNthLast(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
	}{
		{"172.16.0.0/12", "172.17.0.0/16", true},
		{"172.16.28.0/24", "172.16.29.0/24", false},
		{"172.16.28.0/24", "172.16.28.128/25", true},
		{"10.0.0.0/8", "fd00::/8", false},
	}
	for _, c := range cases {
		if got := Overlaps(pfx(c.a), pfx(c.b)); got != c.want {
			t.Errorf("Overlaps(%s, %s) = %v", c.a, c.b, got)
		}
	}
	if a, ok := Nth(pfx("172.16.28.0/24"), 1); !ok || a != addr("172.16.28.1") {
		t.Errorf("Nth .1 = %v %v", a, ok)
	}
	if _, ok := Nth(pfx("172.16.28.0/24"), 256); ok {
		t.Errorf("Nth 256 of /24 should fail")
	}
	if a, ok := Nth(pfx("fd00::/64"), 1); !ok || a != addr("fd00::1") {
		t.Errorf("Nth v6 = %v %v", a, ok)
	}
	if l := Last(pfx("172.16.0.0/12")); l != addr("172.31.255.255") {
		t.Errorf("Last = %v", l)
	}
}

func TestVTEPMAC(t *testing.T) {
	a := VTEPMAC(addr("172.17.42.31"), 1)
	if b := VTEPMAC(addr("172.17.42.31"), 1); a.String() != b.String() {
		t.Fatalf("not deterministic: %v vs %v", a, b)
	}
	if len(a) != 6 || a[0]&0x02 == 0 || a[0]&0x01 != 0 {
		t.Fatalf("%v is not locally administered unicast", a)
	}
	if c := VTEPMAC(addr("172.17.42.32"), 1); c.String() == a.String() {
		t.Fatalf("different nodes got the same MAC %v", a)
	}
	if c := VTEPMAC(addr("172.17.42.31"), 2); c.String() == a.String() {
		t.Fatalf("different VNIs got the same MAC %v", a)
	}
}

func TestPick(t *testing.T) {
	base := Alloc{Bits: 24, First: addr("172.16.1.0"), Last: addr("172.16.10.0")}
	taken := map[netip.Prefix]bool{pfx("172.16.1.0/24"): true, pfx("172.16.2.0/24"): true}
	base.Taken = func(p netip.Prefix) bool { return taken[p] }

	a := base
	if p, err := a.Pick(); err != nil || p != pfx("172.16.3.0/24") {
		t.Fatalf("lowest free = %v %v", p, err)
	}
	a.Prefer = pfx("172.16.7.0/24")
	if p, _ := a.Pick(); p != a.Prefer {
		t.Fatalf("free Prefer not honoured: %v", p)
	}
	a.Prefer = pfx("172.16.2.0/24") // taken
	if p, _ := a.Pick(); p != pfx("172.16.3.0/24") {
		t.Fatalf("taken Prefer returned: %v", p)
	}
	a.Prefer = pfx("172.16.0.0/24") // below First
	if p, _ := a.Pick(); p == a.Prefer {
		t.Fatalf("out-of-range Prefer returned")
	}
	a.Prefer = netip.Prefix{}
	a.Avoid = []netip.Prefix{pfx("172.16.3.7/32"), pfx("172.16.4.0/23")}
	if p, _ := a.Pick(); p != pfx("172.16.6.0/24") {
		t.Fatalf("Avoid not respected: %v", p)
	}
	a.Prefer = pfx("172.16.5.0/24") // avoided
	if p, _ := a.Pick(); p != pfx("172.16.6.0/24") {
		t.Fatalf("avoided Prefer returned: %v", p)
	}

	// Random picks are deterministic with a seeded source and spread out.
	r := base
	r.Rand = rand.New(rand.NewPCG(1, 2))
	seen := map[netip.Prefix]bool{}
	for range 50 {
		p, err := r.Pick()
		if err != nil || taken[p] || !r.Eligible(p) {
			t.Fatalf("random pick %v %v", p, err)
		}
		seen[p] = true
	}
	if len(seen) < 3 {
		t.Fatalf("random picks not spread: %v", seen)
	}

	// Exhaustion.
	full := base
	full.Taken = func(netip.Prefix) bool { return true }
	_, err := full.Pick()
	var fe *FullError
	if !errors.As(err, &fe) || fe.Taken != 10 {
		t.Fatalf("exhausted: %v", err)
	}
	if want := "no free /24 left between 172.16.1.0 and 172.16.10.0: 10 taken"; err.Error() != want {
		t.Fatalf("error %q, want %q", err, want)
	}
}

func TestPickLargeAvoidIsFast(t *testing.T) {
	// A /9 avoided inside a /8 of /30s: the walk must jump over it.
	a := Alloc{Bits: 30, First: addr("10.0.0.0"), Last: addr("10.255.255.252"),
		Avoid: []netip.Prefix{pfx("10.0.0.0/9")}}
	p, err := a.Pick()
	if err != nil || p != pfx("10.128.0.0/30") {
		t.Fatalf("Pick = %v %v", p, err)
	}
	a.Avoid = []netip.Prefix{pfx("10.0.0.0/8")}
	if _, err := a.Pick(); err == nil {
		t.Fatalf("fully avoided range allocated")
	}
}

func FuzzPick(f *testing.F) {
	f.Add([]byte{10, 0, 0, 0}, uint8(24), uint8(16), []byte{10, 0, 5, 0}, uint8(23), uint64(7))
	f.Add([]byte{0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, uint8(64), uint8(56), []byte{}, uint8(0), uint64(1))
	f.Fuzz(func(t *testing.T, base []byte, bits, netBits uint8, avoid []byte, avoidBits uint8, seed uint64) {
		nb, ok := netip.AddrFromSlice(base)
		if !ok {
			return
		}
		network, err := nb.Prefix(int(netBits))
		if err != nil || int(bits) < network.Bits() || int(bits) > nb.BitLen() || int(bits)-network.Bits() > 16 {
			return
		}
		a := Alloc{Bits: int(bits), First: network.Addr(), Last: Last(network), Rand: rand.New(rand.NewPCG(seed, 0))}
		if av, ok := netip.AddrFromSlice(avoid); ok {
			if ap, err := av.Prefix(int(avoidBits)); err == nil {
				a.Avoid = []netip.Prefix{ap}
			}
		}
		taken := map[netip.Prefix]bool{}
		a.Taken = func(p netip.Prefix) bool { return taken[p] }
		for i := 0; i < 20; i++ {
			p, err := a.Pick()
			if err != nil {
				var fe *FullError
				if !errors.As(err, &fe) {
					t.Fatalf("unexpected error %v", err)
				}
				// Really full: every subnet is taken or avoided.
				for s := range Subnets(network, int(bits)) {
					if a.Eligible(s) && !taken[s] {
						t.Fatalf("full but %v is free", s)
					}
				}
				return
			}
			if !a.Eligible(p) || taken[p] || !network.Contains(p.Addr()) {
				t.Fatalf("picked ineligible or taken %v", p)
			}
			taken[p] = true
		}
	})
}
