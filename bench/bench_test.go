package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/ip"
	"github.com/weft-net/weft/subnet"
)

// Sizes and durations of the run.
const (
	bigN        = 4000
	smallN      = 1000
	hotRounds   = 200
	burstK      = 1000
	burstRuns   = 3
	idleFor     = 30 * time.Second
	acquireN    = 100
	resultsFile = "results.json"
)

// BenchmarkWeft is `make bench`: the whole measurement of issue 4, once. It
// prints a table, writes results.json next to this file and reports the
// main numbers as benchmark metrics.
func BenchmarkWeft(b *testing.B) {
	bin := preflight(b)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	start := time.Now()

	e, err := newEnv(ctx, b, bin)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := e.close(); err != nil {
			b.Errorf("removing the bench's namespaces: %v", err)
		}
	})
	r := &Results{Machine: machine()}
	peers := synthPeers(4095) // every subnet of the /12 but the first

	for _, n := range []int{smallN, bigN} {
		f, err := e.measureFloors(ctx, n, peers)
		if err != nil {
			b.Fatal(err)
		}
		r.Floors = append(r.Floors, f)
		logf("floors for %d: %+v", n, f)
	}

	if err := runSmall(ctx, e, r, peers[:smallN]); err != nil {
		b.Fatal(err)
	}
	if err := runBig(ctx, e, r, peers); err != nil {
		b.Fatal(err)
	}
	if err := runDual(ctx, e, r, peers); err != nil {
		b.Fatal(err)
	}

	r.WallSeconds = time.Since(start).Seconds()
	r.check()
	r.table(os.Stdout)
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(resultsFile, append(js, '\n'), 0o644); err != nil {
		b.Error(err)
	}
	c4 := r.cold(bigN)
	b.ReportMetric(float64(c4.Converged)/1e6, "cold4000-ms")
	b.ReportMetric(c4.ProgrammedRatio, "program/floor")
	b.ReportMetric(float64(r.Hot.Add.P99)/1e6, "hot-p99-ms")
}

// logf reports progress on stderr, so a long run shows it is alive.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// preflight skips the bench unless it can run, and returns the directory
// holding weftd.
func preflight(b *testing.B) string {
	if os.Geteuid() != 0 {
		b.Skip("bench: needs root (network namespaces, VXLAN devices, iptables); run `sudo make bench`")
	}
	for _, tool := range []string{"ip", "iptables", "etcd"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("bench: %s is not installed (make deps installs it)", tool)
		}
	}
	bin := os.Getenv("WEFT_BIN")
	if bin == "" {
		bin, _ = filepath.Abs("../bin")
	}
	if _, err := os.Stat(filepath.Join(bin, "weftd")); err != nil {
		b.Skipf("bench: no weftd in %s (run `make build`, or `make bench`)", bin)
	}
	return bin
}

// coldRuns is how many cold starts are measured for each N, each on a
// fresh node right after a fast floor of its own: the machine's speed
// drifts, so each run is compared with the floor measured next to it, and
// the table shows medians.
const coldRuns = 3

// coldStarts measures coldRuns cold starts with peers and keeps the last
// node running for the caller (who closes it and calls finishCold).
func (e *env) coldStarts(ctx context.Context, name string, peers []synth) (*node, Cold, error) {
	var conv, prog, floor, convRatio, progRatio []float64
	var nd *node
	var c Cold
	for i := range coldRuns {
		if nd != nil {
			nd.close()
		}
		f := Floor{N: len(peers)}
		if err := e.fastFloor(ctx, &f, peers, 10+i); err != nil {
			return nil, c, fmt.Errorf("fast floor for %d: %w", len(peers), err)
		}
		var err error
		nd, c, err = e.coldStart(ctx, fmt.Sprintf("%s%c", name, 'a'+i), peers)
		if err != nil {
			if nd != nil {
				nd.close()
			}
			return nil, c, fmt.Errorf("cold start with %d peers: %w", len(peers), err)
		}
		p, err := programmed(nd)
		if err != nil {
			nd.close()
			return nil, c, err
		}
		conv = append(conv, float64(c.Converged))
		prog = append(prog, float64(p))
		floor = append(floor, float64(f.FastAdd))
		convRatio = append(convRatio, float64(c.Converged)/float64(f.FastAdd))
		progRatio = append(progRatio, float64(p)/float64(f.FastAdd))
		logf("cold start %d, run %d: converged in %v, programmed in %v, fast floor %v", len(peers), i+1, c.Converged, p, f.FastAdd)
	}
	for _, v := range conv {
		c.Runs = append(c.Runs, Dur(v))
	}
	c.Converged, c.Programmed, c.Floor = Dur(median(conv)), Dur(median(prog)), Dur(median(floor))
	c.ConvergedRatio, c.ProgrammedRatio = median(convRatio), median(progRatio)
	return nd, c, nil
}

func median(vs []float64) float64 {
	vs = slices.Clone(vs)
	slices.Sort(vs)
	return vs[len(vs)/2]
}

// runSmall is the 1,000-peer cold starts, and the concurrent acquisitions
// against the last one's etcd.
func runSmall(ctx context.Context, e *env, r *Results, peers []synth) error {
	nd, c, err := e.coldStarts(ctx, "n1000", peers)
	if err != nil {
		return err
	}
	defer nd.close()
	if err := finishCold(&c, nd, peers); err != nil {
		return err
	}
	r.Cold = append(r.Cold, c)
	logf("cold start %d: %+v", len(peers), c)
	if err := nd.weftd.Stop(5 * time.Second); err != nil {
		return fmt.Errorf("stopping weftd: %w", err)
	}
	nd.weftd = nil
	r.Acquire100, err = acquire(ctx, nd, acquireN)
	return err
}

// runBig is everything at 4,000 peers.
func runBig(ctx context.Context, e *env, r *Results, all []synth) error {
	peers := all[:bigN]
	e.burstPeers = peers[bigN-burstK:]
	fulls0 := arpTableFulls()
	nd, c, err := e.coldStarts(ctx, "n4000", peers)
	if err != nil {
		return err
	}
	defer nd.close()
	own, err := nd.ownSubnet()
	if err != nil {
		return err
	}
	var free []synth
	for _, p := range all[bigN:] {
		if !p.subnet.Overlaps(own) {
			free = append(free, p)
		}
	}
	time.Sleep(time.Second) // let start-up settle (first resync, rules)

	logf("cold start %d: %+v", len(peers), c)
	// Single changes are watched through netlink events (three per
	// change); bulk ones by polling, which adds no listener.
	obs, err := newObserver(nd.h.NS)
	if err != nil {
		return err
	}
	r.Hot, err = hot(ctx, nd, obs, free, hotRounds)
	r.Hot.N = bigN
	obs.close()
	if err != nil {
		return err
	}
	logf("hot: %+v", r.Hot)
	r.Idle, err = idle(ctx, nd, bigN, idleFor)
	if err != nil {
		return err
	}
	logf("idle: %+v", r.Idle)
	pr, err := newProber(nd.h.NS)
	if err != nil {
		return err
	}
	defer pr.close()
	if _, err := pr.waitBulk(peers, 1, time.Second); err != nil { // learns flannel.1
		return err
	}
	r.Neigh, err = neighLimits(ctx, nd, pr, fulls0)
	if err != nil {
		return err
	}
	var adds, dels []float64
	for range burstRuns {
		b, err := burst(ctx, nd, pr, peers, burstK)
		if err != nil {
			return err
		}
		r.Burst.Base, r.Burst.K = b.Base, b.K
		r.Burst.AddRuns, r.Burst.DelRuns = append(r.Burst.AddRuns, b.Add), append(r.Burst.DelRuns, b.Del)
		adds, dels = append(adds, float64(b.Add)), append(dels, float64(b.Del))
	}
	r.Burst.Add, r.Burst.Del = Dur(median(adds)), Dur(median(dels))
	r.BurstFloor, err = e.burstFloor(ctx, peers, burstK)
	if err != nil {
		return fmt.Errorf("burst floor: %w", err)
	}
	logf("burst floor: %+v", r.BurstFloor)
	logf("burst: %+v", r.Burst)
	if err := finishCold(&c, nd, peers); err != nil {
		return err
	}
	r.Cold = append(r.Cold, c)

	// weftd's path again, in process and step by step, at 4,000 peers.
	if err := nd.weftd.Stop(5 * time.Second); err != nil {
		return fmt.Errorf("stopping weftd: %w", err)
	}
	nd.weftd = nil
	if err := nd.put(ctx, peers[bigN-burstK:]); err != nil {
		return err
	}
	r.Pipeline, err = e.pipeline(ctx, nd, bigN, free, hotRounds)
	if err != nil {
		return err
	}
	logf("pipeline: %+v", *r.Pipeline)
	return nil
}

// acquire runs acquireN concurrent lease acquisitions, all for distinct
// subnets, against the node's etcd (under a prefix of their own), and
// returns how long the slowest took.
func acquire(ctx context.Context, nd *node, n int) (Dur, error) {
	cfg, err := subnet.ParseConfig([]byte(network))
	if err != nil {
		return 0, err
	}
	const pfx = "/bench-acquire/network"
	clis := make([]*clientv3.Client, n)
	for i := range clis {
		clis[i], err = clientv3.New(clientv3.Config{
			Endpoints: []string{etcdURL}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
			DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
				return nd.h.DialContext(ctx, "tcp", addr)
			})},
		})
		if err != nil {
			return 0, err
		}
		defer clis[i].Close()
	}
	if err := subnet.NewRegistry(clis[0], pfx, nil, nil).SetConfig(ctx, cfg); err != nil {
		return 0, err
	}
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	got := make(chan netip.Prefix, n)
	errc := make(chan error, n)
	gate := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			pub := netip.AddrFrom4([4]byte{10, 251, byte(i >> 8), byte(i)})
			req := subnet.HoldRequest{
				Config: cfg, PublicIP: pub, VtepMAC: ip.VTEPMAC(pub, 1), TTL: time.Minute,
				OnLease: func(l subnet.Lease) { got <- l.Subnet },
			}
			<-gate
			if err := subnet.NewRegistry(clis[i], pfx, nil, nil).Hold(hctx, req); err != nil && !errors.Is(err, context.Canceled) {
				errc <- err
			}
		})
	}
	start := time.Now()
	close(gate)
	seen := map[netip.Prefix]bool{}
	for len(seen) < n {
		select {
		case s := <-got:
			if seen[s] {
				cancel()
				wg.Wait()
				return 0, fmt.Errorf("two nodes got %v", s)
			}
			seen[s] = true
		case err := <-errc:
			cancel()
			wg.Wait()
			return 0, err
		case <-time.After(30 * time.Second):
			cancel()
			wg.Wait()
			return 0, fmt.Errorf("only %d of %d acquisitions within 30 s", len(seen), n)
		}
	}
	d := time.Since(start)
	cancel()
	wg.Wait()
	return Dur(d), nil
}
