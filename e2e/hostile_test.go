package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestHostileLeases writes every kind of garbage into the subnets prefix. No
// working route may go, each bad entry is counted, and once a broken lease is
// corrected its peer converges.
func TestHostileLeases(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 3, containers: true})
	ctx := e.ctx
	a, b, c := e.nodes[0], e.nodes[1], e.nodes[2]
	before := a.dataplane(ctx)
	invalid0 := a.metric(ctx, "weft_peer_events_total", `type="invalid"`)

	bs := b.subnet()
	dup := fmt.Sprintf("%s/subnets/%s-23", prefix, bs.Addr()) // overlaps node2's /24
	garbage := map[string]string{
		prefix + "/subnets/not-a-subnet":                                 `{"PublicIP":"172.17.42.90","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:90"}}`,
		prefix + "/subnets/172.16.201.0-24":                              `not json at all`,
		prefix + "/subnets/172.16.202.0-24":                              `{"PublicIP":5,"BackendType":["vxlan"],"BackendData":"x"}`,
		prefix + "/subnets/10.9.0.0-24":                                  `{"PublicIP":"172.17.42.91","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:91"}}`,
		prefix + "/subnets/172.16.203.7-24":                              `{"PublicIP":"172.17.42.92","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:92"}}`,
		prefix + "/subnets/172.17.9.0-24":                                `{"PublicIP":"172.17.42.93","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:93"}}`,
		prefix + "/subnets/172.16.204.0-24":                              `{"PublicIP":"172.17.42.94","BackendType":"udp","BackendData":{}}`,
		prefix + "/subnets/172.16.205.0-24":                              `{"PublicIP":"127.0.0.1","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:95"}}`,
		prefix + "/subnets/172.16.206.0-24":                              `{"PublicIP":"172.17.42.96","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"not-a-mac"}}`,
		prefix + "/subnets/172.16.207.0-24":                              `{"PublicIP":"172.17.42.97","BackendType":"vxlan","BackendData":{"VNI":7,"VtepMAC":"02:00:00:00:00:97"}}`,
		dup:                                                              `{"PublicIP":"172.17.42.98","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:98"}}`,
		prefix + "/subnets/172.16.208.0-24":                              strings.Repeat("[", 100000),
		fmt.Sprintf("%s/subnets/%s-24", prefix, a.subnet().Addr()) + "x": `{}`,
	}
	for k, v := range garbage {
		if _, err := e.cli.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
	}
	// node3's own lease turns to garbage: node1 must keep node3's entries.
	ckey := e.leaseKey(c)
	resp, err := e.cli.Get(ctx, ckey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading node3's lease: %v", err)
	}
	good := resp.Kvs[0]
	if _, err := e.cli.Put(ctx, ckey, `{"PublicIP":"garbage"`); err != nil {
		t.Fatal(err)
	}

	e.eventually("every bad entry counted", 5*time.Second, func() (bool, string) {
		v := a.metric(ctx, "weft_peer_events_total", `type="invalid"`)
		return v-invalid0 >= float64(len(garbage)), fmt.Sprintf("invalid events: %v (want +%d)", v-invalid0, len(garbage))
	})
	time.Sleep(time.Second)
	if got := a.dataplane(ctx); got != before {
		t.Errorf("garbage in etcd changed node1's data plane:\nbefore:\n%s\nafter:\n%s", before, got)
	}
	for _, n := range e.nodes {
		select {
		case <-n.proc.Done():
			t.Fatalf("weftd on %s exited:\n%s", n.Name, n.proc.Tail(20))
		default:
		}
	}

	// The operator deletes the garbage; node3 registers its subnet again
	// and node1's data plane is as it was.
	for k := range garbage {
		if _, err := e.cli.Delete(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.cli.Delete(ctx, ckey); err != nil {
		t.Fatal(err)
	}
	e.eventually("node3 registers again", 10*time.Second, func() (bool, string) {
		r, err := e.cli.Get(ctx, ckey)
		return err == nil && len(r.Kvs) == 1 && string(r.Kvs[0].Value) == string(good.Value), fmt.Sprint(r, err)
	})
	e.eventually("node1 as it was", 5*time.Second, func() (bool, string) {
		got := a.dataplane(ctx)
		return got == before, got
	})

	// A new peer whose lease starts as garbage converges once corrected.
	key := prefix + "/subnets/172.16.209.0-24"
	if _, err := e.cli.Put(ctx, key, `{"PublicIP":"172.17.42.99","BackendType":"vxlan"`); err != nil {
		t.Fatal(err)
	}
	if _, err := e.cli.Put(ctx, key, `{"PublicIP":"172.17.42.99","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:00:00:00:00:99"}}`); err != nil {
		t.Fatal(err)
	}
	e.eventually("node1 programs the corrected peer", 5*time.Second, func() (bool, string) {
		return a.hasPeer(ctx, mustPrefix("172.16.209.0/24"), "172.16.209.0")
	})
	if _, err := e.cli.Delete(ctx, key); err != nil {
		t.Fatal(err)
	}
	e.eventually("node1 drops it when deleted", 5*time.Second, func() (bool, string) {
		got := a.dataplane(ctx)
		return got == before, got
	})
}
