package network

import (
	"context"
	"fmt"
	"net/netip"
	"sync"

	"github.com/weft-net/weft/subnet"
)

// configWatcher is what the loop needs to follow the config key.
type configWatcher interface {
	WatchConfig(ctx context.Context, rev int64, out func(subnet.ConfigUpdate)) error
}

// startEtcdSide runs the lease holder and the peer watch for the current
// config until stop is called, which waits for both to end. The peer watch
// starts with the lease acquisition rather than after it: its listing then
// overlaps Hold's and the device set-up at a cold start.
func (n *Node) startEtcdSide(ctx context.Context, prev netip.Prefix, prevLease int64, leases mailbox[subnet.Lease], snaps mailbox[snapshotIn]) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	prev6 := n.prev6
	wg.Go(func() { n.holdLease(ctx, prev, prev6, prevLease, leases) })
	wg.Go(func() { n.watchPeers(ctx, snaps) })
	return func() {
		cancel()
		wg.Wait()
	}
}

// configChange judges a change of the config key against the config the
// node runs with. It returns the config to apply now, if the change is one
// that can be applied live (subnet.LiveChange); anything else is logged and
// shown in /status until a restart, and not applied at all.
func (n *Node) configChange(u subnet.ConfigUpdate) (subnet.Config, bool) {
	cur := n.cfg.Config
	n.mu.Lock()
	defer n.mu.Unlock()
	switch {
	case u.Err != nil:
		n.st.ConfigPending = fmt.Sprintf("the config in etcd is not usable, running with the one of revision %d: %v", n.st.ConfigRevision, u.Err)
		n.log.Error("config in etcd not usable; running with the config read before", "err", u.Err, "running_revision", n.st.ConfigRevision)
		return cur, false
	case u.Config == cur:
		if n.st.ConfigPending != "" {
			n.log.Info("config in etcd is the running one again", "revision", u.Revision)
		}
		n.st.ConfigPending, n.st.ConfigRevision = "", u.Revision
		return cur, false
	}
	if ok, why := subnet.LiveChange(cur, u.Config); !ok {
		n.st.ConfigPending = fmt.Sprintf("config of revision %d needs a restart of weftd: %s", u.Revision, why)
		n.log.Warn("config changed in etcd; restart weftd to apply it, nothing of it is applied until then",
			"revision", u.Revision, "change", why)
		return cur, false
	}
	n.log.Info("applying config change live", "revision", u.Revision,
		"subnet_min", u.Config.SubnetMin, "subnet_max", u.Config.SubnetMax)
	n.st.ConfigPending, n.st.ConfigRevision = "", u.Revision
	return u.Config, true
}
