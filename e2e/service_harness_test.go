package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/internal/netnsx"
)

// backend is a server inside a container: on TCP :80 it sends one line,
// "<its address> <the client's address:port>", then echoes lines back; on
// UDP :53 it answers every datagram with the same line.
type backend struct {
	ct   *cluster.Container
	mu   sync.Mutex // guards hits
	hits int
}

func startBackend(t *testing.T, ct *cluster.Container) *backend {
	t.Helper()
	b := &backend{ct: ct}
	var ln net.Listener
	var pc net.PacketConn
	err := netnsx.DoNamed(ct.NS, func() (err error) {
		if ln, err = net.Listen("tcp4", ":80"); err != nil {
			return err
		}
		pc, err = net.ListenPacket("udp4", ":53")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); pc.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b.mu.Lock()
			b.hits++
			b.mu.Unlock()
			go func() {
				defer c.Close()
				fmt.Fprintf(c, "%s %s\n", ct.Addr, c.RemoteAddr())
				io.Copy(c, c)
			}()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			pc.WriteTo([]byte(fmt.Sprintf("%s %s\n", ct.Addr, from)), from)
		}
	}()
	return b
}

// nsOf is a container's or a host's namespace.
type nsOf interface{ nsName() string }

type hostNS struct{ *node }

func (h hostNS) nsName() string { return h.NS }

type ctNS struct{ *cluster.Container }

func (c ctNS) nsName() string { return c.NS }

// dialFrom connects from namespace ns to addr.
func dialFrom(ns, network, addr string, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := netnsx.DoNamed(ns, func() (err error) {
		c, err = net.DialTimeout(network, addr, timeout)
		return err
	})
	return c, err
}

// ask connects from ns to addr over TCP and returns the backend's first line,
// "<backend address> <client address:port>".
func ask(ns, addr string) (string, error) {
	c, err := dialFrom(ns, "tcp4", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	return strings.TrimSpace(line), err
}

// who is the backend address of an answer.
func who(answer string) string {
	f, _, _ := strings.Cut(answer, " ")
	return f
}

// weftctl runs weftctl on host h against the cluster's etcd.
func (e *env) weftctl(h *cluster.Host, args ...string) (string, error) {
	full := append([]string{filepath.Join(e.bin, "weftctl")}, args...)
	full = append(full, "--etcd-endpoints", etcdURL)
	return h.Run(e.ctx, full...)
}

func (e *env) mustWeftctl(h *cluster.Host, args ...string) string {
	e.t.Helper()
	out, err := e.weftctl(h, args...)
	if err != nil {
		e.t.Fatalf("weftctl %s: %v", strings.Join(args, " "), err)
	}
	return out
}

// writeFile writes a file for weftctl -f.
func (e *env) writeFile(name, content string) string {
	e.t.Helper()
	p := filepath.Join(e.c.Dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// svcTable is what node n's kernel holds in table weft-svc: chain names,
// and the sizes of the services, no-endpoints and backends maps.
type svcTable struct {
	chains                   []string
	services, noEP, backends int
	exists                   bool
}

func (s svcTable) String() string {
	return fmt.Sprintf("%d chains, %d services, %d without endpoints, %d backends", len(s.chains), s.services, s.noEP, s.backends)
}

func (n *node) svcTable() svcTable {
	n.t.Helper()
	h, err := netns.GetFromName(n.NS)
	if err != nil {
		n.t.Fatal(err)
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		n.t.Fatal(err)
	}
	var st svcTable
	chains, err := conn.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		n.t.Fatal(err)
	}
	for _, c := range chains {
		if c.Table.Name == "weft-svc" {
			st.chains = append(st.chains, c.Name)
		}
	}
	t := &nftables.Table{Name: "weft-svc", Family: nftables.TableFamilyIPv4}
	sets, err := conn.GetSets(t)
	if err != nil {
		return st
	}
	st.exists = true
	for _, s := range sets {
		els, err := conn.GetSetElements(s)
		if err != nil {
			n.t.Fatal(err)
		}
		switch s.Name {
		case "services":
			st.services = len(els)
		case "no-endpoints":
			st.noEP = len(els)
		case "backends":
			st.backends = len(els)
		}
	}
	return st
}

// nftDo runs fn with an nftables connection inside node n's namespace: what
// an operator (or another program) does to the table.
func (n *node) nftDo(fn func(c *nftables.Conn, t *nftables.Table)) {
	n.t.Helper()
	h, err := netns.GetFromName(n.NS)
	if err != nil {
		n.t.Fatal(err)
	}
	defer h.Close()
	conn, err := nftables.New(nftables.WithNetNSFd(int(h)))
	if err != nil {
		n.t.Fatal(err)
	}
	fn(conn, &nftables.Table{Name: "weft-svc", Family: nftables.TableFamilyIPv4})
	if err := conn.Flush(); err != nil {
		n.t.Fatal(err)
	}
}
