package subnet

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/ip"
)

const dualNet = `{"Network":"172.16.0.0/16","EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"vxlan"}}`

func dualNode(n int, cfg Config) HoldRequest {
	req := node(n, cfg)
	req.PublicIP6 = netip.AddrFrom16([16]byte{0: 0xfd, 2: 0x17, 15: byte(n)})
	req.VtepMAC6 = ip.VTEPMAC(req.PublicIP6, cfg.Backend.VNI)
	return req
}

func peers6(s Snapshot) string {
	var b strings.Builder
	for _, p := range s.Peers {
		h, _ := p.Half(true)
		fmt.Fprintf(&b, "%v %v %v %v\n", p.Subnet, p.PublicIP, h.Subnet, h.PublicIP)
	}
	return b.String()
}

// A dual-stack node leases a v4 and a v6 subnet under one key in flannel's
// form, keeps both across a restart, and its peers see both halves; a
// v4-only lease (a flanneld node without IPv6) is a peer with no v6 half,
// and a v6 half that breaks the rules makes the lease invalid.
func TestDualStackHoldAndWatch(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	cfg := mustConfig(t, dualNet)
	r := fastRegistry(t, cli)
	if err := r.SetConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	req := dualNode(31, cfg)
	h := startHold(t, r, req)
	l := h.next(t)
	if !cfg.alloc().Eligible(l.Subnet) || !cfg.alloc6().Eligible(l.Subnet6) {
		t.Fatalf("lease %v & %v outside the ranges", l.Subnet, l.Subnet6)
	}
	if want := "/coreos.com/network/subnets/" + l.Subnet.Addr().String() + "-24&" + l.Subnet6.Addr().String() + "-64"; l.Key != want {
		t.Errorf("key %s, want %s", l.Key, want)
	}
	a, _, ok := getKey(t, cli, l.Key)
	if !ok || a.PublicIP6 != req.PublicIP6 || a.VtepMAC6.String() != req.VtepMAC6.String() {
		t.Fatalf("value %+v lacks the IPv6 half", a)
	}
	h.cancel()
	<-h.done
	h.done <- nil
	l2 := startHold(t, fastRegistry(t, e.Client(t)), req).next(t)
	if l2.Key != l.Key || l2.EtcdLeaseID != l.EtcdLeaseID {
		t.Errorf("restart moved the lease: %s -> %s", l.Key, l2.Key)
	}

	// Another node's view.
	self := dualNode(32, cfg)
	w := startWatch(t, r, PeerFilter{Config: cfg, VtepMAC: self.VtepMAC, VtepMAC6: self.VtepMAC6,
		Self:  func() (netip.Prefix, netip.Addr) { return netip.Prefix{}, self.PublicIP },
		Self6: func() (netip.Prefix, netip.Addr) { return netip.Prefix{}, self.PublicIP6 }})
	first := fmt.Sprintf("%v %v %v %v\n", l.Subnet, req.PublicIP, l.Subnet6, req.PublicIP6)
	w.waitPeers6(t, first)
	// flanneld without IPv6.
	if _, err := cli.Put(ctx, r.subnetsPrefix()+"172.16.200.0-24",
		`{"PublicIP":"172.17.0.200","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6a:1f:3e:00:11:22"},"BackendV6Data":null}`); err != nil {
		t.Fatal(err)
	}
	// A v6 half whose PublicIPv6 is this node's own address: invalid.
	if _, err := cli.Put(ctx, r.subnetsPrefix()+"172.16.201.0-24&fd42:0:0:c9::-64",
		fmt.Sprintf(`{"PublicIP":"172.17.0.201","PublicIPv6":"%v","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6a:1f:3e:00:11:23"},"BackendV6Data":{"VNI":1,"VtepMAC":"6a:1f:3e:00:11:24"}}`, self.PublicIP6)); err != nil {
		t.Fatal(err)
	}
	// A v6 half outside IPv6Network: invalid.
	if _, err := cli.Put(ctx, r.subnetsPrefix()+"172.16.202.0-24&fd43:0:0:ca::-64",
		`{"PublicIP":"172.17.0.202","PublicIPv6":"fd00:17::ca","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6a:1f:3e:00:11:25"},"BackendV6Data":{"VNI":1,"VtepMAC":"6a:1f:3e:00:11:26"}}`); err != nil {
		t.Fatal(err)
	}
	w.waitPeers6(t, first+"172.16.200.0/24 172.17.0.200 invalid Prefix invalid IP\n")
	deadline := time.Now().Add(5 * time.Second)
	for counterValue(t, r.m.peerEvents.WithLabelValues("invalid")) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("invalid leases counted: %v, want 2", counterValue(t, r.m.peerEvents.WithLabelValues("invalid")))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An IPv6-only network: leases in flannel's IPv6-only form, peers with an
// IPv6 first half.
func TestIPv6OnlyHoldAndWatch(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	cfg := mustConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd42::/48"}`)
	r := fastRegistry(t, cli)
	if err := r.SetConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	pub := netip.MustParseAddr("fd00:17::31")
	l := startHold(t, r, HoldRequest{Config: cfg, PublicIP: pub, VtepMAC: ip.VTEPMAC(pub, 1), TTL: time.Minute}).next(t)
	if !l.Subnet.Addr().Is6() || l.Subnet.Bits() != 64 || l.Key != "/coreos.com/network/subnets/0.0.0.0-0&"+l.Subnet.Addr().String()+"-64" {
		t.Fatalf("lease %v key %s", l.Subnet, l.Key)
	}
	resp, err := cli.Get(ctx, l.Key)
	if err != nil || len(resp.Kvs) != 1 || !strings.Contains(string(resp.Kvs[0].Value), `"PublicIP":"0.0.0.0","PublicIPv6":"fd00:17::31"`) {
		t.Fatalf("value %s, %v", resp.Kvs[0].Value, err)
	}
	w := startWatch(t, r, PeerFilter{Config: cfg, Self: func() (netip.Prefix, netip.Addr) { return netip.Prefix{}, netip.MustParseAddr("fd00:17::32") }})
	w.waitPeers(t, fmt.Sprintf("%v %v\n", l.Subnet, pub))
	// A v4 IPv4 PublicIP in an IPv6-only network is refused.
	if err := r.Hold(ctx, HoldRequest{Config: cfg, PublicIP: netip.MustParseAddr("172.17.0.9"), VtepMAC: ip.VTEPMAC(pub, 1)}); err == nil ||
		!strings.Contains(err.Error(), "not of the family") {
		t.Errorf("Hold with an IPv4 address in an IPv6-only network: %v", err)
	}
}

func (w *watching) waitPeers6(t testing.TB, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		s, n := w.last, w.n
		w.mu.Unlock()
		if n > 0 && peers6(s) == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("peers after 10s:\n%s\nwant:\n%s", peers6(s), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The IPv6 halves of two leases may not share a subnet or a VtepMAC (the
// earlier lease keeps it), and a PublicIPv6 may not lie in a leased IPv6
// subnet: otherwise a hostile lease could make the backend refuse a peer,
// which would cost the node its readiness.
func TestDualStackDuplicateClaims(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	cfg := mustConfig(t, dualNet)
	r := fastRegistry(t, cli)
	put := func(key, pub4, pub6, mac6 string) {
		t.Helper()
		v := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"6a:1f:3e:00:00:%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`,
			pub4, pub6, pub4[len(pub4)-2:], mac6)
		if _, err := cli.Put(ctx, r.subnetsPrefix()+key, v); err != nil {
			t.Fatal(err)
		}
	}
	put("172.16.10.0-24&fd42:0:0:a::-64", "172.17.0.10", "fd00:17::10", "6a:1f:3e:00:01:10")
	put("172.16.11.0-24&fd42:0:0:a::-64", "172.17.0.11", "fd00:17::11", "6a:1f:3e:00:01:11")    // same v6 subnet, later
	put("172.16.12.0-24&fd42:0:0:c::-64", "172.17.0.12", "fd00:17::12", "6a:1f:3e:00:01:10")    // same v6 MAC, later
	put("172.16.13.0-24&fd42:0:0:d::-64", "172.17.0.13", "fd42:0:0:a::99", "6a:1f:3e:00:01:13") // PublicIPv6 in a leased subnet
	put("172.16.14.0-24&fd42:0:0:e::-64", "172.17.0.14", "fd00:17::14", "6a:1f:3e:00:01:14")
	w := startWatch(t, r, PeerFilter{Config: cfg,
		Self: func() (netip.Prefix, netip.Addr) { return netip.Prefix{}, netip.MustParseAddr("172.17.0.99") }})
	w.waitPeers6(t, "172.16.10.0/24 172.17.0.10 fd42:0:0:a::/64 fd00:17::10\n172.16.14.0/24 172.17.0.14 fd42:0:0:e::/64 fd00:17::14\n")
	// The earlier claim goes: the later ones take its place (the
	// PublicIPv6 in fd42:0:0:a::/64 stays refused: .11 leases it now).
	if _, err := cli.Delete(ctx, r.subnetsPrefix()+"172.16.10.0-24&fd42:0:0:a::-64"); err != nil {
		t.Fatal(err)
	}
	w.waitPeers6(t, "172.16.11.0/24 172.17.0.11 fd42:0:0:a::/64 fd00:17::11\n172.16.12.0/24 172.17.0.12 fd42:0:0:c::/64 fd00:17::12\n"+
		"172.16.14.0/24 172.17.0.14 fd42:0:0:e::/64 fd00:17::14\n")
}
