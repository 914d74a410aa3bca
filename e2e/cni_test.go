package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/weft-net/weft/internal/cluster"
)

// TestCNI is issue 11 on the namespace cluster: pods attached by weft-cni
// through deploy/cni's conflist (flannel's, type changed) on three weftd nodes, driven by
// libcni as containerd and podman drive it.
func TestCNI(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 3})
	ctx := e.ctx
	bin := cniBin(t)
	nodes := make([]*cniNode, len(e.nodes))
	for i, n := range e.nodes {
		nodes[i] = newCNINode(t, n, bin, "1.0.0")
	}

	// Two pods per node; node1's first publishes port 80 on the node.
	type pod struct {
		*cluster.Container
		addr netip.Addr
		node *cniNode
	}
	var pods []pod
	web := map[string]any{"portMappings": []map[string]any{{"hostPort": 80, "containerPort": 80, "protocol": "tcp"}}}
	for i, c := range nodes {
		for _, name := range []string{"a", "b"} {
			var caps map[string]any
			if i == 0 && name == "a" {
				caps = web
			}
			p, addr := c.addPod(ctx, t, name, caps)
			pods = append(pods, pod{p, addr, c})
		}
	}

	t.Run("addresses from the node's subnet", func(t *testing.T) {
		seen := map[netip.Addr]string{}
		for _, p := range pods {
			s := p.node.subnet()
			if !s.Contains(p.addr) || p.addr == s.Addr().Next() {
				t.Errorf("%s on %s got %v, want a pod address of %v", p.Name, p.node.Name, p.addr, s)
			}
			if other, dup := seen[p.addr]; dup {
				t.Errorf("%v given twice (%s)", p.addr, other)
			}
			seen[p.addr] = p.node.Name + "/" + p.Name
			out, _ := p.Run(ctx, "ip", "route")
			if !strings.Contains(out, "default via "+s.Addr().Next().String()+" dev eth0") {
				t.Errorf("%s on %s has no default route via cni0:\n%s", p.Name, p.node.Name, out)
			}
			if out, _ := p.Run(ctx, "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1450 ") {
				t.Errorf("%s's eth0 does not have FLANNEL_MTU 1450: %s", p.Name, out)
			}
		}
	})

	t.Run("pods reach each other across nodes", func(t *testing.T) {
		for _, from := range pods {
			for _, to := range pods {
				if from.node == to.node || to.Name != "a" && from.Name != "a" {
					continue // every pod reaches a pod on each other node, and every pod is reached
				}
				if err := cluster.Ping(ctx, from.NS, to.addr, cluster.PingOpts{Timeout: 3 * time.Second}); err != nil {
					t.Errorf("%s/%s -> %s/%s: %v", from.node.Name, from.Name, to.node.Name, to.Name, err)
				}
			}
		}
	})

	t.Run("nodes reach pods", func(t *testing.T) {
		for _, p := range pods {
			from := nodes[(slices.Index(nodes, p.node)+1)%len(nodes)]
			if err := cluster.Ping(ctx, from.NS, p.addr, cluster.PingOpts{}); err != nil {
				t.Errorf("%s -> %s/%s: %v", from.Name, p.node.Name, p.Name, err)
			}
		}
	})

	t.Run("pods reach an outside host, masqueraded", func(t *testing.T) {
		for _, p := range pods {
			if err := cluster.Ping(ctx, p.NS, netip.MustParseAddr(outsideAddr), cluster.PingOpts{}); err != nil {
				t.Errorf("%s/%s -> outside: %v", p.node.Name, p.Name, err)
			}
		}
		p := pods[2]
		if got, want := connectFrom(t, ctx, p.NS, e.outside.NS, netip.MustParseAddr(outsideAddr)), p.node.Addr.Addr().String(); got != want {
			t.Errorf("outside saw %s/%s as %q, want its node's address %s", p.node.Name, p.Name, got, want)
		}
	})

	t.Run("CHECK passes", func(t *testing.T) {
		for _, p := range pods {
			if err := p.node.cni.CheckNetworkList(ctx, p.node.list, p.node.rt(p.Container, nil)); err != nil {
				t.Errorf("CHECK %s/%s: %v", p.node.Name, p.Name, err)
			}
		}
	})

	t.Run("port mapping through the chained portmap plugin", func(t *testing.T) {
		p := pods[0]
		got := connectFrom(t, ctx, e.outside.NS, p.NS, p.node.Addr.Addr())
		if got != outsideAddr {
			t.Errorf("the pod behind %s:80 saw the client as %q, want %s", p.node.Addr.Addr(), got, outsideAddr)
		}
	})

	t.Run("bandwidth through a chained bandwidth plugin", func(t *testing.T) {
		c := nodes[1]
		var list map[string]any
		if err := json.Unmarshal(c.list.Bytes, &list); err != nil {
			t.Fatal(err)
		}
		list["plugins"] = append(list["plugins"].([]any), map[string]any{"type": "bandwidth", "capabilities": map[string]any{"bandwidth": true}})
		b, _ := json.Marshal(list)
		shaped, err := libcniList(string(b))
		if err != nil {
			t.Fatal(err)
		}
		p, err := c.AddPod(ctx, "bw")
		if err != nil {
			t.Fatal(err)
		}
		rt := c.rt(p, map[string]any{"bandwidth": map[string]any{"ingressRate": 1000000, "ingressBurst": 100000, "egressRate": 2000000, "egressBurst": 100000}})
		if _, err := c.cni.AddNetworkList(ctx, shaped, rt); err != nil {
			t.Fatalf("ADD with bandwidth: %v", err)
		}
		out, err := c.Run(ctx, "tc", "qdisc", "show")
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"rate 1Mbit", "rate 2Mbit"} {
			if !strings.Contains(out, want) {
				t.Errorf("node has no tbf qdisc with %s for the pod:\n%s", want, out)
			}
		}
		if err := c.cni.DelNetworkList(ctx, shaped, rt); err != nil {
			t.Fatalf("DEL with bandwidth: %v", err)
		}
		if out, _ := c.Run(ctx, "tc", "qdisc", "show"); strings.Contains(out, "tbf") {
			t.Errorf("shaping left after DEL:\n%s", out)
		}
	})

	t.Run("DEL releases the address and the interfaces", func(t *testing.T) {
		p := pods[3]
		ports := p.node.bridgePorts(ctx, t)
		for range 2 { // the second DEL finds nothing to do, and succeeds
			if err := p.node.cni.DelNetworkList(ctx, p.node.list, p.node.rt(p.Container, nil)); err != nil {
				t.Fatalf("DEL: %v", err)
			}
		}
		if slices.Contains(p.node.reserved(t), p.addr.String()) {
			t.Errorf("%v still reserved after DEL: %v", p.addr, p.node.reserved(t))
		}
		if links := linkNames(ctx, t, p.Container); strings.Contains(links, "eth0") {
			t.Errorf("the pod still has eth0:\n%s", links)
		}
		if got := p.node.bridgePorts(ctx, t); len(got) != len(ports)-1 {
			t.Errorf("cni0's ports went from %v to %v, want one fewer", ports, got)
		}
		// The address is free again: the next pod on the node may get it.
		q, addr := p.node.addPod(ctx, t, "c", nil)
		if err := cluster.Ping(ctx, q.NS, pods[0].addr, cluster.PingOpts{}); err != nil {
			t.Errorf("a new pod (%v) after DEL: %v", addr, err)
		}
	})

	t.Run("DEL after the pod's namespace is gone", func(t *testing.T) {
		p := pods[5]
		if err := p.Remove(); err != nil {
			t.Fatal(err)
		}
		if err := p.node.cni.DelNetworkList(ctx, p.node.list, p.node.rt(p.Container, nil)); err != nil {
			t.Fatalf("DEL: %v", err)
		}
		if slices.Contains(p.node.reserved(t), p.addr.String()) {
			t.Errorf("%v still reserved after DEL", p.addr)
		}
	})
}

// TestCNIConcurrentAdds: 20 pods attached at once on a node that never had a
// pod get 20 distinct addresses that all work, and 20 DELs at once release
// all of them.
func TestCNIConcurrentAdds(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2})
	ctx := e.ctx
	bin := cniBin(t)
	c, other := newCNINode(t, e.nodes[0], bin, "1.0.0"), newCNINode(t, e.nodes[1], bin, "1.0.0")
	probe, _ := other.addPod(ctx, t, "probe", nil)

	const n = 20
	pods := make([]*cluster.Container, n)
	for i := range pods {
		p, err := c.AddPod(ctx, fmt.Sprintf("p%d", i))
		if err != nil {
			t.Fatal(err)
		}
		pods[i] = p
	}
	addrs := make([]netip.Addr, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Go(func() {
			res, err := c.cni.AddNetworkList(ctx, c.list, c.rt(p, nil))
			if err == nil {
				addrs[i] = resultAddr(t, res)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent ADDs: %v", err)
	}
	seen := map[netip.Addr]bool{}
	for i, a := range addrs {
		if seen[a] || !c.subnet().Contains(a) {
			t.Errorf("pod %d got %v: a duplicate or outside %v", i, a, c.subnet())
		}
		seen[a] = true
	}
	if got := c.reserved(t); len(got) != n {
		t.Errorf("%d addresses reserved, want %d: %v", len(got), n, got)
	}
	for i, a := range addrs {
		if err := cluster.Ping(ctx, probe.NS, a, cluster.PingOpts{}); err != nil {
			t.Errorf("pod %d at %v from another node: %v", i, a, err)
		}
	}

	for i, p := range pods {
		wg.Go(func() { errs[i] = c.cni.DelNetworkList(ctx, c.list, c.rt(p, nil)) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent DELs: %v", err)
	}
	if got := c.reserved(t); len(got) != 0 {
		t.Errorf("addresses still reserved after DEL: %v", got)
	}
	if ports := c.bridgePorts(ctx, t); len(ports) != 0 {
		t.Errorf("cni0 still has ports after DEL: %v", ports)
	}
}

// TestCNIErrors: what a runtime sees on a real node when things are not as
// they should be.
func TestCNIErrors(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 1})
	ctx := e.ctx
	bin := cniBin(t)

	// A node whose weftd has not started: STATUS says not ready, ADD says
	// try again later, both naming subnet.env; once weftd wrote it, both
	// work.
	h, err := e.c.AddHost(ctx, "node9", netip.MustParsePrefix("172.17.42.39/16"))
	if err != nil {
		t.Fatal(err)
	}
	late := &node{Host: h, t: t, subnetFile: filepath.Join(e.c.Dir, "node9", "subnet.env")}
	late.args = []string{filepath.Join(e.bin, "weftd"), "--etcd-endpoints", etcdURL, "--iface", "eth0", "--ip-masq", "--subnet-file", late.subnetFile}
	c := newCNINode(t, late, bin, "1.0.0")
	status := fmt.Sprintf(`{"cniVersion":"1.1.0","name":"cbr0","type":"weft-cni","subnetFile":%q}`, late.subnetFile)
	if se := c.runWeftCNI(t, []string{"CNI_COMMAND=STATUS"}, status); se == nil || se.Code != 50 || !strings.Contains(se.Msg, late.subnetFile) {
		t.Errorf("STATUS before weftd: %v, want code 50 naming %s", se, late.subnetFile)
	}
	p, err := c.AddPod(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.cni.AddNetworkList(ctx, c.list, c.rt(p, nil))
	var ce *types.Error
	if !errors.As(err, &ce) || ce.Code != types.ErrTryAgainLater || !strings.Contains(ce.Msg, late.subnetFile) {
		t.Errorf("ADD before weftd: %v, want code 11 naming %s", err, late.subnetFile)
	}
	late.start()
	e.nodes = append(e.nodes, late)
	late.waitSubnetFile(30 * time.Second)
	if se := c.runWeftCNI(t, []string{"CNI_COMMAND=STATUS"}, status); se != nil {
		t.Errorf("STATUS once weftd wrote subnet.env: %v", se)
	}
	addr := c.attach(ctx, t, p, nil)
	if err := cluster.Ping(ctx, p.NS, e.nodes[0].Addr.Addr(), cluster.PingOpts{}); err != nil {
		t.Errorf("pod %v after a late start: %v", addr, err)
	}

	// subnet.env gone (weftd stopped, /run wiped): DEL still releases
	// everything from weft-cni's record.
	late.stop()
	if err := os.Remove(late.subnetFile); err != nil {
		t.Fatal(err)
	}
	if err := c.cni.DelNetworkList(ctx, c.list, c.rt(p, nil)); err != nil {
		t.Errorf("DEL without subnet.env: %v", err)
	}
	if got := c.reserved(t); len(got) != 0 {
		t.Errorf("addresses still reserved after DEL: %v", got)
	}
	if links := linkNames(ctx, t, p); strings.Contains(links, "eth0") {
		t.Errorf("pod still has eth0 after DEL:\n%s", links)
	}

	// Config errors, through the runtime's library as a user meets them.
	n1 := newCNINode(t, e.nodes[0], bin, "1.0.0")
	q, err := n1.AddPod(ctx, "q")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, conf string
		code       uint
	}{
		{"unknown version", strings.Replace(shippedConflist(t, "1.0.0", e.nodes[0].subnetFile, n1.dir), `"cniVersion": "1.0.0"`, `"cniVersion": "7.0.0"`, 1), types.ErrIncompatibleCNIVersion},
		{"malformed delegate", strings.Replace(shippedConflist(t, "1.0.0", e.nodes[0].subnetFile, n1.dir), `"isDefaultGateway": true`, `"isDefaultGateway": 1`, 1), types.ErrDecodingFailure},
	} {
		bad := *n1
		list, err := libcniList(tc.conf)
		if err != nil {
			t.Fatal(err)
		}
		bad.list = list
		_, err = bad.cni.AddNetworkList(ctx, bad.list, bad.rt(q, nil))
		if !errors.As(err, &ce) || ce.Code != tc.code {
			t.Errorf("%s: ADD gave %v, want code %d", tc.name, err, tc.code)
		}
	}
	if got := n1.reserved(t); len(got) != 0 {
		t.Errorf("failed ADDs reserved addresses: %v", got)
	}
}
