package etcdconn

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// logBuf collects log output from goroutines grpc owns.
type logBuf struct {
	mu sync.Mutex // guards b
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newLog() (*slog.Logger, *logBuf) {
	b := &logBuf{}
	return slog.New(slog.NewTextHandler(b, nil)), b
}

func TestConfigEndpoints(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, "etcd CA")
	caFile := filepath.Join(dir, "ca.pem")
	writeFile(t, caFile, ca.certPEM)
	notPEM := filepath.Join(dir, "not.pem")
	writeFile(t, notPEM, []byte("hello"))

	for _, tc := range []struct {
		name      string
		o         Options
		wantErr   string
		wantWarns int    // warning lines
		wantWarn  string // in the warning
		wantTLS   bool
	}{
		{name: "plaintext on loopback", o: Options{Endpoints: []string{"http://127.0.0.1:2379", "http://localhost:2379"}}},
		{name: "plaintext on the network warns once", o: Options{Endpoints: []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379"}},
			wantWarns: 1, wantWarn: "endpoints=http://10.0.0.1:2379,http://10.0.0.2:2379"},
		{name: "password over plaintext on the network is refused",
			o:       Options{Endpoints: []string{"http://127.0.0.1:2379", "http://10.0.0.2:2379"}, Username: "weft", Password: "secret"},
			wantErr: `--etcd-endpoints "http://10.0.0.2:2379": plaintext http to an address not on loopback would carry the etcd password`},
		{name: "password over plaintext on the network, allowed",
			o:         Options{Endpoints: []string{"http://10.0.0.2:2379"}, Username: "weft", Password: "secret", AllowPlaintextPassword: true},
			wantWarns: 1, wantWarn: "endpoints=http://10.0.0.2:2379"},
		{name: "password over plaintext on loopback",
			o: Options{Endpoints: []string{"http://127.0.0.1:2379", "http://[::1]:2379", "http://localhost:2379"}, Username: "weft", Password: "secret"}},
		{name: "password over https",
			o: Options{Endpoints: []string{"https://10.0.0.1:2379"}, CAFile: caFile, Username: "weft", Password: "secret"}, wantTLS: true},
		{name: "https with a CA file", o: Options{Endpoints: []string{"https://10.0.0.1:2379"}, CAFile: caFile}, wantTLS: true},
		{name: "CA file with http is refused", o: Options{Endpoints: []string{"http://10.0.0.1:2379"}, CAFile: caFile},
			wantErr: "weft never falls back to plaintext"},
		{name: "client cert with http is refused", o: Options{Endpoints: []string{"http://127.0.0.1:2379"}, CertFile: caFile, KeyFile: caFile},
			wantErr: "use https://"},
		{name: "http and https mixed", o: Options{Endpoints: []string{"https://10.0.0.1:2379", "http://10.0.0.2:2379"}},
			wantErr: "one cluster speaks one of them"},
		{name: "unknown scheme", o: Options{Endpoints: []string{"unix:///run/etcd.sock"}}, wantErr: "want a URL"},
		{name: "no scheme", o: Options{Endpoints: []string{"10.0.0.1:2379"}}, wantErr: "want a URL"},
		{name: "missing CA file", o: Options{Endpoints: []string{"https://10.0.0.1:2379"}, CAFile: filepath.Join(dir, "nope.pem")},
			wantErr: "reading --etcd-cafile"},
		{name: "CA file without a certificate", o: Options{Endpoints: []string{"https://10.0.0.1:2379"}, CAFile: notPEM},
			wantErr: "no PEM certificate"},
		{name: "certificate without key", o: Options{Endpoints: []string{"https://10.0.0.1:2379"}, CertFile: caFile},
			wantErr: "go together"},
		{name: "unreadable client key pair", o: Options{Endpoints: []string{"https://10.0.0.1:2379"}, CertFile: caFile, KeyFile: notPEM},
			wantErr: "loading --etcd-certfile"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			log, buf := newLog()
			cfg, err := Config(tc.o, log)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Config: err %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(buf.String(), "level=WARN"); got != tc.wantWarns {
				t.Errorf("%d warning lines, want %d:\n%s", got, tc.wantWarns, buf)
			}
			if !strings.Contains(buf.String(), tc.wantWarn) {
				t.Errorf("log lacks %q:\n%s", tc.wantWarn, buf)
			}
			if gotTLS := len(cfg.DialOptions) > 0; gotTLS != tc.wantTLS {
				t.Errorf("TLS credentials set: %v, want %v", gotTLS, tc.wantTLS)
			}
		})
	}
}

// files are the paths weft is given; the tests rewrite their contents.
type files struct{ ca, cert, key string }

func newFiles(t *testing.T) files {
	dir := t.TempDir()
	return files{ca: filepath.Join(dir, "ca.pem"), cert: filepath.Join(dir, "client.pem"), key: filepath.Join(dir, "client-key.pem")}
}

func (f files) put(t *testing.T, ca *testCA, client *leaf) {
	t.Helper()
	writeFile(t, f.ca, ca.certPEM)
	if client != nil {
		writeFile(t, f.cert, client.certPEM)
		writeFile(t, f.key, client.keyPEM)
	}
}

// tlsServer accepts TLS connections with cfg, which a test may swap, and
// writes "ok" on each connection whose handshake succeeds.
type tlsServer struct {
	addr string
	mu   sync.Mutex // guards cfg
	cfg  *tls.Config
}

func serveTLS(t *testing.T, cfg *tls.Config) *tlsServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &tlsServer{addr: ln.Addr().String(), cfg: cfg}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				c.SetDeadline(time.Now().Add(5 * time.Second))
				s.mu.Lock()
				tc := tls.Server(c, s.cfg)
				s.mu.Unlock()
				if tc.Handshake() == nil {
					tc.Write([]byte("ok"))
				}
			})
		}
	})
	return s
}

func (s *tlsServer) set(cfg *tls.Config) {
	s.mu.Lock()
	s.cfg = cfg
	s.mu.Unlock()
}

func serverConfig(cert *leaf, clientCAs *testCA) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{cert.pair}, NextProtos: []string{"h2"}}
	if clientCAs != nil {
		c.ClientAuth = tls.RequireAndVerifyClientCert
		c.ClientCAs = clientCAs.pool()
	}
	return c
}

// connect makes one connection the way grpc does, with the endpoint's
// host:port as authority, and reads the server's "ok".
func connect(creds credentials.TransportCredentials, addr string) error {
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := creds.ClientHandshake(ctx, addr, raw)
	if err != nil {
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	b := make([]byte, 2)
	if _, err := io.ReadFull(conn, b); err != nil {
		return err // TLS 1.3: a refused client certificate shows up here
	}
	return nil
}

func newCreds(t *testing.T, o Options) (credentials.TransportCredentials, *logBuf) {
	t.Helper()
	log, buf := newLog()
	r, err := newReloader(o, log)
	if err != nil {
		t.Fatal(err)
	}
	return &transportCreds{r: r}, buf
}

func TestHandshakeVerifiesServer(t *testing.T) {
	ca, other := newCA(t, "etcd CA"), newCA(t, "another CA")
	f := newFiles(t)
	f.put(t, ca, nil)
	for _, tc := range []struct {
		name    string
		server  *leaf
		wantErr string
	}{
		{"certificate for the address dialed", ca.issue(t, "etcd", "127.0.0.1"), ""},
		// An IP endpoint is not sent as SNI: a check against the handshake's
		// ServerName would let this one through.
		{"certificate for another address", ca.issue(t, "etcd", "127.0.0.2"), "not 127.0.0.1"},
		{"certificate for a name only", ca.issue(t, "etcd", "etcd.example"), "127.0.0.1"},
		{"certificate from another CA", other.issue(t, "etcd", "127.0.0.1"), "unknown authority"},
		{"client certificate offered as server's", ca.issueClient(t, "weft", "127.0.0.1"), "incompatible key usage"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := serveTLS(t, serverConfig(tc.server, nil))
			creds, logs := newCreds(t, Options{CAFile: f.ca})
			err := connect(creds, srv.addr)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("connecting: %v\n%s", err, logs)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("connecting: err %v, want one containing %q", err, tc.wantErr)
			}
			if !strings.Contains(logs.String(), "TLS handshake with etcd failed") {
				t.Errorf("the failure is not in the log:\n%s", logs)
			}
		})
	}
}

func TestHandshakeClientCertificate(t *testing.T) {
	ca := newCA(t, "etcd CA")
	srv := serveTLS(t, serverConfig(ca.issue(t, "etcd", "127.0.0.1"), ca))

	t.Run("sent when etcd asks", func(t *testing.T) {
		f := newFiles(t)
		f.put(t, ca, ca.issueClient(t, "weft"))
		creds, logs := newCreds(t, Options{CAFile: f.ca, CertFile: f.cert, KeyFile: f.key})
		if err := connect(creds, srv.addr); err != nil {
			t.Fatalf("connecting: %v\n%s", err, logs)
		}
	})
	t.Run("etcd asks for one we lack", func(t *testing.T) {
		f := newFiles(t)
		f.put(t, ca, nil)
		creds, logs := newCreds(t, Options{CAFile: f.ca})
		for range 3 {
			if err := connect(creds, srv.addr); err == nil {
				t.Fatal("connected without a client certificate to a server that requires one")
			}
		}
		const want = "etcd asks for a client certificate and none is configured: give --etcd-certfile and --etcd-keyfile"
		if n := strings.Count(logs.String(), want); n != 1 {
			t.Errorf("%q logged %d times, want once:\n%s", want, n, logs)
		}
	})
}

// TestRotation replaces the CA and the client certificate on disk: the next
// connection uses the new ones, with no new client.
func TestRotation(t *testing.T) {
	oldCA, newCA := newCA(t, "old CA"), newCA(t, "new CA")
	f := newFiles(t)
	f.put(t, oldCA, oldCA.issueClient(t, "weft"))
	srv := serveTLS(t, serverConfig(oldCA.issue(t, "etcd", "127.0.0.1"), oldCA))
	creds, logs := newCreds(t, Options{CAFile: f.ca, CertFile: f.cert, KeyFile: f.key})
	if err := connect(creds, srv.addr); err != nil {
		t.Fatalf("before rotation: %v\n%s", err, logs)
	}

	// etcd moves to the new CA first: weft cannot verify it yet.
	srv.set(serverConfig(newCA.issue(t, "etcd", "127.0.0.1"), newCA))
	if err := connect(creds, srv.addr); err == nil || !strings.Contains(err.Error(), "unknown authority") {
		t.Fatalf("old files against the new CA: err %v, want unknown authority", err)
	}
	// Then the files are replaced, CA first and the key last, as a careless
	// operator would.
	f.put(t, newCA, newCA.issueClient(t, "weft"))
	if err := connect(creds, srv.addr); err != nil {
		t.Fatalf("after rotation: %v\n%s", err, logs)
	}
	if !strings.Contains(logs.String(), "TLS handshake with etcd succeeded") {
		t.Errorf("the recovery is not in the log:\n%s", logs)
	}
}

// fakeKV answers every Range with an empty result.
type fakeKV struct {
	etcdserverpb.UnimplementedKVServer
}

func (fakeKV) Range(context.Context, *etcdserverpb.RangeRequest) (*etcdserverpb.RangeResponse, error) {
	return &etcdserverpb.RangeResponse{Header: &etcdserverpb.ResponseHeader{Revision: 1}}, nil
}

// TestClientUsesTheseCredentials checks that clientv3 dials with the
// credentials Config sets, not its own: a server certificate for another
// address must make requests fail.
func TestClientUsesTheseCredentials(t *testing.T) {
	ca := newCA(t, "etcd CA")
	f := newFiles(t)
	f.put(t, ca, nil)
	for _, tc := range []struct {
		name   string
		server *leaf
		wantOK bool
	}{
		{"certificate for 127.0.0.1", ca.issue(t, "etcd", "127.0.0.1"), true},
		{"certificate for 127.0.0.2", ca.issue(t, "etcd", "127.0.0.2"), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			s := grpc.NewServer(grpc.Creds(credentials.NewTLS(serverConfig(tc.server, nil))))
			etcdserverpb.RegisterKVServer(s, fakeKV{})
			go s.Serve(ln)
			t.Cleanup(s.Stop)

			log, logs := newLog()
			cfg, err := Config(Options{Endpoints: []string{"https://" + ln.Addr().String()}, CAFile: f.ca}, log)
			if err != nil {
				t.Fatal(err)
			}
			cli, err := clientv3.New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err = cli.Get(ctx, "/coreos.com/network/config")
			if tc.wantOK && err != nil {
				t.Fatalf("Get: %v\n%s", err, logs)
			}
			if !tc.wantOK {
				if err == nil {
					t.Fatal("Get succeeded against a server whose certificate names another address")
				}
				if !strings.Contains(logs.String(), "not 127.0.0.1") {
					t.Errorf("the log does not say why:\n%s", logs)
				}
			}
		})
	}
}

// A small PKI, made fresh for every test.

type testCA struct {
	cert    *x509.Certificate
	key     *ecdsa.PrivateKey
	certPEM []byte
}

type leaf struct {
	certPEM, keyPEM []byte
	pair            tls.Certificate
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func serial(t *testing.T) *big.Int {
	t.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 64))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func newCA(t *testing.T, name string) *testCA {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(t),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// issue signs a server certificate for hosts (IP addresses or DNS names).
func (ca *testCA) issue(t *testing.T, name string, hosts ...string) *leaf {
	return ca.sign(t, name, x509.ExtKeyUsageServerAuth, hosts)
}

// issueClient signs a client certificate.
func (ca *testCA) issueClient(t *testing.T, name string, hosts ...string) *leaf {
	return ca.sign(t, name, x509.ExtKeyUsageClientAuth, hosts)
}

func (ca *testCA) sign(t *testing.T, name string, usage x509.ExtKeyUsage, hosts []string) *leaf {
	t.Helper()
	key := newKey(t)
	tmpl := &x509.Certificate{
		SerialNumber: serial(t),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	l := &leaf{
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		keyPEM:  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}),
	}
	if l.pair, err = tls.X509KeyPair(l.certPEM, l.keyPEM); err != nil {
		t.Fatal(err)
	}
	return l
}

// writeFile replaces path's content by renaming a new file over it, as
// certificate tools do.
func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".new"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}
