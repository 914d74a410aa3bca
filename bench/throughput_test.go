package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/backend/vxlan"
	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/internal/netnsx"
	"github.com/weft-net/weft/rtnl"
)

// BenchmarkChecksumOffload prints pod-to-pod TCP throughput as a ratio of
// node-to-node throughput in the same run, for IPv4 and IPv6, with transmit
// checksum offload on and off on the VXLAN devices: what
// --tx-checksum-offload=auto saves on kernels that do not need the
// workaround. Two namespace nodes on one switch, weft's devices and entries
// (backend/vxlan, no etcd), a container behind a bridge on each; one TCP
// stream for a second per row, sender and receiver in this process. All
// addresses are inside the namespaces (10.251.0.0/16, fd00:251::/64, the
// overlay's 172.16.0.0/12 and fd42::/48).
func BenchmarkChecksumOffload(b *testing.B) {
	preflight(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c, err := cluster.New(ctx, cluster.Options{Prefix: fmt.Sprintf("weft-bench-%d-t", os.Getpid()), Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })

	type side struct {
		h        *cluster.Host
		v6       netip.Addr
		sub, s6  netip.Prefix
		ct       *cluster.Container
		ct6      netip.Addr
		dev, dv6 *vxlan.Device
	}
	var sides [2]*side
	for i := range sides {
		n := i + 1
		h, err := c.AddHost(ctx, fmt.Sprintf("n%d", n), netip.MustParsePrefix(fmt.Sprintf("10.251.0.%d/16", n)))
		if err != nil {
			b.Fatal(err)
		}
		s := &side{h: h, v6: netip.MustParseAddr(fmt.Sprintf("fd00:251::%d", n)),
			sub: netip.MustParsePrefix(fmt.Sprintf("172.16.%d.0/24", n)), s6: netip.MustParsePrefix(fmt.Sprintf("fd42:0:0:%d::/64", n))}
		for _, cmd := range [][]string{
			{"sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.forwarding=1"},
			{"ip", "addr", "add", s.v6.String() + "/64", "dev", "eth0", "nodad"},
		} {
			if out, err := h.Run(ctx, cmd...); err != nil {
				b.Fatalf("%v: %v\n%s", cmd, err, out)
			}
		}
		gw := netip.PrefixFrom(s.sub.Addr().Next(), 24)
		if err := h.SetupDocker0(ctx, gw, 1430); err != nil {
			b.Fatal(err)
		}
		gw6 := netip.PrefixFrom(s.s6.Addr().Next(), 64)
		if out, err := h.Run(ctx, "ip", "addr", "add", gw6.String(), "dev", "docker0", "nodad"); err != nil {
			b.Fatalf("%v\n%s", err, out)
		}
		a := s.sub.Addr().As4()
		a[3] = 5
		if s.ct, err = h.AddContainer(ctx, "c1", netip.AddrFrom4(a)); err != nil {
			b.Fatal(err)
		}
		b6 := s.s6.Addr().As16()
		b6[15] = 5
		s.ct6 = netip.AddrFrom16(b6)
		for _, cmd := range [][]string{
			{"ip", "addr", "add", netip.PrefixFrom(s.ct6, 64).String(), "dev", "eth0", "nodad"},
			{"ip", "-6", "route", "add", "default", "via", gw6.Addr().String(), "dev", "eth0"},
		} {
			if out, err := s.ct.Run(ctx, cmd...); err != nil {
				b.Fatalf("%v: %v\n%s", cmd, err, out)
			}
		}
		ns, err := netns.GetFromName(h.NS)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ns.Close() })
		idx, err := linkIndex(ctx, h, "eth0")
		if err != nil {
			b.Fatal(err)
		}
		mk := func(local netip.Addr, own netip.Prefix) *vxlan.Device {
			d, err := vxlan.New(vxlan.Config{Local: local, UplinkIndex: idx, Subnet: own}, nil, vxlan.WithNamespace(ns))
			if err != nil {
				b.Fatal(err)
			}
			b.Cleanup(d.Close)
			if _, err := d.Ensure(ctx); err != nil {
				b.Fatal(err)
			}
			return d
		}
		s.dev, s.dv6 = mk(h.Addr.Addr(), s.sub), mk(s.v6, s.s6)
		sides[i] = s
	}
	for i, s := range sides {
		o := sides[1-i]
		if err := s.dev.Set(ctx, []backend.Peer{{Subnet: o.sub, PublicIP: o.h.Addr.Addr(), VtepMAC: o.dev.MAC()}}); err != nil {
			b.Fatal(err)
		}
		if err := s.dv6.Set(ctx, []backend.Peer{{Subnet: o.s6, PublicIP: o.v6, VtepMAC: o.dv6.MAC()}}); err != nil {
			b.Fatal(err)
		}
	}

	type row struct {
		fam            string
		offload        bool
		node, pod      float64 // MB/s
		nodeErr, podEr error
	}
	var rows []row
	for _, fam := range []string{"IPv4", "IPv6"} {
		for _, on := range []bool{true, false} {
			for _, s := range sides {
				for _, dev := range []string{"flannel.1", "flannel-v6.1"} {
					if err := rtnl.SetTxChecksum(mustNS(b, s.h.NS), dev, on); err != nil {
						b.Fatal(err)
					}
				}
			}
			nodeTo, podTo := sides[1].h.Addr.Addr(), sides[1].ct.Addr
			if fam == "IPv6" {
				nodeTo, podTo = sides[1].v6, sides[1].ct6
			}
			r := row{fam: fam, offload: on}
			r.node, r.nodeErr = throughput(sides[0].h.NS, sides[1].h.NS, nodeTo)
			r.pod, r.podEr = throughput(sides[0].ct.NS, sides[1].ct.NS, podTo)
			if err := errors.Join(r.nodeErr, r.podEr); err != nil {
				b.Fatalf("%s, offload %v: %v", fam, on, err)
			}
			rows = append(rows, r)
		}
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "\nthroughput, one TCP stream, 1 s\tnode→node\tpod→pod (VXLAN)\tpod/node")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s, tx checksum offload %s\t%.0f MB/s\t%.0f MB/s\t%.2f\n", r.fam, map[bool]string{true: "on", false: "off"}[r.offload], r.node, r.pod, r.pod/r.node)
		b.ReportMetric(r.pod/r.node, strings.ToLower(r.fam)+"-"+map[bool]string{true: "on", false: "off"}[r.offload]+"-pod/node")
	}
	tw.Flush()
}

func mustNS(b *testing.B, name string) netns.NsHandle {
	ns, err := netns.GetFromName(name)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ns.Close() })
	return ns
}

// throughput sends one TCP stream from namespace from to to:5201 in
// namespace at for a second and returns MB/s received.
func throughput(from, at string, to netip.Addr) (float64, error) {
	var ln net.Listener
	if err := netnsx.DoNamed(at, func() (err error) {
		ln, err = net.Listen("tcp", net.JoinHostPort(to.String(), "5201"))
		return err
	}); err != nil {
		return 0, err
	}
	defer ln.Close()
	got := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			got <- -1
			return
		}
		defer c.Close()
		n, _ := io.Copy(io.Discard, c)
		got <- n
	}()
	var conn net.Conn
	if err := netnsx.DoNamed(from, func() (err error) {
		conn, err = net.DialTimeout("tcp", net.JoinHostPort(to.String(), "5201"), 5*time.Second)
		return err
	}); err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	start := time.Now()
	for time.Since(start) < time.Second {
		if _, err := conn.Write(buf); err != nil {
			conn.Close()
			return 0, err
		}
	}
	conn.Close()
	n := <-got
	if n < 0 {
		return 0, errors.New("accepting the stream failed")
	}
	return float64(n) / time.Since(start).Seconds() / 1e6, nil
}
