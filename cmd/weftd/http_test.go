package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/network"
	"github.com/weft-net/weft/subnet"
)

// idle stands in for etcd and the kernel: the node built with it is never run,
// so its status stays as a node's status is before the loop's first turn.
type idle struct{}

func (idle) Hold(context.Context, subnet.HoldRequest) error { return nil }
func (idle) Recycle(subnet.Snapshot)                        {}
func (idle) WatchPeers(context.Context, subnet.PeerFilter, func(subnet.Snapshot)) error {
	return nil
}

func idleNode(t *testing.T, etcdSynced *time.Time) *network.Node {
	t.Helper()
	n, err := network.NewNode(network.NodeConfig{
		PublicIP:     netip.MustParseAddr("172.17.42.31"),
		Holder:       idle{},
		Watcher:      idle{},
		EtcdSynced:   func() time.Time { return *etcdSynced },
		NewDataplane: func(subnet.Lease) (network.Dataplane, error) { panic("not run") },
		NewRules:     func(network.RulesConfig) (network.RuleSet, error) { panic("not run") },
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func get(t *testing.T, h http.Handler, path string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	b, _ := io.ReadAll(rec.Result().Body)
	return rec.Code, string(b)
}

func TestHTTPWhileStarting(t *testing.T) {
	a := &agent{opts: options{readyEtcdGrace: time.Minute}}
	h := a.routes(prometheus.NewRegistry())

	if code, body := get(t, h, "/healthz"); code != http.StatusOK || body != starting+"\n" {
		t.Errorf("/healthz while waiting for etcd: %d %q, want 200 %q", code, body, starting)
	}
	if code, body := get(t, h, "/readyz"); code != http.StatusServiceUnavailable || body != starting+"\n" {
		t.Errorf("/readyz while waiting for etcd: %d %q, want 503 %q", code, body, starting)
	}
	code, body := get(t, h, "/status")
	var st struct {
		Ready    bool
		NotReady []string
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil || code != http.StatusServiceUnavailable || st.Ready || len(st.NotReady) != 1 {
		t.Errorf("/status while waiting for etcd: %d %s (%v)", code, body, err)
	}
	if _, body := get(t, h, "/metrics"); !strings.Contains(body, "\nweft_ready 0\n") {
		t.Errorf("/metrics lacks weft_ready 0:\n%s", body)
	}
}

// TestReadyzLines: before the loop has done anything every condition fails,
// each on its own line; each one met drops its line.
func TestReadyzLines(t *testing.T) {
	a := &agent{opts: options{readyEtcdGrace: 30 * time.Second}}
	var synced time.Time
	a.node.Store(idleNode(t, &synced))
	h := a.routes(prometheus.NewRegistry())

	code, body := get(t, h, "/readyz")
	want := []string{
		"no lease: the node holds no subnet yet",
		"subnet file not written yet",
		"data plane does not match the last snapshot (0 peers desired, 0 programmed)",
		"etcd never in sync",
	}
	if code != http.StatusServiceUnavailable || body != strings.Join(want, "\n")+"\n" {
		t.Errorf("/readyz before the first turn: %d\n%s\nwant 503\n%s", code, body, strings.Join(want, "\n"))
	}
	if code, body := get(t, h, "/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz with a loop that never turned: %d %q, want 503", code, body)
	}

	synced = time.Now()
	if _, body := get(t, h, "/readyz"); strings.Contains(body, "etcd") || strings.Count(body, "\n") != 3 {
		t.Errorf("/readyz after etcd sync still mentions etcd or has other than 3 lines:\n%s", body)
	}
	synced = time.Now().Add(-time.Minute)
	if _, body := get(t, h, "/readyz"); !strings.Contains(body, "etcd last in sync 1m0s ago (grace 30s)") {
		t.Errorf("/readyz with etcd silent past the grace:\n%s", body)
	}
	if _, body := get(t, h, "/metrics"); !strings.Contains(body, "\nweft_ready 0\n") {
		t.Errorf("/metrics lacks weft_ready 0:\n%s", body)
	}
}
