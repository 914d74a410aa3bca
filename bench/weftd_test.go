package bench

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// coldStart writes n leases into a fresh node's etcd, starts weftd and
// waits until all n peers are programmed. The node stays up for what
// follows; the caller closes it.
func (e *env) coldStart(ctx context.Context, name string, peers []synth) (*node, Cold, error) {
	n := len(peers)
	c := Cold{N: n}
	nd, err := e.newNode(ctx, name)
	if err != nil {
		return nil, c, err
	}
	if err := nd.put(ctx, peers); err != nil {
		return nd, c, err
	}
	pr, err := newProber(nd.h.NS)
	if err != nil {
		return nd, c, err
	}
	defer pr.close()
	before, err := nd.etcdRequests(ctx)
	if err != nil {
		return nd, c, err
	}

	start := time.Now()
	p, err := nd.startWeftd()
	if err != nil {
		return nd, c, err
	}
	done, err := pr.waitBulk(peers, 1, 60*time.Second)
	if err != nil {
		return nd, c, fmt.Errorf("weftd did not program %d peers: %w\n%s", n, err, p.Tail(20))
	}
	c.Converged = Dur(done.Sub(start))
	c.start = start
	cpu, err := readCPU(p.Pid())
	if err != nil {
		return nd, c, err
	}
	c.CPUSeconds, c.ChildCPU = cpu.self.Seconds(), cpu.children.Seconds()
	after, err := nd.etcdRequests(ctx)
	if err != nil {
		return nd, c, err
	}
	c.Etcd = diffCounts(after, before)
	c.DumpCounts, err = countEntries(pr.c, pr.idx)
	if err != nil {
		return nd, c, err
	}
	// How the kernel forwards to a peer, asked without sending anything.
	probe := peers[len(peers)/2].subnet.Addr().Next()
	out, err := nd.h.IP(ctx, "route", "get", probe.String())
	if err != nil {
		return nd, c, err
	}
	c.RouteGet, _, _ = strings.Cut(strings.TrimSpace(out), "\n")
	return nd, c, nil
}

// finishCold fills in what is read at the end of a node's life.
func finishCold(c *Cold, nd *node, peers []synth) error {
	m, err := readRSS(nd.weftd.Pid())
	if err != nil {
		return err
	}
	c.PeakRSSMiB = float64(m.peak) / (1 << 20)
	c.AnonMiB, c.FileMiB = float64(m.anon)/(1<<20), float64(m.file)/(1<<20)
	c.Log, err = readLog(nd.weftd.LogPath(), peers, c.start)
	return err
}

// programmed is weftd's own time applying its first snapshot (its log).
func programmed(nd *node) (time.Duration, error) {
	st, err := readLog(nd.weftd.LogPath(), nil, time.Time{})
	if err != nil {
		return 0, err
	}
	if st.Programmed == 0 {
		return 0, fmt.Errorf("no \"programmed peers\" line with a duration in weftd's log:\n%s", nd.weftd.Tail(10))
	}
	return time.Duration(st.Programmed), nil
}

// hot measures single adds and deletes of peers that are not in etcd yet,
// one change at a time.
func hot(ctx context.Context, nd *node, obs *observer, free []synth, rounds int) (Hot, error) {
	h := Hot{}
	var adds, dels []time.Duration
	for i := range rounds {
		p := free[i%len(free)]
		if _, err := nd.cli.Put(ctx, p.key(), p.value(), clientv3.WithLease(nd.etcdLease)); err != nil {
			return h, err
		}
		put := time.Now()
		t, err := obs.wait(5*time.Second, allPresent([]synth{p}))
		if err != nil {
			return h, fmt.Errorf("hot add %d (%v): %w", i, p.subnet, err)
		}
		adds = append(adds, t.Sub(put))
		time.Sleep(10 * time.Millisecond)

		if _, err := nd.cli.Delete(ctx, p.key()); err != nil {
			return h, err
		}
		del := time.Now()
		t, err = obs.wait(5*time.Second, allAbsent([]synth{p}))
		if err != nil {
			return h, fmt.Errorf("hot delete %d (%v): %w", i, p.subnet, err)
		}
		dels = append(dels, t.Sub(del))
		time.Sleep(10 * time.Millisecond)
	}
	h.Add, h.Del = percentiles(adds), percentiles(dels)
	return h, nil
}

// burst removes k peers unmeasured, then measures adding them back in one
// transaction and deleting them again in one.
func burst(ctx context.Context, nd *node, pr *prober, peers []synth, k int) (Burst, error) {
	b := Burst{Base: len(peers) - k, K: k}
	some := peers[len(peers)-k:]
	if err := nd.del(ctx, some); err != nil {
		return b, err
	}
	if _, err := pr.waitBulk(some, -1, 30*time.Second); err != nil {
		return b, fmt.Errorf("making room for the burst: %w", err)
	}
	time.Sleep(500 * time.Millisecond)

	if err := nd.put(ctx, some); err != nil {
		return b, err
	}
	start := time.Now()
	t, err := pr.waitBulk(some, 1, 30*time.Second)
	if err != nil {
		return b, fmt.Errorf("burst add: %w", err)
	}
	b.Add = Dur(t.Sub(start))
	time.Sleep(500 * time.Millisecond)

	if err := nd.del(ctx, some); err != nil {
		return b, err
	}
	start = time.Now()
	t, err = pr.waitBulk(some, -1, 30*time.Second)
	if err != nil {
		return b, fmt.Errorf("burst delete: %w", err)
	}
	b.Del = Dur(t.Sub(start))
	return b, nil
}

// idle watches weftd with nothing changing for d.
func idle(ctx context.Context, nd *node, n int, d time.Duration) (Idle, error) {
	st := Idle{N: n}
	pid := nd.weftd.Pid()
	cpu0, err := readCPU(pid)
	if err != nil {
		return st, err
	}
	etcd0, err := nd.etcdRequests(ctx)
	if err != nil {
		return st, err
	}
	m0, err := nd.weftMetrics(ctx)
	if err != nil {
		return st, err
	}
	// Meanwhile, the dump floor on weftd's own device, sampled every few
	// seconds like weftd's periodic check (so with caches as cold as its).
	cn, err := newConn(nd.h.NS)
	if err != nil {
		return st, err
	}
	defer cn.close()
	idx, err := linkIndex(ctx, nd.h, "flannel.1")
	if err != nil {
		return st, err
	}
	var dumps []float64
	start := time.Now()
	tick := time.NewTicker(d / 12)
	defer tick.Stop()
	for end := time.After(d); ; {
		select {
		case <-ctx.Done():
			return st, ctx.Err()
		case <-tick.C:
			t := time.Now()
			if _, err := countEntries(cn, idx); err != nil {
				return st, err
			}
			dumps = append(dumps, float64(time.Since(t)))
			continue
		case <-end:
		}
		break
	}
	st.DumpFloor = Dur(median(dumps))
	cpu1, err := readCPU(pid)
	if err != nil {
		return st, err
	}
	secs := time.Since(start).Seconds()
	etcd1, err := nd.etcdRequests(ctx)
	if err != nil {
		return st, err
	}
	m1, err := nd.weftMetrics(ctx)
	if err != nil {
		return st, err
	}
	used := cpu1.sub(cpu0)
	st.Seconds = secs
	st.CPUPercent = 100 * used.self.Seconds() / secs
	st.ChildPercent = 100 * used.children.Seconds() / secs
	st.Etcd = diffCounts(etcd1, etcd0)
	const rc = "weft_reconcile_duration_seconds"
	st.Reconciles = int(m1[rc+"_count"] - m0[rc+"_count"])
	if st.Reconciles > 0 {
		st.ReconcileMean = Dur((m1[rc+"_sum"] - m0[rc+"_sum"]) / float64(st.Reconciles) * 1e9)
	}
	m, err := readRSS(pid)
	st.RSSMiB = float64(m.cur) / (1 << 20)
	return st, err
}

// neighLimits reads the ARP table's thresholds (global to the table: the
// bench only reads them), checks
// that a dynamic neighbour can still be made with all peers' permanent
// ones in place, and reports how often the table was full.
func neighLimits(ctx context.Context, nd *node, pr *prober, fulls0 int64) (NeighLimits, error) {
	var nl NeighLimits
	for i := range 3 {
		// Only the initial namespace shows them: they belong to the
		// table, which all namespaces share.
		b, err := os.ReadFile(fmt.Sprintf("/proc/sys/net/ipv4/neigh/default/gc_thresh%d", i+1))
		if err != nil {
			return nl, err
		}
		nl.GCThresh[i], _ = strconv.Atoi(strings.TrimSpace(string(b)))
	}
	d, err := dumpDevice(pr.c, pr.idx)
	if err != nil {
		return nl, err
	}
	nl.Permanent = len(d.neighs)
	// A reachable (not permanent) entry on eth0 for an address nobody
	// has: made and removed by netlink, no packet is sent.
	probe := netip.MustParseAddr("10.250.254.254")
	_, err = nd.h.IP(ctx, "neigh", "add", probe.String(), "lladdr", "02:00:00:00:fe:fe", "dev", "eth0", "nud", "reachable")
	nl.DynamicAdded = err == nil
	_, _ = nd.h.IP(ctx, "neigh", "del", probe.String(), "dev", "eth0")
	nl.TableFullsDiff = arpTableFulls() - fulls0
	return nl, nil
}

// arpTableFulls sums the table_fulls column of /proc/net/stat/arp_cache
// (one row per CPU, hexadecimal): how often the table refused an entry.
func arpTableFulls() int64 {
	b, err := os.ReadFile("/proc/net/stat/arp_cache")
	if err != nil {
		return -1
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	head := strings.Fields(lines[0])
	col := -1
	for i, h := range head {
		if h == "table_fulls" {
			col = i
		}
	}
	if col < 0 {
		return -1
	}
	var sum int64
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if col < len(f) {
			v, _ := strconv.ParseInt(f[col], 16, 64)
			sum += v
		}
	}
	return sum
}
