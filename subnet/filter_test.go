package subnet

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

const testNet = `{"Network":"172.16.0.0/12","Backend":{"Type":"vxlan","VNI":1}}`

func mustConfig(t testing.TB, s string) Config {
	t.Helper()
	c, err := ParseConfig([]byte(s))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func val(ip, mac string, vni int) string {
	return fmt.Sprintf(`{"PublicIP":%q,"BackendType":"vxlan","BackendData":{"VNI":%d,"VtepMAC":%q}}`, ip, vni, mac)
}

// macFor gives each PublicIP its own VTEP MAC, as weftd derives it; leases
// that share an address then share a MAC too.
func macFor(ip string) string {
	a := netip.MustParseAddr(ip).As4()
	return fmt.Sprintf("b2:00:%02x:%02x:%02x:%02x", a[0], a[1], a[2], a[3])
}

// peers renders a snapshot as text, one "subnet ip" per line.
func peers(s Snapshot) string {
	var b strings.Builder
	for _, p := range s.Peers {
		fmt.Fprintf(&b, "%v %v\n", p.Subnet, p.PublicIP)
	}
	return b.String()
}

func TestFilter(t *testing.T) {
	r := NewRegistry(nil, "", nil, nil)
	self := netip.MustParsePrefix("172.16.28.0/24")
	selfIP := netip.MustParseAddr("172.17.42.31")
	ps := newPeerState(r, PeerFilter{Config: mustConfig(t, testNet), Underlay: []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16")},
		Self: func() (netip.Prefix, netip.Addr) { return self, selfIP }})
	rev := int64(0)
	put := func(name, value string) {
		rev++
		ps.put(&mvccpb.KeyValue{Key: []byte(r.subnetsPrefix() + name), Value: []byte(value), CreateRevision: rev, ModRevision: rev})
	}
	const mac = "b2:69:2c:67:63:b8"
	put("172.16.78.0-24", val("172.17.42.32", macFor("172.17.42.32"), 1)) // valid
	put("172.16.28.0-24", val("172.17.42.31", mac, 1))                    // our own
	put("172.16.90.0-24", val("172.17.42.33", macFor("172.17.42.33"), 1)) // valid
	put("172.16.90.0-24x", val("172.17.42.34", mac, 1))                   // bad key
	put("172.16.91.0-24", `garbage`)                                      // bad JSON
	put("10.0.0.0-24", val("172.17.42.35", mac, 1))                       // outside Network
	put("172.16.92.0-25", val("172.17.42.36", mac, 1))                    // wrong length
	put("172.17.42.0-24", val("172.17.42.37", mac, 1))                    // overlaps underlay
	put("172.16.93.0-24", val("172.17.42.31", mac, 1))                    // our PublicIP on another subnet
	put("172.16.94.0-24", val("127.0.0.1", mac, 1))                       // loopback
	put("172.16.95.0-24", val("0.0.0.0", mac, 1))                         // unspecified
	put("172.16.96.0-24", val("224.0.0.1", mac, 1))                       // multicast
	put("172.16.97.0-24", val("169.254.1.1", mac, 1))                     // link-local
	put("172.16.98.0-24", val("172.17.42.38", mac, 2))                    // wrong VNI
	put("172.16.99.0-24", val("172.17.42.39", "01:00:5e:00:00:01", 1))    // multicast MAC
	put("172.16.100.0-24", `{"PublicIP":"172.17.42.40","BackendType":"udp"}`)
	put("172.16.101.0-24", `{"PublicIP":"172.17.42.41","BackendType":"vxlan","BackendData":{"VNI":"1"}}`)
	put("172.16.102.0-24", `{"PublicIP":["x"]}`)
	put("172.16.103.0-24", val("172.17.42.42", mac, 99999999999)) // huge VNI

	got := peers(ps.snapshot())
	want := "172.16.78.0/24 172.17.42.32\n172.16.90.0/24 172.17.42.33\n"
	if got != want {
		t.Fatalf("peers:\n%s\nwant:\n%s", got, want)
	}

	// Garbage over a valid value keeps the valid one.
	put("172.16.78.0-24", `{"PublicIP":"oops"}`)
	if got := peers(ps.snapshot()); got != want {
		t.Fatalf("garbage replaced a valid peer:\n%s", got)
	}
	// A valid change is applied.
	put("172.16.78.0-24", val("172.17.42.50", macFor("172.17.42.50"), 1))
	if got := peers(ps.snapshot()); !strings.Contains(got, "172.16.78.0/24 172.17.42.50") {
		t.Fatalf("change not applied:\n%s", got)
	}
	// Our own subnet moves onto a peer's: that peer is now an overlap.
	self = netip.MustParsePrefix("172.16.90.0/24")
	if got := peers(ps.snapshot()); strings.Contains(got, "172.16.90.0") {
		t.Fatalf("peer on our own subnet kept:\n%s", got)
	}
}

func TestFilterDuplicateClaimEarliestWins(t *testing.T) {
	r := NewRegistry(nil, "", nil, nil)
	ps := newPeerState(r, PeerFilter{Config: mustConfig(t, testNet), Self: func() (netip.Prefix, netip.Addr) { return netip.Prefix{}, netip.Addr{} }})
	// Two keys for the same subnet can't exist in etcd, but the same subnet can
	// be listed through leases with equal Subnet from different prefixes in
	// tests; simulate with two distinct keys mapping to the same subnet.
	l1 := Lease{Key: "a", Subnet: netip.MustParsePrefix("172.16.5.0/24"), CreateRevision: 7,
		Attrs: LeaseAttrs{PublicIP: netip.MustParseAddr("172.17.0.7")}}
	l2 := l1
	l2.Key, l2.CreateRevision, l2.Attrs.PublicIP = "b", 3, netip.MustParseAddr("172.17.0.3")
	ps.valid["a"], ps.valid["b"] = &l1, &l2
	if got := peers(ps.snapshot()); got != "172.16.5.0/24 172.17.0.3\n" {
		t.Fatalf("got %s", got)
	}
}

// The snapshot kept up to date change by change equals one rebuilt from
// scratch, over a long random run of puts, garbage, deletes and moves of our
// own subnet.
func TestIncrementalSnapshotMatchesRebuild(t *testing.T) {
	r := NewRegistry(nil, "", nil, nil)
	self := netip.MustParsePrefix("172.16.28.0/24")
	selfIP := netip.MustParseAddr("172.17.42.31")
	ps := newPeerState(r, PeerFilter{Config: mustConfig(t, testNet), Underlay: []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16")},
		Self: func() (netip.Prefix, netip.Addr) { return self, selfIP }})
	rng := rand.New(rand.NewPCG(1, 2))
	rev := int64(0)
	for step := range 3000 {
		rev++
		name := fmt.Sprintf("172.16.%d.0-24", rng.IntN(60))
		key := r.subnetsPrefix() + name
		switch k := rng.IntN(10); {
		case k < 6:
			ip := fmt.Sprintf("172.17.42.%d", 30+rng.IntN(8)) // sometimes our own address
			ps.put(&mvccpb.KeyValue{Key: []byte(key), Value: []byte(val(ip, macFor(ip), 1)), CreateRevision: rev, ModRevision: rev})
		case k < 7:
			ps.put(&mvccpb.KeyValue{Key: []byte(key), Value: []byte(`garbage`), CreateRevision: rev, ModRevision: rev})
		case k < 9:
			ps.remove(key)
		default:
			self = netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(rng.IntN(60)), 0}), 24)
		}
		got := peers(ps.snapshot())
		ps.clean = false // what a rebuild from scratch gives
		want := peers(ps.snapshot())
		if got != want {
			t.Fatalf("step %d: incremental snapshot\n%s\ndiffers from a rebuild\n%s", step, got, want)
		}
	}
}

// TestPeerEventCounts checks weft_peer_events_total both ways it is
// counted: change by change between listings, and whole after a listing.
func TestPeerEventCounts(t *testing.T) {
	r := NewRegistry(nil, "", nil, nil)
	ps := newPeerState(r, PeerFilter{Config: mustConfig(t, testNet), Self: func() (netip.Prefix, netip.Addr) { return netip.Prefix{}, netip.Addr{} }})
	rev := int64(0)
	put := func(name, ip string) {
		rev++
		ps.put(&mvccpb.KeyValue{Key: []byte(r.subnetsPrefix() + name), Value: []byte(val(ip, macFor(ip), 1)), CreateRevision: rev, ModRevision: rev})
	}
	counts := func() string {
		var b strings.Builder
		for _, k := range []string{"added", "changed", "removed"} {
			fmt.Fprintf(&b, "%s=%v ", k, counterValue(t, r.m.peerEvents.WithLabelValues(k)))
		}
		return b.String()
	}
	step := func(what, want string) {
		t.Helper()
		ps.snapshot()
		if got := counts(); got != want {
			t.Errorf("%s: %s, want %s", what, got, want)
		}
	}

	// A listing: everything is new.
	for i := range 5 {
		put(fmt.Sprintf("172.16.%d.0-24", 10+i), fmt.Sprintf("10.0.0.%d", 10+i))
	}
	ps.clean, ps.touched = false, nil
	step("first listing", "added=5 changed=0 removed=0 ")

	// Watch events, counted by subnet.
	put("172.16.9.0-24", "10.0.0.9")
	step("a new peer", "added=6 changed=0 removed=0 ")
	put("172.16.12.0-24", "10.0.0.99")
	step("a new address", "added=6 changed=1 removed=0 ")
	put("172.16.12.0-24", "10.0.0.99")
	step("the same value again", "added=6 changed=1 removed=0 ")
	ps.remove(r.subnetsPrefix() + "172.16.10.0-24")
	step("a delete", "added=6 changed=1 removed=1 ")

	// A listing that differs at both ends and in the middle.
	old := ps.valid
	ps.valid = map[string]*Lease{}
	for k, l := range old {
		switch l.Subnet.Addr().As4()[2] {
		case 9, 14: // gone
		case 13:
			ps.valid[k] = l
			put("172.16.13.0-24", "10.0.0.113") // changed
		default:
			ps.valid[k] = l
		}
	}
	put("172.16.8.0-24", "10.0.0.8")   // new, first
	put("172.16.20.0-24", "10.0.0.20") // new, last
	ps.clean, ps.touched = false, nil
	step("second listing", "added=8 changed=2 removed=3 ")
}

// TestBatchesMatchRebuild applies random batches of puts and deletes, small
// ones change by change and big ones merged at once, and checks every
// snapshot against one built from scratch.
func TestBatchesMatchRebuild(t *testing.T) {
	r := NewRegistry(nil, "", nil, nil)
	self := netip.MustParsePrefix("172.16.7.0/24")
	selfIP := netip.MustParseAddr("10.0.0.7")
	filter := PeerFilter{Config: mustConfig(t, testNet), Self: func() (netip.Prefix, netip.Addr) { return self, selfIP }}
	fresh := func() *peerState {
		return newPeerState(r, filter)
	}
	ps := fresh()
	rng := rand.New(rand.NewPCG(1, 2))
	rev := int64(0)
	live := map[string]*mvccpb.KeyValue{}
	for batch := range 300 {
		n := 1 + rng.IntN(4)
		if batch%3 == 0 {
			n = bulkEvents + 1 + rng.IntN(200)
		}
		if n > bulkEvents {
			ps.clean = false // as watch does
		}
		for range n {
			name := fmt.Sprintf("172.16.%d.0-24", rng.IntN(256))
			key := r.subnetsPrefix() + name
			rev++
			switch rng.IntN(5) {
			case 0:
				ps.remove(key)
				delete(live, key)
			case 1:
				kv := &mvccpb.KeyValue{Key: []byte(key), Value: []byte(`{"PublicIP":"oops"}`), CreateRevision: rev, ModRevision: rev}
				ps.put(kv) // invalid: the previous value stays
			default:
				ip := fmt.Sprintf("10.0.%d.%d", rng.IntN(2), rng.IntN(256))
				kv := &mvccpb.KeyValue{Key: []byte(key), Value: []byte(val(ip, macFor(ip), 1)), CreateRevision: rev, ModRevision: rev}
				ps.put(kv)
				live[key] = kv
			}
		}
		got := peers(ps.snapshot())
		ref := fresh()
		for _, kv := range live {
			ref.put(kv)
		}
		if want := peers(ref.snapshot()); got != want {
			t.Fatalf("batch %d (%d changes): snapshot\n%s\nwant\n%s", batch, n, got, want)
		}
	}
}
