package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/cluster"
)

// dataplane is a node's overlay state as the kernel prints it, normalised so
// that two snapshots compare equal when a user would see no difference: the
// device (less its ifindex and counters), the routes, neighbours and FDB
// entries on it, and weft's iptables rules.
func (n *node) dataplane(ctx context.Context) string {
	var b strings.Builder
	link, _ := n.LinkDetail(ctx)
	for _, l := range strings.Split(link, "\n") {
		l = strings.TrimSpace(regexp.MustCompile(`^\d+: `).ReplaceAllString(l, ""))
		if l != "" {
			b.WriteString("link: " + l + "\n")
		}
	}
	for _, c := range [][]string{
		{"ip", "route", "show", "dev", "flannel.1"},
		{"ip", "neigh", "show", "dev", "flannel.1"},
		{"bridge", "fdb", "show", "dev", "flannel.1"},
		{"ip", "-4", "addr", "show", "dev", "flannel.1"},
		{"iptables-save"},
		{"nft", "-s", "list", "table", "inet", "weft"}, // -s: without counter values
	} {
		out, err := n.Run(ctx, c...)
		if err != nil {
			out = "error: " + err.Error()
		}
		var lines []string
		for _, l := range strings.Split(out, "\n") {
			l = strings.TrimSpace(l)
			if l == "" || strings.HasPrefix(l, "#") || strings.Contains(l, "valid_lft") || regexp.MustCompile(`^\d+: `).MatchString(l) {
				continue
			}
			lines = append(lines, c[0]+": "+l)
		}
		slices.Sort(lines)
		b.WriteString(strings.Join(lines, "\n") + "\n")
	}
	return b.String()
}

// metric reads one series from the node's weftd /metrics (the sum over series
// matching the label filter, e.g. `kind="route"`).
func (n *node) metric(ctx context.Context, name, labels string) float64 {
	n.t.Helper()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, netw, addr string) (net.Conn, error) {
		return n.DialContext(ctx, netw, addr)
	}}, Timeout: 5 * time.Second}
	resp, err := client.Get("http://127.0.0.1:8285/metrics")
	if err != nil {
		n.t.Fatalf("%s /metrics: %v", n.Name, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	total := 0.0
	sc := bufio.NewScanner(strings.NewReader(string(body)))
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) || (len(line) > len(name) && line[len(name)] != '{' && line[len(name)] != ' ') {
			continue
		}
		if labels != "" && !strings.Contains(line, labels) {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			total += v
		}
	}
	return total
}

// logCount counts lines of the node's weftd log that contain s.
func (n *node) logCount(s string) int {
	return strings.Count(n.proc.Tail(100000), s)
}

// infoCount counts info-level lines of the node's weftd log that contain s:
// what an operator sees at the default level.
func (n *node) infoCount(s string) int {
	k := 0
	for _, l := range strings.Split(n.proc.Tail(100000), "\n") {
		if strings.Contains(l, "level=INFO") && strings.Contains(l, s) {
			k++
		}
	}
	return k
}

type fault struct {
	name   string
	budget time.Duration
	kind   string // weft_reconcile_repairs_total label the repair is counted under
	break_ func(t *testing.T, e *env, n, peer *node)
}

func sh(t *testing.T, ctx context.Context, n *node, args ...string) {
	t.Helper()
	if out, err := n.Run(ctx, args...); err != nil {
		t.Fatalf("%s: %s: %v\n%s", n.Name, strings.Join(args, " "), err, out)
	}
}

// replaceDevice swaps flannel.1 for a VXLAN device with other attributes in
// one `ip -batch`, so that weftd cannot recreate flannel.1 in between.
func replaceDevice(t *testing.T, ctx context.Context, n *node, vxlanArgs string) {
	t.Helper()
	batch := "link add weftwrong type vxlan " + vxlanArgs + "\n" +
		"link set flannel.1 down\n" +
		"link set flannel.1 name weftold\n" +
		"link set weftwrong name flannel.1\n" +
		"link del weftold\n"
	f := filepath.Join(t.TempDir(), "batch")
	if err := os.WriteFile(f, []byte(batch), 0o644); err != nil {
		t.Fatal(err)
	}
	sh(t, ctx, n, "ip", "-batch", f)
}

// TestRepairs breaks node1's data plane in every way issue 3 lists, one at a
// time, and checks that weftd puts back exactly what was there, within the
// fault's budget, that the other node was not disturbed, and that the repair
// was counted and logged.
func TestRepairs(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx
	n, peer := e.nodes[0], e.nodes[1]
	ps, pmac := peer.subnet(), peer.vtepMAC()
	gw := ps.Addr().String()
	faults := []fault{
		{"route deleted", time.Second, "route", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "ip", "route", "del", ps.String())
		}},
		{"route altered", time.Second, "route", func(t *testing.T, e *env, n, p *node) {
			// weft's route, on flannel.1 with its metric, pointed at another gateway.
			f := strings.Fields(run(t, n, "ip route show "+ps.String()+" dev flannel.1"))
			metric := f[slices.Index(f, "metric")+1]
			sh(t, ctx, n, "ip", "route", "replace", ps.String(), "via", "172.16.99.0", "dev", "flannel.1", "metric", metric, "onlink")
		}},
		{"neighbour deleted", time.Second, "neigh", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "ip", "neigh", "del", gw, "dev", "flannel.1")
		}},
		{"neighbour altered", time.Second, "neigh", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "ip", "neigh", "replace", gw, "lladdr", "02:00:00:00:00:99", "dev", "flannel.1", "nud", "permanent")
		}},
		{"fdb entry deleted", time.Second, "fdb", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "bridge", "fdb", "del", pmac, "dev", "flannel.1", "self")
		}},
		{"fdb entry altered", time.Second, "fdb", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "bridge", "fdb", "replace", pmac, "dev", "flannel.1", "dst", "172.17.42.99", "self", "permanent")
		}},
		{"stale route, neighbour and fdb entry of a departed peer", time.Second, "route", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "bridge", "fdb", "add", "02:00:00:00:00:77", "dev", "flannel.1", "dst", "172.17.42.77", "self", "permanent")
			sh(t, ctx, n, "ip", "neigh", "add", "172.16.250.0", "lladdr", "02:00:00:00:00:77", "dev", "flannel.1", "nud", "permanent")
			sh(t, ctx, n, "ip", "route", "add", "172.16.250.0/24", "via", "172.16.250.0", "dev", "flannel.1", "onlink")
		}},
		{"flannel.1 deleted", 2 * time.Second, "link", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "ip", "link", "del", "flannel.1")
		}},
		{"flannel.1 MTU changed", 2 * time.Second, "link", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "ip", "link", "set", "flannel.1", "mtu", "1300")
		}},
		{"flannel.1 learning turned on", 2 * time.Second, "link", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "ip", "link", "set", "flannel.1", "type", "vxlan", "learning")
		}},
		{"flannel.1 recreated with another VNI", 2 * time.Second, "link", func(t *testing.T, e *env, n, p *node) {
			replaceDevice(t, ctx, n, "id 2 local "+n.Addr.Addr().String()+" dev eth0 dstport 8472 nolearning")
		}},
		{"flannel.1 recreated with another port", 2 * time.Second, "link", func(t *testing.T, e *env, n, p *node) {
			replaceDevice(t, ctx, n, "id 1 local "+n.Addr.Addr().String()+" dev eth0 dstport 4789 nolearning")
		}},
		{"flannel.1 local address changed", 2 * time.Second, "link", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "ip", "link", "set", "flannel.1", "type", "vxlan", "local", "172.17.42.99")
		}},
		{"masquerade chain flushed", 5 * time.Second, "rule", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "iptables", "-t", "nat", "-F", "WEFT-POSTRTG")
		}},
		{"forward chain flushed", 5 * time.Second, "rule", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "iptables", "-F", "WEFT-FWD")
		}},
		{"VXLAN ingress table deleted", 5 * time.Second, "rule", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "nft", "delete", "table", "inet", "weft")
		}},
		{"masquerade jump deleted", 5 * time.Second, "rule", func(t *testing.T, e *env, n, p *node) {
			sh(t, ctx, n, "iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment", "weft: masquerade traffic leaving the overlay", "-j", "WEFT-POSTRTG")
		}},
	}
	src, dst := n.containers[0], peer.containers[0]
	for _, f := range faults {
		t.Run(f.name, func(t *testing.T) {
			// Let checks the last repair scheduled run first.
			time.Sleep(300 * time.Millisecond)
			before, peerBefore := n.dataplane(ctx), peer.dataplane(ctx)
			repairs := n.metric(ctx, "weft_reconcile_repairs_total", fmt.Sprintf("kind=%q", f.kind))
			logs := n.infoCount("repaired")
			f.break_(t, e, n, peer)
			broken := time.Now()
			var last string
			err := cluster.WaitFor(ctx, f.budget+3*time.Second, 10*time.Millisecond, func() (bool, string) {
				last = n.dataplane(ctx)
				return last == before, last
			})
			took := time.Since(broken)
			if err != nil {
				t.Fatalf("not repaired:\nwant:\n%s\ngot:\n%s", before, last)
			}
			if took > f.budget {
				t.Errorf("repaired in %v, budget %v", took.Round(time.Millisecond), f.budget)
			} else {
				t.Logf("repaired in %v (budget %v)", took.Round(time.Millisecond), f.budget)
			}
			if err := cluster.Ping(ctx, src.NS, dst.Addr, cluster.PingOpts{Timeout: 3 * time.Second}); err != nil {
				t.Errorf("overlay broken after the repair: %v", err)
			}
			if got := peer.dataplane(ctx); got != peerBefore {
				t.Errorf("%s changed although only %s was broken:\nbefore:\n%s\nafter:\n%s", peer.Name, n.Name, peerBefore, got)
			}
			e.eventually("repair counted", 2*time.Second, func() (bool, string) {
				v := n.metric(ctx, "weft_reconcile_repairs_total", fmt.Sprintf("kind=%q", f.kind))
				return v > repairs, fmt.Sprintf("weft_reconcile_repairs_total{kind=%q} = %v, was %v", f.kind, v, repairs)
			})
			if got := n.infoCount("repaired") - logs; got != 1 {
				t.Errorf("%d log lines about the repair, want one:\n%s", got, n.proc.Tail(20))
			}
		})
	}
}

// TestUplinkFlap takes node1's uplink down and up again; the overlay must work
// again within 2 s of the uplink coming back, with the same state.
func TestUplinkFlap(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx
	n, peer := e.nodes[0], e.nodes[1]
	before := n.dataplane(ctx)
	sh(t, ctx, n, "ip", "link", "set", "eth0", "down")
	time.Sleep(time.Second)
	sh(t, ctx, n, "ip", "link", "set", "eth0", "up")
	up := time.Now()
	took := e.eventually("overlay back after the uplink came up", 5*time.Second, func() (bool, string) {
		err := cluster.Ping(ctx, n.containers[0].NS, peer.containers[0].Addr, cluster.PingOpts{Timeout: 300 * time.Millisecond})
		if err != nil {
			return false, err.Error()
		}
		return n.dataplane(ctx) == before, n.dataplane(ctx)
	})
	_ = up
	if took > 2*time.Second {
		t.Errorf("overlay back %v after the uplink came up, budget 2s", took)
	}
	t.Logf("overlay back %v after the uplink came up", took.Round(time.Millisecond))
}
