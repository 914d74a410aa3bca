package cluster

import (
	"context"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces with ip(8)")
	}
	for _, tool := range []string{"ip", "bridge", "ping", "sysctl"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s: %v", tool, err)
		}
	}
}

func hostLinks(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("ip", "-br", "link").CombinedOutput()
	if err != nil {
		t.Fatalf("ip -br link: %v: %s", err, out)
	}
	return string(out)
}

func namespacesWith(t *testing.T, prefix string) []string {
	t.Helper()
	names, err := listNamespaces(context.Background(), discard)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, n := range names {
		if strings.HasPrefix(n, prefix) {
			out = append(out, n)
		}
	}
	return out
}

func newCluster(t *testing.T) *Cluster {
	t.Helper()
	c, err := New(t.Context(), Options{Log: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})), Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Error(err)
		}
	})
	return c
}

func TestTwoNodeCluster(t *testing.T) {
	needRoot(t)
	ctx := t.Context()
	before := hostLinks(t)

	c := newCluster(t)
	node1, err := c.AddHost(ctx, "node1", netip.MustParsePrefix("172.17.42.31/16"))
	if err != nil {
		t.Fatal(err)
	}
	node2, err := c.AddHost(ctx, "node2", netip.MustParsePrefix("172.17.42.32/16"))
	if err != nil {
		t.Fatal(err)
	}
	if err := node1.SetupDocker0(ctx, netip.MustParsePrefix("172.16.28.1/24"), 1450); err != nil {
		t.Fatal(err)
	}
	if err := node2.SetupDocker0(ctx, netip.MustParsePrefix("172.16.78.1/24"), 1450); err != nil {
		t.Fatal(err)
	}
	c1, err := node1.AddContainer(ctx, "c1", netip.MustParseAddr("172.16.28.5"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := node2.AddContainer(ctx, "c1", netip.MustParseAddr("172.16.78.9")); err != nil {
		t.Fatal(err)
	}

	if err := Ping(ctx, node1.NS, node2.Addr.Addr(), PingOpts{Count: 2}); err != nil {
		t.Errorf("node1 -> node2 over the underlay: %v", err)
	}
	if err := Ping(ctx, node2.NS, node1.Addr.Addr(), PingOpts{}); err != nil {
		t.Errorf("node2 -> node1 over the underlay: %v", err)
	}
	gw := netip.MustParseAddr("172.16.28.1")
	if err := Ping(ctx, c1.NS, gw, PingOpts{}); err != nil {
		t.Errorf("container -> its docker0: %v", err)
	}
	// docker0's MTU reaches the container: 1422+28 = 1450 fits, one byte more does not.
	if err := Ping(ctx, c1.NS, gw, PingOpts{Size: 1422, DontFragment: true}); err != nil {
		t.Errorf("full-size packet: %v", err)
	}
	if err := Ping(ctx, c1.NS, gw, PingOpts{Size: 1423, DontFragment: true, Timeout: time.Second}); err == nil ||
		!strings.Contains(err.Error(), "mtu=1450") {
		t.Errorf("oversized DF packet: got %v, want a local 'message too long, mtu=1450' error", err)
	}
	// Without a route, the other node's containers are unreachable (weft's job, not ours).
	if err := Ping(ctx, c1.NS, netip.MustParseAddr("172.16.78.9"), PingOpts{Timeout: time.Second}); err == nil {
		t.Error("container reached the other node's container without an overlay")
	}

	routes, err := node1.Routes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"172.16.28.0/24 dev docker0 proto kernel scope link src 172.16.28.1",
		"172.17.0.0/16 dev eth0 proto kernel scope link src 172.17.42.31"} {
		if !strings.Contains(routes, want) {
			t.Errorf("node1 routes lack %q:\n%s", want, routes)
		}
	}
	if strings.Contains(routes, "default") {
		t.Errorf("node1 has a default route:\n%s", routes)
	}
	if out, err := node1.Run(ctx, "sysctl", "-n", "net.ipv4.ip_forward"); err != nil || strings.TrimSpace(out) != "1" {
		t.Errorf("ip_forward in node1 = %q, %v; want 1", out, err)
	}
	if _, err := node1.LinkDetail(ctx); err == nil {
		t.Error("flannel.1 exists before any agent ran")
	}

	// A subnet change replaces docker0's address.
	if err := node1.SetupDocker0(ctx, netip.MustParsePrefix("172.16.29.1/24"), 1450); err != nil {
		t.Fatal(err)
	}
	addrs, _ := node1.IP(ctx, "-br", "addr", "show", "docker0")
	if !strings.Contains(addrs, "172.16.29.1/24") || strings.Contains(addrs, "172.16.28.1") {
		t.Errorf("docker0 after subnet change: %s", addrs)
	}

	// Started processes die on Close, and so do strays left in a namespace.
	p, err := node1.Start("sleeper", "sleep", "600")
	if err != nil {
		t.Fatal(err)
	}
	stray := exec.Command("ip", "netns", "exec", node2.NS, "sleep", "600")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan error, 1)
	go func() { strayDone <- stray.Wait() }()

	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.Done():
	case <-time.After(5 * time.Second):
		t.Error("started process still running after Close")
	}
	select {
	case <-strayDone:
	case <-time.After(5 * time.Second):
		t.Error("stray process still running after Close")
	}
	if left := namespacesWith(t, c.Prefix); len(left) > 0 {
		t.Errorf("namespaces left after Close: %v", left)
	}
	if after := hostLinks(t); after != before {
		t.Errorf("host namespace links changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestProcLogAndStop(t *testing.T) {
	needRoot(t)
	c := newCluster(t)
	h, err := c.AddHost(t.Context(), "master", netip.MustParsePrefix("172.17.42.30/16"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := h.Start("echo", "sh", "-c", `trap "echo bye; exit 0" TERM; echo hello; echo oops >&2; while :; do sleep 0.05; done`)
	if err != nil {
		t.Fatal(err)
	}
	if err := WaitFor(t.Context(), 5*time.Second, 20*time.Millisecond, func() (bool, string) {
		tail := p.Tail(5)
		return strings.HasSuffix(tail, "\noops\n"), tail
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(5 * time.Second); err != nil {
		t.Errorf("Stop of a process exiting cleanly on SIGTERM: %v\n%s", err, p.Tail(10))
	}
	if tail := p.Tail(2); !strings.HasSuffix(tail, "oops\nbye\n") {
		t.Errorf("log tail = %q", tail)
	}
	if err := p.Signal(syscall.SIGTERM); err == nil {
		t.Error("Signal after exit succeeded")
	}
}

func TestSweep(t *testing.T) {
	needRoot(t)
	if err := Sweep("foo-"); err == nil {
		t.Error("Sweep accepted a prefix not starting with weft-")
	}
	prefix := "weft-sweeptest-"
	t.Cleanup(func() { Sweep(prefix) })
	ctx := t.Context()
	for _, ns := range []string{prefix + "a", prefix + "b"} {
		if _, err := ipNetns(ctx, discard, "add", ns); err != nil {
			t.Fatal(err)
		}
	}
	other := "weft-sweepkeep"
	if _, err := ipNetns(ctx, discard, "add", other); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeNamespace(discard, other) })
	stray := exec.Command("ip", "netns", "exec", prefix+"a", "sleep", "600")
	if err := stray.Start(); err != nil {
		t.Fatal(err)
	}
	strayDone := make(chan error, 1)
	go func() { strayDone <- stray.Wait() }()

	if err := Sweep(prefix); err != nil {
		t.Fatal(err)
	}
	if left := namespacesWith(t, prefix); len(left) > 0 {
		t.Errorf("namespaces left after Sweep: %v", left)
	}
	if len(namespacesWith(t, other)) != 1 {
		t.Errorf("Sweep(%q) removed %s", prefix, other)
	}
	select {
	case <-strayDone:
	case <-time.After(5 * time.Second):
		t.Error("process in a swept namespace still running")
	}
}

func TestPingStream(t *testing.T) {
	needRoot(t)
	c := newCluster(t)
	ctx := t.Context()
	a, err := c.AddHost(ctx, "node1", netip.MustParsePrefix("172.17.42.31/16"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.AddHost(ctx, "node2", netip.MustParsePrefix("172.17.42.32/16"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := StartPingStream(a.NS, b.Addr.Addr(), 20*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := b.IP(ctx, "link", "set", "eth0", "down"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, err := b.IP(ctx, "link", "set", "eth0", "up"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond) // replies need a moment after the link comes back
	res, err := s.Stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sent %d received %d lost %v", res.Sent, res.Received, res.Lost)
	if res.Sent < 20 || res.Received == 0 || len(res.Lost) == 0 || res.Received == res.Sent {
		t.Errorf("want some losses during the outage and replies around it; got sent %d received %d lost %v",
			res.Sent, res.Received, res.Lost)
	}
}

func TestDialAndListenInNamespace(t *testing.T) {
	needRoot(t)
	c := newCluster(t)
	ctx := t.Context()
	master, err := c.AddHost(ctx, "master", netip.MustParsePrefix("172.17.42.30/16"))
	if err != nil {
		t.Fatal(err)
	}
	node1, err := c.AddHost(ctx, "node1", netip.MustParsePrefix("172.17.42.31/16"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := master.Listen(ctx, "tcp", "172.17.42.30:2379")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan string, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			accepted <- err.Error()
			return
		}
		accepted <- conn.RemoteAddr().String()
		conn.Close()
	}()
	conn, err := node1.DialContext(ctx, "tcp", "172.17.42.30:2379")
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	if got := <-accepted; !strings.HasPrefix(got, "172.17.42.31:") {
		t.Errorf("master saw a connection from %s, want 172.17.42.31", got)
	}
}
