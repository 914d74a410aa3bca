package vxlan

import (
	"context"
	"testing"
)

// FuzzParse feeds arbitrary bytes, as the kernel would send them, to the
// message splitter, the parsers of routes, neighbours and FDB entries, and
// the subscription's filter: none may panic.
func FuzzParse(f *testing.F) {
	p2 := peer(2)
	for _, o := range []op{
		routeOp(p2.Subnet),
		{kind: neighSet, ip: p2.Subnet.Addr(), mac: mac(p2.VtepMAC)},
		{kind: fdbSet, mac: mac(p2.VtepMAC), ip: p2.PublicIP},
		{kind: fdbDel, mac: mac(p2.VtepMAC), ip: p2.PublicIP, port: 4789, vni: 7, hasVNI: true, remoteIf: 3},
		{kind: routeDel, dst: p2.Subnet, metric: 100, nhid: 9},
	} {
		f.Add(appendOp(nil, &o, 5, 1))
	}
	f.Add([]byte{})
	f.Add([]byte{16, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})

	f.Fuzz(func(t *testing.T, b []byte) {
		d := newFakeDevice(t, newFakeNL())
		if err := d.Set(context.Background(), peers(2, 3)); err != nil {
			t.Fatal(err)
		}
		d.curIndex.Store(5)
		_ = splitMsgs(b, func(m nlMsg) bool {
			_, _ = parseRoute(m.body)
			_, _ = parseNeigh(m.body)
			_, _ = parseFDB(m.body)
			_ = nlError(m)
			if len(m.body) >= rtMsgLen {
				_ = routeUsesDevice(m.body, 5)
			}
			return true
		})
		_ = d.disagrees(b)
	})
}
