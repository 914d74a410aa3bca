package vxlan

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/backend"
)

// bigPeers returns n peers in 10.128.0.0/9-style /24s, sorted by subnet as
// snapshots from etcd are.
func bigPeers(n int) []backend.Peer {
	ps := make([]backend.Peer, n)
	for i := range ps {
		ps[i] = backend.Peer{
			Subnet:   netip.MustParsePrefix(fmt.Sprintf("10.%d.%d.0/24", 128+i/256, i%256)),
			PublicIP: netip.AddrFrom4([4]byte{192, 168, byte(i / 256), byte(i % 256)}),
			VtepMAC:  net.HardwareAddr{0x0e, 0, 0, 0, byte(i / 256), byte(i % 256)}, // not the test node's 0a:..:01
		}
	}
	return ps
}

// BenchmarkSetAddOne measures the hot path the daemon takes when one node
// joins (or leaves) a 4,000-node overlay: Set with the whole list, one peer
// new or gone, on the fake kernel. BenchmarkKernelAddOne is the same on a
// real device (the three requests go in one sendmsg).
func BenchmarkSetAddOne(b *testing.B) {
	f := newFakeNL()
	cfg := testConfig()
	d, err := New(cfg, nil, withNL(f))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	if _, err := d.Ensure(ctx); err != nil {
		b.Fatal(err)
	}
	all := bigPeers(4001)
	without, with := all[:4000], all
	if err := d.Set(ctx, without); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		ps := with
		if i%2 == 1 {
			ps = without
		}
		if err := d.Set(ctx, ps); err != nil {
			b.Fatal(err)
		}
	}
}

// kernelBenchNode makes a namespace of its own with an uplink (one end of a
// veth pair whose other end stays in it) for the kernel benchmarks; nothing
// they program is ever sent anywhere.
func kernelBenchNode(b *testing.B) *node {
	if os.Geteuid() != 0 {
		b.Skip("kernel benchmark: needs root")
	}
	ns := "weft-vxb-" + strconv.Itoa(os.Getpid())
	run := func(args ...string) {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			b.Fatalf("%v: %v\n%s", args, err, out)
		}
	}
	run("ip", "netns", "add", ns)
	b.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	run("ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer")
	run("ip", "-n", ns, "link", "set", "eth0-peer", "up")
	run("ip", "-n", ns, "addr", "add", "172.17.42.31/16", "dev", "eth0")
	run("ip", "-n", ns, "link", "set", "eth0", "up")
	nsh, err := netns.GetFromName(ns)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { nsh.Close() })
	h, err := netlink.NewHandleAt(nsh)
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		b.Fatal(err)
	}
	return &node{ns: ns, nsh: nsh, uplink: eth0.Attrs().Index, local: netip.MustParseAddr("172.17.42.31"),
		subnet: netip.MustParsePrefix("10.127.0.0/24"), mac: mac1}
}

func kernelBenchDevice(b *testing.B, n *node) *Device {
	d, err := New(Config{Local: n.local, UplinkIndex: n.uplink, MAC: n.mac, Subnet: n.subnet}, nil, WithNamespace(n.nsh))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(d.Close)
	if _, err := d.Ensure(context.Background()); err != nil {
		b.Fatal(err)
	}
	return d
}

// BenchmarkKernelProgram4000 programs 4,000 peers on an empty device and
// removes them again.
func BenchmarkKernelProgram4000(b *testing.B) {
	n := kernelBenchNode(b)
	d := kernelBenchDevice(b, n)
	ps := bigPeers(4000)
	ctx := context.Background()
	b.ResetTimer()
	for range b.N {
		if err := d.Set(ctx, ps); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := d.Set(ctx, nil); err != nil {
			b.Fatal(err)
		}
		d.synced = false // the next Set programs from a dump, as at start
		b.StartTimer()
	}
}

// BenchmarkKernelReconcile4000 is the periodic check at 4,000 peers with
// nothing to repair.
func BenchmarkKernelReconcile4000(b *testing.B) {
	n := kernelBenchNode(b)
	d := kernelBenchDevice(b, n)
	ctx := context.Background()
	if err := d.Set(ctx, bigPeers(4000)); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for range b.N {
		rep, err := d.Reconcile(ctx)
		if err != nil || rep.Total() != 0 {
			b.Fatal(rep, err)
		}
	}
}

// BenchmarkKernelAddOne is one peer joining 4,000 on a real device.
func BenchmarkKernelAddOne(b *testing.B) {
	n := kernelBenchNode(b)
	d := kernelBenchDevice(b, n)
	ctx := context.Background()
	all := bigPeers(4001)
	if err := d.Set(ctx, all[:4000]); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := range b.N {
		ps := all
		if i%2 == 1 {
			ps = all[:4000]
		}
		if err := d.Set(ctx, ps); err != nil {
			b.Fatal(err)
		}
	}
}
