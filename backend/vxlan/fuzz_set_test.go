package vxlan

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"testing"

	"github.com/weft-net/weft/backend"
	rulebook "github.com/weft-net/weft/peer"
	"github.com/weft-net/weft/rtnl"
)

// FuzzSet feeds Set runs of hostile peer lists on the fake kernel: shared
// subnets, subnet addresses and MACs, this node's own subnet, address and
// MAC, reserved addresses, malformed prefixes and MACs, in any order. After
// every Set: the kernel holds complete entries (route, neighbour, FDB) of
// peers in the input that the rulebook accepts and nothing else, no MAC has
// two neighbours, every accepted peer that shares nothing with another is
// programmed, the same Set again changes nothing, and a Reconcile finds
// nothing to repair.
func FuzzSet(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{2, 8, 8, 0, 3, 12, 12, 0, 0xff, 3, 12, 12, 0, 0xff})
	// Two peers with one MAC, then the first goes: the second takes it.
	f.Add([]byte{2, 8, 20, 0, 3, 12, 20, 0, 0xff, 3, 12, 20, 0, 0xff})
	// Own subnet, own address, own MAC, a PublicIP inside a peer's subnet.
	f.Add([]byte{1, 8, 8, 0, 2, 4, 8, 0, 3, 12, 4, 0, 4, 11, 16, 0, 0xff})
	// Hostile prefixes, addresses and MACs.
	f.Add([]byte{192, 8, 8, 0, 196, 12, 12, 0, 5, 2, 16, 0, 6, 6, 3, 0, 7, 10, 7, 0, 203, 16, 20, 0, 0xff})
	// The same subnet twice, unsorted, then reordered.
	f.Add([]byte{9, 8, 8, 0, 5, 12, 12, 0, 9, 16, 16, 0, 0xff, 5, 12, 12, 0, 9, 16, 16, 0, 9, 8, 8, 0, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		fk := newFakeNL()
		d, err := New(testConfig(), slog.New(slog.DiscardHandler), withNL(fk))
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close()
		ctx := context.Background()
		if _, err := d.Ensure(ctx); err != nil {
			t.Fatal(err)
		}
		for sets := 0; len(b) > 0 && sets < 16; sets++ {
			var ps []backend.Peer
			for len(b) > 0 && b[0] != 0xff && len(ps) < 64 {
				var q [4]byte
				b = b[copy(q[:], b):]
				ps = append(ps, fuzzPeer(q))
			}
			if len(b) > 0 {
				b = b[1:]
			}
			in := clonePeers(ps)
			_ = d.Set(ctx, ps) // skipped peers are reported, not fatal
			if !samePeers(ps, in) {
				t.Fatalf("Set changed its input:\n%v\nwas\n%v", ps, in)
			}
			checkKernel(t, fk, d, ps)
			state := fk.String()
			fk.takeOps()
			_ = d.Set(ctx, ps)
			if ops := fk.takeOps(); len(ops) > 0 {
				t.Fatalf("the same Set again changed the kernel: %q", ops)
			}
			if again := fk.String(); again != state {
				t.Fatalf("the same Set again left\n%s\nnot\n%s", again, state)
			}
			if rep, err := d.Reconcile(ctx); rep.Total() != 0 || err != nil {
				t.Fatalf("Reconcile after Set repaired %+v (err %v):\n%s", rep, err, fk.entries())
			}
		}
	})
}

var (
	fuzzSubnets = []string{"172.16.5.0/25", "172.16.5.128/25", "172.16.5.1/24", "10.0.0.0/8", "0.0.0.0/0",
		"fd00::/64", "127.0.0.0/24", "224.0.0.0/24", "", "172.16.0.0/12", "::ffff:172.16.7.0/120",
		"172.17.42.0/24", "172.16.1.0/25", "240.0.0.0/24", "169.254.0.0/16", "172.16.6.0/23"}
	fuzzIPs = []string{"0.0.0.0", "127.0.0.1", "255.255.255.255", "224.0.0.1", "169.254.0.1", "240.0.0.1",
		"::1", "2001:db8::1", "::ffff:172.17.42.9", "fe80::1%eth0", "", "::ffff:172.17.42.1", "172.16.1.9",
		"::", "ff02::1", "10.0.0.1"}
	fuzzMACs = []net.HardwareAddr{{0, 0, 0, 0, 0, 0}, {0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, {1, 0, 0x5e, 0, 0, 1},
		nil, {0x0a, 0, 0, 0, 1}, {0x0a, 0, 0, 0, 0, 0, 0, 2}, {0x33, 0x33, 0, 0, 0, 1}, testMAC}
)

// fuzzPeer makes a peer of four bytes: subnet, PublicIP, VtepMAC, and a
// byte that varies the pool entries. Pools are small, so that peers share
// subnets, addresses and MACs, and include this node's own.
func fuzzPeer(q [4]byte) backend.Peer {
	var p backend.Peer
	if s := q[0]; s < 192 {
		p.Subnet = netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, s % 16, 0}), 24) // 172.16.1.0/24 is ours
	} else if s := fuzzSubnets[int(s)%len(fuzzSubnets)]; s != "" {
		p.Subnet = netip.MustParsePrefix(s)
	}
	switch i := q[1]; i % 4 {
	case 0, 1:
		p.PublicIP = netip.AddrFrom4([4]byte{172, 17, 42, i>>2 ^ q[3]}) // .1 is ours
	case 2:
		p.PublicIP, _ = netip.ParseAddr(fuzzIPs[int(i>>2)%len(fuzzIPs)])
	case 3:
		p.PublicIP = netip.AddrFrom4([4]byte{172, 16, i >> 2 % 16, 5}) // inside a peer's subnet, or ours
	}
	if m := q[2]; m%4 < 3 {
		p.VtepMAC = net.HardwareAddr{0x0a, 0, 0, 0, q[3] & 1, m >> 2 % 16} // 0a:00:00:00:00:01 is ours
	} else {
		p.VtepMAC = slices.Clone(fuzzMACs[int(m>>2)%len(fuzzMACs)])
	}
	return p
}

func clonePeers(ps []backend.Peer) []backend.Peer {
	out := slices.Clone(ps)
	for i := range out {
		out[i].VtepMAC = slices.Clone(out[i].VtepMAC)
	}
	return out
}

func samePeers(a, b []backend.Peer) bool {
	return slices.EqualFunc(a, b, func(p, q backend.Peer) bool {
		return p.Subnet == q.Subnet && p.PublicIP == q.PublicIP && slices.Equal(p.VtepMAC, q.VtepMAC)
	})
}

// checkKernel fails unless the fake kernel holds, on the device, exactly
// whole peers of ps that the rulebook accepts, one per MAC, and among them
// every accepted peer that shares no subnet (address) and no MAC with
// another peer of ps.
func checkKernel(t *testing.T, fk *fakeNL, d *Device, ps []backend.Peer) {
	t.Helper()
	idx := d.Index()
	self := rulebook.Self{Subnet: d.cfg.Subnet, PublicIP: d.cfg.Local, VtepMAC: d.cfg.MAC}
	accepted := func(p *backend.Peer) bool { return rulebook.Check(p, rulebook.Network{}, &self) == nil }

	neighs := map[netip.Addr]rtnl.MAC{}
	byMAC := map[rtnl.MAC]netip.Addr{}
	for k, n := range fk.neighTab {
		if k.index != idx {
			continue
		}
		if o, dup := byMAC[n.MAC]; dup {
			t.Fatalf("two neighbours with MAC %v: %v and %v\n%s", n.MAC, o, k.ip, fk.entries())
		}
		byMAC[n.MAC], neighs[k.ip] = k.ip, n.MAC
	}
	fdb := map[rtnl.MAC]netip.Addr{}
	for k, rs := range fk.fdbTab {
		if k.index == idx {
			if len(rs) != 1 {
				t.Fatalf("FDB entry %v has %d remotes", k.mac, len(rs))
			}
			fdb[k.mac] = rs[0].Dst
		}
	}
	programmed := map[netip.Prefix]bool{}
	for _, r := range fk.routeTab {
		if r.Index != idx {
			continue
		}
		m, ok := neighs[r.Dst.Addr()]
		dst, ok2 := fdb[m]
		if !ok || !ok2 || r.GW != r.Dst.Addr() {
			t.Fatalf("route to %v without its neighbour and FDB entry:\n%s", r.Dst, fk.entries())
		}
		i := slices.IndexFunc(ps, func(p backend.Peer) bool {
			return p.Subnet == r.Dst && len(p.VtepMAC) == 6 && rtnl.MAC(p.VtepMAC) == m && p.PublicIP.Unmap() == dst
		})
		if i < 0 {
			t.Fatalf("entries for %v (%v, %v) match no peer of the input:\n%s", r.Dst, dst, m, fk.entries())
		}
		if err := rulebook.Check(&ps[i], rulebook.Network{}, &self); err != nil {
			t.Fatalf("programmed a peer the rulebook refuses: %v\n%s", err, fk.entries())
		}
		programmed[r.Dst] = true
	}
	if len(programmed) != len(neighs) || len(neighs) != len(fdb) {
		t.Fatalf("%d routes, %d neighbours, %d FDB entries: some are not whole peers\n%s",
			len(programmed), len(neighs), len(fdb), fk.entries())
	}
	for i := range ps {
		p := &ps[i]
		if !accepted(p) || programmed[p.Subnet] {
			continue
		}
		shares := slices.ContainsFunc(ps, func(q backend.Peer) bool {
			if q.Subnet == p.Subnet && samePeers([]backend.Peer{q}, []backend.Peer{*p}) {
				return false // itself, or an identical copy
			}
			return q.Subnet.IsValid() && q.Subnet.Addr() == p.Subnet.Addr() || slices.Equal(q.VtepMAC, p.VtepMAC)
		})
		if !shares && slices.IndexFunc(ps, func(q backend.Peer) bool { return q.Subnet == p.Subnet }) == i {
			t.Fatalf("peer %v (%v, %v) is valid and unique but not programmed:\n%s",
				p.Subnet, p.PublicIP, p.VtepMAC, fk.entries())
		}
	}
}
