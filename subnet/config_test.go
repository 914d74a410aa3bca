package subnet

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseConfigDefaults(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network":"172.16.0.0/12","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Network: netip.MustParsePrefix("172.16.0.0/12"), SubnetLen: 24,
		SubnetMin: netip.MustParseAddr("172.16.1.0"), SubnetMax: netip.MustParseAddr("172.31.255.0"),
		Backend: BackendConfig{Type: "vxlan", VNI: 1, Port: 8472},
	}
	if c != want {
		t.Fatalf("got %+v\nwant %+v", c, want)
	}
	// Round trip.
	c2, err := ParseConfig(c.JSON())
	if err != nil || c2 != c {
		t.Fatalf("round trip: %+v %v (json %s)", c2, err, c.JSON())
	}
	// Small network: SubnetLen = netlen+2; lowercase names; unknown fields ignored.
	c, err = ParseConfig([]byte(`{"network":"10.0.0.0/26","subnetlen":0,"Whatever":[1,2],"EnableIPv6":false,"backend":{"type":"vxlan","vni":7,"port":4789,"mtu":1400,"GBP":true}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.SubnetLen != 28 || c.SubnetMin != netip.MustParseAddr("10.0.0.16") || c.SubnetMax != netip.MustParseAddr("10.0.0.48") ||
		c.Backend != (BackendConfig{"vxlan", 7, 4789, 1400, false}) {
		t.Fatalf("got %+v", c)
	}
	// No Backend at all: vxlan defaults (flannel would pick udp).
	c, err = ParseConfig([]byte(`{"Network":"10.0.0.0/16"}`))
	if err != nil || c.Backend != (BackendConfig{"vxlan", 1, 8472, 0, false}) {
		t.Fatalf("got %+v %v", c, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	cases := []struct{ in, want string }{
		{`not json`, "config: not a JSON object"},
		{`[]`, "config: not a JSON object"},
		{`{}`, "config: Network: missing"},
		{`{"Network":null}`, "config: Network: missing"},
		{`{"Network":12}`, `config: Network 12: must be a string`},
		{`{"Network":"10.0.0.0"}`, `Network "10.0.0.0": not a CIDR prefix`},
		{`{"Network":"10.1.0.0/8"}`, `host bits set (did you mean 10.0.0.0/8?)`},
		{`{"Network":"fd00::/48"}`, `Network "fd00::/48": must be IPv4`},
		{`{"Network":"10.0.0.0/29"}`, `Network "10.0.0.0/29": too small`},
		{`{"Network":"172.16.0.0/12","SubnetLen":33}`, `config: SubnetLen 33: must be an integer between 14 (Network's prefix length + 2) and 30`},
		{`{"Network":"172.16.0.0/12","SubnetLen":13}`, `SubnetLen 13: must be an integer between 14`},
		{`{"Network":"172.16.0.0/12","SubnetLen":"24"}`, `SubnetLen "24": must be an integer`},
		{`{"Network":"172.16.0.0/12","SubnetLen":24.5}`, `SubnetLen 24.5: must be an integer`},
		{`{"Network":"172.16.0.0/12","SubnetLen":1e400}`, `SubnetLen 1e400: must be an integer`},
		{`{"Network":"172.16.0.0/12","SubnetLen":99999999999999999999999}`, `SubnetLen 99999999999999999999999: must be an integer`},
		{`{"Network":"172.16.0.0/12","SubnetMin":"10.0.0.0"}`, `SubnetMin "10.0.0.0": outside Network 172.16.0.0/12`},
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.16.1.1"}`, `SubnetMin "172.16.1.1": not on a /24 boundary (did you mean 172.16.1.0?)`},
		{`{"Network":"172.16.0.0/12","SubnetMax":"banana"}`, `SubnetMax "banana": not an IPv4 address`},
		{`{"Network":"172.16.0.0/12","SubnetMax":true}`, `SubnetMax true: must be a string`},
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.20.0.0","SubnetMax":"172.19.0.0"}`, `SubnetMin 172.20.0.0 is above SubnetMax 172.19.0.0`},
		{`{"Network":"172.16.0.0/12","Backend":{"Type":"udp"}}`, `Backend.Type "udp": only "vxlan" is supported`},
		{`{"Network":"172.16.0.0/12","Backend":"vxlan"}`, `Backend "vxlan": must be an object`},
		{`{"Network":"172.16.0.0/12","Backend":{"VNI":0}}`, `Backend.VNI 0: must be an integer between 1 and 16777215`},
		{`{"Network":"172.16.0.0/12","Backend":{"VNI":16777216}}`, `Backend.VNI 16777216`},
		{`{"Network":"172.16.0.0/12","Backend":{"VNI":-1}}`, `Backend.VNI -1`},
		{`{"Network":"172.16.0.0/12","Backend":{"Port":70000}}`, `Backend.Port 70000`},
		{`{"Network":"172.16.0.0/12","Backend":{"MTU":100}}`, `Backend.MTU 100: must be 0 (auto) or at least 576`},
		{`{"Network":"172.16.0.0/12","EnableIPv6":true}`, `config: IPv6Network: missing`},
		{`{"Network":"172.16.0.0/12","IPv6Network":"fd42::/48"}`, `IPv6Network "fd42::/48": set although EnableIPv6 is not true`},
		{`{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"172.16.0.0/12"}`, `IPv6Network "172.16.0.0/12": must be IPv6`},
		{`{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"fe80::/48"}`, `overlaps fe80::/10 (link-local)`},
		{`{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"fd42::1/48"}`, `host bits set (did you mean fd42::/48?)`},
		{`{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"fd42::/48","IPv6SubnetLen":40}`, `IPv6SubnetLen 40: must be an integer between 50`},
		{`{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"fd42::/48","IPv6SubnetMin":"fd42:0:0:1::1"}`, `IPv6SubnetMin "fd42:0:0:1::1": not on a /64 boundary`},
		{`{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"fd42::/48","IPv6SubnetMax":"172.16.0.0"}`, `IPv6SubnetMax "172.16.0.0": not an IPv6 address`},
		{`{"EnableIPv4":false,"EnableIPv6":true,"Network":"172.16.0.0/12","IPv6Network":"fd42::/48"}`, `Network "172.16.0.0/12": set although EnableIPv4 is false`},
		{`{"Network":"172.16.0.0/12","EnableIPv6":"yes"}`, `EnableIPv6 "yes": must be true or false`},
		{`{"EnableIPv4":false}`, `EnableIPv4 false: with EnableIPv6 false too, the network has no address family`},
		{`{"Network":"0.0.0.0/0"}`, `Network "0.0.0.0/0": too large: the prefix length must be at least 8`},
		{`{"Network":"10.0.0.0/7"}`, `Network "10.0.0.0/7": too large`},
		{`{"Network":"128.0.0.0/1"}`, `too large`},
		{`{"Network":"0.0.0.0/8"}`, `Network "0.0.0.0/8": overlaps 0.0.0.0/8`},
		{`{"Network":"127.0.0.0/8"}`, `Network "127.0.0.0/8": overlaps 127.0.0.0/8 (loopback)`},
		{`{"Network":"127.1.0.0/16"}`, `(loopback)`},
		{`{"Network":"169.254.0.0/16"}`, `overlaps 169.254.0.0/16 (link-local)`},
		{`{"Network":"169.0.0.0/8"}`, `(link-local)`},
		{`{"Network":"224.0.0.0/8"}`, `overlaps 224.0.0.0/4 (multicast)`},
		{`{"Network":"239.255.0.0/16"}`, `(multicast)`},
		{`{"Network":"240.0.0.0/8"}`, `overlaps 240.0.0.0/4 (reserved`},
		{`{"Network":"255.255.255.0/24"}`, `overlaps 240.0.0.0/4`},
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.16.5.0","SubnetMax":"172.16.5.0"}`, `leaves 1 subnet, fewer than 2`},
		{`{"Network":"10.0.0.0/26","SubnetLen":28,"SubnetMin":"10.0.0.48"}`, `SubnetLen 28 with SubnetMin 10.0.0.48 and SubnetMax 10.0.0.48 leaves 1 subnet`},
		{`{"Network":"10.0.0.0/8"} ` + strings.Repeat(" ", MaxValueSize), `config: 65561 bytes, over the 65536-byte limit`},
	}
	for _, c := range cases {
		_, err := ParseConfig([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("ParseConfig(%s) = %v, want error containing %q", c.in, err, c.want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	for _, s := range []string{
		`{"Network":"172.16.0.0/12","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`,
		`{"Network":"10.0.0.0/26"}`,
		`{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.0.0"}`,
		`{"Network":"172.16.0.0/12","Backend":{"Type":"udp"}}`,
		`{"network":1}`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "config: ") {
				t.Fatalf("error without prefix: %v", err)
			}
			return
		}
		// A parsed config is internally consistent and round-trips.
		if c.SubnetLen < c.Network.Bits()+2 || c.SubnetLen > 30 || !c.Network.Contains(c.SubnetMin) ||
			!c.Network.Contains(c.SubnetMax) || c.SubnetMax.Less(c.SubnetMin) || c.Backend.VNI == 0 {
			t.Fatalf("inconsistent config %+v from %q", c, data)
		}
		c2, err := ParseConfig(c.JSON())
		if err != nil || c2 != c {
			t.Fatalf("round trip of %+v: %+v %v", c, c2, err)
		}
	})
}

func TestParseConfigDirectRouting(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network":"172.16.0.0/12","Backend":{"Type":"vxlan","DirectRouting":true}}`))
	if err != nil || !c.Backend.DirectRouting {
		t.Fatalf("%+v, %v", c, err)
	}
	if c2, err := ParseConfig(c.JSON()); err != nil || c2 != c {
		t.Errorf("round trip: %+v, %v", c2, err)
	}
	if _, err := ParseConfig([]byte(`{"Network":"172.16.0.0/12","Backend":{"DirectRouting":"yes"}}`)); err == nil ||
		!strings.Contains(err.Error(), `Backend.DirectRouting "yes": must be true or false`) {
		t.Errorf("bad DirectRouting: %v", err)
	}
}

// Dual-stack and IPv6-only configs, with flannel's IPv6 defaults.
func TestParseConfigIPv6(t *testing.T) {
	c, err := ParseConfig([]byte(`{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"fd42::/48"}`))
	if err != nil {
		t.Fatal(err)
	}
	want6 := Family{Network: netip.MustParsePrefix("fd42::/48"), SubnetLen: 64,
		SubnetMin: netip.MustParseAddr("fd42:0:0:1::"), SubnetMax: netip.MustParseAddr("fd42:0:0:ffff::")}
	if !c.Dual() || c.IPv6 != want6 || c.Network != netip.MustParsePrefix("172.16.0.0/12") || !c.EnableIPv4() || !c.EnableIPv6() {
		t.Errorf("dual-stack: %+v", c)
	}
	// A network smaller than /62 gets subnets two bits longer, as in flannel.
	c, err = ParseConfig([]byte(`{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"fd42::/120"}`))
	if err != nil || c.IPv6.SubnetLen != 122 {
		t.Errorf("IPv6Network /120: SubnetLen %d, %v; want 122", c.IPv6.SubnetLen, err)
	}
	c, err = ParseConfig([]byte(`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd42::/48","IPv6SubnetLen":56,"Backend":{"Type":"vxlan","VNI":4}}`))
	if err != nil {
		t.Fatal(err)
	}
	if c.Dual() || c.EnableIPv4() || !c.EnableIPv6() || c.Network != netip.MustParsePrefix("fd42::/48") || c.SubnetLen != 56 ||
		c.SubnetMin != netip.MustParseAddr("fd42:0:0:100::") || c.Backend.VNI != 4 {
		t.Errorf("IPv6-only: %+v", c)
	}
	// Both round-trip through JSON.
	for _, in := range []string{
		`{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"fd42::/48"}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd42::/48"}`,
	} {
		c, _ := ParseConfig([]byte(in))
		c2, err := ParseConfig(c.JSON())
		if err != nil || c2 != c {
			t.Errorf("%s: round trip through %s gives %+v, %v", in, c.JSON(), c2, err)
		}
	}
}
