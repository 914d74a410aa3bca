package network

import (
	"errors"
	"io/fs"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var referenceEnv = SubnetEnv{
	Network: netip.MustParsePrefix("172.16.0.0/12"),
	Subnet:  netip.MustParsePrefix("172.16.28.1/24"),
	MTU:     1450,
	IPMasq:  true,
}

const referenceEnvText = `FLANNEL_NETWORK=172.16.0.0/12
FLANNEL_SUBNET=172.16.28.1/24
FLANNEL_MTU=1450
FLANNEL_IPMASQ=true
`

func TestWriteSubnetEnvExactContent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "flannel", "subnet.env")
	if err := WriteSubnetEnv(path, referenceEnv); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != referenceEnvText {
		t.Errorf("content:\n%s\nwant:\n%s", b, referenceEnvText)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
	// Overwrite and check no temporary file is left behind.
	env := referenceEnv
	env.IPMasq = false
	if err := WriteSubnetEnv(path, env); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != "subnet.env" {
		t.Errorf("directory holds %v, want only subnet.env", ents)
	}
	got, err := ReadSubnetEnv(path)
	if err != nil || got != env {
		t.Errorf("read back %+v, %v; want %+v", got, err, env)
	}
}

func TestWriteSubnetEnvRejectsInvalid(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	for _, env := range []SubnetEnv{
		{},
		{Network: referenceEnv.Network, MTU: 1450},
		{Network: referenceEnv.Network, Subnet: referenceEnv.Subnet, MTU: 0},
	} {
		if err := WriteSubnetEnv(path, env); err == nil {
			t.Errorf("WriteSubnetEnv(%+v) succeeded", env)
		}
	}
	if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("a rejected write left a file: %v", err)
	}
}

func TestReadSubnetEnvMissingFile(t *testing.T) {
	_, err := ReadSubnetEnv(filepath.Join(t.TempDir(), "nope.env"))
	if !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("err = %v, want fs.ErrNotExist", err)
	}
}

func TestReadSubnetEnvErrorNamesFileLineKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	os.WriteFile(path, []byte("FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=x\n"), 0o644)
	_, err := ReadSubnetEnv(path)
	want := path + ` line 2: FLANNEL_SUBNET "x": not an address/length`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v\nwant %s", err, want)
	}
}

var dualEnv = SubnetEnv{Network: referenceEnv.Network, Subnet: referenceEnv.Subnet, MTU: 1450, IPMasq: true,
	Network6: netip.MustParsePrefix("fd00::/56"), Subnet6: netip.MustParsePrefix("fd00:0:0:1::1/64")}

func TestParseSubnetEnv(t *testing.T) {
	tests := []struct {
		name, in string
		want     SubnetEnv
		err      string // substring; "" means success
	}{
		{name: "reference", in: referenceEnvText, want: referenceEnv},
		{name: "tolerant", want: dualEnv, in: "# written by flannel\n\n" +
			"  FLANNEL_NETWORK = 172.16.0.0/12  \r\nFLANNEL_IPV6_NETWORK=fd00::/56\n" +
			"FLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\n" +
			"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true"},
		{name: "ipmasq false", in: strings.Replace(referenceEnvText, "=true", "=false", 1),
			want: SubnetEnv{Network: referenceEnv.Network, Subnet: referenceEnv.Subnet, MTU: 1450}},
		{name: "empty", in: "", err: "missing FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU, FLANNEL_IPMASQ"},
		{name: "missing mtu", in: "FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_IPMASQ=true\n",
			err: "missing FLANNEL_MTU"},
		{name: "no equals", in: "FLANNEL_NETWORK\n", err: `line 1: "FLANNEL_NETWORK": not KEY=VALUE`},
		{name: "bad mtu", in: "FLANNEL_MTU=big\n", err: `line 1: FLANNEL_MTU "big": not a number`},
		{name: "tiny mtu", in: "FLANNEL_MTU=10\n", err: `FLANNEL_MTU "10": outside 68..65535`},
		{name: "bad bool", in: "\nFLANNEL_IPMASQ=yes\n", err: `line 2: FLANNEL_IPMASQ "yes": not true or false`},
		{name: "quoted", in: `FLANNEL_NETWORK="172.16.0.0/12"`, err: "not an address/length"},
		{name: "duplicate", in: "FLANNEL_MTU=1450\nFLANNEL_MTU=1400\n", err: "line 2: FLANNEL_MTU set again (first on line 1)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseSubnetEnv([]byte(tt.in))
			switch {
			case tt.err == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
				t.Fatalf("err = %v, want it to contain %q", err, tt.err)
			case got != tt.want:
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestSubnetEnvLease(t *testing.T) {
	if got, want := referenceEnv.Lease(), netip.MustParsePrefix("172.16.28.0/24"); got != want {
		t.Errorf("Lease() = %v, want %v", got, want)
	}
}

// TestSubnetEnvRoundTrip: whatever weft writes, it reads back unchanged.
func TestSubnetEnvRoundTrip(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	dir := t.TempDir()
	for i := range 200 {
		var a4 [4]byte
		var a16 [16]byte
		for j := range a16 {
			a16[j] = byte(r.Uint32())
		}
		copy(a4[:], a16[:4])
		var net, sub netip.Prefix
		if i%2 == 0 {
			net = netip.PrefixFrom(netip.AddrFrom4(a4), r.IntN(33)).Masked()
			sub = netip.PrefixFrom(netip.AddrFrom4(a4).Next(), r.IntN(33))
		} else {
			net = netip.PrefixFrom(netip.AddrFrom16(a16), r.IntN(129)).Masked()
			sub = netip.PrefixFrom(netip.AddrFrom16(a16), r.IntN(129))
		}
		in := SubnetEnv{Network: net, Subnet: sub, MTU: minMTU + r.IntN(maxMTU-minMTU+1), IPMasq: r.IntN(2) == 0}
		if i%3 == 0 { // dual-stack, or every third of those IPv6-only
			in.Network6 = netip.PrefixFrom(netip.AddrFrom16(a16), 48).Masked()
			in.Subnet6 = netip.PrefixFrom(netip.AddrFrom16(a16), 64)
			if i%9 == 0 {
				in.Network, in.Subnet = netip.Prefix{}, netip.Prefix{}
			}
		}
		path := filepath.Join(dir, "subnet.env")
		if err := WriteSubnetEnv(path, in); err != nil {
			t.Fatalf("writing %+v: %v", in, err)
		}
		out, err := ReadSubnetEnv(path)
		if err != nil || out != in {
			t.Fatalf("round trip of %+v gave %+v, %v", in, out, err)
		}
	}
}

// An IPv6-only subnet.env, as flannel writes it, has no FLANNEL_NETWORK.
func TestSubnetEnvIPv6Only(t *testing.T) {
	env, err := ParseSubnetEnv([]byte("FLANNEL_IPV6_NETWORK=fd42::/48\nFLANNEL_IPV6_SUBNET=fd42:0:0:1c::1/64\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n"))
	if err != nil || env.Lease() != netip.MustParsePrefix("fd42:0:0:1c::/64") || env.Lease6().IsValid() {
		t.Fatalf("%+v, %v", env, err)
	}
	for _, bad := range []string{
		"FLANNEL_IPV6_NETWORK=fd42::/48\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
		"FLANNEL_IPV6_NETWORK=10.0.0.0/8\nFLANNEL_IPV6_SUBNET=10.0.0.1/24\nFLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
		"FLANNEL_MTU=1430\nFLANNEL_IPMASQ=false\n",
	} {
		if _, err := ParseSubnetEnv([]byte(bad)); err == nil {
			t.Errorf("accepted %q", bad)
		}
	}
}

func FuzzReadSubnetEnv(f *testing.F) {
	f.Add([]byte(referenceEnvText))
	f.Add([]byte("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n" +
		"FLANNEL_IPV6_NETWORK=fd00::/56\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\n"))
	f.Add([]byte("# c\n\nFLANNEL_MTU=1450\nFLANNEL_MTU=9000\n"))
	f.Add([]byte("FLANNEL_SUBNET=x\n"))
	f.Add([]byte("=\n==\nFLANNEL_IPMASQ=1\r\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		env, err := ParseSubnetEnv(b)
		if err != nil {
			return
		}
		// Anything accepted must survive weft's own encoding unchanged.
		again, err := ParseSubnetEnv(env.encode())
		if err != nil {
			t.Fatalf("re-parsing %q: %v", env.encode(), err)
		}
		if again != env {
			t.Fatalf("round trip changed %+v into %+v", env, again)
		}
	})
}

// The etcd lease the node held its subnet with is written as weft's own line
// and read back; flannel's four lines are unchanged, and a file without it
// (written by flanneld or an older weft) reads as lease 0.
func TestSubnetEnvEtcdLease(t *testing.T) {
	path := filepath.Join(t.TempDir(), "subnet.env")
	env := SubnetEnv{Network: netip.MustParsePrefix("172.16.0.0/12"), Subnet: netip.MustParsePrefix("172.16.28.1/24"),
		MTU: 1450, IPMasq: true, EtcdLease: 0x694d9a1f2c3b4d5e}
	if err := WriteSubnetEnv(path, env); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	want := "FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\nWEFT_ETCD_LEASE=694d9a1f2c3b4d5e\n"
	if string(b) != want {
		t.Fatalf("subnet.env:\n%s\nwant:\n%s", b, want)
	}
	got, err := ReadSubnetEnv(path)
	if err != nil || got != env {
		t.Fatalf("read back %+v, %v; want %+v", got, err, env)
	}
	old, err := ParseSubnetEnv([]byte(want[:strings.Index(want, "WEFT")]))
	if err != nil || old.EtcdLease != 0 {
		t.Fatalf("file without the lease line: %+v, %v", old, err)
	}
	if _, err := ParseSubnetEnv([]byte(want + "WEFT_ETCD_LEASE=zz\n")); err == nil || !strings.Contains(err.Error(), "WEFT_ETCD_LEASE") {
		t.Fatalf("a bad lease line: %v, want an error naming it", err)
	}
}
