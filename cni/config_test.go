package cni

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/weft-net/weft/network"
)

// nodeEnv is REFERENCE.md's node1 as weftd writes it, masquerading.
var nodeEnv = subnetEnv{
	network: netip.MustParsePrefix("172.16.0.0/12"),
	subnet:  netip.MustParsePrefix("172.16.28.1/24"),
	mtu:     1450,
	ipMasq:  true,
}

// delegateJSON runs conf through parseConf and delegateConf and returns the
// delegate's config as compact JSON with sorted keys.
func delegateJSON(t *testing.T, conf string, env subnetEnv) (string, error) {
	t.Helper()
	n, err := parseConf([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	d, err := delegateConf(n, env, n.CNIVersion)
	if err != nil {
		return "", err
	}
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return string(b), nil
}

func TestDelegateConf(t *testing.T) {
	noMasq := nodeEnv
	noMasq.ipMasq = false
	for _, tc := range []struct {
		name, conf string
		env        subnetEnv
		want       string
	}{{
		name: "defaults",
		conf: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}`,
		env:  nodeEnv,
		want: `{"bridge":"cni0","cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"172.16.28.0/24"}]],"routes":[{"dst":"172.16.0.0/12","gw":"172.16.28.1"}],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"weft","type":"bridge"}`,
	}, {
		name: "weftd does not masquerade, so the bridge does",
		conf: `{"cniVersion":"0.3.1","name":"weft","type":"weft-cni"}`,
		env:  noMasq,
		want: `{"bridge":"cni0","cniVersion":"0.3.1","hairpinMode":true,"ipMasq":true,"ipam":{"ranges":[[{"subnet":"172.16.28.0/24"}]],"routes":[{"dst":"172.16.0.0/12","gw":"172.16.28.1"}],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"weft","type":"bridge"}`,
	}, {
		name: "flannel's kube-flannel conflist entry: default gateway adds a default route via the bridge",
		conf: `{"cniVersion":"0.3.1","name":"cbr0","type":"weft-cni","delegate":{"hairpinMode":true,"isDefaultGateway":true}}`,
		env:  nodeEnv,
		want: `{"bridge":"cni0","cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"172.16.28.0/24"}]],"routes":[{"dst":"172.16.0.0/12","gw":"172.16.28.1"},{"dst":"0.0.0.0/0","gw":"172.16.28.1"}],"type":"host-local"},"isDefaultGateway":true,"isGateway":true,"mtu":1450,"name":"cbr0","type":"bridge"}`,
	}, {
		name: "the user's delegate fields win; unknown fields are kept",
		conf: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","delegate":{"bridge":"br-pods","mtu":1400,"ipMasq":true,"hairpinMode":false,"isGateway":false,"vlan":7,"x-custom":{"a":1}}}`,
		env:  nodeEnv,
		want: `{"bridge":"br-pods","cniVersion":"1.0.0","hairpinMode":false,"ipMasq":true,"ipam":{"ranges":[[{"subnet":"172.16.28.0/24"}]],"routes":[{"dst":"172.16.0.0/12","gw":"172.16.28.1"}],"type":"host-local"},"isGateway":false,"mtu":1400,"name":"weft","type":"bridge","vlan":7,"x-custom":{"a":1}}`,
	}, {
		name: "ipam: dataDir and routes kept, ranges from subnet.env, an already listed network not repeated",
		conf: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","ipam":{"dataDir":"/srv/ipam","ranges":[[{"subnet":"10.9.0.0/16"}]],"routes":[{"dst":"192.0.2.0/24","gw":"172.16.28.254"},{"dst":"172.16.0.0/12","gw":"172.16.28.1"}]}}`,
		env:  nodeEnv,
		want: `{"bridge":"cni0","cniVersion":"1.0.0","hairpinMode":true,"ipMasq":false,"ipam":{"dataDir":"/srv/ipam","ranges":[[{"subnet":"172.16.28.0/24"}]],"routes":[{"dst":"192.0.2.0/24","gw":"172.16.28.254"},{"dst":"172.16.0.0/12","gw":"172.16.28.1"}],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"weft","type":"bridge"}`,
	}, {
		name: "runtimeConfig (port mappings, bandwidth) and dns pass through",
		conf: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","dns":{"nameservers":["172.16.28.1"]},"runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}],"bandwidth":{"ingressRate":1000000,"ingressBurst":2000000}}}`,
		env:  nodeEnv,
		want: `{"bridge":"cni0","cniVersion":"1.0.0","dns":{"nameservers":["172.16.28.1"]},"hairpinMode":true,"ipMasq":false,"ipam":{"ranges":[[{"subnet":"172.16.28.0/24"}]],"routes":[{"dst":"172.16.0.0/12","gw":"172.16.28.1"}],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"weft","runtimeConfig":{"bandwidth":{"ingressBurst":2000000,"ingressRate":1000000},"portMappings":[{"containerPort":80,"hostPort":8080,"protocol":"tcp"}]},"type":"bridge"}`,
	}, {
		name: "promiscuous mode asked for: no default hairpin mode, which the bridge refuses with it",
		conf: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","delegate":{"promiscMode":true}}`,
		env:  nodeEnv,
		want: `{"bridge":"cni0","cniVersion":"1.0.0","ipMasq":false,"ipam":{"ranges":[[{"subnet":"172.16.28.0/24"}]],"routes":[{"dst":"172.16.0.0/12","gw":"172.16.28.1"}],"type":"host-local"},"isGateway":true,"mtu":1450,"name":"weft","promiscMode":true,"type":"bridge"}`,
	}, {
		name: "another delegate type gets no bridge fields",
		conf: `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","delegate":{"type":"ptp"}}`,
		env:  nodeEnv,
		want: `{"cniVersion":"1.0.0","ipMasq":false,"ipam":{"ranges":[[{"subnet":"172.16.28.0/24"}]],"routes":[{"dst":"172.16.0.0/12","gw":"172.16.28.1"}],"type":"host-local"},"mtu":1450,"name":"weft","type":"ptp"}`,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := delegateJSON(t, tc.conf, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("delegate config\n got %s\nwant %s", got, tc.want)
			}
		})
	}
}

func TestDelegateConfErrors(t *testing.T) {
	for _, tc := range []struct{ conf, want string }{
		{`{"name":"w","delegate":{"type":7}}`, "delegate.type: want a plugin name, got 7"},
		{`{"name":"w","delegate":{"isDefaultGateway":"yes"}}`, "delegate.isDefaultGateway: want true or false, got yes"},
		{`{"name":"w","ipam":{"routes":"10.0.0.0/8"}}`, "ipam.routes: want a list of routes, got 10.0.0.0/8"},
		{`{"name":"w","ipam":{"routes":[{"dst":"10.0.0.0"}]}}`, `ipam.routes[0]: want {"dst": "address/length"}`},
	} {
		_, err := delegateJSON(t, tc.conf, nodeEnv)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got error %v, want one containing %q", tc.conf, err, tc.want)
		}
	}
}

func TestParseConfDefaults(t *testing.T) {
	n, err := parseConf([]byte(`{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}`))
	if err != nil {
		t.Fatal(err)
	}
	if n.SubnetFile != "/run/flannel/subnet.env" || n.DataDir != "/var/lib/cni/weft" {
		t.Errorf("defaults: subnetFile %q, dataDir %q", n.SubnetFile, n.DataDir)
	}
	if _, err := parseConf([]byte(`{"name":"weft","subnetFile":5}`)); err == nil {
		t.Error("a number for subnetFile was accepted")
	}
}

func TestParseSubnetEnv(t *testing.T) {
	env, err := parseSubnetEnv([]byte("# flannel\nFLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\nFLANNEL_IPV6_NETWORK=fd00::/56\n"))
	if err != nil {
		t.Fatal(err)
	}
	if env != nodeEnv {
		t.Errorf("got %+v, want %+v", env, nodeEnv)
	}
	if env.lease().String() != "172.16.28.0/24" || env.gateway().String() != "172.16.28.1" {
		t.Errorf("lease %v, gateway %v", env.lease(), env.gateway())
	}
	for in, want := range map[string]string{
		"FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_MTU=1450\n":                   "missing FLANNEL_IPMASQ",
		"FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n": `line 2: FLANNEL_SUBNET "172.16.28.1": not an address/length`,
		"FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_MTU=9\nFLANNEL_IPMASQ=true\n": `line 3: FLANNEL_MTU "9": outside 68..65535`,
		"FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_NETWORK=10.0.0.0/8\n":                                        "line 2: FLANNEL_NETWORK set again (first on line 1)",
		"garbage\n": `line 1: "garbage" is not KEY=VALUE`,
		"FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=maybe\n": `line 4: FLANNEL_IPMASQ "maybe": not true or false`,
	} {
		if _, err := parseSubnetEnv([]byte(in)); err == nil || err.Error() != want {
			t.Errorf("%q: got error %v, want %q", in, err, want)
		}
	}
}

// FuzzSubnetEnv holds the plugin's parser to weftd's: the same files are
// accepted, with the same values.
func FuzzSubnetEnv(f *testing.F) {
	f.Add([]byte("FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"))
	f.Add([]byte("# c\n\nFLANNEL_NETWORK = 10.0.0.0/8\nX=1\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=68\nFLANNEL_IPMASQ=0\n"))
	f.Add([]byte("FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_NETWORK=172.16.0.0/12\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		mine, err1 := parseSubnetEnv(b)
		theirs, err2 := network.ParseSubnetEnv(b)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("%q: weft-cni says %v, weftd says %v", b, err1, err2)
		}
		if err1 != nil {
			return
		}
		if mine.network != theirs.Network || mine.subnet != theirs.Subnet || mine.mtu != theirs.MTU || mine.ipMasq != theirs.IPMasq {
			t.Fatalf("%q: weft-cni read %+v, weftd %+v", b, mine, theirs)
		}
	})
}

// FuzzConf feeds arbitrary configs to the plugin's config path: it never
// panics, and whatever it accepts becomes a delegate config with the node's
// range and the overlay's route.
func FuzzConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}`))
	f.Add([]byte(`{"cniVersion":"0.3.1","name":"cbr0","type":"weft-cni","delegate":{"hairpinMode":true,"isDefaultGateway":true}}`))
	f.Add([]byte(`{"name":"w","delegate":{"type":"ptp","mtu":9000},"ipam":{"dataDir":"/x","routes":[{"dst":"10.0.0.0/8"}]},"runtimeConfig":{"portMappings":[]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		n, err := parseConf(b)
		if err != nil {
			return
		}
		d, err := delegateConf(n, nodeEnv, "1.0.0")
		if err != nil {
			return
		}
		out, err := json.Marshal(d)
		if err != nil {
			t.Fatalf("%q: delegate config does not encode: %v", b, err)
		}
		var got struct {
			IPAM struct {
				Ranges [][]struct {
					Subnet string `json:"subnet"`
				} `json:"ranges"`
				Routes []struct {
					Dst string `json:"dst"`
				} `json:"routes"`
			} `json:"ipam"`
		}
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%q gave delegate config %s: %v", b, out, err)
		}
		if r := got.IPAM.Ranges; len(r) != 1 || len(r[0]) != 1 || r[0][0].Subnet != "172.16.28.0/24" {
			t.Fatalf("%q gave ranges %v, want the lease alone", b, r)
		}
		covered := false
		for _, r := range got.IPAM.Routes {
			if p, err := netip.ParsePrefix(r.Dst); err == nil && p.Masked() == nodeEnv.network {
				covered = true
			}
		}
		if !covered {
			t.Fatalf("%q gave routes %v, none to the overlay", b, got.IPAM.Routes)
		}
	})
}
