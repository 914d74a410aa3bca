package subnet

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/etcdtest"
)

// limitedClient is a client with a small receive limit, as etcdconn sets a
// large one, so that a test needs only a few megabytes to go over it.
func limitedClient(t testing.TB, e *etcdtest.Etcd, limit int) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 2 * time.Second,
		Logger: zap.NewNop(), MaxCallRecvMsgSize: limit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// A listing of small and oversized values comes back whole, in key order,
// at one revision, with each oversized value replaced by a note of its size:
// pages that do not fit the receive limit are asked again smaller.
func TestRangeAllPagesAndCapsValues(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	ctx := context.Background()
	writer := e.Client(t)
	r := fastRegistry(t, limitedClient(t, e, 1<<20))
	r.pageMax = 7
	big := strings.Repeat("x", 300<<10)
	want := map[string]int{} // key -> value size
	for i := range 40 {
		k := fmt.Sprintf("%s172.16.%d.0-24", r.subnetsPrefix(), i)
		v := val("172.17.0.1", macFor("172.17.0.1"), 1)
		if i%4 == 0 {
			v = big
		}
		if _, err := writer.Put(ctx, k, v); err != nil {
			t.Fatal(err)
		}
		want[k] = len(v)
	}
	// Keys of 100 kB: kept short, told apart, and the pages go on past them.
	longKeys := map[string]bool{}
	for i := range 3 {
		k := r.subnetsPrefix() + "172.16.5.0-24" + strings.Repeat(string(rune('a'+i)), 100<<10)
		if _, err := writer.Put(ctx, k, "v"); err != nil {
			t.Fatal(err)
		}
	}
	resp, err := r.rangeAll(ctx, r.subnetsPrefix())
	if err != nil {
		t.Fatal(err)
	}
	var kept []*mvccpb.KeyValue
	for _, kv := range resp.Kvs {
		if strings.Contains(string(kv.Key), "\x00weft: key of 102441 bytes, sha256 ") && len(kv.Key) < 300 {
			longKeys[string(kv.Key)] = true
			continue
		}
		kept = append(kept, kv)
	}
	if len(longKeys) != 3 {
		t.Errorf("long keys listed as %d distinct short ones, want 3", len(longKeys))
	}
	resp.Kvs = kept
	if len(resp.Kvs) != len(want) {
		t.Fatalf("listed %d keys, want %d", len(resp.Kvs), len(want))
	}
	for i, kv := range resp.Kvs {
		if i > 0 && string(resp.Kvs[i-1].Key) >= string(kv.Key) {
			t.Errorf("keys out of order: %q then %q", resp.Kvs[i-1].Key, kv.Key)
		}
		l := parseKV(r.subnetsPrefix(), kv.Key, kv.Value, kv.Lease, kv.CreateRevision, kv.ModRevision)
		n := want[string(kv.Key)]
		switch {
		case n > MaxValueSize:
			if len(kv.Value) > 100 {
				t.Errorf("%s: %d bytes kept of an oversized value", kv.Key, len(kv.Value))
			}
			wantErr := fmt.Sprintf("lease value: %d bytes, over the %d-byte limit", n, MaxValueSize)
			if l.Err == nil || l.Err.Error() != wantErr {
				t.Errorf("%s: error %v, want %q", kv.Key, l.Err, wantErr)
			}
		case l.Err != nil:
			t.Errorf("%s: %v", kv.Key, l.Err)
		}
	}
	// The same limit with the listing asked whole fails: the pages are what
	// make it work.
	if _, err := r.cli.Get(ctx, r.subnetsPrefix(), clientv3.WithPrefix()); err == nil {
		t.Errorf("a whole listing of %d kB fit the 1 MiB receive limit: the test proves nothing", len(want)/4*300)
	}
}

// A watch response over the receive limit breaks the peer watch; it lists
// again in pages and carries on: a new peer after it is seen, and the
// oversized values are invalid leases, counted, not peers.
func TestWatchPeersSurvivesResponseOverLimit(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	ctx := context.Background()
	writer := e.Client(t)
	r := fastRegistry(t, limitedClient(t, e, 1<<20))
	w := startWatch(t, r, PeerFilter{Config: mustConfig(t, testNet)})
	if _, err := writer.Put(ctx, r.subnetsPrefix()+"172.16.1.0-24", val("172.17.0.1", macFor("172.17.0.1"), 1)); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "172.16.1.0/24 172.17.0.1\n")
	// One revision of four 300 kB values: one watch response of 1.2 MB.
	big := strings.Repeat("y", 300<<10)
	var ops []clientv3.Op
	for i := range 4 {
		ops = append(ops, clientv3.OpPut(fmt.Sprintf("%s172.16.%d.0-24", r.subnetsPrefix(), 100+i), big))
	}
	if _, err := writer.Txn(ctx).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := writer.Put(ctx, r.subnetsPrefix()+"172.16.2.0-24", val("172.17.0.2", macFor("172.17.0.2"), 1)); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "172.16.1.0/24 172.17.0.1\n172.16.2.0/24 172.17.0.2\n")
	deadline := time.Now().Add(5 * time.Second)
	for counterValue(t, r.m.peerEvents.WithLabelValues("invalid")) < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("invalid leases counted: %v, want 4", counterValue(t, r.m.peerEvents.WithLabelValues("invalid")))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
