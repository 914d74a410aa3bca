package kube

import (
	"context"
	"maps"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes/fake"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/weft-net/weft/subnet"
)

// These tests drive the Manager with client-go's fake clientset, for the
// logic alone; e2e/kube_*_test.go run it against a real kube-apiserver.

// fakeNodes is the fake clientset's Nodes, in weft's own types: each Node
// goes through its protobuf encoding and Node.Unmarshal, as from the API
// server. The fake clientset cannot stream a listing as watch events (the
// real API server can, and Client uses it).
type fakeNodes struct {
	typed typedcorev1.NodeInterface
}

var _ NodeAPI = fakeNodes{}

func (fakeNodes) IsWatchListSemanticsUnSupported() bool { return true }

func (f fakeNodes) List(ctx context.Context, o metav1.ListOptions) (*NodeList, error) {
	l, err := f.typed.List(ctx, o)
	if err != nil {
		return nil, err
	}
	out := &NodeList{}
	return out, viaProtobuf(l, out)
}

func (f fakeNodes) Watch(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	w, err := f.typed.Watch(ctx, o)
	if err != nil {
		return nil, err
	}
	return watch.Filter(w, func(e watch.Event) (watch.Event, bool) {
		if n, ok := e.Object.(*corev1.Node); ok {
			out := &Node{}
			if err := viaProtobuf(n, out); err != nil {
				panic(err)
			}
			e.Object = out
		}
		return e, true
	}), nil
}

func (f fakeNodes) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, o metav1.PatchOptions, sub ...string) (*Node, error) {
	n, err := f.typed.Patch(ctx, name, pt, data, o, sub...)
	if err != nil {
		return nil, err
	}
	out := &Node{}
	return out, viaProtobuf(n, out)
}

// viaProtobuf encodes in with core/v1's generated code and decodes it with
// weft's.
func viaProtobuf(in interface{ Marshal() ([]byte, error) }, out interface{ Unmarshal([]byte) error }) error {
	b, err := in.Marshal()
	if err != nil {
		return err
	}
	return out.Unmarshal(b)
}

func testConfig(t *testing.T) subnet.Config {
	t.Helper()
	c, err := subnet.ParseConfig([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func node(name, cidr string, ann map[string]string) *corev1.Node {
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann, CreationTimestamp: metav1.Now(),
		ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubelet"}}}}
	n.Spec.PodCIDR = cidr
	return n
}

func flannelAnn(ip, mac string) map[string]string {
	return map[string]string{
		DefaultPrefix + "/backend-data":        `{"VNI":1,"VtepMAC":"` + mac + `"}`,
		DefaultPrefix + "/backend-type":        "vxlan",
		DefaultPrefix + "/public-ip":           ip,
		DefaultPrefix + "/kube-subnet-manager": "true",
	}
}

// peersText is a snapshot as "subnet via ip mac" lines.
func peersText(s subnet.Snapshot) string {
	var b strings.Builder
	for _, p := range s.Peers {
		b.WriteString(p.Subnet.String() + " via " + p.PublicIP.String() + " " + p.VtepMAC.String() + "\n")
	}
	return b.String()
}

func TestManagerHoldAndPeers(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	client := fake.NewClientset(
		node("self", "10.244.1.0/24", nil),
		node("bare", "10.244.9.0/24", nil), // no annotations at all: normal, not a peer
		node("nocidr", "", nil),
		node("flannel", "10.244.2.0/24", flannelAnn("192.168.7.2", "0a:00:00:00:00:02")),
		node("zero-mac", "10.244.3.0/24", flannelAnn("192.168.7.3", "00:00:00:00:00:00")),
		node("loopback", "10.244.4.0/24", flannelAnn("127.0.0.1", "0a:00:00:00:00:04")),
		node("garbage", "10.244.5.0/24", map[string]string{DefaultPrefix + "/kube-subnet-manager": "true", DefaultPrefix + "/backend-data": "{{"}),
	)
	m, err := New(Config{Nodes: fakeNodes{client.CoreV1().Nodes()}, NodeName: "self", Network: testConfig(t)})
	if err != nil {
		t.Fatal(err)
	}
	go m.Run(ctx)

	leases := make(chan subnet.Lease, 4)
	mac, _ := net.ParseMAC("0a:00:00:00:00:01")
	go m.Hold(ctx, subnet.HoldRequest{Config: testConfig(t), PublicIP: netip.MustParseAddr("192.168.7.1"), VtepMAC: mac,
		OnLease: func(l subnet.Lease) { leases <- l }})
	select {
	case l := <-leases:
		if l.Subnet.String() != "10.244.1.0/24" {
			t.Fatalf("lease %v, want the podCIDR 10.244.1.0/24", l.Subnet)
		}
	case <-ctx.Done():
		t.Fatal("no lease from the podCIDR")
	}

	snaps := make(chan subnet.Snapshot, 16)
	f := subnet.PeerFilter{Config: testConfig(t), VtepMAC: mac,
		Self: func() (netip.Prefix, netip.Addr) {
			return netip.MustParsePrefix("10.244.1.0/24"), netip.MustParseAddr("192.168.7.1")
		}}
	go m.WatchPeers(ctx, f, func(s subnet.Snapshot) { snaps <- s })
	want := func(text string) {
		t.Helper()
		for {
			select {
			case s := <-snaps:
				if peersText(s) == text {
					return
				}
			case <-ctx.Done():
				t.Fatalf("no snapshot with peers\n%s", text)
			}
		}
	}
	want("10.244.2.0/24 via 192.168.7.2 0a:00:00:00:00:02\n")

	// The node published flannel's annotations.
	waitFor(t, ctx, func() bool {
		n, err := client.CoreV1().Nodes().Get(ctx, "self", metav1.GetOptions{})
		return err == nil && n.Annotations[DefaultPrefix+"/backend-data"] == `{"VNI":1,"VtepMAC":"0a:00:00:00:00:01"}` &&
			n.Annotations[DefaultPrefix+"/public-ip"] == "192.168.7.1" && n.Annotations[DefaultPrefix+"/kube-subnet-manager"] == "true" &&
			n.Annotations[DefaultPrefix+"/backend-type"] == "vxlan"
	})

	// A new node joins; a working peer whose annotations turn to garbage stays.
	if _, err := client.CoreV1().Nodes().Create(ctx, node("new", "10.244.6.0/24", flannelAnn("192.168.7.6", "0a:00:00:00:00:06")), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	want("10.244.2.0/24 via 192.168.7.2 0a:00:00:00:00:02\n10.244.6.0/24 via 192.168.7.6 0a:00:00:00:00:06\n")
	bad := node("flannel", "10.244.2.0/24", flannelAnn("255.255.255.255", "0a:00:00:00:00:02"))
	if _, err := client.CoreV1().Nodes().Update(ctx, bad, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().Nodes().Delete(ctx, "new", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	want("10.244.2.0/24 via 192.168.7.2 0a:00:00:00:00:02\n")
	if got := m.m.peerEvents.WithLabelValues("invalid"); testutilValue(got) < 4 {
		t.Errorf("invalid peers counted %v, want at least 4 (zero MAC, loopback, garbage, broadcast)", testutilValue(got))
	}
}

func waitFor(t *testing.T, ctx context.Context, ok func() bool) {
	t.Helper()
	for !ok() {
		select {
		case <-ctx.Done():
			t.Fatal("condition never met")
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestTrim: the informer keeps only what weft reads of a Node.
func TestTrim(t *testing.T) {
	m, err := New(Config{Nodes: fakeNodes{fake.NewClientset().CoreV1().Nodes()}, NodeName: "self", Network: testConfig(t)})
	if err != nil {
		t.Fatal(err)
	}
	n := node("n", "10.244.2.0/24", flannelAnn("192.168.7.2", "0a:00:00:00:00:02"))
	n.Annotations["node.alpha.kubernetes.io/ttl"] = "0"
	n.Labels = map[string]string{"kubernetes.io/hostname": "n"}
	n.Status.Images = []corev1.ContainerImage{{Names: []string{"x"}}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.7.2"}}
	decoded := &Node{}
	if err := viaProtobuf(n, decoded); err != nil {
		t.Fatal(err)
	}
	out, err := m.trim(decoded)
	if err != nil {
		t.Fatal(err)
	}
	got := out.(*nodeRecord)
	ann := got.annotations(m.ann)
	if !maps.Equal(ann, flannelAnn("192.168.7.2", "0a:00:00:00:00:02")) || got.PodCIDR != "10.244.2.0/24" || got.Name != "n" || got.Created.IsZero() {
		t.Errorf("trim lost what weft reads, or kept what it does not: %+v, annotations %v", got, ann)
	}
	if key, err := cache.MetaNamespaceKeyFunc(got); err != nil || key != "n" {
		t.Errorf("the informer's key of a record: %q, %v; want n", key, err)
	}
}
