package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// nodeStatus is what /status says, as far as these tests look.
type nodeStatus struct {
	Status struct {
		ConfigRevision int64
		ConfigPending  string
	}
	Ready    bool
	NotReady []string
}

func (n *node) status(t *testing.T) (int, nodeStatus) {
	t.Helper()
	code, body := n.weftdGet(n.t.Context(), "/status")
	var st nodeStatus
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("%s /status: %d %q: %v", n.Name, code, body, err)
	}
	return code, st
}

// TestConfigRefused: a config weft refuses (a Network over loopback, a range
// of one subnet) leaves weftd up and not ready, saying why in its log,
// /readyz and /status, with no device, no rule, no subnet file and no lease.
// Once the config is fixed the node comes up.
func TestConfigRefused(t *testing.T) {
	e := newBareEnv(t)
	ctx := e.ctx
	e.startEtcd()
	e.cli = e.client()
	put := func(v string) {
		t.Helper()
		if _, err := e.cli.Put(ctx, prefix+"/config", v); err != nil {
			t.Fatal(err)
		}
	}
	a := e.addNode("node1", mustPrefix("172.17.42.31/16"))
	rulesBefore, err := a.Run(ctx, "iptables-save")
	if err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct{ config, why, log string }{
		{`{"Network":"127.0.0.0/8"}`, `Network "127.0.0.0/8": overlaps 127.0.0.0/8 (loopback)`, "overlaps 127.0.0.0/8 (loopback)"},
		{`{"Network":"172.16.0.0/12","SubnetMin":"172.16.5.0","SubnetMax":"172.16.5.0"}`, "leaves 1 subnet, fewer than 2", "leaves 1 subnet, fewer than 2"},
		{`{"Network":"224.0.0.0/8"}`, "overlaps 224.0.0.0/4 (multicast)", "overlaps 224.0.0.0/4 (multicast)"},
	} {
		put(c.config)
		e.eventually("/readyz says "+c.why, 5*time.Second, func() (bool, string) {
			code, body := a.weftdGet(ctx, "/readyz")
			return code == http.StatusServiceUnavailable && strings.Contains(body, c.why), fmt.Sprint(code, body)
		})
		code, st := a.status(t)
		if code != http.StatusServiceUnavailable || st.Ready || len(st.NotReady) != 1 || !strings.Contains(st.NotReady[0], c.why) {
			t.Errorf("/status: %d %+v, want not ready because %s", code, st, c.why)
		}
		a.waitLog(t, c.log, 5*time.Second)
	}
	select {
	case <-a.proc.Done():
		t.Fatalf("weftd exited on a refused config:\n%s", a.proc.Tail(10))
	default:
	}
	if out, err := a.IP(ctx, "link", "show", "flannel.1"); err == nil {
		t.Errorf("flannel.1 made under a refused config:\n%s", out)
	}
	if rules, _ := a.Run(ctx, "iptables-save"); rules != rulesBefore {
		t.Errorf("iptables changed under a refused config:\n%s", rules)
	}
	if _, err := os.Stat(a.subnetFile); err == nil {
		t.Errorf("subnet file written under a refused config")
	}
	if r, err := e.cli.Get(ctx, prefix+"/subnets/", clientv3.WithPrefix()); err != nil || len(r.Kvs) != 0 {
		t.Errorf("leases under a refused config: %v %v", r.Kvs, err)
	}
	if n := a.logCount("refusing the network config"); n != 3 {
		t.Errorf("%d log lines refusing the config, want one per refused revision (3)", n)
	}

	put(netConfig)
	a.waitSubnetFile(15 * time.Second)
	a.waitReady(t, 0, 10*time.Second)
}

// TestConfigChangeLive: a range that grows is applied by running nodes at
// once; a change that needs a restart (another Network) is applied not at
// all, shown in /status and `weftctl status`, and the data plane and rules
// stay exactly as they were. `weftctl config set` refuses to overwrite a
// config changed since `weftctl config get` showed it.
func TestConfigChangeLive(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2})
	ctx := e.ctx
	a := e.nodes[0]
	weftctl := filepath.Join(e.bin, "weftctl")
	a.waitReady(t, 1, 10*time.Second)
	_, st := a.status(t)
	rev0 := st.Status.ConfigRevision
	if rev0 == 0 {
		t.Fatalf("/status shows no config revision: %+v", st)
	}

	// A peer below SubnetMin is refused by the lease rulebook...
	e.putPeer(e.cli, "172.16.0.0/24", "172.17.42.77", "02:00:00:00:00:77")
	e.eventually("node1 refuses a peer below SubnetMin", 5*time.Second, func() (bool, string) {
		return a.logCount("below SubnetMin") > 0, a.proc.Tail(10)
	})
	if routes, _ := a.Routes(ctx); hasRoute(routes, mustPrefix("172.16.0.0/24")) {
		t.Fatalf("a peer outside SubnetMin..SubnetMax was programmed:\n%s", routes)
	}

	// ...until a wider range is applied live, and it is programmed.
	out, err := a.Run(ctx, weftctl, "config", "get", "--etcd-endpoints", etcdURL)
	if err != nil || !strings.Contains(out, fmt.Sprintf("revision %d", rev0)) {
		t.Fatalf("weftctl config get: %v\n%s", err, out)
	}
	wide := `{"Network":"172.16.0.0/12","SubnetMin":"172.16.0.0"}`
	out, err = a.Run(ctx, weftctl, "config", "set", "--etcd-endpoints", etcdURL, "--if-revision", fmt.Sprint(rev0), wide)
	if err != nil || strings.Contains(out, "restart") {
		t.Fatalf("weftctl config set (wider): %v\n%s", err, out)
	}
	e.eventually("node1 applies the wider range", 5*time.Second, func() (bool, string) {
		_, st := a.status(t)
		return st.Status.ConfigRevision > rev0 && st.Status.ConfigPending == "", fmt.Sprintf("%+v", st)
	})
	a.waitLog(t, "applying config change live", 5*time.Second)
	e.eventually("node1 programs a peer on the first subnet, now in range", 5*time.Second, func() (bool, string) {
		routes, _ := a.Routes(ctx)
		return hasRoute(routes, mustPrefix("172.16.0.0/24")), routes
	})
	a.waitReady(t, 2, 10*time.Second)
	_, st = a.status(t)
	rev1 := st.Status.ConfigRevision
	before := a.dataplane(ctx)

	// A stale --if-revision, and a blind set of a different config: refused,
	// nothing written.
	out, err = a.Run(ctx, weftctl, "config", "set", "--etcd-endpoints", etcdURL, "--if-revision", fmt.Sprint(rev0), `{"Network":"10.0.0.0/8"}`)
	if err == nil || !strings.Contains(out, "changed since you read it") {
		t.Fatalf("set with a stale --if-revision: %v\n%s", err, out)
	}
	out, err = a.Run(ctx, weftctl, "config", "set", "--etcd-endpoints", etcdURL, `{"Network":"10.0.0.0/8"}`)
	if err == nil || !strings.Contains(out, "--if-revision") {
		t.Fatalf("blind set: %v\n%s", err, out)
	}
	if r, err := e.cli.Get(ctx, prefix+"/config"); err != nil || r.Kvs[0].ModRevision != rev1 {
		t.Fatalf("a refused set wrote the config: %v %v", r.Kvs, err)
	}

	// Another Network: needs a restart, applied not at all.
	out, err = a.Run(ctx, weftctl, "config", "set", "--etcd-endpoints", etcdURL, "--force", `{"Network":"10.0.0.0/8"}`)
	if err != nil || !strings.Contains(out, "only after a restart (Network 172.16.0.0/12 -> 10.0.0.0/8") {
		t.Fatalf("weftctl config set --force: %v\n%s", err, out)
	}
	for _, n := range e.nodes {
		e.eventually(n.Name+" shows the change as pending", 5*time.Second, func() (bool, string) {
			_, st := n.status(t)
			return strings.Contains(st.Status.ConfigPending, "needs a restart of weftd: Network 172.16.0.0/12 -> 10.0.0.0/8"), fmt.Sprintf("%+v", st)
		})
	}
	out, err = a.Run(ctx, weftctl, "status")
	if err != nil || !strings.Contains(out, "config:") || !strings.Contains(out, "needs a restart") || !strings.Contains(out, "ready:              yes") {
		t.Errorf("weftctl status: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	if got := a.dataplane(ctx); got != before {
		t.Errorf("a change needing a restart was half-applied:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	if _, st := a.status(t); st.Status.ConfigRevision != rev1 || !st.Ready {
		t.Errorf("after the pending change: %+v, want ready at revision %d", st, rev1)
	}
}
