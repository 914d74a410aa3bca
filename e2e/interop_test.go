package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/cluster"
)

// flannelLeaseAttrs is the shape flanneld (v0.2x, pkg/lease) reads and writes
// under <prefix>/subnets/: decoding weft's leases with it is what flanneld does.
type flannelLeaseAttrs struct {
	PublicIP    string
	PublicIPv6  *string `json:",omitempty"`
	BackendType string  `json:",omitempty"`
	BackendData json.RawMessage
}

type flannelVXLANData struct {
	VNI     int
	VtepMAC string
}

// TestFlannelInterop puts a flanneld node and weftd nodes in one cluster.
// flanneld cannot be installed here, so the test plays it by the schema: it
// writes the lease flanneld writes, builds flannel.1 as flanneld builds it,
// and programs the weft peers it reads back with flanneld's own lease shape.
// Then containers on both kinds of node must reach each other.
func TestFlannelInterop(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2, containers: true})
	ctx := e.ctx

	fl, err := e.c.AddHost(ctx, "flannel", netip.MustParsePrefix("172.17.42.40/16"))
	if err != nil {
		t.Fatal(err)
	}
	sub := netip.MustParsePrefix("172.16.200.0/24")
	for _, n := range e.nodes {
		if n.subnet() == sub {
			sub = netip.MustParsePrefix("172.16.201.0/24")
		}
	}
	const mac = "0e:5d:9f:0a:0b:01"
	gw := sub.Addr().String()
	run := func(args ...string) {
		t.Helper()
		if out, err := fl.Run(ctx, args...); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	// flannel.1 as flanneld makes it.
	run("ip", "link", "add", "flannel.1", "address", mac, "mtu", "1450", "type", "vxlan",
		"id", "1", "local", "172.17.42.40", "dev", "eth0", "dstport", "8472", "nolearning")
	run("ip", "addr", "add", gw+"/32", "dev", "flannel.1")
	run("ip", "link", "set", "flannel.1", "up")
	if err := fl.SetupDocker0(ctx, netip.PrefixFrom(sub.Addr().Next(), 24), 1450); err != nil {
		t.Fatal(err)
	}
	a4 := sub.Addr().As4()
	a4[3] = 7
	ct, err := fl.AddContainer(ctx, "c1", netip.AddrFrom4(a4))
	if err != nil {
		t.Fatal(err)
	}

	// The lease exactly as flanneld writes it, on a 24h etcd lease.
	grant, err := e.cli.Grant(ctx, 86400)
	if err != nil {
		t.Fatal(err)
	}
	value := fmt.Sprintf(`{"PublicIP":"172.17.42.40","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}`, mac)
	key := fmt.Sprintf("%s/subnets/%s-24", prefix, sub.Addr())
	if _, err := e.cli.Put(ctx, key, value, clientv3.WithLease(grant.ID)); err != nil {
		t.Fatal(err)
	}

	// flanneld's side: read weft's leases with flanneld's shape and program them.
	resp, err := e.cli.Get(ctx, prefix+"/subnets/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	programmed := 0
	for _, kv := range resp.Kvs {
		if string(kv.Key) == key {
			continue
		}
		var attrs flannelLeaseAttrs
		var vx flannelVXLANData
		if err := json.Unmarshal(kv.Value, &attrs); err != nil {
			t.Fatalf("flanneld could not read weft's lease %s = %s: %v", kv.Key, kv.Value, err)
		}
		if err := json.Unmarshal(attrs.BackendData, &vx); err != nil || attrs.BackendType != "vxlan" || vx.VNI != 1 {
			t.Fatalf("flanneld would not accept weft's backend data %s: %v", kv.Value, err)
		}
		name := strings.TrimPrefix(string(kv.Key), prefix+"/subnets/")
		peer, err := netip.ParsePrefix(strings.Replace(name, "-", "/", 1))
		if err != nil {
			t.Fatalf("flanneld's key format: %q: %v", kv.Key, err)
		}
		pgw := peer.Addr().String()
		run("bridge", "fdb", "replace", vx.VtepMAC, "dev", "flannel.1", "dst", attrs.PublicIP, "self", "permanent")
		run("ip", "neigh", "replace", pgw, "lladdr", vx.VtepMAC, "dev", "flannel.1", "nud", "permanent")
		run("ip", "route", "replace", peer.String(), "via", pgw, "dev", "flannel.1", "onlink")
		programmed++
	}
	if programmed != len(e.nodes) {
		t.Fatalf("flanneld side found %d weft leases, want %d", programmed, len(e.nodes))
	}

	// weft's side: every weftd programs the flanneld node as a peer.
	for _, n := range e.nodes {
		e.eventually(n.Name+" programs the flanneld node", 5*time.Second, func() (bool, string) {
			routes, _ := n.Routes(ctx)
			neigh, _ := n.Neigh(ctx)
			fdb, _ := n.FDB(ctx)
			ok := hasRoute(routes, sub) &&
				strings.Contains(neigh, gw+" lladdr "+mac+" PERMANENT") &&
				strings.Contains(fdb, mac+" dst 172.17.42.40 self permanent")
			return ok, routes + neigh + fdb
		})
	}

	// Traffic both ways between containers on weft nodes and on the flanneld node.
	for _, n := range e.nodes {
		for _, wc := range n.containers {
			if err := cluster.Ping(ctx, wc.NS, ct.Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
				t.Errorf("weft %s/%s -> flanneld container: %v", n.Name, wc.Name, err)
			}
			if err := cluster.Ping(ctx, ct.NS, wc.Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
				t.Errorf("flanneld container -> weft %s/%s: %v", n.Name, wc.Name, err)
			}
		}
	}
}
