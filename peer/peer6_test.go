package peer

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

var (
	net6 = Network{Prefix: netip.MustParsePrefix("fd42::/48"), SubnetLen: 64}
	mac6 = net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x1d}
)

// The v6 half of a lease passes the same rulebook as the v4 half, with
// IPv6's own reserved ranges.
func TestCheckLeaseIPv6(t *testing.T) {
	ok := Peer{Subnet: netip.MustParsePrefix("fd42:0:0:1d::/64"), PublicIP: netip.MustParseAddr("fd00:17::32"), VtepMAC: mac6}
	if err := CheckLease(&ok, net6); err != nil {
		t.Fatalf("a plausible v6 half: %v", err)
	}
	for _, tc := range []struct {
		name, subnet, public, want string
	}{
		{"loopback", "fd42:0:0:1d::/64", "::1", "loopback"},
		{"link-local", "fd42:0:0:1d::/64", "fe80::1", "link-local"},
		{"multicast", "fd42:0:0:1d::/64", "ff02::1", "multicast"},
		{"discard", "fd42:0:0:1d::/64", "100::1", "reserved (100::/64)"},
		{"NAT64", "fd42:0:0:1d::/64", "64:ff9b::a00:1", "reserved (64:ff9b::/96)"},
		{"IPv4-compatible loopback", "fd42:0:0:1d::/64", "::127.0.0.1", "reserved (::/96)"},
		{"unspecified", "fd42:0:0:1d::/64", "::", "unspecified"},
		{"inside its own subnet", "fd42:0:0:1d::/64", "fd42:0:0:1d::5", "inside the lease's own subnet"},
		{"outside Network", "fd43:0:0:1d::/64", "fd00:17::32", "outside Network"},
		{"wrong length", "fd42:0:0:1c::/63", "fd00:17::32", "length is not /64"},
		{"host bits", "fd42:0:0:1d::1/64", "fd00:17::32", "host bits"},
		{"v4 subnet in a v6 network", "172.16.78.0/24", "fd00:17::32", "not of the family"},
	} {
		p := Peer{Subnet: netip.MustParsePrefix(tc.subnet), PublicIP: netip.MustParseAddr(tc.public), VtepMAC: mac6}
		err := CheckLease(&p, net6)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
}

func TestCheckAgainstIPv6(t *testing.T) {
	self := Self{
		Subnet:   netip.MustParsePrefix("fd42:0:0:1c::/64"),
		PublicIP: netip.MustParseAddr("fd00:17::31"),
		VtepMAC:  net.HardwareAddr{0x0e, 0, 0, 0, 0, 0x1c},
		Underlay: []netip.Prefix{netip.MustParsePrefix("fd00:17::/64")},
	}
	for _, tc := range []struct {
		name, subnet, public, want string
	}{
		{"this node's address", "fd42:0:0:1d::/64", "fd00:17::31", "this node's own address"},
		{"this node's subnet", "fd42:0:0:1c::/64", "fd00:17::32", "overlaps this node's own subnet"},
		{"a v4 address for a v6 half", "fd42:0:0:1d::/64", "172.17.42.32", "not of the family"},
	} {
		p := Peer{Subnet: netip.MustParsePrefix(tc.subnet), PublicIP: netip.MustParseAddr(tc.public), VtepMAC: mac6}
		err := CheckAgainst(&p, net6, &self)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want an error saying %q", tc.name, err, tc.want)
		}
	}
	p := Peer{Subnet: netip.MustParsePrefix("fd42:0:0:1d::/64"), PublicIP: netip.MustParseAddr("fd00:17::32"), VtepMAC: mac6}
	if err := Check(&p, net6, &self); err != nil {
		t.Errorf("a plausible peer: %v", err)
	}
}

func TestHalves(t *testing.T) {
	dual := Peer{
		Subnet: netip.MustParsePrefix("172.16.78.0/24"), PublicIP: netip.MustParseAddr("172.17.42.32"), VtepMAC: mac6,
		V6: &Peer{Subnet: netip.MustParsePrefix("fd42:0:0:4e::/64"), PublicIP: netip.MustParseAddr("fd00:17::32"), VtepMAC: mac6},
	}
	v4only := Peer{Subnet: netip.MustParsePrefix("172.16.79.0/24"), PublicIP: netip.MustParseAddr("172.17.42.33"), VtepMAC: mac6}
	v6only := Peer{V6: &Peer{Subnet: netip.MustParsePrefix("fd42:0:0:50::/64"), PublicIP: netip.MustParseAddr("fd00:17::34"), VtepMAC: mac6}}
	all := []Peer{dual, v4only, v6only}
	if got := Halves(nil, all, false); len(got) != 2 || got[0].Subnet != dual.Subnet || got[1].Subnet != v4only.Subnet {
		t.Errorf("v4 halves = %v", got)
	}
	got := Halves(nil, all, true)
	if len(got) != 2 || got[0].Subnet != dual.V6.Subnet || got[0].PublicIP != dual.V6.PublicIP || got[1].Subnet != v6only.V6.Subnet {
		t.Errorf("v6 halves = %v", got)
	}
	if SingleFamily(all) || !SingleFamily([]Peer{v4only}) {
		t.Errorf("SingleFamily wrong")
	}
}
