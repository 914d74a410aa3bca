package kube

import (
	"maps"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/kubernetes/scheme"
)

// fullNode is a Node as a kubelet and flanneld leave it: status, labels,
// managedFields and annotations beyond flannel's.
func fullNode(name, cidr string) *corev1.Node {
	n := node(name, cidr, flannelAnn("192.168.7.2", "0a:00:00:00:00:02"))
	n.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Node"}
	n.ResourceVersion = "4711"
	n.CreationTimestamp = metav1.Unix(1764547200, 0) // the wire carries seconds
	n.UID = "c0ffee"
	n.Annotations["node.alpha.kubernetes.io/ttl"] = "0"
	n.Labels = map[string]string{"kubernetes.io/hostname": name}
	n.Spec.PodCIDRs = []string{cidr}
	n.Spec.Taints = []corev1.Taint{{Key: "k", Effect: corev1.TaintEffectNoSchedule}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.7.2"}}
	n.Status.Capacity = corev1.ResourceList{}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}}
	return n
}

// sameNode reports what differs between what weft decoded and the Node.
func sameNode(t *testing.T, what string, got *Node, want *corev1.Node) {
	t.Helper()
	if got.Name != want.Name || got.ResourceVersion != want.ResourceVersion || got.Spec.PodCIDR != want.Spec.PodCIDR ||
		!got.CreationTimestamp.Equal(&want.CreationTimestamp) || !maps.Equal(got.Annotations, want.Annotations) {
		t.Errorf("%s: decoded %s rv %s podCIDR %q created %v annotations %v; want %s rv %s podCIDR %q created %v annotations %v", what,
			got.Name, got.ResourceVersion, got.Spec.PodCIDR, got.CreationTimestamp, got.Annotations,
			want.Name, want.ResourceVersion, want.Spec.PodCIDR, want.CreationTimestamp, want.Annotations)
	}
}

// TestWireDecodes: what the API server sends, in protobuf or JSON, encoded
// by Kubernetes' own core/v1 code, decodes into weft's types through the
// same codecs Client uses.
func TestWireDecodes(t *testing.T) {
	ours := runtime.NewScheme()
	addToScheme(ours)
	dec := serializer.NewCodecFactory(ours).WithoutConversion()
	theirs := serializer.NewCodecFactory(scheme.Scheme)
	list := &corev1.NodeList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "NodeList"},
		ListMeta: metav1.ListMeta{ResourceVersion: "99", Continue: "next"},
		Items:    []corev1.Node{*fullNode("a", "10.244.1.0/24"), *fullNode("b", "10.244.2.0/24")}}
	p := &corev1.Pod{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}, ObjectMeta: metav1.ObjectMeta{Name: "weft-x", Namespace: "kube-system"}}
	p.Spec.NodeName = "a"
	p.Spec.Containers = []corev1.Container{{Name: "weftd", Image: "weft"}}

	for _, mediaType := range []string{runtime.ContentTypeProtobuf, runtime.ContentTypeJSON} {
		enc, ok := runtime.SerializerInfoForMediaType(theirs.SupportedMediaTypes(), mediaType)
		if !ok {
			t.Fatalf("no %s serializer", mediaType)
		}
		in, ok := runtime.SerializerInfoForMediaType(dec.SupportedMediaTypes(), mediaType)
		if !ok {
			t.Fatalf("Client's codecs lack %s", mediaType)
		}
		encode := func(o runtime.Object) []byte {
			b, err := runtime.Encode(theirs.EncoderForVersion(enc.Serializer, corev1.SchemeGroupVersion), o)
			if err != nil {
				t.Fatal(err)
			}
			return b
		}

		got, _, err := in.Serializer.Decode(encode(list), nil, &NodeList{})
		if err != nil {
			t.Fatalf("%s NodeList: %v", mediaType, err)
		}
		gl := got.(*NodeList)
		if gl.ResourceVersion != "99" || gl.Continue != "next" || len(gl.Items) != 2 {
			t.Fatalf("%s NodeList: rv %q continue %q, %d items; want 99, next, 2", mediaType, gl.ResourceVersion, gl.Continue, len(gl.Items))
		}
		for i := range gl.Items {
			sameNode(t, mediaType+" NodeList item", &gl.Items[i], &list.Items[i])
		}

		// A watch event's object comes with no target type: the scheme
		// makes a Node of weft's.
		got, _, err = in.Serializer.Decode(encode(&list.Items[1]), nil, nil)
		if err != nil {
			t.Fatalf("%s Node: %v", mediaType, err)
		}
		n, ok := got.(*Node)
		if !ok {
			t.Fatalf("%s Node decoded as %T", mediaType, got)
		}
		sameNode(t, mediaType+" Node", n, &list.Items[1])

		got, _, err = in.Serializer.Decode(encode(p), nil, &pod{})
		if err != nil {
			t.Fatalf("%s Pod: %v", mediaType, err)
		}
		if gp := got.(*pod); gp.Spec.NodeName != "a" || gp.Name != "weft-x" {
			t.Errorf("%s Pod: node %q name %q, want a, weft-x", mediaType, gp.Spec.NodeName, gp.Name)
		}
	}
}

// FuzzNodeUnmarshal: weft's Node decoder never panics, takes whatever
// core/v1's generated decoder takes, and reads from it the same name, resourceVersion, creation time, annotations and podCIDR.
func FuzzNodeUnmarshal(f *testing.F) {
	for _, n := range []*corev1.Node{fullNode("a", "10.244.1.0/24"), node("b", "", nil), {}} {
		b, err := n.Marshal()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{0x0a, 0xff})       // a length beyond the end
	f.Add([]byte{0x12, 0x02, 0x0a}) // a spec cut short
	f.Fuzz(func(t *testing.T, b []byte) {
		var ours Node
		oursErr := ours.Unmarshal(b)
		var theirs corev1.Node
		if err := theirs.Unmarshal(b); err != nil {
			return // weft may take what core/v1 refuses, in fields it skips
		}
		if oursErr != nil {
			t.Fatalf("core/v1 decodes %x, weft refuses it: %v", b, oursErr)
		}
		sameNode(t, "fuzzed Node", &ours, &theirs)
	})
}
