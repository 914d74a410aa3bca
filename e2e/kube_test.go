package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weft-net/weft/internal/cluster"
)

// TestKubeThreeNodes runs weftd --kube-subnet-mgr on three nodes against a
// real kube-apiserver: each takes its Node's podCIDR, publishes flannel's
// annotations, marks its network available, and containers and hosts on
// every node reach each other.
func TestKubeThreeNodes(t *testing.T) {
	k := newKubeEnv(t)
	k.kubeNodes(3)
	for _, n := range k.nodes {
		n.waitReady(t, 2, 30*time.Second)
	}
	k.pingAll()

	for _, n := range k.nodes {
		obj := k.node(n.Name)
		ann := obj.Annotations
		want := map[string]string{
			kubePrefix + "/backend-data":        fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, n.vtepMAC()),
			kubePrefix + "/backend-type":        "vxlan",
			kubePrefix + "/public-ip":           n.Addr.Addr().String(),
			kubePrefix + "/kube-subnet-manager": "true",
		}
		for key, v := range want {
			if ann[key] != v {
				t.Errorf("Node %s: annotation %s = %q, want %q", n.Name, key, ann[key], v)
			}
		}
		k.eventually("Node "+n.Name+" NetworkUnavailable=False", 10*time.Second, func() (bool, string) {
			for _, c := range k.node(n.Name).Status.Conditions {
				if c.Type == corev1.NodeNetworkUnavailable {
					return c.Status == corev1.ConditionFalse, string(c.Status)
				}
			}
			return false, "no NetworkUnavailable condition"
		})
		if got := n.metric(k.ctx, "weft_peer_events_total", `type="added"`); got != 2 {
			t.Errorf("%s: weft_peer_events_total{type=added} = %v, want 2", n.Name, got)
		}
	}
	// weftctl status reads the same /status as in etcd mode.
	out, err := k.nodes[0].Run(k.ctx, k.bin+"/weftctl", "status")
	if err != nil || !strings.Contains(out, "172.16.28.0/24") {
		t.Errorf("weftctl status on node1: %v\n%s", err, out)
	}
}

// TestKubeNodeWithoutAnnotations: a Node with no annotations at all (a node
// where no agent runs yet; flanneld v0.28.9 panics on it) is normal input:
// weftd runs on, and the Node joins once its agent publishes.
func TestKubeNodeWithoutAnnotations(t *testing.T) {
	k := newKubeEnv(t)
	k.createNode("bare", "172.17.42.50", "172.16.90.0/24", nil)
	k.createNode("nocidr", "172.17.42.51", "", nil)
	k.kubeNodes(2)
	for _, n := range k.nodes {
		n.waitReady(t, 1, 30*time.Second)
	}
	k.pingAll()
	// The bare Node's agent arrives: it becomes a peer.
	k.annotate("bare", flannelAnnotations("172.17.42.50", "0e:5d:9f:0a:0b:50"))
	for _, n := range k.nodes {
		n.waitReady(t, 2, 10*time.Second)
		if n.metric(k.ctx, "weft_peer_events_total", `type="invalid"`) != 0 {
			t.Errorf("%s counted a Node without annotations as invalid", n.Name)
		}
	}
}

// flannelAnnotations are the annotations exactly as flanneld v0.2x writes
// them on its Node in kube-subnet-mgr mode.
func flannelAnnotations(publicIP, mac string) map[string]string {
	return map[string]string{
		kubePrefix + "/backend-data":        fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, mac),
		kubePrefix + "/backend-type":        "vxlan",
		kubePrefix + "/kube-subnet-manager": "true",
		kubePrefix + "/public-ip":           publicIP,
	}
}

// annotate merges ann into Node name's annotations.
func (k *kubeEnv) annotate(name string, ann map[string]string) {
	k.t.Helper()
	body, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	if _, err := k.client.CoreV1().Nodes().Patch(k.ctx, name, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		k.t.Fatalf("annotating Node %s: %v", name, err)
	}
}

// TestKubeFlannelNode puts a flanneld-shaped node beside weftd nodes: the
// test plays flanneld by its protocol (flannel.1 as flanneld builds it, its
// Node annotations as flanneld writes them, weft's Nodes read back with
// flanneld's shape and programmed), and containers on both kinds of node
// reach each other.
func TestKubeFlannelNode(t *testing.T) {
	k := newKubeEnv(t)
	k.kubeNodes(2)
	for _, n := range k.nodes {
		n.waitReady(t, 1, 30*time.Second)
	}
	ctx := k.ctx
	const (
		addr = "172.17.42.40"
		mac  = "0e:5d:9f:0a:0b:01"
		sub  = "172.16.200.0/24"
	)
	fl, err := k.c.AddHost(ctx, "flannel", netip.MustParsePrefix(addr+"/16"))
	if err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := fl.Run(ctx, args...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	run("ip", "link", "add", "flannel.1", "address", mac, "mtu", "1450", "type", "vxlan",
		"id", "1", "local", addr, "dev", "eth0", "dstport", "8472", "nolearning")
	run("ip", "addr", "add", "172.16.200.0/32", "dev", "flannel.1")
	run("ip", "link", "set", "flannel.1", "up")
	if err := fl.SetupDocker0(ctx, netip.MustParsePrefix("172.16.200.1/24"), 1450); err != nil {
		t.Fatal(err)
	}
	ct, err := fl.AddContainer(ctx, "c1", netip.MustParseAddr("172.16.200.7"))
	if err != nil {
		t.Fatal(err)
	}
	k.createNode("flannel", addr, sub, flannelAnnotations(addr, mac))

	// flanneld's side: it reads weft's Nodes with its own shape.
	nodes, err := k.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	programmed := 0
	for _, n := range nodes.Items {
		if n.Name == "flannel" {
			continue
		}
		var bd struct {
			VNI     int
			VtepMAC string
		}
		if n.Annotations[kubePrefix+"/kube-subnet-manager"] != "true" || n.Annotations[kubePrefix+"/backend-type"] != "vxlan" {
			t.Fatalf("flanneld would skip weft's Node %s: %v", n.Name, n.Annotations)
		}
		if err := json.Unmarshal([]byte(n.Annotations[kubePrefix+"/backend-data"]), &bd); err != nil || bd.VNI != 1 {
			t.Fatalf("flanneld could not read weft's backend-data on %s: %q: %v", n.Name, n.Annotations[kubePrefix+"/backend-data"], err)
		}
		p := netip.MustParsePrefix(n.Spec.PodCIDR)
		gw := p.Addr().String()
		run("bridge", "fdb", "replace", bd.VtepMAC, "dev", "flannel.1", "dst", n.Annotations[kubePrefix+"/public-ip"], "self", "permanent")
		run("ip", "neigh", "replace", gw, "lladdr", bd.VtepMAC, "dev", "flannel.1", "nud", "permanent")
		run("ip", "route", "replace", p.String(), "via", gw, "dev", "flannel.1", "onlink")
		programmed++
	}
	if programmed != 2 {
		t.Fatalf("flanneld's side found %d weft Nodes, want 2", programmed)
	}
	// weft's side: the flanneld Node is a peer of every weftd.
	for _, n := range k.nodes {
		n.waitReady(t, 2, 10*time.Second)
		routes, _ := n.Routes(ctx)
		fdb, _ := n.FDB(ctx)
		if !hasRoute(routes, netip.MustParsePrefix(sub)) || !strings.Contains(fdb, mac+" dst "+addr+" self permanent") {
			t.Errorf("%s did not program the flanneld node:\n%s%s", n.Name, routes, fdb)
		}
		for _, wc := range n.containers {
			if err := cluster.Ping(ctx, ct.NS, wc.Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
				t.Errorf("flanneld node's container -> %s/%s: %v", n.Name, wc.Name, err)
			}
			if err := cluster.Ping(ctx, wc.NS, ct.Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
				t.Errorf("%s/%s -> flanneld node's container: %v", n.Name, wc.Name, err)
			}
		}
	}
}

// TestKubeHostileAnnotations: Nodes with garbage, a zero MAC, a bogus public
// IP or another node's MAC are skipped and counted; a working peer whose
// annotations turn hostile keeps working, without losing a ping.
func TestKubeHostileAnnotations(t *testing.T) {
	k := newKubeEnv(t)
	k.kubeNodes(3)
	for _, n := range k.nodes {
		n.waitReady(t, 2, 30*time.Second)
	}
	s := startStreams(t, k.env)
	node3MAC := k.nodes[2].vtepMAC()
	hostile := map[string]map[string]string{
		"garbage":  {kubePrefix + "/kube-subnet-manager": "true", kubePrefix + "/backend-type": "vxlan", kubePrefix + "/backend-data": "\x00{{not json", kubePrefix + "/public-ip": "172.17.42.60"},
		"zeromac":  flannelAnnotations("172.17.42.61", "00:00:00:00:00:00"),
		"loopback": flannelAnnotations("127.0.0.1", "0e:5d:9f:0a:0b:62"),
		"bcast":    flannelAnnotations("255.255.255.255", "0e:5d:9f:0a:0b:63"),
		"insubnet": flannelAnnotations("172.16.28.9", "0e:5d:9f:0a:0b:64"), // node1's container
		"stealmac": flannelAnnotations("172.17.42.65", node3MAC),
	}
	i := 0
	for name, ann := range hostile {
		k.createNode(name, fmt.Sprintf("172.17.42.%d", 60+i), fmt.Sprintf("172.16.%d.0/24", 120+i), ann)
		i++
	}
	// A working peer's annotations turn hostile: node3 keeps its last good value.
	k.annotate("node3", flannelAnnotations("not-an-ip", "ff:ff:ff:ff:ff:ff"))
	time.Sleep(2 * time.Second)
	for _, n := range k.nodes[:2] {
		k.eventually(n.Name+" counts the hostile Nodes", 10*time.Second, func() (bool, string) {
			v := n.metric(k.ctx, "weft_peer_events_total", `type="invalid"`)
			return v >= float64(len(hostile)+1), fmt.Sprint(v)
		})
		n.waitReady(t, 2, 5*time.Second)
		routes, _ := n.Routes(k.ctx)
		for j := range len(hostile) {
			if strings.Contains(routes, fmt.Sprintf("172.16.%d.0/24", 120+j)) {
				t.Errorf("%s routes a hostile Node's subnet 172.16.%d.0/24:\n%s", n.Name, 120+j, routes)
			}
		}
		if !hasRoute(routes, netip.MustParsePrefix("172.16.43.0/24")) {
			t.Errorf("%s dropped node3, whose annotations turned bad:\n%s", n.Name, routes)
		}
	}
	s.stop()
	k.pingAll()
}

// TestKubeNodeDeleteAdd: a Node deleted from the API leaves every route
// table within seconds; a Node added joins.
func TestKubeNodeDeleteAdd(t *testing.T) {
	k := newKubeEnv(t)
	k.kubeNodes(3)
	for _, n := range k.nodes {
		n.waitReady(t, 2, 30*time.Second)
	}
	gone := netip.MustParsePrefix("172.16.43.0/24")
	k.nodes[2].stop()
	start := time.Now()
	if err := k.client.CoreV1().Nodes().Delete(k.ctx, "node3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, n := range k.nodes[:2] {
		k.eventually(n.Name+" drops the deleted Node", 5*time.Second, func() (bool, string) {
			routes, _ := n.Routes(k.ctx)
			return !hasRoute(routes, gone), routes
		})
	}
	t.Logf("deleted Node left both route tables in %v", time.Since(start).Round(time.Millisecond))
	k.nodes = k.nodes[:2]

	n4 := k.addKubeNode("node4", "172.17.42.34", "172.16.51.0/24")
	n4.waitSubnetFile(30 * time.Second)
	n4.dockerUp()
	n4.addContainer("c1", 9)
	for _, n := range k.nodes {
		n.waitReady(t, 2, 15*time.Second)
	}
	k.pingAll()
}
