package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/subnet"
)

// The bench's network. Everything lives in namespaces this run creates: an
// underlay switch, one node per weftd run (eth0 10.250.0.1/16, etcd on its
// loopback), and one namespace per floor measurement. Synthetic peers have
// PublicIPs on 10.250.0.0/16 that no host has; nothing is ever sent to them.
const (
	network    = `{"Network":"172.16.0.0/12","SubnetLen":24,"Backend":{"Type":"vxlan"}}`
	prefix     = "/coreos.com/network"
	etcdURL    = "http://127.0.0.1:2379"
	metricsURL = "127.0.0.1:8285"
	nodeAddr   = "10.250.0.1/16"
)

// synth is one synthetic peer.
type synth struct {
	subnet netip.Prefix
	public netip.Addr
	mac    [6]byte
}

// synthPeers returns n peers: subnet i+1 of 172.16.0.0/12 (the first one is
// below flannel's SubnetMin), a PublicIP on the underlay that no host has,
// and a locally administered MAC.
func synthPeers(n int) []synth {
	ps := make([]synth, n)
	for i := range ps {
		s := i + 1 // 172.16.0.0 + s * 256
		ps[i] = synth{
			subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(16 + s>>8), byte(s), 0}), 24),
			public: netip.AddrFrom4([4]byte{10, 250, byte(1 + i/250), byte(1 + i%250)}),
			mac:    [6]byte{0x0e, 0x77, 0, byte(i >> 16), byte(i >> 8), byte(i)},
		}
	}
	return ps
}

func (p synth) key() string { return prefix + "/subnets/" + subnet.KeyName(p.subnet) }

func (p synth) value() string {
	v, _ := json.Marshal(map[string]any{
		"PublicIP":    p.public.String(),
		"BackendType": "vxlan",
		"BackendData": map[string]any{"VNI": 1, "VtepMAC": net.HardwareAddr(p.mac[:]).String()},
	})
	return string(v)
}

// env is the bench's cluster of namespaces.
type env struct {
	t   testing.TB
	c   *cluster.Cluster
	bin string
	dir string
	// burstPeers are the peers the bursts remove and add back.
	burstPeers []synth
}

func newEnv(ctx context.Context, t testing.TB, bin string) (*env, error) {
	sweepStale()
	dir := t.TempDir()
	c, err := cluster.New(ctx, cluster.Options{Prefix: fmt.Sprintf("weft-bench-%d-", os.Getpid()), Dir: dir})
	if err != nil {
		return nil, err
	}
	return &env{t: t, c: c, bin: bin, dir: dir}, nil
}

func (e *env) close() error { return e.c.Close() }

// sweepStale removes the namespaces of earlier runs whose process is gone
// (a run killed by its timeout cannot clean up): they are named
// weft-bench-<pid>-*.
func sweepStale() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	done := map[string]bool{}
	for l := range strings.Lines(string(out)) {
		name, _, _ := strings.Cut(strings.TrimSpace(l), " ")
		rest, ok := strings.CutPrefix(name, "weft-bench-")
		pid, _, ok2 := strings.Cut(rest, "-")
		if _, err := strconv.Atoi(pid); err != nil || !ok || !ok2 || done[pid] {
			continue
		}
		if _, err := os.Stat("/proc/" + pid); err == nil {
			continue // that run is still going
		}
		done[pid] = true
		_ = cluster.Sweep("weft-bench-" + pid + "-")
	}
}

// dropHost deletes a floor host's device now, so its entries do not linger
// in the kernel while the next measurement runs (the namespace itself goes
// at the end).
func (e *env) dropHost(ctx context.Context, h *cluster.Host) {
	_, _ = h.IP(ctx, "link", "del", "flannel.1")
}

func linkIndex(ctx context.Context, h *cluster.Host, name string) (int, error) {
	out, err := h.IP(ctx, "-o", "link", "show", name)
	if err != nil {
		return 0, err
	}
	i := strings.IndexByte(out, ':')
	if i < 0 {
		return 0, fmt.Errorf("unexpected ip link output %q", out)
	}
	return strconv.Atoi(out[:i])
}

// node is one weftd host: its namespace, its etcd and (while running) weftd.
type node struct {
	e    *env
	h    *cluster.Host
	etcd *cluster.Proc
	cli  *clientv3.Client
	// etcdLease is attached to every synthetic key, as flannel attaches
	// each to one; its TTL outlasts the bench and it is never kept alive,
	// so the bench makes no etcd request while it measures weftd.
	etcdLease clientv3.LeaseID
	weftd     *cluster.Proc
	subnetEnv string
}

func (e *env) newNode(ctx context.Context, name string) (*node, error) {
	h, err := e.c.AddHost(ctx, name, netip.MustParsePrefix(nodeAddr))
	if err != nil {
		return nil, err
	}
	n := &node{e: e, h: h, subnetEnv: filepath.Join(e.dir, name, "subnet.env")}
	data := filepath.Join(e.dir, name, "etcd")
	p, err := h.Start("etcd", "etcd",
		"--name", name, "--data-dir", data,
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
		"--initial-cluster", name+"=http://127.0.0.1:2380",
		"--max-txn-ops", "5000", "--log-level", "warn")
	if err != nil {
		return nil, err
	}
	n.etcd = p
	n.cli, err = clientv3.New(clientv3.Config{
		Endpoints:   []string{etcdURL},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return h.DialContext(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		return nil, err
	}
	err = cluster.WaitFor(ctx, 20*time.Second, 50*time.Millisecond, func() (bool, string) {
		c, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if _, err := n.cli.Put(c, prefix+"/config", network); err != nil {
			return false, err.Error()
		}
		return true, ""
	})
	if err != nil {
		return nil, fmt.Errorf("etcd did not start: %w\n%s", err, p.Tail(20))
	}
	g, err := n.cli.Grant(ctx, int64((2 * time.Hour).Seconds()))
	if err != nil {
		return nil, err
	}
	n.etcdLease = g.ID
	return n, nil
}

// close stops weftd and etcd; the namespace goes with the cluster.
func (n *node) close() {
	if n.weftd != nil {
		_ = n.weftd.Stop(5 * time.Second)
	}
	if n.cli != nil {
		n.cli.Close()
	}
	if n.etcd != nil {
		_ = n.etcd.Stop(5 * time.Second)
	}
}

// put writes peers' leases, in transactions of up to 1,000 keys.
func (n *node) put(ctx context.Context, peers []synth) error {
	for len(peers) > 0 {
		k := min(len(peers), 1000)
		ops := make([]clientv3.Op, 0, k)
		for _, p := range peers[:k] {
			ops = append(ops, clientv3.OpPut(p.key(), p.value(), clientv3.WithLease(n.etcdLease)))
		}
		if _, err := n.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("writing %d leases: %w", k, err)
		}
		peers = peers[k:]
	}
	return nil
}

// del deletes peers' leases in one transaction per 1,000 keys.
func (n *node) del(ctx context.Context, peers []synth) error {
	for len(peers) > 0 {
		k := min(len(peers), 1000)
		ops := make([]clientv3.Op, 0, k)
		for _, p := range peers[:k] {
			ops = append(ops, clientv3.OpDelete(p.key()))
		}
		if _, err := n.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return fmt.Errorf("deleting %d leases: %w", k, err)
		}
		peers = peers[k:]
	}
	return nil
}

// startWeftd starts weftd as an operator would, at the default log level.
func (n *node) startWeftd() (*cluster.Proc, error) {
	p, err := n.h.Start("weftd", filepath.Join(n.e.bin, "weftd"),
		"--etcd-endpoints", etcdURL,
		"--iface", "eth0",
		"--subnet-file", n.subnetEnv,
		"--metrics-addr", metricsURL,
		"--log-level", envOr("WEFT_BENCH_LOG_LEVEL", "info"))
	if err != nil {
		return nil, err
	}
	n.weftd = p
	return p, nil
}

// ownSubnet is the subnet weftd leased, from its subnet.env.
func (n *node) ownSubnet() (netip.Prefix, error) {
	b, err := os.ReadFile(n.subnetEnv)
	if err != nil {
		return netip.Prefix{}, err
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), "FLANNEL_SUBNET="); ok {
			p, err := netip.ParsePrefix(v)
			return p.Masked(), err
		}
	}
	return netip.Prefix{}, fmt.Errorf("no FLANNEL_SUBNET in %s", n.subnetEnv)
}

// httpGet fetches a URL from inside the node's namespace.
func (n *node) httpGet(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c := &http.Client{Transport: &http.Transport{DialContext: n.h.DialContext, DisableKeepAlives: true}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return string(b), nil
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}
