package peer

import (
	"net"
	"net/netip"
	"strings"
	"testing"
)

// The reference layout: Network 172.16.0.0/12 with /24s, the underlay
// 172.17.0.0/16 inside it, this node at 172.17.42.31 with 172.16.28.0/24.
var (
	testNetwork = Network{
		Prefix:    netip.MustParsePrefix("172.16.0.0/12"),
		SubnetLen: 24,
		SubnetMin: netip.MustParseAddr("172.16.2.0"),
		SubnetMax: netip.MustParseAddr("172.16.200.0"),
	}
	ownMAC = net.HardwareAddr{0x0a, 0, 0, 0, 0, 0x1c}
)

func testSelf() *Self {
	return &Self{
		Subnet:   netip.MustParsePrefix("172.16.28.0/24"),
		PublicIP: netip.MustParseAddr("172.17.42.31"),
		VtepMAC:  ownMAC,
		Underlay: []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16"), netip.MustParsePrefix("10.9.9.0/31")},
		Foreign: []netip.Prefix{
			netip.MustParsePrefix("0.0.0.0/0"),         // the default route
			netip.MustParsePrefix("172.16.0.0/12"),     // a summary route for all of Network
			netip.MustParsePrefix("172.0.0.0/8"),       // wider still
			netip.MustParsePrefix("172.17.0.0/16"),     // the underlay's network
			netip.MustParsePrefix("172.16.99.0/24"),    // an operator's route
			netip.MustParsePrefix("172.16.100.128/25"), // part of a subnet
			netip.MustParsePrefix("fd00::/8"),          // another family: no collision
			netip.MustParsePrefix("172.16.150.7/32"),   // a host route
			netip.MustParsePrefix("192.168.0.0/16"),    // outside Network
			netip.MustParsePrefix("172.16.28.0/24"),    // our own docker0, seen as foreign
		},
	}
}

// valid is node2 of the reference layout.
func valid() Peer {
	return Peer{
		Subnet:   netip.MustParsePrefix("172.16.78.0/24"),
		PublicIP: netip.MustParseAddr("172.17.42.32"),
		VtepMAC:  net.HardwareAddr{0x0a, 0, 0, 0, 0, 0x4e},
	}
}

func withSubnet(s string) func(*Peer) {
	return func(p *Peer) { p.Subnet = netip.MustParsePrefix(s) }
}

func withIP(s string) func(*Peer) {
	return func(p *Peer) { p.PublicIP = netip.MustParseAddr(s) }
}

func withMAC(s string) func(*Peer) {
	return func(p *Peer) {
		m, err := net.ParseMAC(s)
		if err != nil {
			panic(err)
		}
		p.VtepMAC = m
	}
}

// TestCheck goes through every rule of the rulebook: each rejection names
// the field and the value at fault, and peers that break none pass.
func TestCheck(t *testing.T) {
	for _, c := range []struct {
		name   string
		change func(*Peer)
		want   []string // substrings of the error; nil: accepted
	}{
		// Acceptances.
		{"node2", func(*Peer) {}, nil},
		{"lowest subnet (SubnetMin)", withSubnet("172.16.2.0/24"), nil},
		{"highest subnet (SubnetMax)", withSubnet("172.16.200.0/24"), nil},
		{"despite a default route and routes covering Network", withSubnet("172.16.101.0/24"), nil},
		{"PublicIP outside the underlay", withIP("192.0.2.7"), nil},
		{"PublicIP as IPv4-mapped IPv6", withIP("::ffff:172.17.42.32"), nil},
		{"PublicIP the last address of a /31 underlay", withIP("10.9.9.1"), nil},
		{"PublicIP next to the underlay's broadcast", withIP("172.17.255.254"), nil},
		{"locally administered unicast MAC", withMAC("02:42:ac:11:00:02"), nil},

		// VtepMAC.
		{"no MAC", func(p *Peer) { p.VtepMAC = nil }, []string{"VtepMAC", "not a 6-byte"}},
		{"short MAC", func(p *Peer) { p.VtepMAC = net.HardwareAddr{0x0a, 0, 0, 0, 1} }, []string{"VtepMAC 0a:00:00:00:01", "not a 6-byte"}},
		{"8-byte MAC", withMAC("0a:00:00:00:00:00:00:01"), []string{"VtepMAC 0a:00:00:00:00:00:00:01", "not a 6-byte"}},
		{"zero MAC", withMAC("00:00:00:00:00:00"), []string{"VtepMAC 00:00:00:00:00:00", "zeros"}},
		{"broadcast MAC", withMAC("ff:ff:ff:ff:ff:ff"), []string{"VtepMAC ff:ff:ff:ff:ff:ff", "broadcast"}},
		{"IPv4 multicast MAC", withMAC("01:00:5e:00:00:01"), []string{"VtepMAC 01:00:5e:00:00:01", "multicast"}},
		{"IPv6 multicast MAC", withMAC("33:33:00:00:00:01"), []string{"VtepMAC 33:33:00:00:00:01", "multicast"}},
		{"own MAC", func(p *Peer) { p.VtepMAC = ownMAC }, []string{"VtepMAC 0a:00:00:00:00:1c", "own"}},

		// PublicIP.
		{"no PublicIP", func(p *Peer) { p.PublicIP = netip.Addr{} }, []string{"PublicIP", "missing"}},
		{"unspecified", withIP("0.0.0.0"), []string{"PublicIP 0.0.0.0", "unspecified"}},
		{"unspecified IPv6", withIP("::"), []string{"PublicIP ::", "unspecified"}},
		{"loopback", withIP("127.0.0.1"), []string{"PublicIP 127.0.0.1", "loopback"}},
		{"loopback, not the first", withIP("127.3.2.1"), []string{"PublicIP 127.3.2.1", "loopback"}},
		{"loopback as IPv4-mapped IPv6", withIP("::ffff:127.0.0.1"), []string{"PublicIP ::ffff:127.0.0.1", "loopback"}},
		{"IPv6 loopback", withIP("::1"), []string{"PublicIP ::1", "loopback"}},
		{"link-local", withIP("169.254.1.1"), []string{"PublicIP 169.254.1.1", "link-local"}},
		{"IPv6 link-local", withIP("fe80::1"), []string{"PublicIP fe80::1", "link-local"}},
		{"multicast", withIP("224.0.0.1"), []string{"PublicIP 224.0.0.1", "multicast"}},
		{"multicast, SSDP", withIP("239.255.255.250"), []string{"PublicIP 239.255.255.250", "multicast"}},
		{"IPv6 multicast", withIP("ff02::1"), []string{"PublicIP ff02::1", "multicast"}},
		{"limited broadcast", withIP("255.255.255.255"), []string{"PublicIP 255.255.255.255", "broadcast"}},
		{"underlay's broadcast", withIP("172.17.255.255"), []string{"PublicIP 172.17.255.255", "broadcast", "172.17.0.0/16"}},
		{"class E", withIP("240.0.0.1"), []string{"PublicIP 240.0.0.1", "240.0.0.0/4"}},
		{"class E, top", withIP("255.255.255.254"), []string{"PublicIP 255.255.255.254", "240.0.0.0/4"}},
		{"IPv6 with a zone", withIP("2001:db8::1%eth0"), []string{"PublicIP 2001:db8::1%eth0", "zone"}},
		{"own address", withIP("172.17.42.31"), []string{"PublicIP 172.17.42.31", "own address"}},
		{"own address, mapped", withIP("::ffff:172.17.42.31"), []string{"PublicIP 172.17.42.31", "own address"}},
		{"another family than ours", withIP("2001:db8::32"), []string{"PublicIP 2001:db8::32", "family"}},
		{"inside our subnet", withIP("172.16.28.5"), []string{"PublicIP 172.16.28.5", "own subnet 172.16.28.0/24"}},
		{"inside its own subnet", withIP("172.16.78.9"), []string{"PublicIP 172.16.78.9", "own subnet 172.16.78.0/24"}},
		{"its own VTEP address", withIP("172.16.78.0"), []string{"PublicIP 172.16.78.0", "172.16.78.0/24"}},

		// Subnet.
		{"no subnet", func(p *Peer) { p.Subnet = netip.Prefix{} }, []string{"subnet invalid Prefix", "not a valid prefix"}},
		{"outside Network", withSubnet("10.0.0.0/24"), []string{"subnet 10.0.0.0/24", "outside Network 172.16.0.0/12"}},
		{"just past Network", withSubnet("172.32.0.0/24"), []string{"subnet 172.32.0.0/24", "outside Network"}},
		{"longer than SubnetLen", withSubnet("172.16.78.0/25"), []string{"subnet 172.16.78.0/25", "length is not /24"}},
		{"shorter than SubnetLen", withSubnet("172.16.0.0/16"), []string{"subnet 172.16.0.0/16", "length is not /24"}},
		{"all of Network", withSubnet("172.16.0.0/12"), []string{"subnet 172.16.0.0/12", "length is not /24"}},
		{"below SubnetMin", withSubnet("172.16.1.0/24"), []string{"subnet 172.16.1.0/24", "below SubnetMin 172.16.2.0"}},
		{"Network's first subnet", withSubnet("172.16.0.0/24"), []string{"subnet 172.16.0.0/24", "below SubnetMin"}},
		{"above SubnetMax", withSubnet("172.16.201.0/24"), []string{"subnet 172.16.201.0/24", "above SubnetMax 172.16.200.0"}},
		{"host bits set", withSubnet("172.16.78.1/24"), []string{"subnet 172.16.78.1/24", "host bits"}},
		{"loopback range", withSubnet("127.0.0.0/24"), []string{"subnet 127.0.0.0/24", "not a unicast range"}},
		{"multicast range", withSubnet("224.0.0.0/24"), []string{"subnet 224.0.0.0/24", "not a unicast range"}},
		{"IPv6 in an IPv4 Network", withSubnet("2001:db8::/64"), []string{"subnet 2001:db8::/64", "family"}},
		{"our own subnet", withSubnet("172.16.28.0/24"), []string{"subnet 172.16.28.0/24", "own subnet"}},
		{"the underlay's network", withSubnet("172.17.42.0/24"), []string{"subnet 172.17.42.0/24", "above SubnetMax"}},
		{"an operator's route", withSubnet("172.16.99.0/24"), []string{"subnet 172.16.99.0/24", "overlaps 172.16.99.0/24", "did not make"}},
		{"a route to part of it", withSubnet("172.16.100.0/24"), []string{"subnet 172.16.100.0/24", "overlaps 172.16.100.128/25"}},
		{"a host route inside it", withSubnet("172.16.150.0/24"), []string{"subnet 172.16.150.0/24", "overlaps 172.16.150.7/32"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := valid()
			c.change(&p)
			err := Check(&p, testNetwork, testSelf())
			if c.want == nil {
				if err != nil {
					t.Fatalf("Check(%v, %v, %v) = %v, want accepted", p.Subnet, p.PublicIP, p.VtepMAC, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("Check(%v, %v, %v) accepted, want %q", p.Subnet, p.PublicIP, p.VtepMAC, c.want)
			}
			for _, w := range c.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Check(%v, %v, %v) = %q, does not say %q", p.Subnet, p.PublicIP, p.VtepMAC, err, w)
				}
			}
		})
	}
}

// TestForeignRoutes: a route weft did not make refuses the peer subnets it
// overlaps, unless it covers all of Network (a default or summary route
// says nothing about where containers live).
func TestForeignRoutes(t *testing.T) {
	for _, c := range []struct {
		route   string
		refused bool
	}{
		{"0.0.0.0/0", false},
		{"172.16.0.0/12", false},
		{"172.0.0.0/8", false},
		{"128.0.0.0/1", false},
		{"172.16.0.0/13", true}, // half of Network covers the peer's subnet
		{"172.16.64.0/18", true},
		{"172.16.78.0/24", true},
		{"172.16.78.77/32", true},
		{"172.16.79.0/24", false},
		{"10.0.0.0/8", false},
		{"::/0", false},
		{"2001:db8::/32", false},
	} {
		self := testSelf()
		self.Foreign = []netip.Prefix{netip.MustParsePrefix(c.route)}
		p := valid()
		err := Check(&p, testNetwork, self)
		if got := err != nil; got != c.refused {
			t.Errorf("route %s: Check = %v, want refused=%v", c.route, err, c.refused)
		}
		if err != nil && !strings.Contains(err.Error(), c.route) {
			t.Errorf("route %s: error %q does not name it", c.route, err)
		}
	}
	// The underlay's own network, where SubnetMax lets a subnet in.
	wide := testNetwork
	wide.SubnetMax = netip.MustParseAddr("172.31.255.0")
	p := valid()
	p.Subnet = netip.MustParsePrefix("172.17.5.0/24")
	noUnderlay := testSelf()
	noUnderlay.Underlay = nil
	if err := Check(&p, wide, noUnderlay); err == nil || !strings.Contains(err.Error(), "overlaps 172.17.0.0/16") {
		t.Errorf("subnet on the underlay's network: Check = %v, want refused for 172.17.0.0/16", err)
	}
	// Without a Network (backend/vxlan), only a /0 counts as covering it.
	self := &Self{Foreign: []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("172.16.0.0/12")}}
	p = valid()
	if err := Check(&p, Network{}, self); err == nil || !strings.Contains(err.Error(), "172.16.0.0/12") {
		t.Errorf("zero Network: Check = %v, want the /12 route named", err)
	}
}

// TestUnderlay: a peer subnet may not sit on the uplink's networks, even
// when no foreign routes are known, nor contain this node's address, even
// when the underlay is not known (backend/vxlan); an underlay that covers
// all of Network says nothing about where containers live.
func TestUnderlay(t *testing.T) {
	wide := testNetwork
	wide.SubnetMax = netip.MustParseAddr("172.31.255.0")
	self := testSelf()
	self.Foreign = nil
	p := valid()
	p.Subnet = netip.MustParsePrefix("172.17.5.0/24")
	if err := Check(&p, wide, self); err == nil || !strings.Contains(err.Error(), "subnet 172.17.5.0/24: overlaps the underlay 172.17.0.0/16") {
		t.Errorf("subnet on the underlay: Check = %v", err)
	}
	self.Underlay = []netip.Prefix{netip.MustParsePrefix("172.0.0.0/8")}
	if err := Check(&p, wide, self); err != nil {
		t.Errorf("underlay covering all of Network: Check = %v, want accepted", err)
	}

	backend := &Self{Subnet: netip.MustParsePrefix("172.16.28.0/24"), PublicIP: netip.MustParseAddr("172.17.42.31")}
	p.PublicIP = netip.MustParseAddr("10.1.2.3")
	for _, sub := range []string{"172.17.42.0/24", "172.17.0.0/16", "172.17.42.31/32"} {
		p.Subnet = netip.MustParsePrefix(sub)
		err := Check(&p, Network{}, backend)
		if err == nil || !strings.Contains(err.Error(), "subnet "+sub+": contains this node's address 172.17.42.31") {
			t.Errorf("subnet %s over our address: Check = %v", sub, err)
		}
	}
}

// TestCheckLeaseAlone: the lease-only half judges nothing that depends on
// this node, and the zero Network checks no config, only the kinds.
func TestCheckLeaseAlone(t *testing.T) {
	p := valid()
	p.VtepMAC = ownMAC
	p.PublicIP = netip.MustParseAddr("172.17.42.31")
	if err := CheckLease(&p, testNetwork); err != nil {
		t.Errorf("CheckLease judged this node's MAC or address: %v", err)
	}
	if err := CheckAgainst(&p, testNetwork, testSelf()); err == nil {
		t.Error("CheckAgainst accepted this node's own address and MAC")
	}
	p = valid()
	p.Subnet = netip.MustParsePrefix("10.1.2.0/26")
	if err := Check(&p, Network{}, &Self{}); err != nil {
		t.Errorf("zero Network and Self refused a unicast subnet: %v", err)
	}
	p.Subnet = netip.MustParsePrefix("0.0.0.0/0")
	if err := Check(&p, Network{}, &Self{}); err == nil {
		t.Error("zero Network accepted the default route as a peer subnet")
	}
}

func TestBlock(t *testing.T) {
	for _, c := range []struct {
		n    Network
		addr string
		want string // "" for none
	}{
		{testNetwork, "172.17.42.32", "172.17.42.0/24"},
		{testNetwork, "::ffff:172.16.78.9", "172.16.78.0/24"},
		{testNetwork, "172.16.0.0", "172.16.0.0/24"},
		{testNetwork, "172.31.255.255", "172.31.255.0/24"},
		{testNetwork, "172.32.0.1", ""},
		{testNetwork, "10.0.0.1", ""},
		{testNetwork, "2001:db8::1", ""},
		{Network{}, "172.16.78.9", ""},
		{Network{Prefix: testNetwork.Prefix}, "172.16.78.9", ""},               // no SubnetLen
		{Network{Prefix: testNetwork.Prefix, SubnetLen: 8}, "172.16.78.9", ""}, // wider than Network
	} {
		b, ok := c.n.Block(netip.MustParseAddr(c.addr))
		got := ""
		if ok {
			got = b.String()
		}
		if got != c.want {
			t.Errorf("%v.Block(%s) = %q, want %q", c.n.Prefix, c.addr, got, c.want)
		}
	}
}
