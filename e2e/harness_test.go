// Package e2e runs weft the way operators do: real weftd binaries on
// namespace nodes laid out as REFERENCE.md shows, a real etcd process on the
// master, real VXLAN devices and iptables, and real pings between containers.
// Every test builds its own cluster and removes it, also on failure. Packets go
// only to addresses inside the namespaces the test made.
package e2e

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/network"
)

const (
	etcdAddr    = "172.17.42.30"
	etcdURL     = "http://172.17.42.30:2379"
	outsideAddr = "172.17.42.200"
	prefix      = "/coreos.com/network"
	netConfig   = `{"Network":"172.16.0.0/12","Backend":{"Type":"vxlan"}}`
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// weftBin returns the directory holding weftd and weftctl: $WEFT_BIN (set by
// `make test`), else a fresh build.
func weftBin(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		if d := os.Getenv("WEFT_BIN"); d != "" {
			binDir = d
			return
		}
		binDir, buildErr = os.MkdirTemp("", "weft-e2e-bin-")
		if buildErr != nil {
			return
		}
		for _, c := range []string{"weftd", "weftctl"} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, c), "../cmd/"+c).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("building %s: %v\n%s", c, err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binDir
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root: they build network namespaces, VXLAN devices and iptables rules")
	}
	for _, tool := range []string{"ip", "bridge", "iptables", "etcd", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (make deps installs it): %v", tool, err)
		}
	}
}

// node is one weft host of the test cluster.
type node struct {
	*cluster.Host
	t          *testing.T
	args       []string
	subnetFile string
	proc       *cluster.Proc
	containers []*cluster.Container
}

// env is a running test cluster.
type env struct {
	t       *testing.T
	ctx     context.Context
	c       *cluster.Cluster
	master  *cluster.Host
	outside *cluster.Host
	etcd    *cluster.Proc
	etcdDir string
	cli     *clientv3.Client
	nodes   []*node
	bin     string
}

type clusterOpts struct {
	nodes      int
	containers bool     // two containers per node on docker0, from subnet.env
	weftdArgs  []string // extra flags for every weftd
}

// newEnv builds master (etcd), outside and n weft nodes, writes the network
// config and starts weftd everywhere.
func newEnv(t *testing.T, o clusterOpts) *env {
	t.Helper()
	e := newBareEnv(t)
	ctx, c := e.ctx, e.c
	var err error
	if e.outside, err = c.AddHost(ctx, "outside", netip.MustParsePrefix(outsideAddr+"/16")); err != nil {
		t.Fatal(err)
	}
	e.startEtcd()
	e.cli = e.client()
	if _, err := e.cli.Put(ctx, prefix+"/config", netConfig); err != nil {
		t.Fatalf("writing the network config: %v", err)
	}
	for i := range o.nodes {
		e.addNode(fmt.Sprintf("node%d", i+1), netip.MustParsePrefix(fmt.Sprintf("172.17.42.%d/16", 31+i)), o.weftdArgs...)
	}
	for _, n := range e.nodes {
		n.waitSubnetFile(30 * time.Second)
	}
	if o.containers {
		for _, n := range e.nodes {
			n.dockerUp()
			n.addContainer("c1", 5)
			n.addContainer("c2", 9)
		}
	}
	return e
}

func (e *env) startEtcd() { e.runEtcd(etcdURL, etcdURL) }

// runEtcd starts etcd on the master, listening on listen and advertising
// advertise, with its data in e.etcdDir across restarts, and waits until it
// accepts connections.
func (e *env) runEtcd(listen, advertise string, extra ...string) {
	e.t.Helper()
	args := append([]string{"etcd",
		"--name", "master",
		"--data-dir", filepath.Join(e.etcdDir, "data"),
		"--listen-client-urls", listen,
		"--advertise-client-urls", advertise,
		"--listen-peer-urls", "http://127.0.0.1:2380",
		"--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", "master=http://127.0.0.1:2380",
		"--log-level", "warn",
	}, extra...)
	p, err := e.master.Start("etcd", args...)
	if err != nil {
		e.t.Fatalf("starting etcd: %v", err)
	}
	e.etcd = p
	err = cluster.WaitFor(e.ctx, 20*time.Second, 100*time.Millisecond, func() (bool, string) {
		conn, err := e.master.DialContext(e.ctx, "tcp", etcdAddr+":2379")
		if err != nil {
			return false, err.Error()
		}
		conn.Close()
		return true, ""
	})
	if err != nil {
		e.t.Fatalf("etcd did not start: %v\n%s", err, p.Tail(20))
	}
}

// client is an etcd client that reaches the master's etcd through a socket
// made in the master's namespace.
func (e *env) client() *clientv3.Client {
	e.t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{etcdURL},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return e.master.DialContext(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		e.t.Fatalf("etcd client: %v", err)
	}
	e.t.Cleanup(func() { cli.Close() })
	return cli
}

func (e *env) addNode(name string, addr netip.Prefix, extra ...string) *node {
	e.t.Helper()
	h, err := e.c.AddHost(e.ctx, name, addr)
	if err != nil {
		e.t.Fatal(err)
	}
	n := &node{Host: h, t: e.t, subnetFile: filepath.Join(e.c.Dir, name, "subnet.env")}
	n.args = append([]string{filepath.Join(e.bin, "weftd"),
		"--etcd-endpoints", etcdURL,
		"--iface", "eth0",
		"--ip-masq",
		"--subnet-file", n.subnetFile,
		"--log-level", "debug",
	}, extra...)
	n.start()
	e.nodes = append(e.nodes, n)
	return n
}

func (n *node) start() {
	n.t.Helper()
	p, err := n.Start("weftd", n.args...)
	if err != nil {
		n.t.Fatalf("starting weftd on %s: %v", n.Name, err)
	}
	n.proc = p
}

func (n *node) stop() {
	n.t.Helper()
	if err := n.proc.Stop(5 * time.Second); err != nil {
		n.t.Errorf("weftd on %s did not stop cleanly on SIGTERM: %v\n%s", n.Name, err, n.proc.Tail(20))
	}
}

func (n *node) waitSubnetFile(timeout time.Duration) network.SubnetEnv {
	n.t.Helper()
	var env network.SubnetEnv
	err := cluster.WaitFor(context.Background(), timeout, 50*time.Millisecond, func() (bool, string) {
		var err error
		env, err = network.ReadSubnetEnv(n.subnetFile)
		if err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if err != nil {
		n.t.Fatalf("%s: no subnet file: %v\n%s", n.Name, err, n.proc.Tail(30))
	}
	return env
}

func (n *node) subnet() netip.Prefix {
	n.t.Helper()
	env, err := network.ReadSubnetEnv(n.subnetFile)
	if err != nil {
		n.t.Fatal(err)
	}
	return env.Lease()
}

// dockerUp does what Docker does with --bip and --mtu from subnet.env.
func (n *node) dockerUp() {
	n.t.Helper()
	env := n.waitSubnetFile(10 * time.Second)
	if err := n.SetupDocker0(context.Background(), env.Subnet, env.MTU); err != nil {
		n.t.Fatal(err)
	}
}

// addContainer puts a container at <subnet>.<host> behind docker0.
func (n *node) addContainer(name string, host byte) *cluster.Container {
	n.t.Helper()
	a := n.subnet().Addr().As4()
	a[3] = host
	ct, err := n.AddContainer(context.Background(), name, netip.AddrFrom4(a))
	if err != nil {
		n.t.Fatal(err)
	}
	n.containers = append(n.containers, ct)
	return ct
}

// vtepMAC is the MAC of the node's flannel.1, as the kernel shows it.
func (n *node) vtepMAC() string {
	n.t.Helper()
	out, err := n.IP(context.Background(), "-br", "link", "show", "flannel.1")
	if err != nil {
		n.t.Fatal(err)
	}
	f := strings.Fields(out)
	if len(f) < 3 {
		n.t.Fatalf("unexpected ip -br link output %q", out)
	}
	return f[2]
}

func (e *env) dumpLogs() {
	for _, n := range e.nodes {
		if n.proc != nil {
			e.t.Logf("--- weftd on %s (%s):\n%s", n.Name, n.proc.LogPath(), n.proc.Tail(40))
		}
		for _, what := range [][]string{{"-d", "link", "show", "flannel.1"}, {"route"}, {"neigh", "show", "dev", "flannel.1"}} {
			out, _ := n.IP(context.Background(), what...)
			e.t.Logf("%s: ip %s\n%s", n.Name, strings.Join(what, " "), out)
		}
	}
	if e.etcd != nil {
		e.t.Logf("--- etcd:\n%s", e.etcd.Tail(15))
	}
}

// eventually polls cond until it holds or timeout passes, and returns how long it took.
func (e *env) eventually(what string, timeout time.Duration, cond func() (bool, string)) time.Duration {
	e.t.Helper()
	start := time.Now()
	if err := cluster.WaitFor(e.ctx, timeout, 20*time.Millisecond, cond); err != nil {
		e.t.Fatalf("%s: not within %v: %v", what, timeout, err)
	}
	return time.Since(start)
}

func mustPrefix(s string) netip.Prefix { return netip.MustParsePrefix(s) }

// hasRoute reports whether routes (`ip route` output) hold the overlay route
// to subnet s: "<s> via <s.0> dev flannel.1 onlink", with the fixed per-subnet
// metric weft gives it so that the kernel hashes peers' routes apart.
func hasRoute(routes string, s netip.Prefix) bool {
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(s.String()) + ` via ` + regexp.QuoteMeta(s.Addr().String()) + ` dev flannel\.1 (metric \d+ )?onlink`)
	return re.MatchString(routes)
}
