package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/network"
)

const (
	demoPrefix  = "weft-demo-"
	demoEtcdIP  = "172.17.42.30"
	demoNetwork = `{"Network":"172.16.0.0/12","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1,"Port":8472}}`
)

type demoOptions struct {
	nodes     int
	once      bool
	endpoints []string
	weftd     string
}

// runDemo is `weftctl demo`: REFERENCE.md's deployment rebuilt in network
// namespaces, with real weftd processes, and proven with pings.
func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var o demoOptions
	fs := pflag.NewFlagSet("weftctl demo", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&o.nodes, "nodes", 3, "number of weft nodes (1-60)")
	fs.BoolVar(&o.once, "once", false, "tear down after the checks instead of waiting for Ctrl-C")
	fs.StringSliceVar(&o.endpoints, "etcd-endpoints", nil, "use this etcd (reached through a relay on the master node) instead of an embedded one")
	fs.StringVar(&o.weftd, "weftd", "", "weftd binary (default: next to weftctl)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if o.nodes < 1 || o.nodes > 60 {
		return fmt.Errorf("--nodes %d: want 1 to 60", o.nodes)
	}
	if os.Geteuid() != 0 {
		return errors.New("demo needs root: it builds network namespaces, VXLAN devices and iptables rules")
	}
	if o.weftd == "" {
		self, err := os.Executable()
		if err != nil {
			return err
		}
		o.weftd = filepath.Join(filepath.Dir(self), "weftd")
	}
	if _, err := os.Stat(o.weftd); err != nil {
		return fmt.Errorf("weftd binary: %w (run make build)", err)
	}
	d := &demo{o: o, out: stdout, tty: isTerminal(stdout)}
	err := d.run(ctx)
	if cerr := d.teardown(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err == nil {
		fmt.Fprintln(stdout, "demo: torn down, nothing left behind")
	}
	return err
}

type demo struct {
	o       demoOptions
	out     io.Writer
	tty     bool // out is a terminal: progress rewrites one line
	c       *cluster.Cluster
	etcd    *embed.Etcd
	relay   net.Listener
	relayWG sync.WaitGroup
	nodes   []*demoNode
	dir     string
}

type demoNode struct {
	host       *cluster.Host
	subnetFile string
	env        network.SubnetEnv
	weftd      *cluster.Proc
	containers []*cluster.Container
}

func (d *demo) say(format string, a ...any) { fmt.Fprintf(d.out, format+"\n", a...) }

func (d *demo) run(ctx context.Context) error {
	if err := cluster.Sweep(demoPrefix); err != nil {
		return fmt.Errorf("removing an earlier demo's namespaces: %w", err)
	}
	var err error
	if d.dir, err = os.MkdirTemp("", "weft-demo-"); err != nil {
		return err
	}
	d.c, err = cluster.New(ctx, cluster.Options{Prefix: demoPrefix, Dir: d.dir})
	if err != nil {
		return err
	}
	d.say("demo: underlay 172.17.0.0/16 in namespace %s, logs in %s", d.c.Underlay, d.dir)
	master, err := d.c.AddHost(ctx, "master", netip.MustParsePrefix(demoEtcdIP+"/16"))
	if err != nil {
		return err
	}
	if err := d.startEtcd(ctx, master); err != nil {
		return err
	}
	for i := range d.o.nodes {
		name := fmt.Sprintf("node%d", i+1)
		h, err := d.c.AddHost(ctx, name, netip.MustParsePrefix(fmt.Sprintf("172.17.42.%d/16", 31+i)))
		if err != nil {
			return err
		}
		n := &demoNode{host: h, subnetFile: filepath.Join(d.dir, name, "subnet.env")}
		n.weftd, err = h.Start("weftd", d.o.weftd,
			"--etcd-endpoints", "http://"+demoEtcdIP+":2379",
			"--iface", "eth0", "--ip-masq", "--subnet-file", n.subnetFile)
		if err != nil {
			return err
		}
		d.nodes = append(d.nodes, n)
		d.say("demo: %s at %s runs weftd (pid %d)", name, h.Addr.Addr(), n.weftd.Pid())
	}
	for _, n := range d.nodes {
		if err := d.waitReady(ctx, n); err != nil {
			return err
		}
		if err := n.host.SetupDocker0(ctx, n.env.Subnet, n.env.MTU); err != nil {
			return err
		}
		for i, last := range []byte{5, 9} {
			a := n.env.Lease().Addr().As4()
			a[3] = last
			ct, err := n.host.AddContainer(ctx, fmt.Sprintf("c%d", i+1), netip.AddrFrom4(a))
			if err != nil {
				return err
			}
			n.containers = append(n.containers, ct)
		}
		d.say("demo: %s leased %s; docker0 %s mtu %d; containers %s, %s",
			n.host.Name, n.env.Lease(), n.env.Subnet, n.env.MTU, n.containers[0].Addr, n.containers[1].Addr)
	}
	if err := d.waitPeers(ctx); err != nil {
		return err
	}
	d.show(ctx)
	if err := d.pingAll(ctx); err != nil {
		return err
	}
	if err := d.services(ctx); err != nil {
		return err
	}
	if d.o.once {
		return nil
	}
	d.say("demo: running; Ctrl-C tears it all down. Try: ip netns exec %snode1 ip route", demoPrefix)
	<-ctx.Done()
	return nil
}

// startEtcd serves etcd at 172.17.42.30:2379 inside the master's namespace: a
// relay listening there forwards to an embedded etcd on this process's
// loopback, or to --etcd-endpoints.
func (d *demo) startEtcd(ctx context.Context, master *cluster.Host) error {
	target := ""
	if len(d.o.endpoints) > 0 {
		u, err := url.Parse(d.o.endpoints[0])
		if err != nil || u.Host == "" {
			return fmt.Errorf("--etcd-endpoints %q: want a URL such as http://127.0.0.1:2379", d.o.endpoints[0])
		}
		target = u.Host
	} else {
		cfg := embed.NewConfig()
		cfg.Dir = filepath.Join(d.dir, "etcd")
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		client, peer := freeLoopback(), freeLoopback()
		cfg.ListenClientUrls = []url.URL{{Scheme: "http", Host: client}}
		cfg.AdvertiseClientUrls = cfg.ListenClientUrls
		cfg.ListenPeerUrls = []url.URL{{Scheme: "http", Host: peer}}
		cfg.AdvertisePeerUrls = cfg.ListenPeerUrls
		cfg.InitialCluster = cfg.Name + "=http://" + peer
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			return fmt.Errorf("starting embedded etcd: %w", err)
		}
		d.etcd = e
		select {
		case <-e.Server.ReadyNotify():
		case <-time.After(30 * time.Second):
			return errors.New("embedded etcd did not become ready in 30s")
		}
		target = client
		d.say("demo: embedded etcd on %s, relayed to %s:2379 on master", client, demoEtcdIP)
	}
	ln, err := master.Listen(ctx, "tcp", demoEtcdIP+":2379")
	if err != nil {
		return err
	}
	d.relay = ln
	d.relayWG.Add(1)
	go func() {
		defer d.relayWG.Done()
		relay(ln, target)
	}()

	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{"http://" + target}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer cli.Close()
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Put(cctx, "/coreos.com/network/config", demoNetwork); err != nil {
		return fmt.Errorf("writing the network config: %w", err)
	}
	d.say("demo: /coreos.com/network/config = %s", demoNetwork)
	return nil
}

func freeLoopback() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "127.0.0.1:0"
	}
	defer ln.Close()
	return ln.Addr().String()
}

// relay copies connections accepted in the master's namespace to target.
func relay(ln net.Listener, target string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			up, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				return
			}
			defer up.Close()
			done := make(chan struct{}, 2)
			go func() { io.Copy(up, c); done <- struct{}{} }()
			go func() { io.Copy(c, up); done <- struct{}{} }()
			<-done
		}()
	}
}

func (d *demo) waitReady(ctx context.Context, n *demoNode) error {
	err := cluster.WaitFor(ctx, 60*time.Second, 100*time.Millisecond, func() (bool, string) {
		env, err := network.ReadSubnetEnv(n.subnetFile)
		if err != nil {
			return false, err.Error()
		}
		n.env = env
		return true, ""
	})
	if err != nil {
		return fmt.Errorf("%s never wrote its subnet file: %w\nweftd's log:\n%s", n.host.Name, err, n.weftd.Tail(20))
	}
	return nil
}

// waitPeers waits until every node has a route to every other node's subnet.
func (d *demo) waitPeers(ctx context.Context) error {
	for _, n := range d.nodes {
		err := cluster.WaitFor(ctx, 30*time.Second, 100*time.Millisecond, func() (bool, string) {
			routes, err := n.host.Routes(ctx)
			if err != nil {
				return false, err.Error()
			}
			for _, p := range d.nodes {
				if p != n && !strings.Contains(routes, p.env.Lease().String()+" via") {
					return false, routes
				}
			}
			return true, ""
		})
		if err != nil {
			return fmt.Errorf("%s has no route to every peer: %w", n.host.Name, err)
		}
	}
	return nil
}

func (d *demo) show(ctx context.Context) {
	for _, n := range d.nodes {
		d.say("\n===== %s (%s) =====", n.host.Name, n.host.Addr.Addr())
		for _, c := range [][]string{
			{"ip", "route"},
			{"ip", "-d", "link", "show", "flannel.1"},
			{"ip", "neigh", "show", "dev", "flannel.1"},
			{"bridge", "fdb", "show", "dev", "flannel.1"},
			{"iptables-save", "-t", "nat"},
			{"cat", n.subnetFile},
		} {
			out, err := n.host.Run(ctx, c...)
			if err != nil {
				out = err.Error()
			}
			d.say("$ %s\n%s", strings.Join(c, " "), strings.TrimRight(out, "\n"))
		}
	}
	d.say("")
}

// pingAll pings every container from every container on another node, and
// every container from every other node.
func (d *demo) pingAll(ctx context.Context) error {
	type pair struct {
		from, fromNS, to string
		addr             netip.Addr
	}
	var pairs []pair
	for _, a := range d.nodes {
		for _, b := range d.nodes {
			if a == b {
				continue
			}
			for _, dst := range b.containers {
				for _, src := range a.containers {
					pairs = append(pairs, pair{a.host.Name + "/" + src.Name, src.NS, b.host.Name + "/" + dst.Name, dst.Addr})
				}
				pairs = append(pairs, pair{a.host.Name, a.host.NS, b.host.Name + "/" + dst.Name, dst.Addr})
			}
		}
	}
	var failed []string
	for i, p := range pairs {
		err := cluster.Ping(ctx, p.fromNS, p.addr, cluster.PingOpts{Timeout: 5 * time.Second})
		status := "ok"
		if err != nil {
			status = "FAILED"
			failed = append(failed, fmt.Sprintf("%s -> %s (%s): %v", p.from, p.to, p.addr, err))
		}
		if d.tty {
			fmt.Fprintf(d.out, "\rdemo: ping %d/%d %-14s -> %-10s %-15s %s   ", i+1, len(pairs), p.from, p.to, p.addr, status)
		} else if status != "ok" || (i+1)%6 == 0 || i+1 == len(pairs) {
			fmt.Fprintf(d.out, "demo: ping %d/%d done, %d failed\n", i+1, len(pairs), len(failed))
		}
	}
	if d.tty {
		fmt.Fprintln(d.out)
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d pings failed:\n%s", len(failed), len(pairs), strings.Join(failed, "\n"))
	}
	d.say("demo: all %d pings answered: every container reaches every container and every node", len(pairs))
	return nil
}

func (d *demo) teardown() error {
	var errs []error
	if d.c != nil {
		errs = append(errs, d.c.Close())
	}
	if d.relay != nil {
		d.relay.Close()
		d.relayWG.Wait()
	}
	if d.etcd != nil {
		d.etcd.Close()
	}
	if d.dir != "" {
		os.RemoveAll(filepath.Join(d.dir, "etcd"))
	}
	return errors.Join(errs...)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
