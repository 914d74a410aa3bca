package bench

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/internal/cluster"
)

// floorBatch is how many bytes of requests the fast floor puts in one
// sendmsg (about 600 requests).
const floorBatch = 32 << 10

// Floor is what the kernel itself needs for N peers, measured in a namespace
// of its own with nothing else running in it.
type Floor struct {
	N int `json:"n"`
	// Flannel's way: one request per entry, each waiting for its
	// acknowledgement, every route with metric 0.
	FlannelAdd Dur `json:"flannel_add"`
	// Microseconds per route for the first and the last 100 peers.
	FlannelRouteFirstUS float64 `json:"flannel_route_first_us"`
	FlannelRouteLastUS  float64 `json:"flannel_route_last_us"`
	// The fast way: per-subnet metrics, batches of requests, one
	// acknowledgement per write; neighbours, FDB, routes.
	FastAdd Dur `json:"fast_add"`
	// Removal the fast way: routes, neighbours, FDB.
	FastDel Dur `json:"fast_del"`
	// Kernel-filtered dumps of the device's routes, neighbours and FDB,
	// read without parsing (median of 5).
	Dump Dur `json:"dump"`
}

// floorMetric is a fixed per-subnet metric: the low 16 bits of the /24's
// number, plus one (weft uses the same rule; the floor computes its own).
func floorMetric(p netip.Prefix) uint32 {
	a := p.Addr().As4()
	return uint32(a[1])<<8 | uint32(a[2]) + 1
}

// floorHost makes a namespace on the bench underlay with a flannel.1 built
// as flanneld builds it, and returns it with the device's index.
func (e *env) floorHost(ctx context.Context, name string, addr netip.Addr) (*cluster.Host, int, error) {
	h, err := e.c.AddHost(ctx, name, netip.PrefixFrom(addr, 16))
	if err != nil {
		return nil, 0, err
	}
	for _, args := range [][]string{
		{"link", "add", "flannel.1", "type", "vxlan", "id", "1", "local", addr.String(), "dev", "eth0", "dstport", "8472", "nolearning"},
		{"link", "set", "flannel.1", "up"},
	} {
		if _, err := h.IP(ctx, args...); err != nil {
			return nil, 0, err
		}
	}
	idx, err := linkIndex(ctx, h, "flannel.1")
	return h, idx, err
}

// floorConn makes a floor host (see floorHost) and a netlink socket in it;
// done closes the socket and removes the host.
func (e *env) floorConn(ctx context.Context, name string, addr netip.Addr) (c *conn, idx int, done func(), err error) {
	h, idx, err := e.floorHost(ctx, name, addr)
	if err != nil {
		return nil, 0, nil, err
	}
	if c, err = newConn(h.NS); err != nil {
		e.dropHost(ctx, h)
		return nil, 0, nil, err
	}
	return c, idx, func() { c.close(); e.dropHost(ctx, h) }, nil
}

// fastAdds are the fast way's requests adding peers on device idx:
// neighbours, FDB, routes with their per-subnet metric.
func fastAdds(peers []synth, idx int) []msgs {
	return batches(peers, func(m *msgs, p synth) { m.addNeigh(idx, p) },
		func(m *msgs, p synth) { m.addFDB(idx, p) },
		func(m *msgs, p synth) { m.addRoute(idx, p, floorMetric(p.subnet)) })
}

// fastDels are the fast way's requests removing peers: routes first, then
// neighbours, then FDB.
func fastDels(peers []synth, idx int) []msgs {
	return batches(peers, func(m *msgs, p synth) { m.delRoute(idx, p, floorMetric(p.subnet)) },
		func(m *msgs, p synth) { m.delNeigh(idx, p) },
		func(m *msgs, p synth) { m.delFDB(idx, p) })
}

// floorRuns is how many times each floor is measured; the table shows the
// median, the kernel's speed on a shared machine varying from run to run.
const floorRuns = 3

// measureFloors measures both floors for n peers, each run in a fresh
// namespace, and keeps the median of each figure.
func (e *env) measureFloors(ctx context.Context, n int, peers []synth) (Floor, error) {
	var runs []Floor
	for i := range floorRuns {
		f := Floor{N: n}
		if err := e.flannelFloor(ctx, &f, peers[:n], i); err != nil {
			return f, fmt.Errorf("flannel floor for %d: %w", n, err)
		}
		if err := e.fastFloor(ctx, &f, peers[:n], i); err != nil {
			return f, fmt.Errorf("fast floor for %d: %w", n, err)
		}
		runs = append(runs, f)
	}
	med := func(get func(f Floor) float64) float64 {
		var vs []float64
		for _, f := range runs {
			vs = append(vs, get(f))
		}
		slices.Sort(vs)
		return vs[len(vs)/2]
	}
	return Floor{
		N:                   n,
		FlannelAdd:          Dur(med(func(f Floor) float64 { return float64(f.FlannelAdd) })),
		FlannelRouteFirstUS: med(func(f Floor) float64 { return f.FlannelRouteFirstUS }),
		FlannelRouteLastUS:  med(func(f Floor) float64 { return f.FlannelRouteLastUS }),
		FastAdd:             Dur(med(func(f Floor) float64 { return float64(f.FastAdd) })),
		FastDel:             Dur(med(func(f Floor) float64 { return float64(f.FastDel) })),
		Dump:                Dur(med(func(f Floor) float64 { return float64(f.Dump) })),
	}, nil
}

func (e *env) flannelFloor(ctx context.Context, f *Floor, peers []synth, run int) error {
	c, idx, done, err := e.floorConn(ctx, fmt.Sprintf("fl%dr%d", len(peers), run), netip.MustParseAddr("10.250.255.1"))
	if err != nil {
		return err
	}
	defer done()
	one := func(build func(m *msgs)) error {
		m := msgs{seq: 1 << 20}
		build(&m)
		m.ackLast()
		if _, err := c.exchange(m.b, m.seq); err != nil {
			return err
		}
		return nil
	}
	routeTimes := make([]time.Duration, 0, len(peers))
	start := time.Now()
	for _, p := range peers {
		// flanneld's order: neighbour, FDB entry, route.
		if err := one(func(m *msgs) { m.addNeigh(idx, p) }); err != nil {
			return fmt.Errorf("neighbour: %w", err)
		}
		if err := one(func(m *msgs) { m.addFDB(idx, p) }); err != nil {
			return fmt.Errorf("FDB: %w", err)
		}
		t := time.Now()
		if err := one(func(m *msgs) { m.addRoute(idx, p, 0) }); err != nil {
			return fmt.Errorf("route: %w", err)
		}
		routeTimes = append(routeTimes, time.Since(t))
	}
	f.FlannelAdd = Dur(time.Since(start))
	k := min(100, len(routeTimes))
	f.FlannelRouteFirstUS = meanUS(routeTimes[:k])
	f.FlannelRouteLastUS = meanUS(routeTimes[len(routeTimes)-k:])
	return checkCounts(c, idx, len(peers))
}

func meanUS(ds []time.Duration) float64 {
	var s time.Duration
	for _, d := range ds {
		s += d
	}
	return float64(s.Microseconds()) / float64(len(ds))
}

func (e *env) fastFloor(ctx context.Context, f *Floor, peers []synth, run int) error {
	c, idx, done, err := e.floorConn(ctx, fmt.Sprintf("ff%dr%d", len(peers), run), netip.MustParseAddr("10.250.255.2"))
	if err != nil {
		return err
	}
	defer done()

	// All requests are built before the clock starts: only the kernel's
	// work and the system calls are timed.
	add, del := fastAdds(peers, idx), fastDels(peers, idx)

	d, err := send(c, add)
	if err != nil {
		return fmt.Errorf("adding: %w", err)
	}
	f.FastAdd = Dur(d)
	if err := checkCounts(c, idx, len(peers)); err != nil {
		return err
	}
	var dumps []time.Duration
	for range 5 {
		t := time.Now()
		if _, err := countEntries(c, idx); err != nil {
			return err
		}
		dumps = append(dumps, time.Since(t))
	}
	slices.Sort(dumps)
	f.Dump = Dur(dumps[len(dumps)/2])

	d, err = send(c, del)
	if err != nil {
		return fmt.Errorf("removing: %w", err)
	}
	f.FastDel = Dur(d)
	return checkCounts(c, idx, 0)
}

// batches builds the requests for peers, all of the first kind, then all of
// the second, and so on, cut into writes of about floorBatch bytes whose last
// request asks for an acknowledgement.
func batches(peers []synth, kinds ...func(m *msgs, p synth)) []msgs {
	var out []msgs
	m := msgs{seq: 1}
	for _, k := range kinds {
		for _, p := range peers {
			k(&m, p)
			if len(m.b) >= floorBatch {
				m.ackLast()
				out = append(out, m)
				m = msgs{seq: m.seq}
			}
		}
	}
	if m.n > 0 {
		m.ackLast()
		out = append(out, m)
	}
	return out
}

func send(c *conn, bs []msgs) (time.Duration, error) {
	start := time.Now()
	for _, m := range bs {
		failed, err := c.exchange(m.b, m.seq)
		if err != nil {
			return 0, fmt.Errorf("%d of %d requests failed: %w", failed, m.n, err)
		}
	}
	return time.Since(start), nil
}

// countEntries dumps the device's routes, neighbours and FDB (unicast
// entries only), filtered by the kernel.
func countEntries(c *conn, idx int) ([3]int, error) {
	var n [3]int
	var err error
	if n[0], err = c.dumpCount(routeDumpReq(idx), unix.RTM_GETROUTE, nil); err != nil {
		return n, fmt.Errorf("dumping routes: %w", err)
	}
	if n[1], err = c.dumpCount(neighDumpReq(idx), unix.RTM_GETNEIGH, nil); err != nil {
		return n, fmt.Errorf("dumping neighbours: %w", err)
	}
	n[2], err = c.dumpCount(fdbDumpReq(idx), unix.RTM_GETNEIGH, func(body []byte) bool {
		uni := false
		attrsOf(body[12:], func(typ uint16, v []byte) {
			if typ == unix.NDA_LLADDR && len(v) == 6 {
				uni = v[0]&1 == 0 && [6]byte(v) != [6]byte{}
			}
		})
		return uni
	})
	if err != nil {
		return n, fmt.Errorf("dumping the FDB: %w", err)
	}
	return n, nil
}

func checkCounts(c *conn, idx, want int) error {
	n, err := countEntries(c, idx)
	if err != nil {
		return err
	}
	if n != [3]int{want, want, want} {
		return fmt.Errorf("routes, neighbours, FDB entries = %v, want %d of each", n, want)
	}
	return nil
}

// burstFloor is the fast way's cost for a burst as weftd meets it: k peers
// removed from, then added back to, a device that holds base others, on a
// device that has just been programmed (no dumps in between to warm the
// kernel's caches, unlike fastFloor's delete). Median of three, each on a
// fresh namespace.
func (e *env) burstFloor(ctx context.Context, peers []synth, k int) (BurstFloor, error) {
	bf := BurstFloor{Base: len(peers) - k, K: k}
	var adds, dels []float64
	for run := range 3 {
		err := func() error {
			c, idx, done, err := e.floorConn(ctx, fmt.Sprintf("bf%dr%d", len(peers), run), netip.MustParseAddr("10.250.255.2"))
			if err != nil {
				return err
			}
			defer done()
			some := peers[len(peers)-k:]
			del, add := fastDels(some, idx), fastAdds(some, idx)
			if _, err := send(c, fastAdds(peers, idx)); err != nil {
				return fmt.Errorf("adding: %w", err)
			}
			d, err := send(c, del)
			if err != nil {
				return fmt.Errorf("removing %d: %w", k, err)
			}
			dels = append(dels, float64(d))
			if err := checkCounts(c, idx, len(peers)-k); err != nil {
				return err
			}
			if d, err = send(c, add); err != nil {
				return fmt.Errorf("adding %d back: %w", k, err)
			}
			adds = append(adds, float64(d))
			return checkCounts(c, idx, len(peers))
		}()
		if err != nil {
			return bf, err
		}
	}
	bf.Add, bf.Del = Dur(median(adds)), Dur(median(dels))
	return bf, nil
}
