// Package etcdconn turns weft's etcd flags into a client: endpoints, TLS that
// never falls back to plaintext, and credentials that are re-read from disk when
// they change, so that rotated certificates need no restart.
//
// flanneld silently talks plaintext when it is given only a CA file; weft
// treats a CA file as "this etcd speaks TLS" and refuses http:// endpoints
// alongside it.
package etcdconn

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Options are the etcd flags shared by weftd and weftctl.
type Options struct {
	Endpoints []string
	CAFile    string
	CertFile  string
	KeyFile   string
	Username  string
	Password  string
}

// Config checks o and returns the clientv3 configuration for it. It logs one
// warning for each plaintext endpoint that is not on loopback.
func Config(o Options, log *slog.Logger) (clientv3.Config, error) {
	cfg := clientv3.Config{
		Endpoints:            o.Endpoints,
		DialTimeout:          5 * time.Second,
		DialKeepAliveTime:    10 * time.Second,
		DialKeepAliveTimeout: 5 * time.Second,
		Username:             o.Username,
		Password:             o.Password,
		Logger:               zap.NewNop(),
	}
	tlsWanted := o.CAFile != "" || o.CertFile != ""
	for _, ep := range o.Endpoints {
		u, err := url.Parse(ep)
		if err != nil || u.Host == "" {
			return cfg, fmt.Errorf("--etcd-endpoints %q: want a URL such as https://10.0.0.1:2379", ep)
		}
		switch u.Scheme {
		case "https":
			tlsWanted = true
		case "http":
			if o.CAFile != "" || o.CertFile != "" {
				return cfg, fmt.Errorf("--etcd-endpoints %q: plaintext http with TLS files given; use https:// (weft never falls back to plaintext)", ep)
			}
			if !isLoopback(u.Hostname()) {
				log.Warn("etcd endpoint is plaintext and not on loopback: leases and credentials cross the network unencrypted", "endpoint", ep)
			}
		default:
			return cfg, fmt.Errorf("--etcd-endpoints %q: scheme %q, want http or https", ep, u.Scheme)
		}
	}
	if !tlsWanted {
		return cfg, nil
	}
	r := &reloader{caFile: o.CAFile, certFile: o.CertFile, keyFile: o.KeyFile}
	// Load once now so that a bad file is an error at start, not at first dial.
	if _, err := r.pool(); err != nil {
		return cfg, err
	}
	if o.CertFile != "" {
		if _, err := r.cert(); err != nil {
			return cfg, err
		}
	}
	cfg.TLS = r.tlsConfig()
	return cfg, nil
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// reloader serves the CA pool and client certificate from disk, re-reading a
// file whenever its modification time or size changes.
type reloader struct {
	caFile, certFile, keyFile string

	mu       sync.Mutex // guards the fields below
	caStamp  string
	caPool   *x509.CertPool
	crtStamp string
	crt      *tls.Certificate
}

func stamp(files ...string) (string, error) {
	s := ""
	for _, f := range files {
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		s += fmt.Sprintf("%s:%d:%d;", f, fi.ModTime().UnixNano(), fi.Size())
	}
	return s, nil
}

func (r *reloader) pool() (*x509.CertPool, error) {
	if r.caFile == "" {
		return x509.SystemCertPool()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := stamp(r.caFile)
	if err != nil {
		return nil, fmt.Errorf("reading --etcd-cafile: %w", err)
	}
	if st == r.caStamp && r.caPool != nil {
		return r.caPool, nil
	}
	pem, err := os.ReadFile(r.caFile)
	if err != nil {
		return nil, fmt.Errorf("reading --etcd-cafile: %w", err)
	}
	p := x509.NewCertPool()
	if !p.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--etcd-cafile %s: no PEM certificate in it", r.caFile)
	}
	r.caPool, r.caStamp = p, st
	return p, nil
}

func (r *reloader) cert() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := stamp(r.certFile, r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("reading --etcd-certfile/--etcd-keyfile: %w", err)
	}
	if st == r.crtStamp && r.crt != nil {
		return r.crt, nil
	}
	c, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		return nil, fmt.Errorf("loading --etcd-certfile %s and --etcd-keyfile %s: %w", r.certFile, r.keyFile, err)
	}
	r.crt, r.crtStamp = &c, st
	return &c, nil
}

// tlsConfig verifies the server against the CA pool as it is on disk at each
// handshake. Go's built-in verification reads RootCAs once, so it is switched
// off and done again in VerifyConnection, with the same checks.
func (r *reloader) tlsConfig() *tls.Config {
	c := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified in VerifyConnection against the current CA file
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("etcd server sent no certificate")
			}
			roots, err := r.pool()
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			_, err = cs.PeerCertificates[0].Verify(x509.VerifyOptions{
				Roots:         roots,
				Intermediates: inter,
				DNSName:       cs.ServerName,
				KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
			})
			if err != nil {
				return fmt.Errorf("verifying etcd's certificate: %w", err)
			}
			return nil
		},
	}
	if r.certFile != "" {
		c.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return r.cert()
		}
	}
	return c
}
