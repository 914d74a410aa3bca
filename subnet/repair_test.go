package subnet

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/etcdtest"
)

// judge's table: what each value found on our key means.
func TestJudge(t *testing.T) {
	cfg := mustConfig(t, testNet)
	req := node(31, cfg)
	h := &holder{attrs: LeaseAttrs{PublicIP: req.PublicIP, BackendType: "vxlan", VNI: 1, VtepMAC: req.VtepMAC}}
	const ours, theirs = 0x10, 0x20
	mine := val(req.PublicIP.String(), req.VtepMAC.String(), 1)
	other := val("172.17.9.9", macFor("172.17.9.9"), 1)
	held := Lease{EtcdLeaseID: ours}
	reserved := Lease{}
	for _, tc := range []struct {
		name  string
		l     Lease
		kv    *mvccpb.KeyValue
		want  verdict
		match string
	}{
		{"our value", held, &mvccpb.KeyValue{Value: []byte(mine), Lease: ours}, intact, ""},
		{"deleted", held, nil, lost, "key deleted"},
		{"garbage on our lease", held, &mvccpb.KeyValue{Value: []byte("\x1b[2J"), Lease: ours}, foreign, "invalid value"},
		{"garbage without a lease", held, &mvccpb.KeyValue{Value: []byte(`{"PublicIP":"x"}`)}, foreign, "invalid value"},
		{"garbage on another lease", held, &mvccpb.KeyValue{Value: []byte(`{`), Lease: theirs}, foreign, "invalid value"},
		{"oversized", held, &mvccpb.KeyValue{Value: []byte(strings.Repeat(" ", MaxValueSize+1)), Lease: theirs}, foreign, "over the 65536-byte limit"},
		{"another address, no lease", held, &mvccpb.KeyValue{Value: []byte(other)}, foreign, "no etcd lease"},
		{"another address on our lease", held, &mvccpb.KeyValue{Value: []byte(other), Lease: ours}, foreign, "this node's etcd lease"},
		{"another address on its own lease", held, &mvccpb.KeyValue{Value: []byte(other), Lease: theirs}, claimed, "by node 172.17.9.9"},
		{"our address, another MAC", held, &mvccpb.KeyValue{Value: []byte(val(req.PublicIP.String(), mac1, 1)), Lease: ours}, foreign, "VtepMAC"},
		{"our value made a reservation", held, &mvccpb.KeyValue{Value: []byte(mine)}, lost, "etcd lease 0"},
		{"our value on another lease", held, &mvccpb.KeyValue{Value: []byte(mine), Lease: theirs}, lost, "etcd lease 20"},
		{"reservation intact", reserved, &mvccpb.KeyValue{Value: []byte(mine)}, intact, ""},
		{"reservation garbage", reserved, &mvccpb.KeyValue{Value: []byte("x")}, lost, "reservation"},
		{"reservation for another", reserved, &mvccpb.KeyValue{Value: []byte(other)}, lost, "reservation"},
	} {
		v, why := h.judge(tc.l, tc.kv)
		if v != tc.want || !strings.Contains(why, tc.match) {
			t.Errorf("%s: %v %q, want %v and a reason with %q", tc.name, v, why, tc.want, tc.match)
		}
	}
}

// Garbage and another address without a lease of its own over a live key
// are written back at once, with a compare-and-swap, on our etcd lease; a
// real claim is not fought, and the key comes back when it is freed.
func TestHoldRepairsOwnKey(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	cfg := mustConfig(t, testNet)
	r := fastRegistry(t, cli)
	r.verifyEvery = time.Hour // the watch must do it
	req := node(31, cfg)
	h := startHold(t, r, req)
	l := h.next(t)
	want, _, _ := getKey(t, cli, l.Key)

	back := func(what string) {
		t.Helper()
		deadline := time.Now().Add(2 * time.Second)
		for {
			resp, err := cli.Get(ctx, l.Key)
			if err != nil {
				t.Fatal(err)
			}
			if len(resp.Kvs) == 1 && resp.Kvs[0].Lease == l.EtcdLeaseID {
				if a, err := ParseLeaseAttrs(resp.Kvs[0].Value); err == nil && sameAttrs(a, want) {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: key not written back within 2s: %v", what, resp.Kvs)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	for _, w := range []struct {
		what, value string
		lease       clientv3.LeaseID
	}{
		{"terminal escapes", "\x1b]0;pwned\x07", 0},
		{"megabyte of garbage", strings.Repeat("[", 1<<20), 0},
		{"another address, no lease", val("172.17.9.9", macFor("172.17.9.9"), 1), 0},
		{"another address on our lease", val("172.17.9.9", macFor("172.17.9.9"), 1), clientv3.LeaseID(l.EtcdLeaseID)},
	} {
		var opts []clientv3.OpOption
		if w.lease != 0 {
			opts = append(opts, clientv3.WithLease(w.lease))
		}
		if _, err := cli.Put(ctx, l.Key, w.value, opts...); err != nil {
			t.Fatal(err)
		}
		back(w.what)
	}
	// The counter goes up once the repair's transaction has answered, which
	// may be just after the key shows the repair.
	for deadline := time.Now().Add(2 * time.Second); counterValue(t, r.m.repairs) < 4 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if n := counterValue(t, r.m.repairs); n != 4 {
		t.Errorf("weft_lease_repairs_total = %v, want 4", n)
	}
	if n := counterValue(t, r.m.conflicts); n != 0 {
		t.Errorf("weft_lease_conflicts_total = %v, want 0: garbage is no claim", n)
	}
	select {
	case l2 := <-h.leases:
		t.Fatalf("the lease was re-acquired (%+v): it should have been repaired in place", l2)
	default:
	}

	// A real claim: another address on another live etcd lease. No fight.
	g, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	claim := val("172.17.9.9", macFor("172.17.9.9"), 1)
	put, err := cli.Put(ctx, l.Key, claim, clientv3.WithLease(g.ID))
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	resp, err := cli.Get(ctx, l.Key)
	if err != nil {
		t.Fatal(err)
	}
	if kv := resp.Kvs[0]; string(kv.Value) != claim || kv.ModRevision != put.Header.Revision {
		t.Fatalf("fought a live claim: key now %q at mod revision %d, claim was at %d", kv.Value, kv.ModRevision, put.Header.Revision)
	}
	if n := counterValue(t, r.m.conflicts); n < 1 {
		t.Errorf("weft_lease_conflicts_total = %v, want >= 1", n)
	}
	if n := counterValue(t, r.m.repairs); n != 4 {
		t.Errorf("weft_lease_repairs_total = %v, want still 4", n)
	}
	// The claimant goes (its lease ends): ours again, same subnet.
	if _, err := cli.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	if l2 := h.next(t); l2.Subnet != l.Subnet {
		t.Fatalf("after the claim ended got %v, want %v", l2.Subnet, l.Subnet)
	}
}

// The repair is a compare-and-swap: a value that changed since the one
// judged is not overwritten blind.
func TestRepairComparesModRevision(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	cfg := mustConfig(t, testNet)
	r := fastRegistry(t, cli)
	req := node(31, cfg)
	g, err := cli.Grant(ctx, 60)
	if err != nil {
		t.Fatal(err)
	}
	key := r.SubnetKey(netip.MustParsePrefix("172.16.5.0/24"))
	first, err := cli.Put(ctx, key, "garbage")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, key, "newer garbage"); err != nil {
		t.Fatal(err)
	}
	h := &holder{r: r, req: req, attrs: LeaseAttrs{PublicIP: req.PublicIP, BackendType: "vxlan", VNI: 1, VtepMAC: req.VtepMAC}}
	h.value = val(req.PublicIP.String(), req.VtepMAC.String(), 1)
	l := Lease{Key: key, EtcdLeaseID: int64(g.ID)}
	reason, retry := h.repair(ctx, l, &mvccpb.KeyValue{Key: []byte(key), ModRevision: first.Header.Revision}, "test")
	if reason != "" || retry {
		t.Fatalf("repair: %q, retry %v", reason, retry)
	}
	resp, err := cli.Get(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(resp.Kvs[0].Value); got != "newer garbage" {
		t.Fatalf("a stale repair overwrote a newer value: %q", got)
	}
	// Our etcd lease gone: the repair says so instead of writing.
	if _, err := cli.Revoke(ctx, g.ID); err != nil {
		t.Fatal(err)
	}
	reason, _ = h.repair(ctx, l, &mvccpb.KeyValue{Key: []byte(key), ModRevision: resp.Kvs[0].ModRevision}, "test")
	if reason == "" {
		t.Fatalf("repair on a revoked etcd lease reported success")
	}
}
