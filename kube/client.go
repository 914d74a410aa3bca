package kube

import (
	"context"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
)

// NodeAPI is what the Manager needs of the API server, in weft's own Node
// types (wire.go); Client implements it.
type NodeAPI interface {
	List(ctx context.Context, opts metav1.ListOptions) (*NodeList, error)
	Watch(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error)
	Patch(ctx context.Context, name string, pt types.PatchType, data []byte, opts metav1.PatchOptions, subresources ...string) (*Node, error)
}

// Client talks to the API server about Nodes and Pods only. It is client-go's
// REST client with a scheme of weft's own Node and Pod types (wire.go): the
// generated clientset, or even k8s.io/api/core/v1 alone, would put megabytes
// of types weftd never uses into its binary, and so into every node's
// memory, in etcd mode too.
type Client struct {
	rc *rest.RESTClient
	pc runtime.ParameterCodec
}

var _ NodeAPI = (*Client)(nil)

// NewClient makes a Client from a rest.Config (kubeconfig or in-cluster).
func NewClient(c *rest.Config) (*Client, error) {
	scheme := runtime.NewScheme()
	addToScheme(scheme)
	c = rest.CopyConfig(c)
	c.APIPath = "/api"
	c.GroupVersion = &coreV1
	c.NegotiatedSerializer = serializer.NewCodecFactory(scheme).WithoutConversion()
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("making the Kubernetes client: %w", err)
	}
	return &Client{rc: rc, pc: runtime.NewParameterCodec(scheme)}, nil
}

func timeout(o metav1.ListOptions) time.Duration {
	if o.TimeoutSeconds != nil {
		return time.Duration(*o.TimeoutSeconds) * time.Second
	}
	return 0
}

// List lists the Nodes.
func (c *Client) List(ctx context.Context, o metav1.ListOptions) (*NodeList, error) {
	out := &NodeList{}
	err := c.rc.Get().Resource("nodes").VersionedParams(&o, c.pc).Timeout(timeout(o)).Do(ctx).Into(out)
	return out, err
}

// Watch watches the Nodes.
func (c *Client) Watch(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
	o.Watch = true
	return c.rc.Get().Resource("nodes").VersionedParams(&o, c.pc).Timeout(timeout(o)).Watch(ctx)
}

// Patch patches a Node or one of its subresources.
func (c *Client) Patch(ctx context.Context, name string, pt types.PatchType, data []byte, o metav1.PatchOptions, sub ...string) (*Node, error) {
	out := &Node{}
	err := c.rc.Patch(pt).Resource("nodes").Name(name).SubResource(sub...).VersionedParams(&o, c.pc).Body(data).Do(ctx).Into(out)
	return out, err
}

// PodNode returns the name of the node the pod runs on.
func (c *Client) PodNode(ctx context.Context, namespace, name string) (string, error) {
	p := &pod{}
	if err := c.rc.Get().Namespace(namespace).Resource("pods").Name(name).Do(ctx).Into(p); err != nil {
		return "", err
	}
	return p.Spec.NodeName, nil
}
