package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeIPT is iptables as a few lists of rule lines, printed by String in
// iptables-save's form without counters.
type fakeIPT struct {
	mu          sync.Mutex // guards the fields below
	randomFully bool
	tables      map[string]map[string][]string // table -> chain -> "-A ..." lines
	lists       int                            // calls to List
	writes      int                            // calls that change something
	broken      string                         // a table every command on fails
}

var _ iptablesAPI = (*fakeIPT)(nil)

var builtins = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
}

func newFakeIPT() *fakeIPT {
	f := &fakeIPT{randomFully: true, tables: map[string]map[string][]string{}}
	for t, chains := range builtins {
		f.tables[t] = map[string][]string{}
		for _, c := range chains {
			f.tables[t][c] = nil
		}
	}
	return f
}

type fakeErr string

func (e fakeErr) Error() string { return string(e) }

func (f *fakeIPT) chain(table, chain string) ([]string, error) {
	if table == f.broken {
		return nil, fakeErr("iptables v1.8.9 (nf_tables): table `" + table + "' does not exist")
	}
	rules, ok := f.tables[table][chain]
	if !ok {
		return nil, fakeErr(fmt.Sprintf("chain `%s' in table `%s' is incompatible, use 'nft' tool.", chain, table))
	}
	return rules, nil
}

func (f *fakeIPT) List(table, chain string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	rules, err := f.chain(table, chain)
	if err != nil {
		return nil, err
	}
	head := "-N " + chain
	if slices.Contains(builtins[table], chain) {
		head = "-P " + chain + " ACCEPT"
	}
	return append([]string{head}, rules...), nil
}

func (f *fakeIPT) ChainExists(table, chain string) (bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	_, err := f.chain(table, chain)
	if table == f.broken {
		return false, err
	}
	return err == nil, nil
}

func (f *fakeIPT) NewChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	if _, err := f.chain(table, chain); err == nil {
		return fakeErr("iptables: Chain already exists.")
	}
	f.tables[table][chain] = nil
	return nil
}

func (f *fakeIPT) Insert(table, chain string, pos int, spec ...string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	rules, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	if pos < 1 || pos > len(rules)+1 {
		return fakeErr("iptables: Index of insertion too big.")
	}
	if target := spec[len(spec)-1]; strings.HasPrefix(target, "WEFT-") {
		if _, err := f.chain(table, target); err != nil {
			return err // like iptables, no jump to a missing chain
		}
	}
	f.tables[table][chain] = slices.Insert(rules, pos-1, rule(spec).line(chain))
	return nil
}

func (f *fakeIPT) Append(table, chain string, spec ...string) error {
	f.mu.Lock()
	n := len(f.tables[table][chain])
	f.mu.Unlock()
	return f.Insert(table, chain, n+1, spec...)
}

func (f *fakeIPT) DeleteById(table, chain string, id int) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	rules, err := f.chain(table, chain)
	if err != nil {
		return err
	}
	if id < 1 || id > len(rules) {
		return fakeErr("iptables: Index of deletion too big.")
	}
	f.tables[table][chain] = slices.Delete(rules, id-1, id)
	return nil
}

func (f *fakeIPT) ListById(table, chain string, id int) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	rules, err := f.chain(table, chain)
	if err != nil {
		return "", err
	}
	if id < 1 || id > len(rules) {
		return "", fakeErr("iptables: Index of deletion too big.")
	}
	return rules[id-1], nil
}

func (f *fakeIPT) ClearAndDeleteChain(table, chain string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	if _, err := f.chain(table, chain); err != nil {
		return nil
	}
	for _, rules := range f.tables[table] {
		if len(jumpsTo(rules, chain)) > 0 {
			return fakeErr("iptables: Too many links.")
		}
	}
	delete(f.tables[table], chain)
	return nil
}

func (f *fakeIPT) HasRandomFully() bool { return f.randomFully }

// set replaces a chain's rules by hand, as an admin or another tool would.
func (f *fakeIPT) set(table, chain string, lines ...string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tables[table][chain] = lines
}

// String prints the tables as iptables-save does, without counters and
// built-in policies: "*table", ":CHAIN" for each user chain, the rules.
func (f *fakeIPT) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var b strings.Builder
	for _, t := range []string{"filter", "nat"} {
		fmt.Fprintf(&b, "*%s\n", t)
		var user []string
		for c := range f.tables[t] {
			if !slices.Contains(builtins[t], c) {
				user = append(user, c)
			}
		}
		slices.Sort(user)
		for _, c := range user {
			fmt.Fprintf(&b, ":%s\n", c)
		}
		for _, c := range append(slices.Clone(builtins[t]), user...) {
			for _, l := range f.tables[t][c] {
				b.WriteString(l + "\n")
			}
		}
	}
	return b.String()
}

var (
	testNetwork = netip.MustParsePrefix("172.16.0.0/12")
	node1Cfg    = RulesConfig{Network: testNetwork, Subnet: netip.MustParsePrefix("172.16.28.0/24"), Device: "flannel.1", IPMasq: true}
)

const (
	fwdText = `*filter
:WEFT-FWD
-A FORWARD -m comment --comment "weft: forward overlay traffic" -j WEFT-FWD
-A WEFT-FWD -s 172.16.28.0/24 -m comment --comment "weft: from local containers" -j ACCEPT
-A WEFT-FWD -d 172.16.28.0/24 -i flannel.1 -m comment --comment "weft: overlay to local containers" -j ACCEPT
-A WEFT-FWD -d 172.16.28.0/24 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "weft: replies to local containers" -j ACCEPT
-A WEFT-FWD -o flannel.1 -m conntrack --ctstate DNAT -m comment --comment "weft: connections sent into the overlay by DNAT" -j ACCEPT
-A WEFT-FWD -i flannel.1 -m conntrack --ctstate RELATED,ESTABLISHED -m comment --comment "weft: replies from the overlay" -j ACCEPT
-A WEFT-FWD -o flannel.1 -m comment --comment "weft: no routing into the overlay for others" -j DROP
-A WEFT-FWD -i flannel.1 -m comment --comment "weft: no routing out of the overlay for others" -j DROP
`
	node1Text = fwdText + `*nat
:WEFT-POSTRTG
-A POSTROUTING -m comment --comment "weft: masquerade traffic leaving the overlay" -j WEFT-POSTRTG
-A WEFT-POSTRTG -s 172.16.28.0/24 -d 172.16.28.0/24 -m comment --comment "weft: inside this node subnet" -j RETURN
-A WEFT-POSTRTG -s 172.16.28.0/24 -o flannel.1 -m comment --comment "weft: overlay traffic keeps its source" -j RETURN
-A WEFT-POSTRTG ! -s 172.16.28.0/24 -o flannel.1 -m comment --comment "weft: foreign sources enter the overlay as this node" -j MASQUERADE --random-fully
-A WEFT-POSTRTG -s 172.16.28.0/24 -d 224.0.0.0/4 -m comment --comment "weft: multicast stays as is" -j RETURN
-A WEFT-POSTRTG -s 172.16.28.0/24 -m comment --comment "weft: leaving the overlay" -j MASQUERADE --random-fully
`
	noMasqText = fwdText + "*nat\n"
)

// wantText is the expected state for cfg, derived from node1Text so that
// every configuration is checked against the same reviewed text.
func wantText(cfg RulesConfig) string {
	text := node1Text
	if !cfg.IPMasq {
		text = noMasqText
	}
	if cfg.SkipForward {
		text = "*filter\n" + text[strings.Index(text, "*nat"):]
	}
	return strings.ReplaceAll(text, "172.16.28.0/24", cfg.Subnet.String())
}

func testLog(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

func TestRulesEnsureRepairs(t *testing.T) {
	jumpNat := `-A POSTROUTING -m comment --comment "weft: masquerade traffic leaving the overlay" -j WEFT-POSTRTG`
	jumpFwd := `-A FORWARD -m comment --comment "weft: forward overlay traffic" -j WEFT-FWD`
	docker := "-A POSTROUTING -s 172.16.28.0/24 ! -o docker0 -j MASQUERADE"
	steps := []struct {
		name   string
		breaks func(f *fakeIPT)
		fixed  int
		want   string
	}{
		{"fresh host", func(*fakeIPT) {}, 4, node1Text},
		{"nothing wrong", func(*fakeIPT) {}, 0, node1Text},
		{"nat chain flushed", func(f *fakeIPT) { f.set("nat", "WEFT-POSTRTG") }, 1, node1Text},
		{"nat jump deleted", func(f *fakeIPT) { f.set("nat", "POSTROUTING") }, 1, node1Text},
		{"both filter parts gone", func(f *fakeIPT) { f.set("filter", "FORWARD"); delete(f.tables["filter"], "WEFT-FWD") }, 2, node1Text},
		{"rule edited", func(f *fakeIPT) {
			f.set("filter", "WEFT-FWD", "-A WEFT-FWD -s 172.16.0.0/12 -j ACCEPT", "-A WEFT-FWD -j DROP")
		}, 1, node1Text},
		{"foreign rule above our jump", func(f *fakeIPT) { f.set("nat", "POSTROUTING", docker, jumpNat) }, 1,
			strings.Replace(node1Text, jumpNat, jumpNat+"\n"+docker, 1)},
		{"duplicate and old jumps", func(f *fakeIPT) {
			f.set("nat", "POSTROUTING", jumpNat, docker, jumpNat, "-A POSTROUTING -j WEFT-POSTRTG")
		}, 1, strings.Replace(node1Text, jumpNat, jumpNat+"\n"+docker, 1)},
		{"foreign rules around our forward jump stay in place", func(f *fakeIPT) {
			f.set("filter", "FORWARD", "-A FORWARD -j DOCKER-USER", jumpFwd, "-A FORWARD -j ACCEPT")
		}, 0, strings.Replace(strings.Replace(node1Text, jumpNat, jumpNat+"\n"+docker, 1), jumpFwd, "-A FORWARD -j DOCKER-USER\n"+jumpFwd+"\n-A FORWARD -j ACCEPT", 1)},
		{"a missing forward jump is appended", func(f *fakeIPT) {
			f.set("filter", "FORWARD", "-A FORWARD -j DOCKER-USER", "-A FORWARD -j ACCEPT")
		}, 1, strings.Replace(strings.Replace(node1Text, jumpNat, jumpNat+"\n"+docker, 1), jumpFwd, "-A FORWARD -j DOCKER-USER\n-A FORWARD -j ACCEPT\n"+jumpFwd, 1)},
		{"duplicate forward jumps: the first stays", func(f *fakeIPT) {
			f.set("filter", "FORWARD", jumpFwd, "-A FORWARD -j DOCKER-USER", jumpFwd)
		}, 1, strings.Replace(strings.Replace(node1Text, jumpNat, jumpNat+"\n"+docker, 1), jumpFwd, jumpFwd+"\n-A FORWARD -j DOCKER-USER", 1)},
	}
	f := newFakeIPT()
	r := newRules(node1Cfg, testLog(t), f)
	for _, s := range steps {
		s.breaks(f)
		n, err := r.Ensure()
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if n != s.fixed {
			t.Errorf("%s: repaired %d, want %d", s.name, n, s.fixed)
		}
		if got := f.String(); got != s.want {
			t.Errorf("%s: state\n%s\nwant\n%s", s.name, got, s.want)
		}
	}
}

func TestRulesEnsureIsCheap(t *testing.T) {
	f := newFakeIPT()
	r := newRules(node1Cfg, testLog(t), f)
	if _, err := r.Ensure(); err != nil {
		t.Fatal(err)
	}
	f.lists, f.writes = 0, 0
	if n, err := r.Ensure(); n != 0 || err != nil {
		t.Fatalf("second Ensure: %d, %v", n, err)
	}
	if f.lists != 4 || f.writes != 0 {
		t.Errorf("a clean Ensure listed %d times and wrote %d times, want 4 and 0", f.lists, f.writes)
	}
}

func TestRulesWithoutRandomFully(t *testing.T) {
	f := newFakeIPT()
	f.randomFully = false
	r := newRules(node1Cfg, testLog(t), f)
	if _, err := r.Ensure(); err != nil {
		t.Fatal(err)
	}
	if got, want := f.String(), strings.ReplaceAll(node1Text, " --random-fully", ""); got != want {
		t.Errorf("state\n%s\nwant\n%s", got, want)
	}
}

// TestRulesStates replays configurations in random orders: the state after
// Update depends on the configuration only, never on what came before.
func TestRulesStates(t *testing.T) {
	node2 := node1Cfg
	node2.Subnet = netip.MustParsePrefix("172.16.78.0/24")
	noMasq := node1Cfg
	noMasq.IPMasq = false
	states := []RulesConfig{node1Cfg, node2, noMasq, node1Cfg, noMasq, node2}
	r := rand.New(rand.NewPCG(7, 7))
	for round := range 20 {
		f := newFakeIPT()
		rules := newRules(states[0], testLog(t), f)
		order := r.Perm(len(states))
		for _, i := range order {
			if err := rules.Update(states[i]); err != nil {
				t.Fatalf("round %d: Update(%+v): %v", round, states[i], err)
			}
			if got, want := f.String(), wantText(states[i]); got != want {
				t.Fatalf("round %d, order %v, after %+v:\n%s\nwant\n%s", round, order, states[i], got, want)
			}
			if n, err := rules.Ensure(); n != 0 || err != nil {
				t.Fatalf("Ensure after Update: %d, %v", n, err)
			}
		}
		if err := rules.Remove(); err != nil {
			t.Fatal(err)
		}
		if got, want := f.String(), "*filter\n*nat\n"; got != want {
			t.Fatalf("after Remove:\n%s", got)
		}
	}
}

func TestRulesIPv6(t *testing.T) {
	f := newFakeIPT()
	cfg := RulesConfig{Network: netip.MustParsePrefix("fd00::/48"), Subnet: netip.MustParsePrefix("fd00:0:0:7::1/64"), Device: "flannel-v6.1", IPMasq: true}
	r := newRules(mustNormalize(t, cfg), testLog(t), f)
	if _, err := r.Ensure(); err != nil {
		t.Fatal(err)
	}
	want := strings.NewReplacer("172.16.0.0/12", "fd00::/48", "172.16.28.0/24", "fd00:0:0:7::/64",
		"224.0.0.0/4", "ff00::/8", "flannel.1", "flannel-v6.1").Replace(node1Text)
	if got := f.String(); got != want {
		t.Errorf("state\n%s\nwant\n%s", got, want)
	}
}

func mustNormalize(t *testing.T, c RulesConfig) RulesConfig {
	t.Helper()
	c, err := c.normalize()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRulesConfigRejects(t *testing.T) {
	bad := []RulesConfig{
		{},
		{Network: testNetwork, Subnet: netip.MustParsePrefix("10.0.0.0/24"), Device: "flannel.1"},
		{Network: testNetwork, Subnet: netip.MustParsePrefix("172.0.0.0/8"), Device: "flannel.1"},
		{Network: testNetwork, Subnet: netip.MustParsePrefix("fd00::/64"), Device: "flannel.1"},
		{Network: testNetwork, Subnet: node1Cfg.Subnet, Device: ""},
		{Network: testNetwork, Subnet: node1Cfg.Subnet, Device: "a-name-that-is-too-long"},
		{Network: testNetwork, Subnet: node1Cfg.Subnet, Device: "eth0 -j DROP"},
	}
	for _, c := range bad {
		if _, err := NewRules(c, nil); err == nil {
			t.Errorf("NewRules(%+v) succeeded", c)
		}
	}
	r := newRules(node1Cfg, nil, newFakeIPT())
	v6 := RulesConfig{Network: netip.MustParsePrefix("fd00::/48"), Subnet: netip.MustParsePrefix("fd00::/64"), Device: "flannel.1"}
	if err := r.Update(v6); err == nil {
		t.Error("Update to another address family succeeded")
	}
}

func TestRulesErrorsAreReported(t *testing.T) {
	f := newFakeIPT()
	r := newRules(node1Cfg, testLog(t), f)
	f.broken = "nat" // e.g. a kernel without iptable_nat
	n, err := r.Ensure()
	if err == nil || !strings.Contains(err.Error(), "nat table: listing chain WEFT-POSTRTG: ") {
		t.Fatalf("Ensure = %d, %v; want a nat table error", n, err)
	}
	// The filter side is still installed: one failure does not stop the rest.
	if got := f.String(); !strings.HasPrefix(got, fwdText) {
		t.Errorf("filter table not installed:\n%s", got)
	}
}

func TestRulesRun(t *testing.T) {
	f := newFakeIPT()
	r := newRules(node1Cfg, testLog(t), f)
	repairs := make(chan int, 10)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() {
		defer close(done)
		r.Run(ctx, 5*time.Millisecond, func(n int) { repairs <- n })
	}()
	defer func() { cancel(); <-done }()
	deadline := time.After(5 * time.Second)
	for f.String() != node1Text {
		select {
		case <-deadline:
			t.Fatalf("Run did not install the rules:\n%s", f)
		case <-time.After(time.Millisecond):
		}
	}
	f.set("nat", "WEFT-POSTRTG")
	select {
	case n := <-repairs:
		if n != 1 {
			t.Errorf("onRepair(%d), want 1 (the install must not count)", n)
		}
	case <-deadline:
		t.Fatal("no repair reported")
	}
	if got := f.String(); got != node1Text {
		t.Errorf("after repair:\n%s", got)
	}
}

// ---- real iptables, in a network namespace made for the test ----

var netnsSeq atomic.Int64

// realIPT gives Rules for cfg that run iptables in a fresh network namespace
// and a function returning that namespace's tables in fakeIPT.String's form.
//
// go-iptables execs the binary given with iptables.Path (WithIptablesPath),
// so a two-line wrapper script that runs "ip netns exec NS iptables" points
// every command, including the version probe, at the test's namespace. The
// test process itself never enters the namespace, so no OS thread is moved,
// and if the namespace is gone "ip netns exec" fails instead of falling back
// to the host's tables.
func realIPT(t *testing.T, cfg RulesConfig) (r *Rules, ipt func(args ...string), save func() string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace and change its iptables")
	}
	ipBin, err1 := exec.LookPath("ip")
	iptBin, err2 := exec.LookPath("iptables")
	saveBin, err3 := exec.LookPath("iptables-save")
	if err := errors.Join(err1, err2, err3); err != nil {
		t.Skipf("needs ip, iptables and iptables-save: %v", err)
	}
	ns := fmt.Sprintf("weft-rules-%d-%d", os.Getpid(), netnsSeq.Add(1))
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
		if err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	run(ipBin, "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command(ipBin, "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("deleting netns %s: %v\n%s", ns, err, out)
		}
	})
	wrapper := filepath.Join(t.TempDir(), "iptables")
	script := fmt.Sprintf("#!/bin/sh\nexec %s netns exec %s %s \"$@\"\n", ipBin, ns, iptBin)
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	r, err := NewRules(cfg, testLog(t), WithIptablesPath(wrapper))
	if err != nil {
		t.Fatal(err)
	}
	ipt = func(args ...string) { run(append([]string{ipBin, "netns", "exec", ns, iptBin}, args...)...) }
	save = func() string {
		var b strings.Builder
		for _, table := range []string{"filter", "nat"} {
			b.WriteString("*" + table + "\n")
			out := run(ipBin, "netns", "exec", ns, saveBin, "-t", table)
			for _, l := range strings.Split(out, "\n") {
				switch {
				case strings.HasPrefix(l, ":") && strings.HasSuffix(l, " - [0:0]"):
					b.WriteString(strings.TrimSuffix(l, " - [0:0]") + "\n")
				case strings.HasPrefix(l, "-A "):
					b.WriteString(l + "\n")
				}
			}
		}
		return b.String()
	}
	return r, ipt, save
}

func ensureN(t *testing.T, r *Rules, want int) {
	t.Helper()
	n, err := r.Ensure()
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if n != want {
		t.Errorf("Ensure repaired %d, want %d", n, want)
	}
}

func checkState(t *testing.T, save func() string, want string) {
	t.Helper()
	if got := save(); got != want {
		t.Errorf("iptables-save:\n%s\nwant\n%s", got, want)
	}
}

func TestRealRulesInstallAndRepair(t *testing.T) {
	r, ipt, save := realIPT(t, node1Cfg)
	ensureN(t, r, 4)
	checkState(t, save, node1Text)
	ensureN(t, r, 0)

	ipt("-t", "nat", "-F", "WEFT-POSTRTG")
	ensureN(t, r, 1)
	checkState(t, save, node1Text)

	ipt("-t", "nat", "-D", "POSTROUTING", "1")
	ensureN(t, r, 1)
	checkState(t, save, node1Text)

	ipt("-t", "filter", "-I", "FORWARD", "1", "-j", "ACCEPT")
	ipt("-t", "filter", "-A", "WEFT-FWD", "-j", "DROP")
	ensureN(t, r, 1)
	// The jump stays below a rule put above it: FORWARD's order is the
	// operator's (DOCKER-USER comes first).
	checkState(t, save, strings.Replace(node1Text, "-A FORWARD -m comment", "-A FORWARD -j ACCEPT\n-A FORWARD -m comment", 1))

	// --iptables-forward-rules=false removes the chain and its jump, and
	// leaves the operator's rule.
	off := node1Cfg
	off.SkipForward = true
	if err := r.Update(off); err != nil {
		t.Fatal(err)
	}
	checkState(t, save, strings.Replace(wantText(off), "*filter\n", "*filter\n-A FORWARD -j ACCEPT\n", 1))
}

func TestRealRulesUpdateAndRemove(t *testing.T) {
	r, ipt, save := realIPT(t, node1Cfg)
	ensureN(t, r, 4)

	moved := node1Cfg
	moved.Subnet = netip.MustParsePrefix("172.16.78.0/24")
	if err := r.Update(moved); err != nil {
		t.Fatal(err)
	}
	checkState(t, save, wantText(moved))
	if strings.Contains(save(), "172.16.28.") {
		t.Error("a rule for the old subnet is left")
	}
	ensureN(t, r, 0)

	noMasq := moved
	noMasq.IPMasq = false
	if err := r.Update(noMasq); err != nil {
		t.Fatal(err)
	}
	checkState(t, save, wantText(noMasq))
	ensureN(t, r, 0)

	if err := r.Update(node1Cfg); err != nil {
		t.Fatal(err)
	}
	checkState(t, save, node1Text)

	ipt("-t", "nat", "-A", "POSTROUTING", "-j", "WEFT-POSTRTG") // a stray second jump
	if err := r.Remove(); err != nil {
		t.Fatal(err)
	}
	checkState(t, save, "*filter\n*nat\n")
}
