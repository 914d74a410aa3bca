package subnet

import (
	"bytes"
	"context"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/ip"
)

// readOnlyEtcd turns auth on in e with a user that may only read the
// default prefix, as deploy/etcd/setup-roles.sh's read-only node role, and
// returns root's client and that user's.
func readOnlyEtcd(t *testing.T, e *etcdtest.Etcd) (root, reader *clientv3.Client) {
	t.Helper()
	ctx := context.Background()
	admin := e.Client(t)
	steps := []func() error{
		func() error { _, err := admin.RoleAdd(ctx, "root"); return err },
		func() error { _, err := admin.UserAdd(ctx, "root", "rootpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := admin.RoleAdd(ctx, "reader"); return err },
		func() error {
			_, err := admin.RoleGrantPermission(ctx, "reader", DefaultPrefix+"/", clientv3.GetPrefixRangeEnd(DefaultPrefix+"/"),
				clientv3.PermissionType(clientv3.PermRead))
			return err
		},
		func() error { _, err := admin.UserAdd(ctx, "reader", "readerpw"); return err },
		func() error { _, err := admin.UserGrantRole(ctx, "reader", "reader"); return err },
		func() error { _, err := admin.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("turning etcd auth on, step %d: %v", i+1, err)
		}
	}
	login := func(user, pw string) *clientv3.Client {
		cli, err := clientv3.New(clientv3.Config{Endpoints: e.Endpoints(), DialTimeout: 5 * time.Second,
			Username: user, Password: pw, Logger: zap.NewNop()})
		if err != nil {
			t.Fatalf("logging in as %s: %v", user, err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	return login("root", "rootpw"), login("reader", "readerpw")
}

// readOnlyLog is a log destination tests read while Hold writes to it.
type readOnlyLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *readOnlyLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *readOnlyLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// readOnlyRegistry is fastRegistry on the reader's client, logging to buf.
func readOnlyRegistry(t *testing.T, cli *clientv3.Client, buf *readOnlyLog) *Registry {
	r := fastRegistry(t, cli)
	r.log = slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return r
}

// TestHoldReadOnlyReservation: a node that may only read holds a reservation
// that already carries its exact value, and writes nothing, then or later.
func TestHoldReadOnlyReservation(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	root, reader := readOnlyEtcd(t, e)
	cfg := mustConfig(t, `{"Network":"10.9.0.0/16"}`)
	req := node(7, cfg)
	v, err := LeaseAttrs{PublicIP: req.PublicIP, BackendType: "vxlan", VNI: cfg.Backend.VNI,
		VtepMAC: ip.VTEPMAC(req.PublicIP, cfg.Backend.VNI)}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	var buf readOnlyLog
	r := readOnlyRegistry(t, reader, &buf)
	key := r.SubnetKey(netip.MustParsePrefix("10.9.7.0/24"))
	put, err := root.Put(context.Background(), key, string(v))
	if err != nil {
		t.Fatal(err)
	}

	h := startHold(t, r, req)
	if l := h.next(t); l.Key != key || l.EtcdLeaseID != 0 {
		t.Fatalf("Hold took %+v, want the reservation %s", l, key)
	}
	// Several of Hold's own-key checks (every 200 ms here) go by.
	time.Sleep(time.Second)
	select {
	case l := <-h.leases:
		t.Errorf("Hold lost and took again the reservation: %+v\n%s", l, buf.String())
	default:
	}
	resp, err := root.Get(context.Background(), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading %s: %v %v", key, resp, err)
	}
	if kv := resp.Kvs[0]; kv.ModRevision != put.Header.Revision || !bytes.Equal(kv.Value, v) {
		t.Errorf("the reservation changed: revision %d (was %d), value %s", kv.ModRevision, put.Header.Revision, kv.Value)
	}
	if strings.Contains(buf.String(), "permission denied") {
		t.Errorf("Hold tried a write:\n%s", buf.String())
	}
}

// TestHoldReadOnlyDenied: a node that may only read, whose reservation does
// not carry its value, takes nothing and says once what value it needs.
func TestHoldReadOnlyDenied(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	root, reader := readOnlyEtcd(t, e)
	cfg := mustConfig(t, `{"Network":"10.9.0.0/16"}`)
	req := node(7, cfg)
	var buf readOnlyLog
	r := readOnlyRegistry(t, reader, &buf)
	key := r.SubnetKey(netip.MustParsePrefix("10.9.7.0/24"))
	if _, err := root.Put(context.Background(), key, val(req.PublicIP.String(), "0e:00:00:00:00:01", 1)); err != nil {
		t.Fatal(err)
	}

	h := startHold(t, r, req)
	// Many retries go by (backoff 20 to 300 ms here).
	select {
	case l := <-h.leases:
		t.Fatalf("Hold took %+v with a user that may not write", l)
	case err := <-h.done:
		t.Fatalf("Hold returned %v, want it to wait for the role or the reservation to be fixed", err)
	case <-time.After(2 * time.Second):
	}
	const want = "A node with a read-only etcd role needs a reservation holding exactly this value"
	if n := strings.Count(buf.String(), want); n != 1 {
		t.Errorf("logged %q %d times, want once:\n%s", want, n, buf.String())
	}
	wantValue, _ := LeaseAttrs{PublicIP: req.PublicIP, BackendType: "vxlan", VNI: 1, VtepMAC: req.VtepMAC}.MarshalJSON()
	if !strings.Contains(buf.String(), string(wantValue)) && !strings.Contains(buf.String(), strings.ReplaceAll(string(wantValue), `"`, `\"`)) {
		t.Errorf("the log does not show the value the reservation needs, %s:\n%s", wantValue, buf.String())
	}
}
