package vxlan

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/backend"
)

// TestSetUnsortedInput gives the same peers in random orders, with
// duplicates: the kernel state is the same, and a repeated Set in another
// order changes nothing.
func TestSetUnsortedInput(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	ctx := context.Background()
	ns := []int{2, 3, 4, 5, 6, 7, 8, 9}
	r := rand.New(rand.NewPCG(1, 2))
	for round := range 10 {
		ps := peers(ns...)
		r.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
		if round%2 == 1 {
			ps = append(ps, peer(ns[round%len(ns)])) // a duplicate
		}
		f.takeOps()
		err := d.Set(ctx, ps)
		if round%2 == 1 && (err == nil || !strings.Contains(err.Error(), "another peer has the same subnet")) {
			t.Errorf("round %d: duplicate not reported: %v", round, err)
		}
		if round%2 == 0 && err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		if got := f.entries(); got != entriesFor(ns...) {
			t.Fatalf("round %d: entries:\n%s", round, got)
		}
		if ops := f.takeOps(); round > 0 && len(ops) != 0 {
			t.Errorf("round %d: reordered peers changed the kernel: %q", round, ops)
		}
	}
}

// TestSetKeepsIncumbentMAC: a newcomer claiming a MAC a wanted peer already
// has is skipped, even if it sorts first, and gets its turn once the MAC is
// free.
func TestSetKeepsIncumbentMAC(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	ctx := context.Background()
	if err := d.Set(ctx, peers(5)); err != nil {
		t.Fatal(err)
	}
	thief := peer(4)
	thief.VtepMAC = peer(5).VtepMAC
	err := d.Set(ctx, []backend.Peer{thief, peer(5)})
	if err == nil || !strings.Contains(err.Error(), "skipping peer 172.16.4.0/24") {
		t.Errorf("Set error = %v, want peer 4 skipped", err)
	}
	if got := f.entries(); got != entriesFor(5) {
		t.Errorf("entries:\n%s\nwant:\n%s", got, entriesFor(5))
	}
	// Peer 5 leaves: the same input now programs peer 4 with that MAC.
	if err := d.Set(ctx, []backend.Peer{thief}); err != nil {
		t.Fatal(err)
	}
	want := "bridge fdb add 0a:00:00:00:00:05 dev flannel.1 dst 172.17.42.4 self permanent\n" +
		"ip neigh add 172.16.4.0 lladdr 0a:00:00:00:00:05 dev flannel.1 nud permanent\n" +
		fmt.Sprintf("ip route add 172.16.4.0/24 via 172.16.4.0 dev flannel.1 onlink metric %d", 0x1000+4+1)
	if got := f.entries(); got != want {
		t.Errorf("entries:\n%s\nwant:\n%s", got, want)
	}
}

func TestMetricOf(t *testing.T) {
	for _, c := range []struct {
		p    string
		want uint32
	}{
		{"172.16.78.0/24", 0x104e + 1},
		{"172.31.255.0/24", 0x1fff + 1},
		{"10.0.0.0/24", 1},
		{"10.1.2.0/23", 0x0081 + 1},     // 10.1.2.0 >> 9
		{"fd00:0:0:5::/64", 0x0005 + 1}, // the /64's low 16 bits
		{"fd00::abcd:0:0/96", 0xabcd + 1},
	} {
		if got := metricOf(netip.MustParsePrefix(c.p)); got != c.want {
			t.Errorf("metricOf(%s) = %d, want %d", c.p, got, c.want)
		}
	}
}

// Unsorted input whose sorted head changed a peer: Set finds the disorder
// only after it rewrote that peer's entry in place, and must still program
// the change (it puts the entry back and goes again over sorted peers).
func TestSetUnsortedAfterInPlaceChange(t *testing.T) {
	f := newFakeNL()
	d := newFakeDevice(t, f)
	ctx := context.Background()
	if err := d.Set(ctx, peers(2, 3, 4, 5, 6)); err != nil {
		t.Fatal(err)
	}
	ps := peers(2, 3, 4, 6, 5)
	ps[1].VtepMAC = net.HardwareAddr{0x0a, 0, 0, 0, 0, 0x33}
	if err := d.Set(ctx, ps); err != nil {
		t.Fatal(err)
	}
	lines := func(s string) []string { l := strings.Split(s, "\n"); slices.Sort(l); return l }
	want := lines(strings.ReplaceAll(entriesFor(2, 3, 4, 5, 6), "0a:00:00:00:00:03", "0a:00:00:00:00:33"))
	if got := lines(f.entries()); !slices.Equal(got, want) {
		t.Fatalf("kernel after an unsorted Set with a changed MAC:\n%s\nwant:\n%s", got, want)
	}
	// And the Device's picture is right: the same peers again change nothing.
	f.takeOps()
	if err := d.Set(ctx, ps); err != nil || len(f.takeOps()) != 0 {
		t.Fatalf("the same peers again: %v, ops made", err)
	}
}
