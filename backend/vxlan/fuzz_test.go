package vxlan

import (
	"context"
	"testing"

	"github.com/weft-net/weft/rtnl"
)

// FuzzDisagrees feeds arbitrary bytes, as the kernel would send them, to
// the subscription's filter: it must not panic.
func FuzzDisagrees(f *testing.F) {
	p2 := peer(2)
	for _, o := range []rtnl.Op{
		routeOp(p2.Subnet),
		{Kind: rtnl.NeighSet, IP: p2.Subnet.Addr(), MAC: rtnl.MAC(p2.VtepMAC)},
		{Kind: rtnl.FDBSet, MAC: rtnl.MAC(p2.VtepMAC), IP: p2.PublicIP},
	} {
		f.Add(rtnl.AppendOp(nil, &o, 5, 1))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		d := newFakeDevice(t, newFakeNL())
		if err := d.Set(context.Background(), peers(2, 3)); err != nil {
			t.Fatal(err)
		}
		d.curIndex.Store(5)
		_ = d.disagrees(b)
	})
}
