package vxlan

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
)

// logGate writes what the Device tells it into the fake kernel's log, so
// that a test sees its calls in order with the kernel changes.
type logGate struct{ f *fakeNL }

func (g logGate) Admit(addrs []netip.Addr) { g.f.ops = append(g.f.ops, fmt.Sprint("admit ", addrs)) }
func (g logGate) Release(addrs []netip.Addr) {
	if len(addrs) == 0 {
		g.f.ops = append(g.f.ops, "release none")
		return
	}
	g.f.ops = append(g.f.ops, fmt.Sprint("release ", addrs))
}

// The Gate hears of the public address of each peer a Set adds before any
// of its entries goes in, and of each peer it removes after the entries are
// gone; a Set that changes nothing tells it only that it is done ("release
// none"), whatever the number of peers.
func TestSetTellsGate(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	d.SetGate(logGate{f})
	ctx := context.Background()
	set := func(ps ...int) []string {
		t.Helper()
		if err := d.Set(ctx, peers(ps...)); err != nil {
			t.Fatal(err)
		}
		return f.takeOps()
	}
	gateOps := func(ops []string) []string {
		return slices.DeleteFunc(slices.Clone(ops), func(op string) bool {
			return !strings.HasPrefix(op, "admit") && !strings.HasPrefix(op, "release")
		})
	}

	// The first Set (compared with the kernel) admits every peer first.
	ops := set(2, 3)
	if len(ops) < 2 || ops[0] != "admit [172.17.42.2 172.17.42.3]" || ops[len(ops)-1] != "release none" || len(gateOps(ops)) != 2 {
		t.Fatalf("first Set: %q", ops)
	}
	// One peer added: admitted before its three entries.
	ops = set(2, 3, 4)
	if len(ops) != 5 || ops[0] != "admit [172.17.42.4]" || ops[4] != "release none" {
		t.Fatalf("adding a peer: %q", ops)
	}
	// Nothing changed: nothing told.
	if ops := set(2, 3, 4); len(ops) != 1 || ops[0] != "release none" {
		t.Fatalf("same peers again: %q", ops)
	}
	// One removed: released after its entries are gone.
	ops = set(2, 4)
	if len(ops) != 4 || ops[3] != "release [172.17.42.3]" {
		t.Fatalf("removing a peer: %q", ops)
	}
	// A new MAC on the same address: one admit and one release of it, so a
	// counting Gate keeps it throughout.
	moved := peers(2, 4)
	moved[1].VtepMAC = net.HardwareAddr{0x0a, 0, 0, 0, 0, 0x44}
	if err := d.Set(ctx, moved); err != nil {
		t.Fatal(err)
	}
	if g := gateOps(f.takeOps()); !slices.Equal(g, []string{"admit [172.17.42.4]", "release [172.17.42.4]"}) {
		t.Fatalf("a peer's new MAC: gate told %q", g)
	}
	// A peer the rulebook refuses (a zero MAC) is never admitted.
	bad := peer(5)
	bad.VtepMAC = net.HardwareAddr{0, 0, 0, 0, 0, 0}
	if err := d.Set(ctx, append(moved, bad)); err == nil {
		t.Fatal("Set took a peer with a zero MAC")
	}
	if g := gateOps(f.takeOps()); len(g) != 1 || g[0] != "release none" {
		t.Fatalf("a refused peer: gate told %q", g)
	}
}
