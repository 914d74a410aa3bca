package network

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/weft-net/weft/subnet"
)

// recorder is a holder and a peer watcher that record the config each run
// was started with.
type recorder struct {
	mu      sync.Mutex // guards the fields below
	holds   []subnet.Config
	watches []subnet.Config
	lease   subnet.Lease
}

func (r *recorder) Hold(ctx context.Context, req subnet.HoldRequest) error {
	r.mu.Lock()
	r.holds = append(r.holds, req.Config)
	r.mu.Unlock()
	req.OnLease(r.lease)
	<-ctx.Done()
	return ctx.Err()
}

func (r *recorder) WatchPeers(ctx context.Context, f subnet.PeerFilter, out func(subnet.Snapshot)) error {
	r.mu.Lock()
	r.watches = append(r.watches, f.Config)
	r.mu.Unlock()
	out(subnet.Snapshot{Revision: 1})
	<-ctx.Done()
	return ctx.Err()
}

func (r *recorder) Recycle(subnet.Snapshot) {}

func (r *recorder) runs() (holds, watches []subnet.Config) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]subnet.Config(nil), r.holds...), append([]subnet.Config(nil), r.watches...)
}

// configFeed is a config watcher the test drives.
type configFeed struct {
	from    chan int64
	updates chan subnet.ConfigUpdate
}

func (c *configFeed) WatchConfig(ctx context.Context, rev int64, out func(subnet.ConfigUpdate)) error {
	c.from <- rev
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case u := <-c.updates:
			out(u)
		}
	}
}

// A range that grows is applied live: the lease holder and the peer watch
// run again with it. A change that needs a restart, or a refused config, is
// applied not at all and shown in the status until the running config is
// back.
func TestConfigChangesLive(t *testing.T) {
	mustCfg := func(s string) subnet.Config {
		c, err := subnet.ParseConfig([]byte(s))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	start := mustCfg(`{"Network":"172.16.0.0/12","SubnetMax":"172.16.100.0"}`)
	rec := &recorder{lease: subnet.Lease{Subnet: netip.MustParsePrefix("172.16.28.0/24"), EtcdLeaseID: 7}}
	feed := &configFeed{from: make(chan int64, 1), updates: make(chan subnet.ConfigUpdate)}
	n, err := NewNode(NodeConfig{
		Config: start, ConfigRevision: 5, ConfigWatcher: feed,
		PublicIP:     netip.MustParseAddr("172.17.42.31"),
		SubnetFile:   filepath.Join(t.TempDir(), "subnet.env"),
		Leases:       subnet.LeaseAttrs{VtepMAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}},
		Holder:       rec,
		Watcher:      rec,
		NewDataplane: func(subnet.Lease) (Dataplane, error) { return &fakeDataplane{}, nil },
		NewRules:     func(RulesConfig) (RuleSet, error) { return fakeRules{}, nil },
		Forwarding:   func() error { return nil },
		EtcdSynced:   time.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- n.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	if rev := <-feed.from; rev != 5 {
		t.Fatalf("config watched from revision %d, want 5", rev)
	}
	waitFor(t, "first hold and watch", func() bool { h, w := rec.runs(); return len(h) == 1 && len(w) == 1 })

	// Needs a restart: nothing applied, pending shown.
	feed.updates <- subnet.ConfigUpdate{Config: mustCfg(`{"Network":"10.0.0.0/8"}`), Revision: 6}
	waitFor(t, "pending shown", func() bool { return strings.Contains(n.Status().ConfigPending, "Network 172.16.0.0/12 -> 10.0.0.0/8") })
	feed.updates <- subnet.ConfigUpdate{Config: mustCfg(`{"Network":"172.16.0.0/12","SubnetMax":"172.16.50.0"}`), Revision: 7}
	waitFor(t, "shrinking shown", func() bool { return strings.Contains(n.Status().ConfigPending, "SubnetMax lowered") })
	feed.updates <- subnet.ConfigUpdate{Revision: 8, Err: errors.New("config: Network: overlaps 127.0.0.0/8 (loopback)")}
	waitFor(t, "refused shown", func() bool { return strings.Contains(n.Status().ConfigPending, "loopback") })
	if h, w := rec.runs(); len(h) != 1 || len(w) != 1 || n.Status().ConfigRevision != 5 {
		t.Fatalf("a change needing a restart was applied: %d holds, %d watches, revision %d", len(h), len(w), n.Status().ConfigRevision)
	}

	// The running config again: nothing pending.
	feed.updates <- subnet.ConfigUpdate{Config: start, Revision: 9}
	waitFor(t, "pending cleared", func() bool { return n.Status().ConfigPending == "" && n.Status().ConfigRevision == 9 })

	// Wider: applied live.
	wide := mustCfg(`{"Network":"172.16.0.0/12","SubnetMin":"172.16.0.0","SubnetMax":"172.31.255.0"}`)
	feed.updates <- subnet.ConfigUpdate{Config: wide, Revision: 10}
	waitFor(t, "applied", func() bool { h, w := rec.runs(); return len(h) == 2 && len(w) == 2 })
	h, w := rec.runs()
	if h[1] != wide || w[1] != wide {
		t.Fatalf("restarted with %+v and %+v, want %+v", h[1], w[1], wide)
	}
	if st := n.Status(); st.ConfigRevision != 10 || st.ConfigPending != "" || st.Subnet != rec.lease.Subnet {
		t.Fatalf("status after a live change: %+v", st)
	}
}
