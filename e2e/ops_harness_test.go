package e2e

// What the operations tests (metrics, health, TLS) need beyond harness_test.go:
// HTTP from inside a namespace, weftd started with flags of the test's
// choosing, a certificate authority made in the test, an etcd serving TLS on
// the master, a Prometheus server of the test's own and a systemd notify
// socket. Everything stays inside the cluster's namespaces and temporary
// directories, and is removed by the cluster's Close or t.Cleanup.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/weft-net/weft/internal/cluster"
)

const etcdTLSURL = "https://172.17.42.30:2379"

// getInNS fetches url from inside h's namespace.
func getInNS(ctx context.Context, h *cluster.Host, url string) (int, string, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: h.DialContext, DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// weftdGet fetches path from n's weftd at its default --metrics-addr.
func (n *node) weftdGet(ctx context.Context, path string) (int, string) {
	code, body, err := getInNS(ctx, n.Host, "http://127.0.0.1:8285"+path)
	if err != nil {
		return 0, err.Error()
	}
	return code, body
}

// newBareEnv is a cluster with the master host only: newEnv builds on it, and
// tests that run etcd their own way use it as it is.
func newBareEnv(t *testing.T) *env {
	t.Helper()
	needRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	e := &env{t: t, ctx: ctx, bin: weftBin(t), etcdDir: t.TempDir()}
	c, err := cluster.New(ctx, cluster.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	e.c = c
	t.Cleanup(func() {
		if t.Failed() {
			e.dumpLogs()
		}
		if err := c.Close(); err != nil {
			t.Errorf("removing the cluster: %v", err)
		}
	})
	if e.master, err = c.AddHost(ctx, "master", netip.MustParsePrefix(etcdAddr+"/16")); err != nil {
		t.Fatal(err)
	}
	return e
}

// addWeftd adds host name at addr (172.17.42.x) and starts weftd there with
// args after the few flags every test node has; unlike addNode it names no
// etcd endpoint, and it does not wait for anything. env (K=V) is set for
// weftd alone, through env(1); it shows in the log's first line.
func (e *env) addWeftd(name, addr string, env []string, args ...string) *node {
	e.t.Helper()
	h, err := e.c.AddHost(e.ctx, name, netip.MustParsePrefix(addr+"/16"))
	if err != nil {
		e.t.Fatal(err)
	}
	n := &node{Host: h, t: e.t, subnetFile: filepath.Join(e.c.Dir, name, "subnet.env")}
	if len(env) > 0 {
		n.args = append([]string{"env"}, env...)
	}
	n.args = append(n.args, filepath.Join(e.bin, "weftd"),
		"--iface", "eth0",
		"--subnet-file", n.subnetFile,
		"--log-level", "debug",
	)
	n.args = append(n.args, args...)
	n.start()
	e.nodes = append(e.nodes, n)
	return n
}

// waitLog waits until n's weftd log contains s.
func (n *node) waitLog(t *testing.T, s string, timeout time.Duration) {
	t.Helper()
	err := cluster.WaitFor(context.Background(), timeout, 50*time.Millisecond, func() (bool, string) {
		log := n.proc.Tail(200)
		return strings.Contains(log, s), log
	})
	if err != nil {
		t.Fatalf("%s: weftd did not log %q: %v", n.Name, s, err)
	}
}

// waitReady waits until n's weftd is ready with want peers programmed.
func (n *node) waitReady(t *testing.T, want int, timeout time.Duration) {
	t.Helper()
	err := cluster.WaitFor(context.Background(), timeout, 50*time.Millisecond, func() (bool, string) {
		code, body := n.weftdGet(context.Background(), "/status")
		var st struct {
			Status struct{ PeersProgrammed int }
			Ready  bool
		}
		json.Unmarshal([]byte(body), &st)
		return code == http.StatusOK && st.Ready && st.Status.PeersProgrammed == want, body
	})
	if err != nil {
		t.Fatalf("%s: weftd not ready with %d peers: %v\n%s", n.Name, want, err, n.proc.Tail(30))
	}
}

// pki is a certificate authority made by the test, writing its certificates
// and keys as PEM files into dir.
type pki struct {
	t      *testing.T
	dir    string
	name   string
	cert   *x509.Certificate
	key    *ecdsa.PrivateKey
	CAFile string
}

func newPKI(t *testing.T, name string) *pki {
	t.Helper()
	p := &pki{t: t, dir: t.TempDir(), name: name}
	p.key = p.newKey()
	tmpl := &x509.Certificate{
		SerialNumber:          p.serial(),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &p.key.PublicKey, p.key)
	if err != nil {
		t.Fatal(err)
	}
	if p.cert, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	p.CAFile = p.write("ca.pem", "CERTIFICATE", der)
	return p
}

func (p *pki) newKey() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	return k
}

func (p *pki) serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		p.t.Fatal(err)
	}
	return n
}

func (p *pki) write(name, typ string, der []byte) string {
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		p.t.Fatal(err)
	}
	return path
}

// issue signs a certificate for cn, usable as server and client (etcd's
// gateway dials etcd with its own server certificate), valid for ips, and
// returns the certificate and key files.
func (p *pki) issue(cn string, ips ...string) (certFile, keyFile string) {
	p.t.Helper()
	key := p.newKey()
	tmpl := &x509.Certificate{
		SerialNumber: p.serial(),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	for _, ip := range ips {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, &key.PublicKey, p.key)
	if err != nil {
		p.t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		p.t.Fatal(err)
	}
	return p.write(cn+".pem", "CERTIFICATE", der), p.write(cn+"-key.pem", "EC PRIVATE KEY", kder)
}

// replaceFile puts src's content at dst by renaming a new file over it, as
// certificate tools do.
func replaceFile(t *testing.T, src, dst string) {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst+".new", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(dst+".new", dst); err != nil {
		t.Fatal(err)
	}
}

// etcdTLS is how the master's etcd serves clients over TLS.
type etcdTLS struct {
	ca             *pki
	cert, key      string
	clientCertAuth bool   // clients must show a certificate from ca
	otherAddr      string // a second address etcd listens on, which cert may not name
}

// startEtcdTLS starts etcd on the master serving https://172.17.42.30:2379,
// keeping its data in e.etcdDir across restarts.
func (e *env) startEtcdTLS(o etcdTLS) {
	e.t.Helper()
	listen := etcdTLSURL
	if o.otherAddr != "" {
		if _, err := e.master.IP(e.ctx, "addr", "replace", o.otherAddr+"/16", "dev", "eth0"); err != nil {
			e.t.Fatal(err)
		}
		listen += ",https://" + o.otherAddr + ":2379"
	}
	extra := []string{"--cert-file", o.cert, "--key-file", o.key}
	if o.clientCertAuth {
		// etcd 3.4 requires client certificates as soon as it has a
		// --trusted-ca-file, with or without --client-cert-auth.
		extra = append(extra, "--trusted-ca-file", o.ca.CAFile, "--client-cert-auth")
	}
	e.runEtcd(listen, etcdTLSURL, extra...)
}

// stopEtcd stops etcd; etcd exits by its SIGTERM, which is no error here.
func (e *env) stopEtcd() {
	e.etcd.Stop(10 * time.Second)
}

// tlsClient is an etcd client of the test's own: it trusts ca, shows the
// certificate cert (if not empty) and logs in as user (if not empty).
func (e *env) tlsClient(ca *pki, cert, key, user, password string) *clientv3.Client {
	e.t.Helper()
	roots := x509.NewCertPool()
	roots.AddCert(ca.cert)
	tc := &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}
	if cert != "" {
		pair, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			e.t.Fatal(err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{etcdTLSURL},
		DialTimeout: 5 * time.Second,
		TLS:         tc,
		Username:    user,
		Password:    password,
		Logger:      zap.NewNop(),
		DialOptions: []grpc.DialOption{grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			return e.master.DialContext(ctx, "tcp", addr)
		})},
	})
	if err != nil {
		e.t.Fatalf("etcd client: %v", err)
	}
	e.t.Cleanup(func() { cli.Close() })
	return cli
}

// putPeer writes the lease of a node that exists only in etcd, attached to a
// fresh etcd lease, and returns its subnet's route as `ip route` prints it.
func (e *env) putPeer(cli *clientv3.Client, subnet, publicIP, mac string) string {
	e.t.Helper()
	g, err := cli.Grant(e.ctx, 600)
	if err != nil {
		e.t.Fatalf("granting an etcd lease: %v", err)
	}
	p := netip.MustParsePrefix(subnet)
	key := fmt.Sprintf("%s/subnets/%s-%d", prefix, p.Addr(), p.Bits())
	val := fmt.Sprintf(`{"PublicIP":%q,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, publicIP, mac)
	if _, err := cli.Put(e.ctx, key, val, clientv3.WithLease(g.ID)); err != nil {
		e.t.Fatalf("writing %s: %v", key, err)
	}
	return fmt.Sprintf("%s via %s dev flannel.1 onlink", p, p.Addr())
}

// promServer is a Prometheus server the test runs in a cluster namespace.
type promServer struct {
	host *cluster.Host
	addr string // 127.0.0.1:9090 inside host's namespace
	proc *cluster.Proc
}

// startPrometheus runs Debian's prometheus on h, listening on 127.0.0.1:9090
// there, scraping targets as job "weft" every second and evaluating rules
// every second, with its configuration and storage in a temporary directory.
func startPrometheus(t *testing.T, h *cluster.Host, targets []string, ruleFiles ...string) *promServer {
	t.Helper()
	if _, err := exec.LookPath("prometheus"); err != nil {
		t.Fatalf("prometheus is not installed (make deps installs it): %v", err)
	}
	dir := t.TempDir()
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n")
	if len(ruleFiles) > 0 {
		fmt.Fprintf(&cfg, "rule_files:\n")
		for _, f := range ruleFiles {
			abs, err := filepath.Abs(f)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(&cfg, "  - %q\n", abs)
		}
	}
	fmt.Fprintf(&cfg, "scrape_configs:\n  - job_name: weft\n    static_configs:\n      - targets: [")
	for i, tg := range targets {
		if i > 0 {
			cfg.WriteString(", ")
		}
		fmt.Fprintf(&cfg, "%q", tg)
	}
	cfg.WriteString("]\n")
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, []byte(cfg.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &promServer{host: h, addr: "127.0.0.1:9090"}
	proc, err := h.Start("prometheus", "prometheus",
		"--config.file", cfgFile,
		"--storage.tsdb.path", filepath.Join(dir, "data"),
		"--web.listen-address", p.addr,
		"--log.level", "warn",
	)
	if err != nil {
		t.Fatalf("starting prometheus: %v", err)
	}
	p.proc = proc
	t.Cleanup(func() { proc.Stop(5 * time.Second) })
	err = cluster.WaitFor(context.Background(), 20*time.Second, 100*time.Millisecond, func() (bool, string) {
		code, body, err := getInNS(context.Background(), h, "http://"+p.addr+"/-/ready")
		if err != nil {
			return false, err.Error()
		}
		return code == http.StatusOK, body
	})
	if err != nil {
		t.Fatalf("prometheus did not become ready: %v\n%s", err, proc.Tail(20))
	}
	return p
}

// api calls Prometheus's HTTP API and decodes the "data" of its answer.
func (p *promServer) api(path string, data any) error {
	code, body, err := getInNS(context.Background(), p.host, "http://"+p.addr+path)
	if err != nil {
		return err
	}
	var r struct {
		Status string
		Error  string
		Data   json.RawMessage
	}
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		return fmt.Errorf("%s: HTTP %d: %s", path, code, body)
	}
	if r.Status != "success" {
		return fmt.Errorf("%s: %s", path, r.Error)
	}
	return json.Unmarshal(r.Data, data)
}

// query evaluates expr now and returns the value of each series by instance.
func (p *promServer) query(expr string) (map[string]string, error) {
	var data struct {
		Result []struct {
			Metric map[string]string
			Value  [2]any
		}
	}
	if err := p.api("/api/v1/query?query="+url.QueryEscape(expr), &data); err != nil {
		return nil, err
	}
	out := map[string]string{}
	for _, r := range data.Result {
		out[r.Metric["instance"]] = fmt.Sprint(r.Value[1])
	}
	return out, nil
}

// notifySocket is a systemd notify socket: it records every datagram weftd
// sends, with what /readyz answered right after it arrived.
type notifySocket struct {
	Path string

	mu   sync.Mutex // guards msgs
	msgs []notifyMsg
}

type notifyMsg struct {
	text   string
	at     time.Time
	readyz int
}

// listenNotify opens a notify socket in a temporary directory; readyz is
// called as each datagram arrives. A path socket, not an abstract one:
// abstract sockets belong to a network namespace, paths are shared with the
// processes `ip netns exec` starts.
func listenNotify(t *testing.T, readyz func() int) *notifySocket {
	t.Helper()
	s := &notifySocket{Path: filepath.Join(t.TempDir(), "notify.sock")}
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: s.Path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { conn.Close(); <-done })
	go func() {
		defer close(done)
		buf := make([]byte, 4096)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			m := notifyMsg{text: string(buf[:k]), at: time.Now(), readyz: readyz()}
			s.mu.Lock()
			s.msgs = append(s.msgs, m)
			s.mu.Unlock()
		}
	}()
	return s
}

func (s *notifySocket) received() []notifyMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]notifyMsg(nil), s.msgs...)
}
