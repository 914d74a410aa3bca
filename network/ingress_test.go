package network

import (
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/vishvananda/netns"
)

// realIngress gives an Ingress in a fresh network namespace, and nft run in
// that namespace.
func realIngress(t testing.TB, cfg IngressConfig) (*Ingress, func(args ...string) string, IngressConfig) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace and change its nf_tables")
	}
	nftBin, err := exec.LookPath("nft")
	if err != nil {
		t.Skipf("needs nft (Debian package nftables) to look at the table: %v", err)
	}
	ns := "weft-ingress-" + strings.ReplaceAll(t.Name(), "/", "-")
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run("ip", "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v\n%s", ns, err, out)
		}
	})
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	cfg.NetNSFd = int(h)
	g, err := NewIngress(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(g.Close)
	return g, func(args ...string) string {
		return run(append([]string{"ip", "netns", "exec", ns, nftBin}, args...)...)
	}, cfg
}

func TestIngressInstallAdmitRepair(t *testing.T) {
	cfg := IngressConfig{
		Network: netip.MustParsePrefix("172.16.0.0/12"), Subnet: netip.MustParsePrefix("172.16.28.0/24"),
		Device: "flannel.1", Port: 8472, Allow: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16")},
	}
	g, nft, _ := realIngress(t, cfg)
	if n, err := g.Ensure(); err != nil || n != 1 {
		t.Fatalf("first Ensure = %d, %v; want the install counted", n, err)
	}
	if n, err := g.Ensure(); err != nil || n != 0 {
		t.Fatalf("second Ensure = %d, %v; want nothing to do", n, err)
	}
	table := nft("list", "table", "inet", "weft")
	t.Log(table)
	for _, want := range []string{
		"udp dport 8472", "ip saddr != @peers", "ip saddr 10.9.0.0/16", "ip saddr 172.16.28.0/24",
		`iifname "flannel.1" ip saddr != 172.16.0.0/12`, "hook input", "hook forward", "hook prerouting",
	} {
		if !strings.Contains(table, want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}

	// Two peers in; a third admitted, one released.
	ip := func(a string) netip.Addr { return netip.MustParseAddr(a) }
	if err := g.Admit([]netip.Addr{ip("172.17.42.31"), ip("172.17.42.32")}); err != nil {
		t.Fatal(err)
	}
	if err := g.Settle(); err != nil { // the first snapshot is programmed
		t.Fatal(err)
	}
	set := func() string { return nft("list", "set", "inet", "weft", "peers") }
	if s := set(); !strings.Contains(s, "172.17.42.31") || !strings.Contains(s, "172.17.42.32") {
		t.Fatalf("set after Admit:\n%s", s)
	}
	if err := g.Admit([]netip.Addr{ip("172.17.42.33")}); err != nil {
		t.Fatal(err)
	}
	if s := set(); !strings.Contains(s, "172.17.42.31") || !strings.Contains(s, "172.17.42.33") {
		t.Fatalf("before Release the departed peer must still be allowed and the new one already:\n%s", s)
	}
	if err := g.Release([]netip.Addr{ip("172.17.42.31")}); err != nil {
		t.Fatal(err)
	}
	if s := set(); strings.Contains(s, "172.17.42.31") || !strings.Contains(s, "172.17.42.33") {
		t.Fatalf("after Release:\n%s", s)
	}

	// Two peers naming one address: it stays while either is a peer. An
	// IPv4-mapped address is the IPv4 one.
	if err := g.Admit([]netip.Addr{ip("::ffff:172.17.42.32")}); err != nil {
		t.Fatal(err)
	}
	if err := g.Release([]netip.Addr{ip("172.17.42.33"), ip("172.17.42.32")}); err != nil {
		t.Fatal(err)
	}
	if s := set(); !strings.Contains(s, "172.17.42.32") || strings.Contains(s, "172.17.42.33") {
		t.Fatalf("shared address released with one of its two peers:\n%s", s)
	}
	// A Release of what was never admitted changes nothing, and does not
	// make a later Admit of it a no-op.
	if err := g.Release([]netip.Addr{ip("172.17.42.34")}); err != nil {
		t.Fatal(err)
	}
	if err := g.Admit([]netip.Addr{ip("172.17.42.34")}); err != nil {
		t.Fatal(err)
	}
	if s := set(); !strings.Contains(s, "172.17.42.34") {
		t.Fatalf("address admitted after a stray Release is missing:\n%s", s)
	}
	if err := g.Release([]netip.Addr{ip("172.17.42.34")}); err != nil {
		t.Fatal(err)
	}

	// The table gone when a peer comes: the kernel refuses the element,
	// and the Admit writes the whole table instead, with every peer.
	nft("flush", "ruleset")
	if err := g.Admit([]netip.Addr{ip("172.17.42.36")}); err != nil {
		t.Fatal(err)
	}
	if s := set(); !strings.Contains(s, "172.17.42.32") || !strings.Contains(s, "172.17.42.36") {
		t.Fatalf("Admit into a flushed ruleset:\n%s", s)
	}
	if err := g.Release([]netip.Addr{ip("172.17.42.36")}); err != nil {
		t.Fatal(err)
	}

	// Someone flushes the ruleset, or deletes one rule: Ensure puts it back whole.
	nft("flush", "ruleset")
	if n, err := g.Ensure(); err != nil || n != 1 {
		t.Fatalf("Ensure after flush = %d, %v", n, err)
	}
	if s := set(); !strings.Contains(s, "172.17.42.32") {
		t.Fatalf("set not restored:\n%s", s)
	}
	// An element deleted by someone else is put back by one of the next
	// elementsEvery checks (the others look at the structure only).
	nft("delete", "element", "inet", "weft", "peers", "{ 172.17.42.32 }")
	repaired := 0
	for range elementsEvery {
		n, err := g.Ensure()
		if err != nil {
			t.Fatal(err)
		}
		repaired += n
	}
	if s := set(); repaired != 1 || !strings.Contains(s, "172.17.42.32") {
		t.Fatalf("%d checks after a deleted element: %d repairs, set:\n%s", elementsEvery, repaired, s)
	}
	nft("add", "rule", "inet", "weft", "input", "accept")
	if n, err := g.Ensure(); err != nil || n != 1 {
		t.Fatalf("Ensure after a foreign rule = %d, %v", n, err)
	}
	if got := nft("list", "table", "inet", "weft"); got != table && !strings.Contains(got, "172.17.42.32") {
		t.Errorf("table after repairs:\n%s", got)
	}
	if d, err := g.Dropped(); err != nil || len(d) != 3 {
		t.Errorf("Dropped = %v, %v", d, err)
	}
	if err := g.Remove(); err != nil {
		t.Fatal(err)
	}
	if out := nft("list", "tables"); strings.Contains(out, "weft") {
		t.Errorf("table left after Remove:\n%s", out)
	}
}

// A restarted weftd (a new Ingress over the table the old one left) keeps
// every address in the set until it settles after its first snapshot, so no
// peer's packet is dropped across the restart; Settle then removes what is
// no peer any more.
func TestIngressAdoptsOnRestart(t *testing.T) {
	cfg := IngressConfig{Network: netip.MustParsePrefix("172.16.0.0/12"), Subnet: netip.MustParsePrefix("172.16.28.0/24"), Device: "flannel.1", Port: 8472}
	old, nft, cfg := realIngress(t, cfg)
	if _, err := old.Ensure(); err != nil {
		t.Fatal(err)
	}
	ip := func(a string) netip.Addr { return netip.MustParseAddr(a) }
	if err := old.Admit([]netip.Addr{ip("172.17.42.31"), ip("172.17.42.32")}); err != nil {
		t.Fatal(err)
	}
	old.Close()
	set := func() string { return nft("list", "set", "inet", "weft", "peers") }

	g, err := NewIngress(cfg, testLog(t))
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if n, err := g.Ensure(); err != nil || n != 0 {
		t.Fatalf("Ensure after a restart = %d, %v; want the table adopted as it is", n, err)
	}
	// Delete the forward chain's one rule by its handle ("... drop # handle N",
	// the last handle listed; the first is the chain's).
	out := nft("-a", "list", "chain", "inet", "weft", "forward")
	handle := strings.Fields(out[strings.LastIndex(out, "# handle "):])[2]
	nft("delete", "rule", "inet", "weft", "forward", "handle", handle)
	if n, err := g.Ensure(); err != nil || n != 1 {
		t.Fatalf("Ensure after a rule was deleted = %d, %v", n, err)
	}
	if s := set(); !strings.Contains(s, "172.17.42.31") || !strings.Contains(s, "172.17.42.32") {
		t.Fatalf("a repair before Settle dropped the adopted peers:\n%s", s)
	}
	// The first snapshot: one old peer stays, one comes, one went.
	if err := g.Admit([]netip.Addr{ip("172.17.42.32"), ip("172.17.42.33")}); err != nil {
		t.Fatal(err)
	}
	if s := set(); !strings.Contains(s, "172.17.42.31") || !strings.Contains(s, "172.17.42.33") {
		t.Fatalf("before Settle:\n%s", s)
	}
	if err := g.Settle(); err != nil {
		t.Fatal(err)
	}
	if s := set(); strings.Contains(s, "172.17.42.31") || !strings.Contains(s, "172.17.42.32") || !strings.Contains(s, "172.17.42.33") {
		t.Fatalf("after Settle:\n%s", s)
	}
	// Settle happens once: an address added by hand later stays until the
	// element comparison of a later check.
	nft("add", "element", "inet", "weft", "peers", "{ 172.17.42.35 }")
	if err := g.Settle(); err != nil {
		t.Fatal(err)
	}
	if s := set(); !strings.Contains(s, "172.17.42.35") {
		t.Fatalf("a second Settle removed an element:\n%s", s)
	}
}

// BenchmarkIngressOneChange is the filter's share of a peer's change, with
// 100 and with 4,000 peers admitted: one address admitted and released, in a
// namespace's kernel. The two must cost the same (Admit and Release are told
// of the change only, and the kernel's set is a hash): ingress filtering
// adds no per-peer cost.
func BenchmarkIngressOneChange(b *testing.B) {
	for _, peers := range []int{100, 4000} {
		b.Run(fmt.Sprintf("peers=%d", peers), func(b *testing.B) {
			cfg := IngressConfig{Network: netip.MustParsePrefix("172.16.0.0/12"), Subnet: netip.MustParsePrefix("172.16.0.0/24"), Device: "flannel.1", Port: 8472}
			g, _, _ := realIngress(b, cfg)
			if _, err := g.Ensure(); err != nil {
				b.Fatal(err)
			}
			var addrs []netip.Addr
			for i := range peers {
				addrs = append(addrs, netip.AddrFrom4([4]byte{10, 1, byte(i / 256), byte(i % 256)}))
			}
			if err := g.Admit(addrs); err != nil {
				b.Fatal(err)
			}
			one := []netip.Addr{netip.MustParseAddr("10.9.9.9")}
			b.ResetTimer()
			for range b.N {
				if err := g.Admit(one); err != nil {
					b.Fatal(err)
				}
				if err := g.Release(one); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
