package cni

import (
	"context"
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/version"

	"github.com/weft-net/weft/internal/cluster"
)

var (
	lease   = netip.MustParsePrefix("172.16.28.0/24")
	gateway = netip.MustParseAddr("172.16.28.1")
)

// TestAddCheckDel attaches a pod with every accepted spec version and checks
// what the pod and the node look like, that CHECK passes, and that DEL gives
// back the address and removes the interfaces, twice in a row.
func TestAddCheckDel(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	for i, v := range []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			conf := confFor(v, n.dir)
			p := n.pod(t, "p"+string(rune('a'+i)))
			res := n.add(t, conf, p)
			if res.Version() != v {
				t.Errorf("result has version %s, want the config's %s", res.Version(), v)
			}
			addr := addrOf(t, res)
			if addr.Masked() != lease || addr.Addr() == gateway {
				t.Fatalf("pod got %v, want a free address of %v", addr, lease)
			}
			out, err := p.Run(ctx, "ip", "-o", "addr", "show", "dev", "eth0")
			if err != nil || !strings.Contains(out, "inet "+addr.String()) {
				t.Errorf("pod's eth0 does not have %v: %s %v", addr, out, err)
			}
			if out, _ := p.Run(ctx, "ip", "link", "show", "eth0"); !strings.Contains(out, "mtu 1450 ") {
				t.Errorf("pod's eth0 mtu is not FLANNEL_MTU 1450: %s", out)
			}
			if out, _ := p.Run(ctx, "ip", "route"); !strings.Contains(out, "172.16.0.0/12 via 172.16.28.1 dev eth0") {
				t.Errorf("pod has no route to the overlay via the bridge:\n%s", out)
			}
			if out, _ := n.IP(ctx, "-o", "addr", "show", "dev", "cni0"); !strings.Contains(out, "inet 172.16.28.1/24") {
				t.Errorf("node's cni0 is not the gateway 172.16.28.1/24: %s", out)
			}
			if err := cluster.Ping(ctx, p.NS, gateway, cluster.PingOpts{}); err != nil {
				t.Error(err)
			}
			record := filepath.Join(n.dir, "data", "id-"+p.Name+"-eth0")
			raw, err := os.ReadFile(record)
			if err != nil {
				t.Fatalf("no record of the attachment: %v", err)
			}
			var rec struct {
				CNIVersion string `json:"cniVersion"`
			}
			json.Unmarshal(raw, &rec)
			if want := map[string]string{"1.1.0": "1.0.0"}[v]; want != "" && rec.CNIVersion != want {
				t.Errorf("Debian's bridge speaks up to 1.0.0, but was asked in %s", rec.CNIVersion)
			}

			if ok, _ := version.GreaterThanOrEqualTo(v, "0.4.0"); ok {
				if _, e := run(t, n.NS, call{command: "CHECK", containerID: "id-" + p.Name, netns: p.NetnsPath(), ifName: "eth0", conf: withPrev(t, conf, res)}); e != nil {
					t.Errorf("CHECK of a healthy pod: %v", e)
				}
			}

			ports := n.bridgePorts(t)
			del := call{command: "DEL", containerID: "id-" + p.Name, netns: p.NetnsPath(), ifName: "eth0", conf: withPrev(t, conf, res)}
			for range 2 {
				if _, e := run(t, n.NS, del); e != nil {
					t.Fatalf("DEL: %v", e)
				}
			}
			if hasLink(t, p, "eth0") {
				t.Error("pod still has eth0 after DEL")
			}
			if slices.Contains(n.ipamFiles(t), addr.Addr().String()) {
				t.Errorf("address %v still reserved after DEL: %v", addr.Addr(), n.ipamFiles(t))
			}
			if got := n.bridgePorts(t); len(got) != len(ports)-1 {
				t.Errorf("cni0's ports went from %v to %v, want one fewer", ports, got)
			}
			if _, err := os.Stat(record); !os.IsNotExist(err) {
				t.Errorf("record %s still there after DEL (%v)", record, err)
			}
		})
	}
}

// TestPodsOnOneNode: two pods on the bridge reach each other.
func TestPodsOnOneNode(t *testing.T) {
	n := newNode(t)
	conf := confFor("1.0.0", n.dir)
	a, b := n.pod(t, "a"), n.pod(t, "b")
	n.add(t, conf, a)
	bAddr := addrOf(t, n.add(t, conf, b))
	if err := cluster.Ping(context.Background(), a.NS, bAddr.Addr(), cluster.PingOpts{Count: 2}); err != nil {
		t.Error(err)
	}
}

// TestDelWhenThingsAreGone: DEL releases the address from its record when
// subnet.env is gone or the pod's namespace was already deleted, and from
// today's subnet.env when the record is gone.
func TestDelWhenThingsAreGone(t *testing.T) {
	n := newNode(t)
	conf := confFor("1.0.0", n.dir)
	env := filepath.Join(n.dir, "subnet.env")

	a := n.pod(t, "a")
	aAddr := addrOf(t, n.add(t, conf, a))
	b := n.pod(t, "b")
	bAddr := addrOf(t, n.add(t, conf, b))

	if err := os.Remove(env); err != nil {
		t.Fatal(err)
	}
	if _, e := run(t, n.NS, call{command: "DEL", containerID: "id-a", netns: a.NetnsPath(), ifName: "eth0", conf: conf}); e != nil {
		t.Fatalf("DEL without subnet.env: %v", e)
	}
	if hasLink(t, a, "eth0") || slices.Contains(n.ipamFiles(t), aAddr.Addr().String()) {
		t.Errorf("DEL without subnet.env left eth0 or the address %v: %v", aAddr, n.ipamFiles(t))
	}

	writeFile(t, env, goodEnv)
	if err := b.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, e := run(t, n.NS, call{command: "DEL", containerID: "id-b", netns: b.NetnsPath(), ifName: "eth0", conf: conf}); e != nil {
		t.Fatalf("DEL after the namespace is gone: %v", e)
	}
	if slices.Contains(n.ipamFiles(t), bAddr.Addr().String()) {
		t.Errorf("DEL after the namespace is gone kept the address %v", bAddr)
	}
	if ports := n.bridgePorts(t); len(ports) != 0 {
		t.Errorf("cni0 still has ports %v", ports)
	}

	// A pod attached before weft-cni kept a record of it (by flannel's
	// plugin, before the node switched): DEL still frees it.
	c := n.pod(t, "c")
	cAddr := addrOf(t, n.add(t, conf, c))
	if err := os.Remove(filepath.Join(n.dir, "data", "id-c-eth0")); err != nil {
		t.Fatal(err)
	}
	if _, e := run(t, n.NS, call{command: "DEL", containerID: "id-c", netns: c.NetnsPath(), ifName: "eth0", conf: conf}); e != nil {
		t.Fatalf("DEL without a record: %v", e)
	}
	if hasLink(t, c, "eth0") || slices.Contains(n.ipamFiles(t), cAddr.Addr().String()) {
		t.Errorf("DEL without a record left eth0 or the address %v: %v", cAddr, n.ipamFiles(t))
	}
}

// TestCheckFindsBrokenPods: CHECK fails when the pod lost its address, or
// when the node's lease moved away from the pod's address; DEL still works.
func TestCheckFindsBrokenPods(t *testing.T) {
	n := newNode(t)
	ctx := context.Background()
	conf := confFor("1.0.0", n.dir)
	a := n.pod(t, "a")
	resA := n.add(t, conf, a)
	if _, err := a.Run(ctx, "ip", "addr", "flush", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	check := call{command: "CHECK", containerID: "id-a", netns: a.NetnsPath(), ifName: "eth0", conf: withPrev(t, conf, resA)}
	if _, e := run(t, n.NS, check); e == nil {
		t.Error("CHECK passed for a pod without its address")
	} else {
		t.Logf("CHECK of a pod without its address: %s", e.Msg)
	}

	b := n.pod(t, "b")
	resB := n.add(t, conf, b)
	writeFile(t, filepath.Join(n.dir, "subnet.env"), strings.Replace(goodEnv, "172.16.28.1/24", "172.16.29.1/24", 1))
	check = call{command: "CHECK", containerID: "id-b", netns: b.NetnsPath(), ifName: "eth0", conf: withPrev(t, conf, resB)}
	if _, e := run(t, n.NS, check); e == nil || !strings.Contains(e.Msg, "outside this node's subnet 172.16.29.0/24") {
		t.Errorf("CHECK after the lease moved: %v, want it to name the new subnet", e)
	}
	for _, p := range []string{"a", "b"} {
		if _, e := run(t, n.NS, call{command: "DEL", containerID: "id-" + p, netns: "/var/run/netns/" + n.NS + "-" + p, ifName: "eth0", conf: conf}); e != nil {
			t.Errorf("DEL %s: %v", p, e)
		}
	}
	if files := n.ipamFiles(t); len(files) != 0 {
		t.Errorf("addresses still reserved after DEL: %v", files)
	}
}

// TestAddFailureLeavesNothing: when the delegate fails (no address left in
// a /30), the error reaches the runtime and weft-cni undoes the half-made
// attachment: no interface, no record, no reservation.
func TestAddFailureLeavesNothing(t *testing.T) {
	n := newNode(t)
	writeFile(t, filepath.Join(n.dir, "subnet.env"), strings.Replace(goodEnv, "172.16.28.1/24", "172.16.28.1/30", 1))
	conf := confFor("1.0.0", n.dir)
	a := n.pod(t, "a")
	n.add(t, conf, a)
	b := n.pod(t, "b")
	_, e := run(t, n.NS, call{command: "ADD", containerID: "id-b", netns: b.NetnsPath(), ifName: "eth0", conf: conf})
	if e == nil {
		t.Fatal("ADD succeeded in a full /30")
	}
	if !strings.Contains(e.Msg, "no IP addresses available") {
		t.Errorf("ADD error %q does not pass on host-local's reason", e.Msg)
	}
	if hasLink(t, b, "eth0") {
		t.Error("failed ADD left eth0 in the pod")
	}
	if _, err := os.Stat(filepath.Join(n.dir, "data", "id-b-eth0")); !os.IsNotExist(err) {
		t.Errorf("failed ADD left its record (%v)", err)
	}
	if ports := n.bridgePorts(t); len(ports) != 1 {
		t.Errorf("cni0 has ports %v, want only pod a's", ports)
	}
}
