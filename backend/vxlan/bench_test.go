package vxlan

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/backend"
)

// bigPeers returns n peers in 10.128.0.0/9-style /24s.
func bigPeers(n int) []backend.Peer {
	ps := make([]backend.Peer, n)
	for i := range ps {
		ps[i] = backend.Peer{
			Subnet:   netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 128+i/256, i%256)),
			PublicIP: netip.AddrFrom4([4]byte{192, 168, byte(i / 256), byte(i % 256)}),
			VtepMAC:  net.HardwareAddr{0x0a, 0, 0, 0, byte(i / 256), byte(i % 256)},
		}
	}
	return ps
}

// BenchmarkSetAddOne measures the hot path the daemon takes when one node
// joins a 4,000-node overlay: Set with the whole list, one peer new (the
// fake's bookkeeping included, so the real cost is lower than reported plus
// three netlink round trips).
func BenchmarkSetAddOne(b *testing.B) {
	f := newFakeNL()
	cfg := testConfig()
	d, err := New(cfg, nil, withNL(f))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Ensure(ctx); err != nil {
		b.Fatal(err)
	}
	all := bigPeers(4001)
	without, with := all[:4000], all
	if err := d.Set(ctx, without); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		ps := with
		if i%2 == 1 {
			ps = without
		}
		if err := d.Set(ctx, ps); err != nil {
			b.Fatal(err)
		}
	}
}
