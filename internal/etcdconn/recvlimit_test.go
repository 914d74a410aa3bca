package etcdconn

import (
	"context"
	"fmt"
	"strings"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/weft-net/weft/internal/etcdtest"
)

// A client made by Config refuses a response over RecvLimit instead of
// taking it into memory (gRPC's default for etcd's client is 2 GiB); the
// same keys in smaller reads come through.
func TestReceiveLimit(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	ctx := context.Background()
	writer := e.Client(t)
	value := strings.Repeat("v", 1400<<10) // under etcd's 1.5 MiB request limit
	n := RecvLimit/len(value) + 1
	for i := range n {
		if _, err := writer.Put(ctx, fmt.Sprintf("/big/%02d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := Config(Options{Endpoints: e.Endpoints()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	_, err = cli.Get(ctx, "/big/", clientv3.WithPrefix())
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("reading %d values of %d bytes at once: %v, want ResourceExhausted", n, len(value), err)
	}
	resp, err := cli.Get(ctx, "/big/", clientv3.WithPrefix(), clientv3.WithLimit(2))
	if err != nil || len(resp.Kvs) != 2 {
		t.Fatalf("two of them: %v %v", len(resp.Kvs), err)
	}
}
