package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/network"
	"github.com/weft-net/weft/subnet"
)

const (
	dualConfig = `{"Network":"172.16.0.0/12","EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"vxlan"}}`
	v6Config   = `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"vxlan"}}`
)

// underlay6 is host n's IPv6 underlay address (ULA, inside the test's
// namespaces only).
func underlay6(n int) netip.Addr { return netip.MustParseAddr(fmt.Sprintf("fd00:17::%d", n)) }

// addHost6 adds host name with 172.17.42.<n>/16 and fd00:17::<n>/64 on eth0
// (no duplicate address detection, so the address is usable at once).
func (e *env) addHost6(name string, n int) *cluster.Host {
	e.t.Helper()
	h, err := e.c.AddHost(e.ctx, name, netip.MustParsePrefix(fmt.Sprintf("172.17.42.%d/16", n)))
	if err != nil {
		e.t.Fatal(err)
	}
	for _, cmd := range [][]string{
		{"sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"},
		{"ip", "addr", "add", underlay6(n).String() + "/64", "dev", "eth0", "nodad"},
	} {
		if out, err := h.Run(e.ctx, cmd...); err != nil {
			e.t.Fatalf("%s: %v: %v\n%s", name, cmd, err, out)
		}
	}
	return h
}

// addNode6 starts weftd on a host made by addHost6.
func (e *env) addNode6(name string, n int, extra ...string) *node {
	e.t.Helper()
	h := e.addHost6(name, n)
	nd := &node{Host: h, t: e.t, subnetFile: filepath.Join(e.c.Dir, name, "subnet.env")}
	nd.args = append([]string{filepath.Join(e.bin, "weftd"),
		"--etcd-endpoints", etcdURL,
		"--iface", "eth0",
		"--ip-masq",
		"--subnet-file", nd.subnetFile,
		"--log-level", "debug",
	}, extra...)
	nd.start()
	e.nodes = append(e.nodes, nd)
	return nd
}

// dualContainer is a container with an address of each family its host's
// subnet.env names (one, or both).
type dualContainer struct {
	*cluster.Container
	v4, v6 netip.Addr
}

// dockerUp6 sets docker0 up as Docker does from subnet.env with
// --fixed-cidr-v6: the IPv4 bridge address if any, and the IPv6 one.
func (n *node) dockerUp6() network.SubnetEnv {
	n.t.Helper()
	env := n.waitSubnetFile(30 * time.Second)
	ctx := context.Background()
	first, mtu := env.Subnet, env.MTU
	if !first.IsValid() {
		first = env.Subnet6
	}
	if err := n.SetupDocker0(ctx, first, mtu); err != nil {
		n.t.Fatal(err)
	}
	if env.Subnet.IsValid() && env.Subnet6.IsValid() {
		if out, err := n.Run(ctx, "ip", "addr", "replace", env.Subnet6.String(), "dev", "docker0", "nodad"); err != nil {
			n.t.Fatalf("docker0's IPv6 address: %v\n%s", err, out)
		}
	}
	return env
}

// addDualContainer adds a container at host number h of each subnet.
func (n *node) addDualContainer(env network.SubnetEnv, name string, h byte) dualContainer {
	n.t.Helper()
	ctx := context.Background()
	var c dualContainer
	nth := func(p netip.Prefix) netip.Addr {
		b := p.Masked().Addr().AsSlice()
		b[len(b)-1] = h
		a, _ := netip.AddrFromSlice(b)
		return a
	}
	if env.Subnet.IsValid() {
		c.v4 = nth(env.Subnet)
	}
	if env.Subnet6.IsValid() {
		c.v6 = nth(env.Subnet6)
	}
	first := c.v4
	if !first.IsValid() {
		first = c.v6
	}
	ct, err := n.AddContainer(ctx, name, first)
	if err != nil {
		n.t.Fatal(err)
	}
	c.Container = ct
	if c.v4.IsValid() && c.v6.IsValid() {
		for _, cmd := range [][]string{
			{"ip", "addr", "add", netip.PrefixFrom(c.v6, env.Subnet6.Bits()).String(), "dev", "eth0", "nodad"},
			{"ip", "-6", "route", "add", "default", "via", env.Subnet6.Addr().String(), "dev", "eth0"},
		} {
			if out, err := ct.Run(ctx, cmd...); err != nil {
				n.t.Fatalf("container %s: %v: %v\n%s", name, cmd, err, out)
			}
		}
	}
	return c
}

// flannelNode is a host that plays a flanneld node of a dual-stack network:
// its lease is in flannel's shape, written as flanneld v0.2x writes it, and
// its flannel.1 and flannel-v6.1 are programmed by hand as flanneld would.
type flannelNode struct {
	*cluster.Host
	sub4, sub6 netip.Prefix
	mac4, mac6 string
	ct         dualContainer
}

func (e *env) addFlannelNode(name string, n int) *flannelNode {
	e.t.Helper()
	f := &flannelNode{Host: e.addHost6(name, n),
		sub4: netip.MustParsePrefix("172.16.250.0/24"), sub6: netip.MustParsePrefix("fd42:0:0:fa::/64"),
		mac4: "0e:fa:00:00:00:04", mac6: "0e:fa:00:00:00:06"}
	ctx := e.ctx
	pub4, pub6 := fmt.Sprintf("172.17.42.%d", n), underlay6(n).String()
	for _, cmd := range [][]string{
		{"ip", "link", "add", "flannel.1", "address", f.mac4, "type", "vxlan", "id", "1", "local", pub4, "dev", "eth0", "dstport", "8472", "nolearning"},
		{"ip", "link", "add", "flannel-v6.1", "address", f.mac6, "type", "vxlan", "id", "1", "local", pub6, "dev", "eth0", "dstport", "8472", "nolearning"},
		{"ip", "addr", "add", "172.16.250.0/32", "dev", "flannel.1"},
		{"ip", "addr", "add", "fd42:0:0:fa::/128", "dev", "flannel-v6.1", "nodad"},
		{"ip", "link", "set", "flannel.1", "mtu", "1450", "up"},
		{"ip", "link", "set", "flannel-v6.1", "mtu", "1430", "up"},
		{"sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"},
	} {
		if out, err := f.Run(ctx, cmd...); err != nil {
			e.t.Fatalf("%s: %v: %v\n%s", name, cmd, err, out)
		}
	}
	value := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":"%s","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"},"BackendV6Data":{"VNI":1,"VtepMAC":"%s"}}`,
		pub4, pub6, f.mac4, f.mac6)
	if _, err := e.cli.Put(ctx, prefix+"/subnets/"+subnet.DualKeyName(f.sub4, f.sub6), value); err != nil {
		e.t.Fatal(err)
	}
	nd := &node{Host: f.Host, t: e.t}
	env := network.SubnetEnv{Subnet: netip.MustParsePrefix("172.16.250.1/24"), Subnet6: netip.MustParsePrefix("fd42:0:0:fa::1/64"), MTU: 1430}
	if err := f.SetupDocker0(ctx, env.Subnet, env.MTU); err != nil {
		e.t.Fatal(err)
	}
	if out, err := f.Run(ctx, "ip", "addr", "add", env.Subnet6.String(), "dev", "docker0", "nodad"); err != nil {
		e.t.Fatalf("%v\n%s", err, out)
	}
	f.ct = nd.addDualContainer(env, "c1", 5)
	return f
}

// program does what flanneld does for a peer's lease: a route, a permanent
// neighbour and an FDB entry per family.
func (f *flannelNode) program(t *testing.T, l subnet.Lease) {
	t.Helper()
	ctx := context.Background()
	cmds := [][]string{
		{"ip", "route", "replace", l.Subnet.String(), "via", l.Subnet.Addr().String(), "dev", "flannel.1", "onlink"},
		{"ip", "neigh", "replace", l.Subnet.Addr().String(), "lladdr", l.Attrs.VtepMAC.String(), "dev", "flannel.1", "nud", "permanent"},
		{"bridge", "fdb", "replace", l.Attrs.VtepMAC.String(), "dev", "flannel.1", "dst", l.Attrs.PublicIP.String()},
	}
	if l.Subnet6.IsValid() {
		cmds = append(cmds,
			[]string{"ip", "-6", "route", "replace", l.Subnet6.String(), "via", l.Subnet6.Addr().String(), "dev", "flannel-v6.1", "onlink"},
			[]string{"ip", "-6", "neigh", "replace", l.Subnet6.Addr().String(), "lladdr", l.Attrs.VtepMAC6.String(), "dev", "flannel-v6.1", "nud", "permanent"},
			[]string{"bridge", "fdb", "replace", l.Attrs.VtepMAC6.String(), "dev", "flannel-v6.1", "dst", l.Attrs.PublicIP6.String()})
	}
	for _, cmd := range cmds {
		if out, err := f.Run(ctx, cmd...); err != nil {
			t.Fatalf("%s: %v: %v\n%s", f.Name, cmd, err, out)
		}
	}
}

// lease reads node n's lease back from etcd, as a flanneld would.
func (e *env) lease(t *testing.T, n *node) subnet.Lease {
	t.Helper()
	env := n.waitSubnetFile(30 * time.Second)
	resp, err := e.cli.Get(e.ctx, prefix+"/subnets/"+subnet.DualKeyName(env.Lease(), env.Lease6()))
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("%s's key for %v & %v: %v (%d keys)", n.Name, env.Lease(), env.Lease6(), err, len(resp.Kvs))
	}
	a, err := subnet.ParseLeaseAttrs(resp.Kvs[0].Value)
	if err != nil {
		t.Fatal(err)
	}
	return subnet.Lease{Subnet: env.Lease(), Subnet6: env.Lease6(), Attrs: a}
}

func pingAll(t *testing.T, ctx context.Context, from []dualContainer, to []dualContainer) {
	t.Helper()
	for _, a := range from {
		for _, b := range to {
			if a.NS == b.NS {
				continue
			}
			for _, dst := range []netip.Addr{b.v4, b.v6} {
				if !dst.IsValid() {
					continue
				}
				if err := cluster.Ping(ctx, a.NS, dst, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
					t.Errorf("%s -> %s (%v): %v", a.NS, b.NS, dst, err)
				}
			}
		}
	}
}

// TestDualStack: two weftd nodes and a node with flannel's dual-stack lease
// shape (programmed as flanneld does) in a dual-stack network: every pod
// reaches every other pod over IPv4 and IPv6, weftd's IPv6 entries are
// flannel-v6.1's route, permanent neighbour and FDB entry, subnet.env and
// docker-opts carry the IPv6 subnet, and a deleted IPv6 entry is repaired.
func TestDualStack(t *testing.T) {
	e := newBareEnv(t)
	ctx := e.ctx
	e.startEtcd()
	e.cli = e.client()
	if _, err := e.cli.Put(ctx, prefix+"/config", dualConfig); err != nil {
		t.Fatal(err)
	}
	fl := e.addFlannelNode("fl3", 33)
	n1, n2 := e.addNode6("node1", 31), e.addNode6("node2", 32)
	var pods []dualContainer
	for _, n := range []*node{n1, n2} {
		env := n.dockerUp6()
		if !env.Subnet.IsValid() || !env.Subnet6.IsValid() || env.Network6 != mustPrefix("fd42::/48") || env.MTU != 1430 {
			t.Fatalf("%s subnet.env: %+v; want both subnets and the IPv6 device's MTU", n.Name, env)
		}
		pods = append(pods, n.addDualContainer(env, "c1", 5))
	}
	for _, n := range []*node{n1, n2} {
		fl.program(t, e.lease(t, n))
	}
	pods = append(pods, fl.ct)
	// weftd programmed the flannel node's v6 half.
	e.eventually("node1's IPv6 route to the flannel node", 10*time.Second, func() (bool, string) {
		out, _ := n1.IP(ctx, "-6", "route", "show", "dev", "flannel-v6.1")
		return strings.Contains(out, "fd42:0:0:fa::/64 via fd42:0:0:fa:: ") && strings.Contains(out, "onlink"), out
	})
	if out, _ := n1.IP(ctx, "-6", "neigh", "show", "dev", "flannel-v6.1"); !strings.Contains(out, "fd42:0:0:fa:: lladdr "+fl.mac6+" PERMANENT") {
		t.Errorf("node1's IPv6 neighbours:\n%s", out)
	}
	if out, _ := n1.Run(ctx, "bridge", "fdb", "show", "dev", "flannel-v6.1"); !strings.Contains(out, fl.mac6+" dst fd00:17::33 self permanent") {
		t.Errorf("node1's flannel-v6.1 FDB:\n%s", out)
	}
	if out, _ := n1.IP(ctx, "-d", "link", "show", "flannel-v6.1"); !strings.Contains(out, "mtu 1430") || !strings.Contains(out, "nolearning") {
		t.Errorf("flannel-v6.1:\n%s", out)
	}
	pingAll(t, ctx, pods, pods)
	// The VXLAN ingress filter's IPv6 twin admits the peers' PublicIPv6.
	if out, err := n1.Run(ctx, "nft", "list", "set", "inet", "weft", "peers6"); err != nil ||
		!strings.Contains(out, "fd00:17::32") || !strings.Contains(out, "fd00:17::33") || strings.Contains(out, "fd00:17::31") {
		t.Errorf("node1's peers6 set: %v\n%s", err, out)
	}
	if out, _ := n1.Run(ctx, "nft", "list", "chain", "inet", "weft", "input"); !strings.Contains(out, "ip6 saddr != @peers6 udp dport 8472") {
		t.Errorf("node1's input chain lacks the IPv6 peer check:\n%s", out)
	}
	// The masquerade and forward rules have ip6tables twins for the IPv6 subnet.
	env1 := n1.waitSubnetFile(time.Second)
	if out, err := n1.Run(ctx, "ip6tables-save"); err != nil || !strings.Contains(out, "-A WEFT-POSTRTG -s "+env1.Subnet6.Masked().String()) ||
		!strings.Contains(out, "-A WEFT-FWD") {
		t.Errorf("ip6tables-save on node1 lacks WEFT-POSTRTG for %v or WEFT-FWD: %v\n%s", env1.Subnet6.Masked(), err, out)
	}

	// docker-opts.
	out, err := n1.Run(ctx, filepath.Join(e.bin, "weftctl"), "docker-opts", "--subnet-file", n1.subnetFile)
	if err != nil || !strings.Contains(out, "--ipv6 --fixed-cidr-v6="+env1.Subnet6.String()+" ") {
		t.Errorf("weftctl docker-opts: %v\n%s", err, out)
	}

	// Repair of IPv6 entries.
	s2 := e.lease(t, n2).Subnet6
	for _, cmd := range [][]string{
		{"ip", "-6", "route", "del", s2.String(), "dev", "flannel-v6.1"},
		{"ip", "-6", "neigh", "del", s2.Addr().String(), "dev", "flannel-v6.1"},
	} {
		if out, err := n1.Run(ctx, cmd...); err != nil {
			t.Fatalf("%v: %v\n%s", cmd, err, out)
		}
	}
	took := e.eventually("IPv6 route and neighbour repaired", time.Second, func() (bool, string) {
		r, _ := n1.IP(ctx, "-6", "route", "show", "dev", "flannel-v6.1")
		nb, _ := n1.IP(ctx, "-6", "neigh", "show", "dev", "flannel-v6.1")
		return strings.Contains(r, s2.String()+" via") && strings.Contains(nb, s2.Addr().String()+" lladdr"), r + nb
	})
	t.Logf("IPv6 route and neighbour repaired in %v", took)
	pingAll(t, ctx, pods[:1], pods[1:2])
}

// TestIPv6Only: a network with EnableIPv4 false. Leases are IPv6 only,
// in flannel's form, the device is flannel-v6.1, subnet.env has no IPv4
// lines, and pods reach each other over IPv6.
func TestIPv6Only(t *testing.T) {
	e := newBareEnv(t)
	ctx := e.ctx
	e.startEtcd()
	e.cli = e.client()
	if _, err := e.cli.Put(ctx, prefix+"/config", v6Config); err != nil {
		t.Fatal(err)
	}
	n1, n2 := e.addNode6("node1", 31), e.addNode6("node2", 32)
	var pods []dualContainer
	for _, n := range []*node{n1, n2} {
		env := n.dockerUp6()
		if env.Subnet.IsValid() || env.Network.IsValid() || !env.Subnet6.IsValid() {
			t.Fatalf("%s subnet.env: %+v; want only the IPv6 lines", n.Name, env)
		}
		pods = append(pods, n.addDualContainer(env, "c1", 5))
	}
	resp, err := e.cli.Get(ctx, prefix+"/subnets/", clientv3.WithPrefix())
	if err != nil || len(resp.Kvs) != 2 {
		t.Fatalf("leases: %v, %d", err, len(resp.Kvs))
	}
	for _, kv := range resp.Kvs {
		if !strings.HasPrefix(string(kv.Key), prefix+"/subnets/0.0.0.0-0&fd42:") || !strings.Contains(string(kv.Value), `"PublicIP":"0.0.0.0","PublicIPv6":"fd00:17::`) {
			t.Errorf("lease %s = %s: not flannel's IPv6-only form", kv.Key, kv.Value)
		}
	}
	if out, _ := n1.IP(ctx, "-d", "link", "show", "flannel-v6.1"); !strings.Contains(out, "local fd00:17::31") {
		t.Errorf("flannel-v6.1:\n%s", out)
	}
	pingAll(t, ctx, pods, pods)
	if out, err := n1.Run(ctx, "nft", "list", "set", "inet", "weft", "peers6"); err != nil || !strings.Contains(out, "fd00:17::32") {
		t.Errorf("node1's peers6 set: %v\n%s", err, out)
	}
}
