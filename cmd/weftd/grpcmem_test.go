package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/etcdtest"
)

// TestLowMemoryDialOptions runs what weftd asks of etcd (a big prefix
// listing, a transaction, a watch with a response of many events) through a
// client with weftd's gRPC options, against a real etcd.
func TestLowMemoryDialOptions(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second,
		Logger: zap.NewNop(), DialOptions: lowMemoryDialOptions()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	const n = 2000 // a listing of about 300 kB, past gRPC's pooled sizes
	value := strings.Repeat("v", 100)
	ops := make([]clientv3.Op, 0, 100)
	put := func(from int) {
		ops = ops[:0]
		for i := from; i < from+100; i++ {
			ops = append(ops, clientv3.OpPut(fmt.Sprintf("/t/k%05d", i), value))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < n; i += 100 {
		put(i)
	}
	resp, err := cli.Get(ctx, "/t/", clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != n || string(resp.Kvs[n-1].Key) != fmt.Sprintf("/t/k%05d", n-1) || string(resp.Kvs[7].Value) != value {
		t.Fatalf("listing: %d keys, last %q", len(resp.Kvs), resp.Kvs[len(resp.Kvs)-1].Key)
	}

	wch := cli.Watch(ctx, "/t/", clientv3.WithPrefix(), clientv3.WithRev(resp.Header.Revision+1))
	put(n)
	got := 0
	for got < 100 {
		wr, ok := <-wch
		if !ok || wr.Err() != nil {
			t.Fatalf("watch ended after %d events: %v", got, wr.Err())
		}
		for _, ev := range wr.Events {
			if want := fmt.Sprintf("/t/k%05d", n+got); string(ev.Kv.Key) != want || string(ev.Kv.Value) != value {
				t.Fatalf("event %d: %q, want %q", got, ev.Kv.Key, want)
			}
			got++
		}
	}
}
