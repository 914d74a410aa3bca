package subnet

import (
	"context"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/etcdtest"
)

// watching runs WatchPeers in the background and keeps the latest snapshot.
type watching struct {
	mu   sync.Mutex
	last Snapshot
	n    int
	done chan error
}

func startWatch(t testing.TB, r *Registry, f PeerFilter) *watching {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watching{done: make(chan error, 1)}
	go func() {
		w.done <- r.WatchPeers(ctx, f, func(s Snapshot) {
			w.mu.Lock()
			w.last, w.n = s, w.n+1
			w.mu.Unlock()
		})
	}()
	t.Cleanup(func() { cancel(); <-w.done })
	return w
}

// waitPeers waits until the latest snapshot renders as want.
func (w *watching) waitPeers(t testing.TB, want string) Snapshot {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		w.mu.Lock()
		s, n := w.last, w.n
		w.mu.Unlock()
		if n > 0 && peers(s) == want {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("peers after 10s:\n%s\nwant:\n%s", peers(s), want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

const mac1 = "b2:69:2c:67:63:b8"

func TestWatchPeers(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	cfg := mustConfig(t, testNet)
	r := fastRegistry(t, cli)
	if err := r.SetConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	put := func(name, v string) {
		t.Helper()
		if _, err := cli.Put(ctx, r.subnetsPrefix()+name, v); err != nil {
			t.Fatal(err)
		}
	}
	put("172.16.78.0-24", val("172.17.42.32", macFor("172.17.42.32"), 1))
	put("172.16.28.0-24", val("172.17.42.31", macFor("172.17.42.31"), 1)) // own
	put("172.16.79.0-24", "garbage")
	self := func() (netip.Prefix, netip.Addr) {
		return netip.MustParsePrefix("172.16.28.0/24"), netip.MustParseAddr("172.17.42.31")
	}
	w := startWatch(t, r, PeerFilter{Config: cfg, Self: self, Underlay: []netip.Prefix{netip.MustParsePrefix("172.17.0.0/16")}})
	w.waitPeers(t, "172.16.78.0/24 172.17.42.32\n")

	put("172.16.80.0-24", val("172.17.42.33", macFor("172.17.42.33"), 1))
	s := w.waitPeers(t, "172.16.78.0/24 172.17.42.32\n172.16.80.0/24 172.17.42.33\n")
	if s.Revision == 0 || s.Peers[0].VtepMAC.String() != macFor("172.17.42.32") {
		t.Fatalf("snapshot %+v", s)
	}
	// Garbage over a valid key keeps the previous value, removes nothing.
	put("172.16.78.0-24", `{"PublicIP":"nope"}`)
	put("172.16.81.0-24", val("172.17.42.34", macFor("172.17.42.34"), 1))
	w.waitPeers(t, "172.16.78.0/24 172.17.42.32\n172.16.80.0/24 172.17.42.33\n172.16.81.0/24 172.17.42.34\n")
	if n := counterValue(t, r.m.peerEvents.WithLabelValues("invalid")); n < 2 {
		t.Fatalf("invalid events = %v", n)
	}
	// Delete removes.
	if _, err := cli.Delete(ctx, r.subnetsPrefix()+"172.16.80.0-24"); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "172.16.78.0/24 172.17.42.32\n172.16.81.0/24 172.17.42.34\n")
	if n := counterValue(t, r.m.peerEvents.WithLabelValues("removed")); n != 1 {
		t.Fatalf("removed events = %v", n)
	}
}

func TestWatchPeersCompactionRelists(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	cfg := mustConfig(t, testNet)
	r := fastRegistry(t, cli)
	var once sync.Once
	r.hookAfterList = func() {
		once.Do(func() {
			// Changes land and history is compacted before the watch starts.
			if _, err := cli.Put(ctx, r.subnetsPrefix()+"172.16.5.0-24", val("172.17.0.5", macFor("172.17.0.5"), 1)); err != nil {
				t.Error(err)
			}
			resp, err := cli.Put(ctx, "/other", "x")
			if err != nil {
				t.Error(err)
				return
			}
			if _, err := cli.Compact(ctx, resp.Header.Revision); err != nil {
				t.Error(err)
			}
		})
	}
	w := startWatch(t, r, PeerFilter{Config: cfg})
	w.waitPeers(t, "172.16.5.0/24 172.17.0.5\n")
	if n := counterValue(t, r.m.watchRestarts.WithLabelValues("compacted")); n != 1 {
		t.Fatalf("compacted restarts = %v", n)
	}
}

func TestWatchPeersEtcdPausedAndRestarted(t *testing.T) {
	e := etcdtest.Start(t, etcdtest.Options{})
	cli := e.Client(t)
	ctx := context.Background()
	cfg := mustConfig(t, testNet)
	r := fastRegistry(t, cli)
	if _, err := cli.Put(ctx, r.subnetsPrefix()+"172.16.5.0-24", val("172.17.0.5", macFor("172.17.0.5"), 1)); err != nil {
		t.Fatal(err)
	}
	w := startWatch(t, r, PeerFilter{Config: cfg})
	w.waitPeers(t, "172.16.5.0/24 172.17.0.5\n")

	e.Pause()
	waitGauge(t, r, 0)
	e.Resume()
	waitGauge(t, r, 1)
	if _, err := cli.Put(ctx, r.subnetsPrefix()+"172.16.6.0-24", val("172.17.0.6", macFor("172.17.0.6"), 1)); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "172.16.5.0/24 172.17.0.5\n172.16.6.0/24 172.17.0.6\n")
	if n := counterValue(t, r.m.watchRestarts.WithLabelValues("reconnect")); n < 1 {
		t.Fatalf("reconnect restarts = %v", n)
	}

	// etcd comes back empty: new peers appear even though the new etcd's
	// revisions are lower than the watch's; the peers it forgot stay for the
	// restore grace (their nodes are alive and will register again), then go.
	e.Restart(true)
	if _, err := cli.Put(ctx, r.subnetsPrefix()+"172.16.7.0-24", val("172.17.0.7", macFor("172.17.0.7"), 1)); err != nil {
		t.Fatal(err)
	}
	w.waitPeers(t, "172.16.5.0/24 172.17.0.5\n172.16.6.0/24 172.17.0.6\n172.16.7.0/24 172.17.0.7\n")
	w.waitPeers(t, "172.16.7.0/24 172.17.0.7\n")
}

func waitGauge(t testing.TB, r *Registry, want float64) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for counterValue(t, r.m.etcdUp) != want {
		if time.Now().After(deadline) {
			t.Fatalf("weft_etcd_up never became %v", want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestWatchPeersRejectsBadFilter(t *testing.T) {
	err := NewRegistry(nil, "", nil, nil).WatchPeers(context.Background(), PeerFilter{}, func(Snapshot) {})
	if err == nil || !strings.Contains(err.Error(), "SubnetLen") {
		t.Fatalf("got %v", err)
	}
}
