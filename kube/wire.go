package kube

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// weft's own shapes of the core/v1 objects it reads: a Node's metadata and
// podCIDR, and a Pod's node name. k8s.io/api/core/v1 is not linked into
// weftd: its generated types, codecs and scheme are some 5 MB of binary,
// and every node's weftd, etcd mode too, would hold most of that resident
// (the kernel maps a binary's pages around each page it touches). The API
// server's protobuf is decoded here field by field, skipping what weft does
// not read (a Node's status, a Pod's containers); JSON decodes into the same
// types by their tags. Field numbers are core/v1's generated.proto.

// coreV1 is the API group and version of Nodes and Pods.
var coreV1 = schema.GroupVersion{Version: "v1"}

// Node is what weft decodes of a core/v1 Node.
type Node struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              NodeSpec `json:"spec,omitempty"`
}

// NodeSpec is what weft decodes of a Node's spec.
type NodeSpec struct {
	PodCIDR string `json:"podCIDR,omitempty"`
}

// NodeList is a list of Nodes, as List returns it.
type NodeList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Node `json:"items"`
}

// pod is what weft decodes of a core/v1 Pod: the node it runs on.
type pod struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              struct {
		NodeName string `json:"nodeName,omitempty"`
	} `json:"spec,omitempty"`
}

// addToScheme registers the types above under core/v1's names, with
// metav1's options, status and watch events.
func addToScheme(s *runtime.Scheme) {
	s.AddKnownTypeWithName(coreV1.WithKind("Node"), &Node{})
	s.AddKnownTypeWithName(coreV1.WithKind("NodeList"), &NodeList{})
	s.AddKnownTypeWithName(coreV1.WithKind("Pod"), &pod{})
	metav1.AddToGroupVersion(s, coreV1)
}

// DeepCopyObject makes Node a runtime.Object.
func (n *Node) DeepCopyObject() runtime.Object {
	c := *n
	n.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}

// DeepCopyObject makes NodeList a runtime.Object.
func (l *NodeList) DeepCopyObject() runtime.Object {
	c := *l
	l.ListMeta.DeepCopyInto(&c.ListMeta)
	c.Items = make([]Node, len(l.Items))
	for i := range l.Items {
		c.Items[i] = *l.Items[i].DeepCopyObject().(*Node)
	}
	return &c
}

// DeepCopyObject makes pod a runtime.Object.
func (p *pod) DeepCopyObject() runtime.Object {
	c := *p
	p.ObjectMeta.DeepCopyInto(&c.ObjectMeta)
	return &c
}

// Reset and Unmarshal are what apimachinery's protobuf serializer calls.

func (n *Node) Reset()     { *n = Node{} }
func (l *NodeList) Reset() { *l = NodeList{} }
func (p *pod) Reset()      { *p = pod{} }

// Unmarshal decodes a Node's protobuf: metadata (1) and spec (2).
func (n *Node) Unmarshal(b []byte) error {
	return fields(b, "Node", func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			return n.ObjectMeta.Unmarshal(v)
		case 2:
			return fields(v, "NodeSpec", func(num protowire.Number, v []byte) error {
				if num == 1 { // podCIDR
					n.Spec.PodCIDR = string(v)
				}
				return nil
			})
		}
		return nil
	})
}

// Unmarshal decodes a NodeList's protobuf: metadata (1) and items (2).
func (l *NodeList) Unmarshal(b []byte) error {
	return fields(b, "NodeList", func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			return l.ListMeta.Unmarshal(v)
		case 2:
			l.Items = append(l.Items, Node{})
			return l.Items[len(l.Items)-1].Unmarshal(v)
		}
		return nil
	})
}

// Unmarshal decodes a Pod's protobuf: metadata (1) and spec.nodeName (2, 10).
func (p *pod) Unmarshal(b []byte) error {
	return fields(b, "Pod", func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			return p.ObjectMeta.Unmarshal(v)
		case 2:
			return fields(v, "PodSpec", func(num protowire.Number, v []byte) error {
				if num == 10 { // nodeName
					p.Spec.NodeName = string(v)
				}
				return nil
			})
		}
		return nil
	})
}

// fields calls f with the number and bytes of each length-delimited field
// of the protobuf message b, and skips fields of the other wire types (none
// that weft reads has one), groups included, as leniently as the generated
// code does. A malformed message is an error naming it.
func fields(b []byte, msg string, f func(protowire.Number, []byte) error) error {
	depth := 0 // inside this many groups, whose fields are skipped
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return fmt.Errorf("protobuf %s: %w", msg, protowire.ParseError(n))
		}
		b = b[n:]
		switch typ {
		case protowire.StartGroupType:
			depth++
			continue
		case protowire.EndGroupType:
			if depth == 0 {
				return fmt.Errorf("protobuf %s field %d: end of a group that did not start", msg, num)
			}
			depth--
			continue
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return fmt.Errorf("protobuf %s field %d: %w", msg, num, protowire.ParseError(n))
		}
		v := b[:n]
		b = b[n:]
		if typ != protowire.BytesType || depth > 0 {
			continue
		}
		v, _ = protowire.ConsumeBytes(v)
		if err := f(num, v); err != nil {
			return err
		}
	}
	if depth > 0 {
		return fmt.Errorf("protobuf %s: a group does not end", msg)
	}
	return nil
}
