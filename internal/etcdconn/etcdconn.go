// Package etcdconn turns weft's etcd flags into a client: endpoints, TLS that
// never falls back to plaintext, and credentials that are re-read from disk when
// they change, so that rotated certificates need no restart.
//
// flanneld silently talks plaintext when it is given only a CA file; weft
// treats a CA file as "this etcd speaks TLS" and refuses http:// endpoints
// alongside it. Nor does it send a password where anyone on the path could
// read it: a password with a plaintext endpoint that is not on loopback is
// refused unless AllowPlaintextPassword says the operator means it.
//
// TLS is not handed to the etcd client as a fixed tls.Config: grpc would keep
// the CA pool and the client certificate it was built with. Instead the
// client gets transport credentials that build a fresh tls.Config for every
// connection from the files as they are on disk then, and let Go's own
// verification check etcd's certificate against that CA pool and against the
// host dialed. The host must come from grpc's authority: an IP endpoint is not
// sent as SNI, so tls.ConnectionState.ServerName is empty for it, and a
// VerifyConnection callback checking that name would accept any certificate
// the CA ever signed.
package etcdconn

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// RecvLimit is the largest response the client accepts, 8 MiB (gRPC's
// default for etcd's client is 2 GiB): weft lists the subnets prefix in pages
// that shrink until they fit, and a watch response over it breaks the watch,
// which is then re-listed in pages. It bounds what one response of megabyte
// values written under the prefix can cost weftd's memory.
const RecvLimit = 8 << 20

// Options are the etcd flags shared by weftd and weftctl.
type Options struct {
	Endpoints []string
	CAFile    string
	CertFile  string
	KeyFile   string
	Username  string
	Password  string
	// AllowPlaintextPassword lets a password go to a plaintext endpoint
	// that is not on loopback (--etcd-allow-plaintext-password).
	AllowPlaintextPassword bool
}

// Config checks o and returns the clientv3 configuration for it. It logs one
// warning naming the plaintext endpoints that are not on loopback, if any.
func Config(o Options, log *slog.Logger) (clientv3.Config, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cfg := clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Username:             o.Username,
		Password:             o.Password,
		Logger:               zap.NewNop(),
		MaxCallRecvMsgSize:   RecvLimit,
	}
	if (o.CertFile == "") != (o.KeyFile == "") {
		return cfg, errors.New("--etcd-certfile and --etcd-keyfile go together: give both or neither")
	}
	tlsFiles := o.CAFile != "" || o.CertFile != ""
	var plain, secure, exposed []string
	for _, ep := range o.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			return cfg, fmt.Errorf("--etcd-endpoints %q: want a URL such as https://10.0.0.1:2379", ep)
		}
		switch u.Scheme {
		case "https":
			secure = append(secure, ep)
		case "http":
			if tlsFiles {
				return cfg, fmt.Errorf("--etcd-endpoints %q: plaintext http with TLS files given; use https:// (weft never falls back to plaintext)", ep)
			}
			plain = append(plain, ep)
			if !isLoopback(u.Hostname()) {
				exposed = append(exposed, ep)
			}
		default:
			return cfg, fmt.Errorf("--etcd-endpoints %q: scheme %q, want http or https", ep, u.Scheme)
		}
	}
	if len(plain) > 0 && len(secure) > 0 {
		return cfg, fmt.Errorf("--etcd-endpoints: %s is plaintext but %s is TLS; one cluster speaks one of them", plain[0], secure[0])
	}
	if len(exposed) > 0 && o.Password != "" && !o.AllowPlaintextPassword {
		return cfg, fmt.Errorf("--etcd-endpoints %q: plaintext http to an address not on loopback would carry the etcd password readably; use https://, or give --etcd-allow-plaintext-password if the network is trusted", exposed[0])
	}
	if len(exposed) > 0 {
		log.Warn("etcd endpoint is plaintext and not on loopback: leases and credentials cross the network unencrypted",
			"endpoints", strings.Join(exposed, ","))
	}
	if len(secure) == 0 {
		return cfg, nil
	}
	r, err := newReloader(o, log)
	if err != nil {
		return cfg, err
	}
	// clientv3 appends DialOptions after its own credentials, so these win.
	cfg.DialOptions = append(cfg.DialOptions, grpc.WithTransportCredentials(&transportCreds{r: r}))
	return cfg, nil
}

// newReloader reads the TLS files once, so that a bad file is an error at
// start, not at the first dial.
func newReloader(o Options, log *slog.Logger) (*reloader, error) {
	r := &reloader{caFile: o.CAFile, certFile: o.CertFile, keyFile: o.KeyFile, log: log.With("component", "etcd-tls")}
	if _, err := r.tlsConfig(); err != nil {
		return nil, err
	}
	if o.CertFile != "" {
		if _, err := r.cert(); err != nil {
			return nil, err
		}
	}
	return r, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// reloader serves the CA pool and client certificate from disk, parsing a
// file again whenever its content changes. Content, not modification time:
// two writes within one clock tick of the file system look alike by time.
type reloader struct {
	caFile, certFile, keyFile string
	log                       *slog.Logger

	mu      sync.Mutex // guards the fields below
	caPEM   []byte
	caPool  *x509.CertPool
	crtPEM  []byte // certificate file, then key file
	crt     *tls.Certificate
	lastErr string // last handshake failure logged; "" after a success
	askedID bool   // logged that etcd wants a client certificate we lack
}

func (r *reloader) pool() (*x509.CertPool, error) {
	if r.caFile == "" {
		return x509.SystemCertPool()
	}
	pem, err := os.ReadFile(r.caFile)
	if err != nil {
		return nil, fmt.Errorf("reading --etcd-cafile: %w", err)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.caPool != nil && bytes.Equal(pem, r.caPEM) {
		return r.caPool, nil
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--etcd-cafile %s: no PEM certificate in it", r.caFile)
	}
	r.caPool, r.caPEM = p, pem
	return p, nil
}

func (r *reloader) cert() (*tls.Certificate, error) {
	certPEM, err := os.ReadFile(r.certFile)
	if err != nil {
		return nil, fmt.Errorf("reading --etcd-certfile: %w", err)
	}
	keyPEM, err := os.ReadFile(r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading --etcd-keyfile: %w", err)
	}
	both := slices.Concat(certPEM, keyPEM)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.crt != nil && bytes.Equal(both, r.crtPEM) {
		return r.crt, nil
	}
	c, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// Half-way through a rotation the two files may not match yet; the
		// next connection attempt reads them again.
		return nil, fmt.Errorf("loading --etcd-certfile %s and --etcd-keyfile %s: %w", r.certFile, r.keyFile, err)
	}
	r.crt, r.crtPEM = &c, both
	return &c, nil
}

// tlsConfig is the configuration of one connection: the CA pool as it is on
// disk now, and the client certificate as it is on disk when etcd asks for it.
// The server name is set by grpc from the endpoint dialed.
func (r *reloader) tlsConfig() (*tls.Config, error) {
	roots, err := r.pool()
	if err != nil {
		return nil, err
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		RootCAs:    roots,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			if r.certFile == "" {
				r.noClientCert()
				return &tls.Certificate{}, nil // etcd decides; it will refuse
			}
			return r.cert()
		},
	}, nil
}

// noClientCert says once why etcd is about to refuse us: with TLS 1.3 its
// refusal arrives after the handshake, as a bare "certificate required".
func (r *reloader) noClientCert() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.askedID {
		r.askedID = true
		r.log.Error("etcd asks for a client certificate and none is configured: give --etcd-certfile and --etcd-keyfile")
	}
}

// handshakeDone logs a failed handshake once per distinct error, and the
// first success after failures, so a flapping connection cannot flood the log.
func (r *reloader) handshakeDone(endpoint string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case err != nil && err.Error() != r.lastErr:
		r.lastErr = err.Error()
		r.log.Error("TLS handshake with etcd failed", "endpoint", endpoint, "err", err)
	case err == nil && r.lastErr != "":
		r.lastErr = ""
		r.log.Info("TLS handshake with etcd succeeded", "endpoint", endpoint)
	}
}

// transportCreds are grpc's TLS credentials with a tls.Config made afresh for
// each connection by the reloader.
type transportCreds struct{ r *reloader }

var _ credentials.TransportCredentials = (*transportCreds)(nil)

func (c *transportCreds) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	cfg, err := c.r.tlsConfig()
	if err != nil {
		c.r.handshakeDone(authority, err)
		raw.Close()
		return nil, nil, err
	}
	conn, info, err := credentials.NewTLS(cfg).ClientHandshake(ctx, authority, raw)
	if ctx.Err() == nil {
		c.r.handshakeDone(authority, err)
	}
	return conn, info, err
}

func (c *transportCreds) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("etcdconn: client credentials cannot serve")
}

func (c *transportCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls"}
}

func (c *transportCreds) Clone() credentials.TransportCredentials { return &transportCreds{r: c.r} }

// OverrideServerName is deprecated in grpc and unused: the name comes from
// each endpoint.
func (c *transportCreds) OverrideServerName(string) error { return nil }
