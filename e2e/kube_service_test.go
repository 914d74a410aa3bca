package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/internal/netnsx"
)

const (
	serviceVIP  = "10.254.247.121"
	servicePort = 8080
)

// TestKubeProxyService is the reference deployment's second half on
// Kubernetes: my-nginx-service at 10.254.247.121:8080 with its two endpoints
// on node2 (172.16.78.9:80 and 172.16.78.10:80), served by real kube-proxy
// in iptables mode on every node over weft's overlay, and reached from a
// container and from the host on every node, with both endpoints answering.
func TestKubeProxyService(t *testing.T) {
	k := newKubeEnv(t)
	k.kubeNodes(3)
	for _, n := range k.nodes {
		n.waitReady(t, 2, 30*time.Second)
	}
	node2 := k.nodes[1]
	for _, ct := range node2.containers {
		serveName(t, ct)
	}
	k.createService()
	for _, n := range k.nodes {
		k.startKubeProxy(n)
	}

	for _, n := range k.nodes {
		// kube-proxy's rules serve the VIP: nothing listens on it.
		k.eventually("kube-proxy on "+n.Name+" programs my-nginx-service", 60*time.Second, func() (bool, string) {
			out, _ := n.Run(k.ctx, "iptables-save", "-t", "nat")
			return strings.Contains(out, "-d "+serviceVIP+"/32 -p tcp") && strings.Contains(out, "KUBE-SEP-"), out
		})
		// A client container of its own (.11): the endpoints themselves
		// are c1 and c2 on node2.
		client := n.addContainer("client", 11)
		for _, from := range []struct {
			what, ns string
		}{{n.Name + "/client", client.NS}, {"host " + n.Name, n.NS}} {
			seen := map[string]bool{}
			k.eventually(from.what+" reaches both endpoints of my-nginx-service", 60*time.Second, func() (bool, string) {
				body, err := httpGetIn(k.ctx, from.ns, fmt.Sprintf("http://%s:%d/", serviceVIP, servicePort))
				if err != nil {
					return false, err.Error()
				}
				seen[body] = true
				return seen["c1"] && seen["c2"], fmt.Sprint(seen)
			})
		}
	}
}

// serveName serves HTTP on :80 in ct, answering with ct's name, until the
// test ends: the nginx of the reference deployment.
func serveName(t *testing.T, ct *cluster.Container) {
	t.Helper()
	var ln net.Listener
	err := netnsx.DoNamed(ct.NS, func() (err error) {
		ln, err = net.Listen("tcp", ct.Addr.String()+":80")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, ct.Name)
	}), ReadHeaderTimeout: 5 * time.Second}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

// httpGetIn fetches url with a connection made in namespace ns.
func httpGetIn(ctx context.Context, ns, url string) (string, error) {
	c := &http.Client{Timeout: 3 * time.Second, Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			var conn net.Conn
			err := netnsx.DoNamed(ns, func() (err error) {
				conn, err = (&net.Dialer{}).DialContext(ctx, network, addr)
				return err
			})
			return conn, err
		},
	}}
	req, err := http.NewRequestWithContext(ctx, "GET", url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}

// createService creates my-nginx-service as service.yml describes it, with
// the reference ClusterIP, and its EndpointSlice by hand (there is no
// controller manager): the two containers on node2.
func (k *kubeEnv) createService() {
	k.t.Helper()
	// service.yml of the reference deployment, with its ClusterIP, created
	// by kubectl as an operator would.
	svc := filepath.Join(k.dir, "service.yml")
	if err := os.WriteFile(svc, []byte(`{
    "kind": "Service",
    "apiVersion": "v1",
    "metadata": {
        "name": "my-nginx-service"
    },
    "spec": {
        "clusterIP": "`+serviceVIP+`",
        "selector": {
            "app": "my-nginx"
        },
        "ports": [
            {
                "protocol": "TCP",
                "port": 8080,
                "targetPort": 80
            }
        ]
    }
}
`), 0o644); err != nil {
		k.t.Fatal(err)
	}
	if out, err := k.master.Run(k.ctx, filepath.Join(k.kbin, "kubectl"), "--kubeconfig", k.kubeconfig, "create", "-f", svc); err != nil {
		k.t.Fatalf("kubectl create -f service.yml: %v\n%s", err, out)
	}
	ready, port, proto := true, int32(80), corev1.ProtocolTCP
	node2 := "node2"
	var eps []discoveryv1.Endpoint
	for _, a := range []string{"172.16.78.9", "172.16.78.10"} {
		eps = append(eps, discoveryv1.Endpoint{Addresses: []string{a}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}, NodeName: &node2})
	}
	name := ""
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "my-nginx-service-1", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: "my-nginx-service", discoveryv1.LabelManagedBy: "weft-e2e"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   eps,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}},
	}
	if _, err := k.client.DiscoveryV1().EndpointSlices("default").Create(k.ctx, slice, metav1.CreateOptions{}); err != nil {
		k.t.Fatalf("creating my-nginx-service's EndpointSlice: %v", err)
	}
}

// startKubeProxy runs kube-proxy in iptables mode on n. It leaves the
// conntrack settings alone (the table size is the host's, not the
// namespace's): only n's own iptables and sysctls change.
func (k *kubeEnv) startKubeProxy(n *node) {
	k.t.Helper()
	_, err := n.Start("kube-proxy", filepath.Join(k.kbin, "kube-proxy"),
		"--kubeconfig", k.kubeconfig,
		"--hostname-override", n.Name,
		"--proxy-mode", "iptables",
		"--cluster-cidr", "172.16.0.0/12",
		"--conntrack-max-per-core", "0",
		"--conntrack-tcp-timeout-established", "0",
		"--conntrack-tcp-timeout-close-wait", "0",
		"--metrics-bind-address", "127.0.0.1:10249",
		"--healthz-bind-address", "127.0.0.1:10256",
		"-v", "2")
	if err != nil {
		k.t.Fatal(err)
	}
}
