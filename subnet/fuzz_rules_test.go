package subnet

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// FuzzPeerSnapshot decodes its input into a run of hostile writes under the
// subnets prefix (garbage, huge values, bad keys, shared MACs, PublicIPs
// inside subnets, our own address), moves of our own subnet, foreign
// routes coming and going, and batches as the watch merges them. After
// every snapshot: no peer fails the rulebook, no two share a MAC or a
// subnet, and the snapshot kept up change by change equals one rebuilt
// from scratch out of the same keys.
func FuzzPeerSnapshot(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte{0, 5, 3, 7, 0, 1, 8})
	// Two claims of one MAC, the earlier deleted; a PublicIP inside a leased subnet.
	f.Add([]byte{0, 10, 1, 32, 0, 1, 0, 11, 1, 33, 0, 1, 8, 5, 10, 8, 0, 12, 0, 11, 4, 1, 8, 5, 11, 8})
	// Garbage and a huge value over a valid key, then our subnet moves onto it.
	f.Add([]byte{0, 20, 3, 1, 4, 1, 3, 20, 5, 'g', 'a', 'r', 'b', 'a', 4, 20, 40, 8, 6, 20, 8})
	// A foreign route under a peer, a batch, hostile keys and addresses.
	f.Add([]byte{0, 30, 3, 9, 4, 1, 7, 4, 30, 9, 0, 60, 4, 2, 5, 0, 1, 4, 7, 6, 2, 0, 2, 0, 0, 8, 7, 0, 0, 8})
	f.Fuzz(func(t *testing.T, b []byte) {
		runOps(t, b)
	})
}

// fuzzReader hands out the input's bytes, zero once they run out.
type fuzzReader struct{ b []byte }

func (r *fuzzReader) next() byte {
	if len(r.b) == 0 {
		return 0
	}
	c := r.b[0]
	r.b = r.b[1:]
	return c
}

var (
	hostileKeys = []string{"172.16.5.1-24", "172.16.5.0-25", "10.0.0.0-24", "172.16.05.0-24", "garbage", "",
		"172.17.42.0-24", "172.31.255.0-24", "172.16.0.0-24", "fd00::-64", "172.16.5.0-24/x", "172.16.5.0-024"}
	hostileIPs = []string{"0.0.0.0", "127.0.0.1", "255.255.255.255", "224.0.0.1", "169.254.0.1", "240.0.0.1",
		"172.17.255.255", "::1", "2001:db8::1", "::ffff:10.0.0.1", "fe80::1%eth0", "", "not-an-ip", "172.16.28.1"}
	hostileMACs = []string{"00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "b2:00:ac:11:2a:1f",
		"0a:00:00:00:00", "", "zz", "0a:00:00:00:00:00:00:01"}
)

func runOps(t *testing.T, b []byte) {
	var routes []netip.Prefix
	rs := newRulesState(t, func() []netip.Prefix { return routes })
	quiet := NewRegistry(nil, "", nil, nil)
	live := map[string]*mvccpb.KeyValue{}
	in := &fuzzReader{b}
	keyName := func() string {
		c := in.next()
		if c < 200 {
			return fmt.Sprintf("172.16.%d.0-24", c%48)
		}
		return hostileKeys[int(c)%len(hostileKeys)]
	}
	put := func(name, value string) {
		kv := rs.put(name, value)
		if l := rs.valid[string(kv.Key)]; l != nil && l.ModRevision == kv.ModRevision {
			live[string(kv.Key)] = kv
		}
	}
	check := func(s Snapshot) {
		t.Helper()
		checkSnapshot(t, rs.peerState, s)
		got := fullPeers(s)
		rs.clean = false
		if again := fullPeers(rs.snapshot()); again != got {
			t.Fatalf("incremental snapshot\n%s\ndiffers from a re-sort\n%s", got, again)
		}
		ref := newPeerState(quiet, rs.f)
		for _, kv := range live {
			ref.put(kv)
		}
		if want := fullPeers(ref.snapshot()); got != want {
			t.Fatalf("incremental snapshot\n%s\ndiffers from a rebuild from scratch\n%s", got, want)
		}
	}
	for ops := 0; len(in.b) > 0 && ops < 400; ops++ {
		switch c := in.next(); c % 10 {
		case 0, 1, 2: // a well-formed value, from hostile parts
			name := keyName()
			ipSel, ipB, macSel, vni := in.next(), in.next(), in.next(), in.next()
			ip := fuzzIP(ipSel, ipB)
			put(name, val(ip, fuzzMAC(macSel, ip), []int{1, 1, 1, 0, 2, 1 << 40}[int(vni)%6]))
		case 3: // raw bytes
			name := keyName()
			n := int(in.next())
			n = min(n, len(in.b))
			put(name, string(in.b[:n]))
			in.b = in.b[n:]
		case 4: // a huge value, valid JSON or not
			name, size := keyName(), int(in.next())<<10
			v := `{"PublicIP":"10.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"` + strings.Repeat("a", size) + `"}}`
			if size%2048 == 0 {
				v = strings.Repeat(" ", size) + val("10.0.0.1", "b2:00:0a:00:00:01", 1)
			}
			put(name, v)
		case 5:
			name := keyName()
			rs.del(name)
			delete(live, rs.r.subnetsPrefix()+name)
		case 6: // our subnet moves, or we have none yet
			if s := in.next(); s < 48 {
				rs.self = netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, s, 0}), 24)
			} else {
				rs.self = netip.Prefix{}
			}
		case 7: // foreign routes change, and the watch is told
			sel, at := in.next(), in.next()%48
			routes = nil
			for i, p := range []netip.Prefix{
				netip.MustParsePrefix("0.0.0.0/0"),
				netip.MustParsePrefix("172.16.0.0/12"),
				netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, at, 128}), 25),
				netip.MustParsePrefix("172.17.0.0/16"),
				netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, at &^ 7, 0}), 21),
			} {
				if sel&(1<<i) != 0 {
					routes = append(routes, p)
				}
			}
			check(rs.refilter())
		case 8:
			check(rs.snapshot())
		case 9: // a big watch response: merged by the next snapshot
			rs.clean = false
		}
	}
	check(rs.snapshot())
}

func fuzzIP(sel, b byte) string {
	switch sel % 8 {
	case 0:
		return fmt.Sprintf("172.16.%d.%d", b%48, 1+b/48) // inside Network, maybe inside a lease
	case 1:
		return fmt.Sprintf("172.17.42.%d", b)
	case 2:
		return "172.17.42.31" // ours
	case 3:
		return hostileIPs[int(b)%len(hostileIPs)]
	case 4:
		return fmt.Sprintf("::ffff:172.16.%d.1", b%48)
	default:
		return fmt.Sprintf("10.0.%d.%d", b>>4, b&15)
	}
}

func fuzzMAC(sel byte, ip string) string {
	switch sel % 8 {
	case 0, 1, 2, 3:
		return fmt.Sprintf("b2:00:00:00:00:%02x", sel>>3&7) // a small pool: collisions
	case 4:
		if a, err := netip.ParseAddr(ip); err == nil && a.Unmap().Is4() {
			return macFor(a.Unmap().String())
		}
		return "b2:00:00:00:00:ff"
	case 5:
		return hostileMACs[int(sel>>3)%len(hostileMACs)]
	default:
		return fmt.Sprintf("b2:00:00:00:%02x:01", sel>>3)
	}
}
