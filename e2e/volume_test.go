package e2e

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// peakRSS is a process's peak resident memory (VmHWM) in bytes.
func peakRSS(t *testing.T, pid int) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return kb << 10
		}
	}
	t.Fatalf("no VmHWM in /proc/%d/status", pid)
	return 0
}

// rssBound is the peak RSS weftd stays under, whatever is written under the
// prefix (README, "Bounded under volume").
const rssBound = 64 << 20

// Volume: how much garbage the attacker writes under the subnets prefix.
const (
	smallKeys = 2000 // hostile keys with small values
	bigKeys   = 150  // values of a megabyte each: 150 MiB, far over rssBound
	longKeys  = 50   // keys of a megabyte each
)

// TestBoundedUnderVolume: an attacker writes thousands of keys, 150 MiB of
// megabyte values and 50 megabyte keys under the subnets prefix, one key named with a terminal
// escape. weftd watching it live, and weftd restarted into it (which lists
// it all), stay under rssBound of peak RSS and ready; every bad key is
// counted, no log line is longer than a few hundred bytes, the data planes
// are as they were, and `weftctl leases` lists everything with the hostile
// key quoted.
func TestBoundedUnderVolume(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2})
	ctx := e.ctx
	a, b := e.nodes[0], e.nodes[1]
	a.waitReady(t, 1, 10*time.Second)
	b.waitReady(t, 1, 10*time.Second)
	beforeA, beforeB := a.dataplane(ctx), b.dataplane(ctx)

	start := time.Now()
	hostile := prefix + "/subnets/\x1b]0;pwned\x07\x1b[2J"
	if _, err := e.cli.Put(ctx, hostile, "x"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < smallKeys; i += 100 {
		var ops []clientv3.Op
		for j := i; j < i+100; j++ {
			// Keys that parse, in Network, with values that do not.
			k := fmt.Sprintf("%s/subnets/172.%d.%d.0-24", prefix, 20+j/256, j%256)
			ops = append(ops, clientv3.OpPut(k, fmt.Sprintf(`{"PublicIP":"%s"}`, strings.Repeat("9", 100))))
		}
		if _, err := e.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatalf("writing small keys: %v", err)
		}
	}
	big := strings.Repeat("{", 1<<20)
	for i := range bigKeys {
		k := fmt.Sprintf("%s/subnets/172.30.%d.0-24", prefix, i)
		if _, err := e.cli.Put(ctx, k, big); err != nil {
			t.Fatalf("writing megabyte value %d: %v", i, err)
		}
	}
	for i := range longKeys {
		k := fmt.Sprintf("%s/subnets/172.31.%d.0-24%s", prefix, i, strings.Repeat("k", 1<<20))
		if _, err := e.cli.Put(ctx, k, "x"); err != nil {
			t.Fatalf("writing megabyte key %d: %v", i, err)
		}
	}
	t.Logf("wrote %d small keys, %d MiB of values and %d MiB of keys in %v", smallKeys+1, bigKeys, longKeys, time.Since(start).Round(time.Millisecond))
	total := float64(smallKeys + bigKeys + longKeys + 1)

	// node2 saw it all through its watch.
	e.eventually("node2 counts every bad key", 30*time.Second, func() (bool, string) {
		v := b.metric(ctx, "weft_peer_events_total", `type="invalid"`)
		return v >= total, fmt.Sprint(v)
	})
	// node1 lists it all at start-up.
	a.restart(syscall.SIGTERM, "")
	a.waitReady(t, 1, 30*time.Second)
	e.eventually("node1 counts every bad key", 10*time.Second, func() (bool, string) {
		v := a.metric(ctx, "weft_peer_events_total", `type="invalid"`)
		return v >= total, fmt.Sprint(v)
	})

	for _, n := range []*node{a, b} {
		peak := peakRSS(t, n.proc.Pid())
		t.Logf("%s: weftd peak RSS %.1f MiB (bound %d MiB)", n.Name, float64(peak)/(1<<20), rssBound>>20)
		if peak > rssBound {
			t.Errorf("%s: weftd peak RSS %.1f MiB, over the %d MiB bound", n.Name, float64(peak)/(1<<20), rssBound>>20)
		}
		longest := 0
		for l := range strings.Lines(n.proc.Tail(1 << 30)) {
			longest = max(longest, len(l))
		}
		if longest > 1024 {
			t.Errorf("%s: a log line of %d bytes: values are not cut", n.Name, longest)
		}
	}
	if got := a.dataplane(ctx); got != beforeA {
		t.Errorf("node1's data plane changed:\nbefore:\n%s\nafter:\n%s", beforeA, got)
	}
	if got := b.dataplane(ctx); got != beforeB {
		t.Errorf("node2's data plane changed:\nbefore:\n%s\nafter:\n%s", beforeB, got)
	}

	out, err := a.Run(ctx, filepath.Join(e.bin, "weftctl"), "leases", "--etcd-endpoints", etcdURL)
	if err != nil {
		t.Fatalf("weftctl leases: %v", err)
	}
	if strings.ContainsAny(out, "\x1b\x07") {
		t.Errorf("weftctl leases printed a raw terminal escape")
	}
	if !strings.Contains(out, `"/coreos.com/network/subnets/\x1b]0;pwned\a\x1b[2J"`) {
		t.Errorf("weftctl leases does not show the hostile key quoted")
	}
	if n := strings.Count(out, "1048576 bytes, over the 65536-byte limit"); n != bigKeys {
		t.Errorf("weftctl leases names %d oversized values, want %d", n, bigKeys)
	}
	if n := strings.Count(out, "\n"); n < int(total)+3 {
		t.Errorf("weftctl leases printed %d lines, want a header, 2 leases and %d bad keys", n, int(total))
	}
}
