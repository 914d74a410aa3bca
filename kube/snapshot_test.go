package kube

import (
	"fmt"
	corev1 "k8s.io/api/core/v1"
	"math/rand/v2"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/weft-net/weft/peer"
	"github.com/weft-net/weft/subnet"
)

// BenchmarkSnapshot4000 is the cost of one snapshot at 4,000 peers, the
// Manager's part of a hot change.
func BenchmarkSnapshot4000(b *testing.B) {
	cfg, _ := subnet.ParseConfig([]byte(`{"Network":"172.16.0.0/12","Backend":{"Type":"vxlan"}}`))
	m := &Manager{cfg: Config{NodeName: "self", Network: cfg}, peers: newPeerSet(cfg.Network), m: newMetrics(nil), own: netip.MustParsePrefix("172.16.0.0/24")}
	for i := range 4000 {
		s := i + 1
		m.peers.put(&entry{name: fmt.Sprintf("n%d", i), created: time.Unix(int64(i), 0), peer: peer.Peer{
			Subnet:   netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(16 + s>>8), byte(s), 0}), 24),
			PublicIP: netip.AddrFrom4([4]byte{10, 250, byte(1 + i/250), byte(1 + i%250)}),
			VtepMAC:  net.HardwareAddr{0x0e, 0x77, 0, byte(i >> 16), byte(i >> 8), byte(i)},
		}})
	}
	f := subnet.PeerFilter{Config: cfg, Underlay: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")},
		Self: func() (netip.Prefix, netip.Addr) {
			return netip.MustParsePrefix("172.16.0.0/24"), netip.MustParseAddr("10.250.0.1")
		}}
	b.ReportAllocs()
	for b.Loop() {
		s, _ := m.snapshot(f)
		m.Recycle(s)
	}
}

// TestIncrementalMatchesFull applies random Node changes, with shared MACs,
// claims on one subnet and public IPs inside subnets among them, and checks
// after each that the snapshot made change by change equals one made from
// scratch.
func TestIncrementalMatchesFull(t *testing.T) {
	m, f := testManager(t)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		name := fmt.Sprintf("n%d", rng.IntN(40))
		if rng.IntN(5) == 0 {
			m.delete(record(node(name, "", nil)))
		} else {
			cidr := fmt.Sprintf("172.16.%d.0/24", 1+rng.IntN(30))
			ip := fmt.Sprintf("10.250.0.%d", 2+rng.IntN(50))
			if rng.IntN(30) == 0 {
				ip = fmt.Sprintf("172.16.%d.9", 1+rng.IntN(30)) // inside a subnet
			}
			mac := fmt.Sprintf("0e:00:00:00:00:%02x", rng.IntN(45))
			n := node(name, cidr, flannelAnn(ip, mac))
			n.CreationTimestamp.Time = time.Unix(int64(rng.IntN(1000)), 0)
			m.update(record(n))
		}
		if rng.IntN(3) == 0 {
			continue // several changes in one snapshot
		}
		got, _ := m.snapshot(f)
		m.mu.Lock()
		m.peers.outOK = false
		m.mu.Unlock()
		want, _ := m.snapshot(f)
		if g, w := peersText(got), peersText(want); g != w {
			t.Fatalf("change %d: change by change\n%s\nfrom scratch\n%s", i, g, w)
		}
	}
}

// TestPeerEventCounts: weft_peer_events_total counts, for each snapshot,
// the peers added, removed and changed since the one before, whether the
// snapshot is made change by change or from scratch.
func TestPeerEventCounts(t *testing.T) {
	m, f := testManager(t)
	value := func(kind string) int { return int(testutilValue(m.m.peerEvents.WithLabelValues(kind))) }
	var prev []peer.Peer
	full := 0
	rng := rand.New(rand.NewPCG(3, 4))
	for i := range 3000 {
		name := fmt.Sprintf("n%d", rng.IntN(40))
		if rng.IntN(5) == 0 {
			m.delete(record(node(name, "", nil)))
		} else {
			cidr := fmt.Sprintf("172.16.%d.0/24", 1+rng.IntN(30))
			ip := fmt.Sprintf("10.250.0.%d", 2+rng.IntN(50))
			mac := fmt.Sprintf("0e:00:00:00:00:%02x", rng.IntN(45))
			if rng.IntN(3) == 0 { // a new address or MAC on the same subnet
				cidr = fmt.Sprintf("172.16.%d.0/24", 1+rng.IntN(3))
			}
			n := node(name, cidr, flannelAnn(ip, mac))
			n.CreationTimestamp.Time = time.Unix(int64(rng.IntN(1000)), 0)
			m.update(record(n))
		}
		if !m.peers.outOK {
			full++
		}
		a, r, c := value("added"), value("removed"), value("changed")
		s, _ := m.snapshot(f)
		want := m.count(prev, s.Peers)
		if got := (counts{value("added") - a, value("removed") - r, value("changed") - c}); got != want {
			t.Fatalf("change %d: counted %+v, want %+v", i, got, want)
		}
		prev = append(prev[:0], s.Peers...)
		m.Recycle(s)
	}
	if full == 0 || full > 2900 {
		t.Errorf("%d of 3000 snapshots were full ones: the test should see both kinds", full)
	}
}

// record is n as the informer hands it over, trimmed.
func record(n *corev1.Node) *nodeRecord {
	return newAnnotations(DefaultPrefix).record(&Node{ObjectMeta: n.ObjectMeta, Spec: NodeSpec{PodCIDR: n.Spec.PodCIDR}})
}

// testManager is a Manager of node "self" holding 172.16.0.0/24, with the
// peer filter its snapshots go through.
func testManager(t *testing.T) (*Manager, subnet.PeerFilter) {
	t.Helper()
	cfg, _ := subnet.ParseConfig([]byte(`{"Network":"172.16.0.0/12","Backend":{"Type":"vxlan"}}`))
	m, err := New(Config{Nodes: fakeNodes{}, NodeName: "self", Network: cfg})
	if err != nil {
		t.Fatal(err)
	}
	m.own = netip.MustParsePrefix("172.16.0.0/24")
	f := subnet.PeerFilter{Config: cfg, Underlay: []netip.Prefix{netip.MustParsePrefix("10.250.0.0/16")},
		Self: func() (netip.Prefix, netip.Addr) { return m.own, netip.MustParseAddr("10.250.0.1") }}
	return m, f
}
