package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"text/tabwriter"
	"time"

	"github.com/vishvananda/netns"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/netnsx"
	"github.com/weft-net/weft/rtnl"
	"github.com/weft-net/weft/subnet"
)

// The dual-stack run: the same node and the same N peers as the big v4 run,
// each with an IPv6 half (a /64 of fd42::/48, a PublicIPv6 on the node's
// fd00:250::/64 that no host has), so weftd programs flannel.1 and
// flannel-v6.1: twice the entries.
const (
	dualNetwork = `{"Network":"172.16.0.0/12","SubnetLen":24,"EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"vxlan"}}`
	nodeAddr6   = "fd00:250::1/64"
)

// DualCold is one cold start of weftd in a dual-stack network.
type DualCold struct {
	N int `json:"n"`
	// Converged is process start to every peer's six entries (route,
	// neighbour and FDB entry on each device) present, seen by dumps every
	// 2 ms.
	Converged Dur `json:"converged_ms"`
	// Programmed is weftd's own time applying the first snapshot, both
	// devices (the sum of the two "programmed peers" lines of its log).
	Programmed Dur `json:"programmed_ms"`
	// V4 is the v4-only cold start of the same run, and FastFloor2 twice
	// the fast floor for N (the kernel's cost of twice the entries).
	V4         Dur     `json:"v4_only_converged_ms"`
	FastFloor2 Dur     `json:"fast_floor_x2_ms"`
	CPUSeconds float64 `json:"cpu_seconds"`
}

type synth6 struct {
	synth
	subnet6 netip.Prefix
	public6 netip.Addr
	mac6    [6]byte
}

func dualPeers(peers []synth) []synth6 {
	out := make([]synth6, len(peers))
	for i, p := range peers {
		s := i + 1
		var a [16]byte
		a[0], a[1], a[6], a[7] = 0xfd, 0x42, byte(s>>8), byte(s)
		var pub [16]byte
		pub[0], pub[1], pub[2], pub[3], pub[14], pub[15] = 0xfd, 0x00, 0x02, 0x50, byte((i+2)>>8), byte(i+2)
		out[i] = synth6{synth: p, subnet6: netip.PrefixFrom(netip.AddrFrom16(a), 64), public6: netip.AddrFrom16(pub),
			mac6: [6]byte{0x0e, 0x66, 0, byte(i >> 16), byte(i >> 8), byte(i)}}
	}
	return out
}

func (p synth6) key() string { return prefix + "/subnets/" + subnet.DualKeyName(p.subnet, p.subnet6) }

func (p synth6) value() string {
	v, _ := json.Marshal(map[string]any{
		"PublicIP":      p.public.String(),
		"PublicIPv6":    p.public6.String(),
		"BackendType":   "vxlan",
		"BackendData":   map[string]any{"VNI": 1, "VtepMAC": net.HardwareAddr(p.mac[:]).String()},
		"BackendV6Data": map[string]any{"VNI": 1, "VtepMAC": net.HardwareAddr(p.mac6[:]).String()},
	})
	return string(v)
}

// coldStartDual starts weftd on a fresh dual-stack node with peers' leases
// in etcd and times it until both devices carry every peer's entries.
func (e *env) coldStartDual(ctx context.Context, name string, peers []synth6) (DualCold, error) {
	c := DualCold{N: len(peers)}
	nd, err := e.newNode(ctx, name)
	if err != nil {
		return c, err
	}
	defer nd.close()
	if out, err := nd.h.Run(ctx, "ip", "addr", "add", nodeAddr6, "dev", "eth0", "nodad"); err != nil {
		return c, fmt.Errorf("%v: %s", err, out)
	}
	if _, err := nd.cli.Put(ctx, prefix+"/config", dualNetwork); err != nil {
		return c, err
	}
	for rest := peers; len(rest) > 0; {
		k := min(len(rest), 1000)
		ops := make([]clientv3.Op, 0, k)
		for _, p := range rest[:k] {
			ops = append(ops, clientv3.OpPut(p.key(), p.value(), clientv3.WithLease(nd.etcdLease)))
		}
		if _, err := nd.cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return c, err
		}
		rest = rest[k:]
	}
	ns, err := netns.GetFromName(nd.h.NS)
	if err != nil {
		return c, err
	}
	defer ns.Close()
	conn, err := rtnl.Open(ns)
	if err != nil {
		return c, err
	}
	defer conn.Close()

	start := time.Now()
	p, err := nd.startWeftd()
	if err != nil {
		return c, err
	}
	want := len(peers)
	deadline := start.Add(60 * time.Second)
	for {
		done, err := programmedBoth(nd.h.NS, conn, want)
		if err != nil {
			return c, err
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			return c, fmt.Errorf("weftd did not program %d dual-stack peers in 60 s\n%s", want, p.Tail(20))
		}
		time.Sleep(2 * time.Millisecond)
	}
	c.Converged = Dur(time.Since(start))
	cpu, err := readCPU(p.Pid())
	if err != nil {
		return c, err
	}
	c.CPUSeconds = cpu.self.Seconds()
	st, err := readLog(nd.weftd.LogPath(), nil, time.Time{})
	if err == nil {
		c.Programmed = Dur(st.ProgrammedTotal)
	}
	return c, nil
}

// programmedBoth reports whether flannel.1 and flannel-v6.1 in ns both
// carry want permanent neighbours and FDB entries and weft's routes.
func programmedBoth(ns string, conn *rtnl.Conn, want int) (bool, error) {
	var idx [2]int
	for i, name := range []string{"flannel.1", "flannel-v6.1"} {
		var err error
		if idx[i], err = indexIn(ns, name); err != nil || idx[i] == 0 {
			return false, nil // not made yet
		}
	}
	routes := 0
	err := rtnl.RetryDump("routes", func() error {
		routes = 0
		return conn.DumpRoutes(0, func(r *rtnl.Route) {
			if (r.Index == idx[0] || r.Index == idx[1]) && r.Proto == rtnl.RouteProtocol {
				routes++
			}
		})
	})
	if err != nil || routes < 2*want {
		return false, err
	}
	for _, ix := range idx {
		neighs, fdb := 0, 0
		if err := rtnl.RetryDump("neighbours", func() error {
			neighs = 0
			return conn.DumpNeighs(ix, func(n *rtnl.Neigh) {
				if n.Permanent() {
					neighs++
				}
			})
		}); err != nil || neighs < want {
			return false, err
		}
		if err := rtnl.RetryDump("FDB", func() error {
			fdb = 0
			return conn.DumpFDB(ix, func(f *rtnl.FDB) {
				if f.Permanent() && f.MAC.Unicast() {
					fdb++
				}
			})
		}); err != nil || fdb < want {
			return false, err
		}
	}
	return true, nil
}

// indexIn is the index of interface name in namespace ns (0 if none).
func indexIn(ns, name string) (int, error) {
	h, err := netns.GetFromName(ns)
	if err != nil {
		return 0, err
	}
	defer h.Close()
	var idx int
	err = netnsx.Do(h, func() error {
		ifi, err := net.InterfaceByName(name)
		if err != nil {
			return nil
		}
		idx = ifi.Index
		return nil
	})
	return idx, err
}

// runDual measures the dual-stack cold start at N peers.
func runDual(ctx context.Context, e *env, r *Results, all []synth) error {
	peers := dualPeers(all[:bigN])
	c, err := e.coldStartDual(ctx, "d4000", peers)
	if err != nil {
		return err
	}
	c.V4 = r.cold(bigN).Converged
	c.FastFloor2 = 2 * r.floor(bigN).FastAdd
	r.Dual = &c
	logf("dual-stack cold start: %+v", c)
	return nil
}

func (c *DualCold) table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "dual-stack, %d peers (flannel.1 and flannel-v6.1)\tresult\tvs\n", c.N)
	fmt.Fprintf(tw, "cold start to all peers programmed, both families\t%v\t%.2f× v4-only (%v); %.2f× twice the fast floor (%v)\n",
		c.Converged, ratio(c.Converged, c.V4), c.V4, ratio(c.Converged, c.FastFloor2), c.FastFloor2)
	fmt.Fprintf(tw, "  applying the snapshot to both devices\t%v\t%.2f× twice the fast floor\n", c.Programmed, ratio(c.Programmed, c.FastFloor2))
	fmt.Fprintf(tw, "CPU to converge\t%.2f s\t\n", c.CPUSeconds)
	tw.Flush()
}
