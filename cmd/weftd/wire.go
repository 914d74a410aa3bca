package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/weft-net/weft/internal/etcdconn"
	"github.com/weft-net/weft/network"
	"github.com/weft-net/weft/service"
	"github.com/weft-net/weft/subnet"
)

// agent is weftd with everything wired: the etcd client, the registry, the
// loop and the HTTP server.
type agent struct {
	log    *slog.Logger
	opts   options
	cli    *clientv3.Client
	reg    *subnet.Registry
	node   atomic.Pointer[network.Node] // set once wired; the HTTP server starts before
	server *http.Server
	// refused says why the config in etcd is refused, while weftd waits
	// for a usable one before it touches anything; nil otherwise.
	refused atomic.Pointer[string]
	svc     *services // nil with --services=false
	// starters run beside the loop; closers release what wiring made
	// (Kubernetes mode, cmd/weftd/kube.go).
	starters []func(context.Context)
	closers  []func()
}

// newAgent makes the agent and its metrics registry and starts the HTTP
// server (/healthz, /readyz, /metrics, /status), which answers while the
// rest is wired.
func newAgent(o options, log *slog.Logger) (*agent, *prometheus.Registry, error) {
	promReg := prometheus.NewRegistry()
	promReg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		buildInfo(),
	)
	a := &agent{log: log, opts: o}
	a.server = newHTTPServer(o.metricsAddr, a.routes(promReg), defaultHTTPLimits)
	if o.metricsAddr != "" {
		ln, err := net.Listen("tcp", o.metricsAddr)
		if err != nil {
			return nil, nil, fmt.Errorf("--metrics-addr %s: %w", o.metricsAddr, err)
		}
		go func() {
			if err := a.server.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("metrics server stopped", "err", err)
			}
		}()
	}
	return a, promReg, nil
}

func wire(ctx context.Context, o options, log *slog.Logger) (*agent, error) {
	if o.kube.enabled {
		return wireKube(ctx, o, log)
	}
	ecfg, err := etcdconn.Config(etcdconn.Options{
		Endpoints: o.etcdEndpoints,
		CAFile:    o.etcdCAFile,
		CertFile:  o.etcdCertFile,
		KeyFile:   o.etcdKeyFile,
		Username:  o.etcdUsername,
		Password:  o.etcdPassword,

		AllowPlaintextPassword: o.etcdPlainPasswd,
	}, log)
	if err != nil {
		return nil, err
	}
	ecfg.DialOptions = append(ecfg.DialOptions, lowMemoryDialOptions()...)
	up, err := network.SelectUplink(network.UplinkChoice{Ifaces: o.ifaces, Regexes: o.ifaceRegex, PublicIP: o.publicIP, PublicIP6: o.publicIP6})
	if err != nil {
		return nil, err
	}

	// Serve /healthz and /readyz while waiting for etcd.
	a, promReg, err := newAgent(o, log)
	if err != nil {
		return nil, err
	}

	cli, err := connectEtcd(ctx, ecfg, log)
	if err != nil {
		return nil, err
	}
	a.cli = cli
	a.reg = subnet.NewRegistry(cli, o.etcdPrefix, log, promReg)

	cfg, cfgRev, err := a.waitConfig(ctx)
	if err != nil {
		cli.Close()
		return nil, err
	}
	src := nodeSource{holder: a.reg, watcher: a.reg, config: a.reg, configRev: cfgRev, synced: a.reg.LastSync}
	if o.services {
		a.svc = newServices(service.NewStore(cli, o.etcdPrefix), cfg.Network, up.Networks, log, promReg)
		src.holder, src.watcher = &leaseTee{inner: a.reg, s: a.svc}, &peerTee{Registry: a.reg, s: a.svc}
	}
	node, err := a.newNode(cfg, up, src, promReg)
	if err != nil {
		cli.Close()
		return nil, err
	}
	a.node.Store(node)
	return a, nil
}

// waitConfig reads the network config, waiting for etcd and for the config to
// appear. A config that is there but refused (invalid, or unsafe: a Network
// over loopback, say) is logged, shown in /readyz and /status, and waited out
// like a missing one: weftd touches neither the data plane nor the rules
// until the config is fixed.
func (a *agent) waitConfig(ctx context.Context) (subnet.Config, int64, error) {
	logged := false
	var refusedAt int64 = -1
	for {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cfg, rev, err := a.reg.ReadConfig(rctx)
		cancel()
		var ce *subnet.ConfigError
		switch {
		case err == nil:
			if logged || refusedAt >= 0 {
				a.log.Info("network config found", "revision", rev)
			}
			a.refused.Store(nil)
			return cfg, rev, nil
		case errors.As(err, &ce):
			if ce.Revision != refusedAt {
				refusedAt = ce.Revision
				a.log.Error("refusing the network config; not ready, and nothing is touched until it is fixed", "err", err)
			}
			why := err.Error()
			a.refused.Store(&why)
		case errors.Is(err, subnet.ErrNoConfig), ctx.Err() == nil && rctx.Err() != nil, isUnavailable(err):
			a.refused.Store(nil)
			if !logged {
				a.log.Warn("waiting for etcd and the network config", "endpoints", a.opts.etcdEndpoints, "prefix", a.opts.etcdPrefix, "err", err)
				logged = true
			}
		default:
			return subnet.Config{}, 0, err
		}
		select {
		case <-ctx.Done():
			return subnet.Config{}, 0, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// connectEtcd makes the etcd client. With a user name clientv3.New logs in at
// once, so an etcd that is down makes it fail: wait for etcd then, as
// waitConfig does, but give up on a refused password.
func connectEtcd(ctx context.Context, cfg clientv3.Config, log *slog.Logger) (*clientv3.Client, error) {
	logged := false
	for {
		cli, err := clientv3.New(cfg)
		if err == nil {
			return cli, nil
		}
		if !isUnavailable(err) || ctx.Err() != nil {
			return nil, fmt.Errorf("connecting to etcd: %w", err)
		}
		if !logged {
			log.Warn("waiting for etcd", "endpoints", cfg.Endpoints, "err", err)
			logged = true
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// isUnavailable reports whether err means etcd could not be reached.
func isUnavailable(err error) bool {
	c := status.Code(err)
	return c == codes.Unavailable || c == codes.DeadlineExceeded || errors.Is(err, context.DeadlineExceeded)
}

func (a *agent) run(ctx context.Context) error {
	go a.notifyWhenReady(ctx)
	for _, f := range a.starters {
		go f(ctx)
	}
	if a.svc != nil {
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); a.svc.run(sctx) }()
		defer func() { cancel(); <-done }()
	}
	return a.node.Load().Run(ctx)
}

func (a *agent) shutdown(ctx context.Context) {
	_ = a.server.Shutdown(ctx)
}

func (a *agent) close() {
	if a.cli != nil {
		a.cli.Close()
	}
	for _, f := range a.closers {
		f()
	}
}

func buildInfo() prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_build_info",
		Help: "weftd's version; the value is always 1.",
	}, []string{"version", "goversion"})
	g.WithLabelValues(buildVersion(), runtime.Version()).Set(1)
	return g
}

// notifyWhenReady tells systemd READY=1 when the node first becomes ready, if
// it was started with NOTIFY_SOCKET.
func (a *agent) notifyWhenReady(ctx context.Context) {
	sock := os.Getenv("NOTIFY_SOCKET")
	if sock == "" {
		return
	}
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if len(a.node.Load().Status().NotReady(time.Now(), a.opts.readyEtcdGrace)) > 0 {
			continue
		}
		if err := sdNotify(sock, "READY=1"); err != nil {
			a.log.Warn("telling systemd we are ready", "err", err)
		}
		return
	}
}

func sdNotify(sock, msg string) error {
	if sock[0] == '@' {
		sock = "\x00" + sock[1:]
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		return err
	}
	defer c.Close()
	_, err = c.Write([]byte(msg))
	return err
}
