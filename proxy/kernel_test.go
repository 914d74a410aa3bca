package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/internal/netnsx"
	"github.com/weft-net/weft/service"
)

// bed is two namespace hosts on one switch: the client host "a", where the
// proxy programs its table, and "b", whose eth0 holds the backends'
// addresses 10.99.0.2-4, each serving TCP and UDP on :8080 and answering
// with its own address.
type bed struct {
	t     *testing.T
	c     *cluster.Cluster
	a, b  *cluster.Host
	ns    netns.NsHandle
	p     *Proxy
	cance context.CancelFunc
	done  chan struct{}
}

func newBed(t *testing.T) *bed {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root for network namespaces and nf_tables")
	}
	ctx := context.Background()
	c, err := cluster.New(ctx, cluster.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b := &bed{t: t, c: c}
	if b.a, err = c.AddHost(ctx, "a", netip.MustParsePrefix("10.99.0.1/24")); err != nil {
		t.Fatal(err)
	}
	if b.b, err = c.AddHost(ctx, "b", netip.MustParsePrefix("10.99.0.2/24")); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"10.99.0.3/24", "10.99.0.4/24"} {
		if _, err := b.b.IP(ctx, "addr", "add", a, "dev", "eth0"); err != nil {
			t.Fatal(err)
		}
	}
	serveWhoAmI(t, b.b)
	if b.ns, err = netns.GetFromName(b.a.NS); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.ns.Close() })
	return b
}

// serveWhoAmI answers every TCP connection and UDP datagram on :8080 with
// the local address it arrived at, then the peer's address.
func serveWhoAmI(t *testing.T, h *cluster.Host) {
	ln, err := h.Listen(context.Background(), "tcp4", ":8080")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintf(c, "%s %s\n", c.LocalAddr(), c.RemoteAddr())
			c.Close()
		}
	}()
	var pc net.PacketConn
	err = netnsx.DoNamed(h.NS, func() (err error) {
		pc, err = net.ListenPacket("udp4", ":8080")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	// UDP replies come from the address the datagram was sent to only with
	// one socket per address; the answer carries it instead.
	go func() {
		buf := make([]byte, 1500)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			_ = n
			pc.WriteTo([]byte(from.String()), from)
		}
	}()
}

func (b *bed) start(overlay netip.Prefix) {
	b.t.Helper()
	b.p = New(Config{NetNS: b.ns, Overlay: overlay, CheckInterval: 200 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	b.cance, b.done = cancel, make(chan struct{})
	go func() {
		defer close(b.done)
		if err := b.p.Run(ctx); err != nil {
			b.t.Errorf("proxy: %v", err)
		}
	}()
	b.t.Cleanup(b.stop)
}

func (b *bed) stop() {
	if b.cance != nil {
		b.cance()
		<-b.done
		b.cance = nil
	}
}

func svc(name, vip string, affinity int, ports ...service.Port) *service.Service {
	return &service.Service{Namespace: "default", Name: name, ClusterIP: netip.MustParseAddr(vip), Ports: ports, AffinityTimeout: affinity}
}

func eps(name string, port uint16, proto service.Protocol, addrs ...string) *service.Endpoints {
	e := &service.Endpoints{Namespace: "default", Name: name}
	sub := service.Subset{Ports: []service.EndpointPort{{Port: port, Protocol: proto}}}
	for _, a := range addrs {
		sub.Addresses = append(sub.Addresses, netip.MustParseAddr(a))
	}
	e.Subsets = []service.Subset{sub}
	return e
}

func full(svcs []*service.Service, e []*service.Endpoints) service.Change {
	c := service.Change{Full: true, Network: service.DefaultNetwork, Services: map[string]*service.Service{}, Endpoints: map[string]*service.Endpoints{}, Revision: 1}
	for _, s := range svcs {
		c.Services[s.Ref()] = s
	}
	for _, x := range e {
		c.Endpoints[x.Ref()] = x
	}
	return c
}

// dial connects from host a to addr and returns the backend's answer,
// "<backend addr:port> <client addr:port>".
func (b *bed) dial(addr string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := b.a.DialContext(ctx, "tcp4", addr)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	out, err := io.ReadAll(c)
	return strings.TrimSpace(string(out)), err
}

// backendOf is the backend address of an answer.
func backendOf(answer string) string {
	f := strings.Fields(answer)
	if len(f) == 0 {
		return ""
	}
	h, _, _ := strings.Cut(f[0], ":")
	return h
}

func (b *bed) eventually(what string, cond func() (bool, string)) {
	b.t.Helper()
	if err := cluster.WaitFor(context.Background(), 5*time.Second, 20*time.Millisecond, cond); err != nil {
		b.t.Fatalf("%s: %v", what, err)
	}
}

func TestServeAndSpread(t *testing.T) {
	b := newBed(t)
	web := svc("web", "10.254.0.10", 0, service.Port{Protocol: service.TCP, Port: 80, TargetPort: 8080})
	b.start(netip.Prefix{})
	b.p.Update(full([]*service.Service{web}, []*service.Endpoints{eps("web", 8080, service.TCP, "10.99.0.2", "10.99.0.3")}))
	b.eventually("service answers", func() (bool, string) {
		out, err := b.dial("10.254.0.10:80")
		return err == nil, fmt.Sprint(out, err)
	})
	counts := map[string]int{}
	for range 100 {
		out, err := b.dial("10.254.0.10:80")
		if err != nil {
			t.Fatal(err)
		}
		counts[backendOf(out)]++
	}
	t.Logf("100 connections: %v", counts)
	if len(counts) != 2 || counts["10.99.0.2"] < 25 || counts["10.99.0.3"] < 25 {
		t.Fatalf("connections not spread over both backends: %v", counts)
	}

	// No endpoints: refused at once.
	b.p.Update(service.Change{Network: service.DefaultNetwork, Services: map[string]*service.Service{}, Endpoints: map[string]*service.Endpoints{"default/web": eps("web", 8080, service.TCP)}})
	b.eventually("refused without endpoints", func() (bool, string) {
		start := time.Now()
		_, err := b.dial("10.254.0.10:80")
		return errors.Is(err, syscall.ECONNREFUSED) && time.Since(start) < 500*time.Millisecond, fmt.Sprint(err)
	})

	// One endpoint: all connections go to it.
	b.p.Update(service.Change{Network: service.DefaultNetwork, Services: map[string]*service.Service{}, Endpoints: map[string]*service.Endpoints{"default/web": eps("web", 8080, service.TCP, "10.99.0.4")}})
	b.eventually("the new endpoint answers", func() (bool, string) {
		out, err := b.dial("10.254.0.10:80")
		return backendOf(out) == "10.99.0.4", fmt.Sprint(out, err)
	})

	// Deleted: the table holds only the fixed chains again.
	b.p.Update(service.Change{Network: service.DefaultNetwork, Services: map[string]*service.Service{"default/web": nil}, Endpoints: map[string]*service.Endpoints{}})
	b.eventually("chains removed", func() (bool, string) {
		n := b.chains()
		return n == len(baseChains), fmt.Sprint(n, " chains")
	})
}

// chains counts the chains of weft-svc in host a.
func (b *bed) chains() int {
	conn, err := nftables.New(nftables.WithNetNSFd(int(b.ns)))
	if err != nil {
		b.t.Fatal(err)
	}
	cs, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		b.t.Fatal(err)
	}
	n := 0
	for _, c := range cs {
		if c.Table.Name == TableName {
			n++
		}
	}
	return n
}

func TestHasElement(t *testing.T) {
	b := newBed(t)
	web := svc("web", "10.254.0.10", 0, service.Port{Protocol: service.TCP, Port: 80, TargetPort: 8080})
	b.start(netip.Prefix{})
	b.p.Update(full([]*service.Service{web}, []*service.Endpoints{eps("web", 8080, service.TCP, "10.99.0.2")}))
	b.eventually("the service's element", func() (bool, string) {
		ok, err := HasElement(int(b.ns), "services", ServiceKey(web.ClusterIP, false, 80))
		return ok, fmt.Sprint(err)
	})
	for _, k := range [][]byte{ServiceKey(web.ClusterIP, true, 80), ServiceKey(web.ClusterIP, false, 81), ServiceKey(netip.MustParseAddr("10.254.0.11"), false, 80)} {
		if ok, err := HasElement(int(b.ns), "services", k); ok || err != nil {
			t.Fatalf("key %x: %v %v, want absent", k, ok, err)
		}
	}
}

// A fresh listing (after an etcd outage or a compaction) that no longer has
// a service removes it.
func TestFullListingRemovesMissing(t *testing.T) {
	b := newBed(t)
	b.start(netip.Prefix{})
	a := svc("a", "10.254.0.10", 0, service.Port{Protocol: service.TCP, Port: 80, TargetPort: 8080})
	c := svc("c", "10.254.0.11", 0, service.Port{Protocol: service.UDP, Port: 53, TargetPort: 8080})
	b.p.Update(full([]*service.Service{a, c}, []*service.Endpoints{eps("a", 8080, service.TCP, "10.99.0.2")}))
	has := func(set string, s *service.Service, udp bool, port uint16) bool {
		ok, err := HasElement(int(b.ns), set, ServiceKey(s.ClusterIP, udp, port))
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	b.eventually("both programmed", func() (bool, string) {
		return has("services", a, false, 80) && has("no-endpoints", c, true, 53), ""
	})
	b.p.Update(full([]*service.Service{a}, []*service.Endpoints{eps("a", 8080, service.TCP, "10.99.0.2")}))
	b.eventually("c removed, a kept", func() (bool, string) {
		return has("services", a, false, 80) && !has("no-endpoints", c, true, 53), ""
	})
}
