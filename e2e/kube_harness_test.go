package e2e

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/internal/cluster"
)

// The Kubernetes-mode tests run the real control plane on the master
// namespace: etcd 3.6+ and kube-apiserver, built from the Go module proxy by
// e2e/kube/tools/build.sh into a cache outside the repository (the first run
// on a machine pays about 6 minutes of build on 2 cores). There is no
// kubelet and no controller manager: the test plays them, creating each
// Node with its podCIDR and InternalIP, and EndpointSlices by hand.
const (
	apiURL      = "https://" + etcdAddr + ":6443"
	kubeNetConf = `{"Network":"172.16.0.0/12","Backend":{"Type":"vxlan"}}`
	serviceCIDR = "10.254.0.0/16"
	kubePrefix  = "flannel.alpha.coreos.com"
)

var (
	kubeBinOnce sync.Once
	kubeBinDir  string
	kubeBinErr  error
)

// kubeBins returns the directory holding etcd, kube-apiserver, kube-proxy and
// kubectl: $WEFT_KUBE_BIN, else the cache build.sh fills (building what is
// missing, once per machine).
func kubeBins(t *testing.T) string {
	t.Helper()
	kubeBinOnce.Do(func() {
		if d := os.Getenv("WEFT_KUBE_BIN"); d != "" {
			kubeBinDir = d
			return
		}
		start := time.Now()
		cmd := exec.Command("bash", "kube/tools/build.sh")
		cmd.Stderr = os.Stderr
		out, err := cmd.Output()
		if err != nil {
			kubeBinErr = fmt.Errorf("building the Kubernetes test binaries (e2e/kube/tools/build.sh): %v", err)
			return
		}
		kubeBinDir = strings.TrimSpace(string(out))
		if d := time.Since(start); d > time.Minute {
			t.Logf("built the Kubernetes test binaries into %s in %v", kubeBinDir, d.Round(time.Second))
		}
	})
	if kubeBinErr != nil {
		t.Fatal(kubeBinErr)
	}
	return kubeBinDir
}

// kubeEnv is a namespace cluster with a real API server on the master.
type kubeEnv struct {
	*env
	kbin       string
	dir        string
	token      string
	kubeconfig string // admin's, for kube-proxy
	// weftKubeconfig is the ServiceAccount of deploy/kubernetes/weft-kube.yaml:
	// weftd runs with exactly the ClusterRole the manifest grants.
	weftKubeconfig string
	netConf        string
	api            *cluster.Proc
	apiArgs        []string
	client         kubernetes.Interface
}

func newKubeEnv(t *testing.T) *kubeEnv {
	t.Helper()
	needRoot(t)
	kbin := kubeBins(t)
	k := &kubeEnv{env: newBareEnv(t), kbin: kbin, dir: t.TempDir()}
	b := make([]byte, 16)
	rand.Read(b)
	k.token = hex.EncodeToString(b)
	k.startEtcd3()
	k.writeFiles()
	k.startAPI()
	k.client = k.newClient()
	k.applyManifestRBAC()
	return k
}

// startEtcd3 runs the etcd that build.sh built (3.6 or later: the API
// server needs watch progress notifications) on the master's loopback.
func (k *kubeEnv) startEtcd3() {
	k.t.Helper()
	p, err := k.master.Start("etcd", filepath.Join(k.kbin, "etcd"),
		"--name", "master", "--data-dir", filepath.Join(k.dir, "etcd"),
		"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "master=http://127.0.0.1:2380", "--log-level", "warn")
	if err != nil {
		k.t.Fatal(err)
	}
	k.etcd = p
}

func (k *kubeEnv) writeFiles() {
	k.t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		k.t.Fatal(err)
	}
	der := x509.MarshalPKCS1PrivateKey(key)
	write := func(name, content string) string {
		p := filepath.Join(k.dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			k.t.Fatal(err)
		}
		return p
	}
	saKey := write("sa.key", string(pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: der})))
	b := make([]byte, 16)
	rand.Read(b)
	weftToken := hex.EncodeToString(b)
	tokens := write("tokens.csv", k.token+",admin,admin,system:masters\n"+
		weftToken+",system:serviceaccount:kube-system:weft,weft,system:serviceaccounts\n")
	kubeconfig := func(token string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: test
  cluster:
    server: %s
    insecure-skip-tls-verify: true
users:
- name: admin
  user:
    token: %s
contexts:
- name: test
  context:
    cluster: test
    user: admin
current-context: test
`, apiURL, token)
	}
	k.kubeconfig = write("kubeconfig", kubeconfig(k.token))
	k.weftKubeconfig = write("weft.kubeconfig", kubeconfig(weftToken))
	k.netConf = write("net-conf.json", kubeNetConf)
	k.apiArgs = []string{filepath.Join(k.kbin, "kube-apiserver"),
		"--etcd-servers", "http://127.0.0.1:2379",
		"--bind-address", etcdAddr, "--advertise-address", etcdAddr, "--secure-port", "6443",
		"--cert-dir", filepath.Join(k.dir, "certs"),
		"--token-auth-file", tokens,
		"--authorization-mode", "RBAC",
		"--service-cluster-ip-range", serviceCIDR,
		"--service-account-issuer", "https://kubernetes.default.svc",
		"--service-account-key-file", saKey,
		"--service-account-signing-key-file", saKey,
		"--endpoint-reconciler-type", "none",
		"--profiling=false",
		"-v", "1",
	}
}

// startAPI starts kube-apiserver on the master and waits until it is ready.
func (k *kubeEnv) startAPI() {
	k.t.Helper()
	p, err := k.master.Start("apiserver", k.apiArgs...)
	if err != nil {
		k.t.Fatal(err)
	}
	k.api = p
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{
		DialContext:     k.master.DialContext,
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
	}}
	start := time.Now()
	err = cluster.WaitFor(k.ctx, 90*time.Second, 100*time.Millisecond, func() (bool, string) {
		req, _ := http.NewRequest("GET", apiURL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+k.token)
		resp, err := hc.Do(req)
		if err != nil {
			return false, err.Error()
		}
		resp.Body.Close()
		return resp.StatusCode == 200, resp.Status
	})
	if err != nil {
		k.t.Fatalf("kube-apiserver not ready: %v\n%s\n--- etcd:\n%s", err, p.Tail(30), k.etcd.Tail(10))
	}
	k.t.Logf("kube-apiserver ready in %v", time.Since(start).Round(time.Millisecond))
}

// newClient is a client of the API server that dials from the master.
func (k *kubeEnv) newClient() kubernetes.Interface {
	k.t.Helper()
	c, err := kubernetes.NewForConfig(&rest.Config{
		Host:            apiURL,
		BearerToken:     k.token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		Dial:            k.master.DialContext,
		QPS:             1000, Burst: 1000,
	})
	if err != nil {
		k.t.Fatal(err)
	}
	return c
}

// createNode does what a kubelet and the controller manager do for a node:
// the Node with its podCIDR, and its InternalIP in status.addresses.
func (k *kubeEnv) createNode(name, addr, podCIDR string, ann map[string]string) {
	k.t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: ann}}
	n.Spec.PodCIDR = podCIDR
	if podCIDR != "" {
		n.Spec.PodCIDRs = []string{podCIDR}
	}
	n, err := k.client.CoreV1().Nodes().Create(k.ctx, n, metav1.CreateOptions{})
	if err != nil {
		k.t.Fatalf("creating Node %s: %v", name, err)
	}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: addr}, {Type: corev1.NodeHostName, Address: name}}
	if _, err := k.client.CoreV1().Nodes().UpdateStatus(k.ctx, n, metav1.UpdateOptions{}); err != nil {
		k.t.Fatalf("setting Node %s's addresses: %v", name, err)
	}
}

// addKubeNode creates Node name and starts weftd in Kubernetes mode there.
// The host gets a default route to the master, as a real host has one: a
// host's connection to a service VIP needs a route before kube-proxy's DNAT.
func (k *kubeEnv) addKubeNode(name, addr, podCIDR string, extra ...string) *node {
	k.t.Helper()
	k.createNode(name, addr, podCIDR, nil)
	args := append([]string{"--kube-subnet-mgr", "--kubeconfig-file", k.weftKubeconfig, "--net-config-path", k.netConf,
		"--ip-masq", "--metrics-addr", "127.0.0.1:8285"}, extra...)
	n := k.addWeftd(name, addr, []string{"NODE_NAME=" + name}, args...)
	if out, err := n.IP(k.ctx, "route", "add", "default", "via", etcdAddr, "dev", "eth0"); err != nil {
		k.t.Fatalf("default route on %s: %v\n%s", name, err, out)
	}
	return n
}

// kubeNodes starts weftd on n nodes, node1 to node<n>, with the reference
// deployment's subnets (172.16.28.0/24 and 172.16.78.0/24 first) as their
// podCIDRs, and two containers each.
func (k *kubeEnv) kubeNodes(n int) {
	k.t.Helper()
	cidrs := []string{"172.16.28.0/24", "172.16.78.0/24", "172.16.43.0/24", "172.16.51.0/24"}
	for i := range n {
		k.addKubeNode(fmt.Sprintf("node%d", i+1), fmt.Sprintf("172.17.42.%d", 31+i), cidrs[i])
	}
	for i, nd := range k.nodes {
		env := nd.waitSubnetFile(60 * time.Second)
		if env.Lease().String() != cidrs[i] {
			k.t.Fatalf("%s: subnet.env has %v, want its podCIDR %s", nd.Name, env.Lease(), cidrs[i])
		}
		nd.dockerUp()
		nd.addContainer("c1", 9)
		nd.addContainer("c2", 10)
	}
}

// node returns the Node object name.
func (k *kubeEnv) node(name string) *corev1.Node {
	k.t.Helper()
	n, err := k.client.CoreV1().Nodes().Get(k.ctx, name, metav1.GetOptions{})
	if err != nil {
		k.t.Fatalf("reading Node %s: %v", name, err)
	}
	return n
}

// pingAll pings every container from every other node's containers and
// from every other node.
func (k *kubeEnv) pingAll() {
	k.t.Helper()
	for _, a := range k.nodes {
		for _, b := range k.nodes {
			if a == b {
				continue
			}
			for _, dst := range b.containers {
				if err := cluster.Ping(k.ctx, a.containers[0].NS, dst.Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
					k.t.Errorf("%s/c1 -> %s/%s (%v): %v", a.Name, b.Name, dst.Name, dst.Addr, err)
				}
			}
			if err := cluster.Ping(k.ctx, a.NS, b.containers[0].Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
				k.t.Errorf("host %s -> %s/c1: %v", a.Name, b.Name, err)
			}
		}
	}
}

// applyManifestRBAC creates every object of deploy/kubernetes/weft-kube.yaml
// in the API server, which validates them: the ClusterRole and its binding
// are what weftd's ServiceAccount user runs with in these tests.
func (k *kubeEnv) applyManifestRBAC() {
	k.t.Helper()
	objs := readKubeManifest(k.t)
	var err error
	for _, o := range objs {
		switch o := o.(type) {
		case *corev1.ServiceAccount:
			_, err = k.client.CoreV1().ServiceAccounts(o.Namespace).Create(k.ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRole:
			_, err = k.client.RbacV1().ClusterRoles().Create(k.ctx, o, metav1.CreateOptions{})
		case *rbacv1.ClusterRoleBinding:
			_, err = k.client.RbacV1().ClusterRoleBindings().Create(k.ctx, o, metav1.CreateOptions{})
		case *corev1.ConfigMap:
			_, err = k.client.CoreV1().ConfigMaps(o.Namespace).Create(k.ctx, o, metav1.CreateOptions{})
		case *appsv1.DaemonSet:
			_, err = k.client.AppsV1().DaemonSets(o.Namespace).Create(k.ctx, o, metav1.CreateOptions{})
		}
		if err != nil {
			k.t.Fatalf("the API server refuses %T of %s: %v", o, kubeManifest, err)
		}
	}
}

const kubeManifest = "../deploy/kubernetes/weft-kube.yaml"

// readKubeManifest decodes every object of the Kubernetes-mode manifest
// strictly into its Kubernetes type.
func readKubeManifest(t *testing.T) []any {
	t.Helper()
	raw, err := os.ReadFile(kubeManifest)
	if err != nil {
		t.Fatal(err)
	}
	var out []any
	for _, doc := range regexp.MustCompile(`(?m)^---$`).Split(string(raw), -1) {
		var meta metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &meta); err != nil {
			t.Fatalf("%s: %v", kubeManifest, err)
		}
		var o any
		switch meta.Kind {
		case "ServiceAccount":
			o = &corev1.ServiceAccount{}
		case "ClusterRole":
			o = &rbacv1.ClusterRole{}
		case "ClusterRoleBinding":
			o = &rbacv1.ClusterRoleBinding{}
		case "ConfigMap":
			o = &corev1.ConfigMap{}
		case "DaemonSet":
			o = &appsv1.DaemonSet{}
		default:
			t.Fatalf("%s: unexpected kind %q", kubeManifest, meta.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), o); err != nil {
			t.Fatalf("%s: %s: %v", kubeManifest, meta.Kind, err)
		}
		out = append(out, o)
	}
	return out
}
