package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/internal/cluster"
	"github.com/weft-net/weft/internal/netnsx"
	"github.com/weft-net/weft/service"
)

// services shows the deployment's second half: the reference service, with
// two endpoint containers on node2 answering HTTP (at .9 and .10, as the
// reference's 172.16.78.9 and .10), and a container on node1 asking the VIP
// until each endpoint has answered.
func (d *demo) services(ctx context.Context) error {
	if len(d.nodes) < 2 {
		d.say("demo: services need two nodes (endpoints on node2); skipped")
		return nil
	}
	n1, n2 := d.nodes[0], d.nodes[1]
	a := n2.env.Lease().Addr().As4()
	a[3] = 10
	web2, err := n2.host.AddContainer(ctx, "web", netip.AddrFrom4(a))
	if err != nil {
		return err
	}
	n2.containers = append(n2.containers, web2)
	eps := []*cluster.Container{n2.containers[1], web2}
	for _, ct := range eps {
		if err := serveHello(ctx, ct); err != nil {
			return err
		}
	}

	cli, err := clientv3.New(clientv3.Config{
		Endpoints: []string{"http://" + demoEtcdIP + ":2379"}, DialTimeout: 5 * time.Second, Logger: zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return d.c.Host("master").DialContext(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		return err
	}
	defer cli.Close()
	st := service.NewStore(cli, "/coreos.com/network")
	svc, err := service.ParseService([]byte(service.ReferenceService), "")
	if err != nil {
		return err
	}
	if svc, err = st.Create(ctx, svc); err != nil {
		return err
	}
	e, err := endpointsFor(svc, []netip.AddrPort{netip.AddrPortFrom(eps[0].Addr, 80), netip.AddrPortFrom(eps[1].Addr, 80)})
	if err != nil {
		return err
	}
	if err := st.SetEndpoints(ctx, e); err != nil {
		return err
	}
	vip := netip.AddrPortFrom(svc.ClusterIP, 8080).String()
	d.say("demo: service my-nginx-service (service.yml, verbatim) got ClusterIP %s; endpoints %s:80, %s:80 on node2", svc.ClusterIP, eps[0].Addr, eps[1].Addr)
	d.say("demo: every weftd programs it in the kernel (nftables table ip weft-svc): no proxy process, the backend sees the client's address")

	client := n1.containers[0]
	seen := map[string]bool{}
	for i := 0; len(seen) < 2; i++ {
		if i == 40 {
			return fmt.Errorf("the service at %s did not answer from both endpoints: %v", vip, seen)
		}
		body, err := httpGet(ctx, client.NS, "http://"+vip+"/")
		if err != nil {
			if i < 10 {
				time.Sleep(200 * time.Millisecond) // the rules are still being programmed
				continue
			}
			return fmt.Errorf("GET http://%s/ from %s: %w", vip, client.NS, err)
		}
		d.say("demo: node1 %s: GET http://%s/ -> %s", client.Addr, vip, body)
		seen[body] = true
	}
	return nil
}

// serveHello answers HTTP on :80 inside a container: its address and the
// client's.
func serveHello(ctx context.Context, ct *cluster.Container) error {
	var ln net.Listener
	err := netnsx.DoNamed(ct.NS, func() (err error) { ln, err = net.Listen("tcp4", ":80"); return err })
	if err != nil {
		return err
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		fmt.Fprintf(w, "hello from %s (nginx stand-in) to %s\n", ct.Addr, host)
	})}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return
		}
	}()
	return nil
}

// httpGet fetches url with a connection made inside namespace ns.
func httpGet(ctx context.Context, ns, url string) (string, error) {
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := netnsx.DoNamed(ns, func() (err error) {
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := (&http.Client{Transport: tr, Timeout: 3 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return strings.TrimSpace(string(b)), err
}
