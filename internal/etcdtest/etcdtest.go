// Package etcdtest runs a real etcd server (the distribution's /usr/bin/etcd)
// as a child process for tests: a temporary data dir, free loopback ports (or
// a given address inside a network namespace), readiness polling, and
// cleanup registered with t.Cleanup. It can stop, kill, pause (SIGSTOP),
// resume and restart the server, optionally wiping its data, so tests can
// exercise outages and an etcd restored from nothing.
//
// A real process rather than the embedded server: it is what production runs,
// it can be frozen with a signal, and it cannot share state with the test.
package etcdtest

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Binary is the etcd server binary used.
const Binary = "/usr/bin/etcd"

// Options configures the server. The zero value listens on free loopback ports.
type Options struct {
	// ListenIP is the address to listen on (default 127.0.0.1).
	ListenIP string
	// ClientPort and PeerPort default to free ports. (The end-to-end suite
	// runs etcd inside a namespace itself: a client here could not reach it.)
	ClientPort, PeerPort int
	// TLS for clients: when CertFile is set the client URL is https. Client
	// uses the same files as its own certificate and CA.
	CertFile, KeyFile, TrustedCAFile string
	ClientCertAuth                   bool
	// ExtraArgs are appended to the etcd command line.
	ExtraArgs []string
}

// Etcd is a running (or stopped) etcd server.
type Etcd struct {
	t       testing.TB
	opts    Options
	dir     string // data dir
	logPath string
	client  string // client URL
	peer    string // peer URL

	mu     sync.Mutex // guards the fields below
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been reaped
}

// Start runs etcd and waits until it answers. It skips the test if etcd is
// not installed, unless WEFT_REQUIRE_ETCD=1.
func Start(t testing.TB, opts Options) *Etcd {
	t.Helper()
	if _, err := os.Stat(Binary); err != nil {
		if os.Getenv("WEFT_REQUIRE_ETCD") == "1" {
			t.Fatalf("etcd not installed (%v): apt-get install etcd-server", err)
		}
		t.Skip("etcd not installed: apt-get install etcd-server")
	}
	if opts.ListenIP == "" {
		opts.ListenIP = "127.0.0.1"
	}
	if opts.ClientPort == 0 {
		opts.ClientPort = freePort(t, opts)
	}
	if opts.PeerPort == 0 {
		opts.PeerPort = freePort(t, opts)
	}
	tmp := t.TempDir()
	scheme := "http"
	if opts.CertFile != "" {
		scheme = "https"
	}
	e := &Etcd{
		t: t, opts: opts,
		dir:     filepath.Join(tmp, "data"),
		logPath: filepath.Join(tmp, "etcd.log"),
		client:  scheme + "://" + net.JoinHostPort(opts.ListenIP, strconv.Itoa(opts.ClientPort)),
		peer:    "http://" + net.JoinHostPort(opts.ListenIP, strconv.Itoa(opts.PeerPort)),
	}
	t.Cleanup(func() {
		e.Kill()
		if t.Failed() {
			e.printLogTail(40)
		}
	})
	e.start()
	return e
}

// freePort asks the kernel for a free port on ListenIP.
func freePort(t testing.TB, opts Options) int {
	l, err := net.Listen("tcp", net.JoinHostPort(opts.ListenIP, "0"))
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func (e *Etcd) args() []string {
	a := []string{
		"--name", "default",
		"--data-dir", e.dir,
		"--listen-client-urls", e.client,
		"--advertise-client-urls", e.client,
		"--listen-peer-urls", e.peer,
		"--initial-advertise-peer-urls", e.peer,
		"--initial-cluster", "default=" + e.peer,
		"--initial-cluster-state", "new",
		"--logger", "zap",
		"--log-outputs", "stderr",
	}
	if e.opts.CertFile != "" {
		a = append(a, "--cert-file", e.opts.CertFile, "--key-file", e.opts.KeyFile)
		if e.opts.TrustedCAFile != "" {
			a = append(a, "--trusted-ca-file", e.opts.TrustedCAFile)
		}
		if e.opts.ClientCertAuth {
			a = append(a, "--client-cert-auth")
		}
	}
	return append(a, e.opts.ExtraArgs...)
}

func (e *Etcd) start() {
	e.t.Helper()
	logf, err := os.OpenFile(e.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatalf("opening etcd log: %v", err)
	}
	defer logf.Close()
	cmd := exec.Command(Binary, e.args()...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Die with the test binary, and don't get the terminal's signals.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		e.t.Fatalf("starting etcd: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	e.mu.Lock()
	e.cmd, e.exited = cmd, exited
	e.mu.Unlock()
	e.waitReady(exited)
}

func (e *Etcd) waitReady(exited <-chan struct{}) {
	e.t.Helper()
	cli := e.newClient()
	defer cli.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		_, err := cli.Get(ctx, "/etcdtest-ready")
		cancel()
		if err == nil {
			return
		}
		select {
		case <-exited:
			e.printLogTail(40)
			e.t.Fatalf("etcd exited before becoming ready")
		default:
		}
		if time.Now().After(deadline) {
			e.printLogTail(40)
			e.t.Fatalf("etcd at %s not ready after 20s: %v", e.client, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Endpoints returns the client URLs.
func (e *Etcd) Endpoints() []string { return []string{e.client} }

func (e *Etcd) tlsConfig() *tls.Config {
	if e.opts.CertFile == "" {
		return nil
	}
	info := transport.TLSInfo{CertFile: e.opts.CertFile, KeyFile: e.opts.KeyFile, TrustedCAFile: e.opts.TrustedCAFile}
	c, err := info.ClientConfig()
	if err != nil {
		e.t.Fatalf("etcd client TLS config: %v", err)
	}
	return c
}

func (e *Etcd) newClient() *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   e.Endpoints(),
		DialTimeout: 2 * time.Second,
		TLS:         e.tlsConfig(),
		Logger:      zap.NewNop(),
	})
	if err != nil {
		e.t.Fatalf("creating etcd client: %v", err)
	}
	return cli
}

// Client returns a client for this server, closed when t ends.
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	cli := e.newClient()
	t.Cleanup(func() { cli.Close() })
	return cli
}

func (e *Etcd) signal(sig syscall.Signal) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.cmd != nil && e.cmd.Process != nil {
		_ = e.cmd.Process.Signal(sig)
	}
}

// wait reaps the process, killing it if it has not exited after d.
func (e *Etcd) wait(d time.Duration) {
	e.mu.Lock()
	cmd, done := e.cmd, e.exited
	e.cmd = nil
	e.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
	case <-time.After(d):
		_ = cmd.Process.Kill()
		<-done
	}
}

// Stop terminates etcd gracefully (SIGTERM; SIGKILL after 10s).
func (e *Etcd) Stop() {
	e.signal(syscall.SIGCONT) // a paused process cannot handle SIGTERM
	e.signal(syscall.SIGTERM)
	e.wait(10 * time.Second)
}

// Kill kills etcd at once (SIGKILL).
func (e *Etcd) Kill() {
	e.signal(syscall.SIGKILL)
	e.wait(10 * time.Second)
}

// Pause freezes etcd (SIGSTOP): connections stay open but nothing answers.
func (e *Etcd) Pause() { e.signal(syscall.SIGSTOP) }

// Resume unfreezes a paused etcd (SIGCONT).
func (e *Etcd) Resume() { e.signal(syscall.SIGCONT) }

// Restart stops etcd and starts it again on the same ports. With wipe, the
// data dir is deleted first: etcd comes back empty, as if restored from nothing.
func (e *Etcd) Restart(wipe bool) {
	e.t.Helper()
	e.Stop()
	if wipe {
		if err := os.RemoveAll(e.dir); err != nil {
			e.t.Fatalf("wiping etcd data: %v", err)
		}
	}
	e.start()
}

// LogPath is the file etcd's output goes to.
func (e *Etcd) LogPath() string { return e.logPath }

func (e *Etcd) printLogTail(n int) {
	b, err := os.ReadFile(e.logPath)
	if err != nil {
		return
	}
	lines := bytes.Split(bytes.TrimRight(b, "\n"), []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	e.t.Logf("last %d lines of %s:\n%s", len(lines), e.logPath, fmt.Sprint(string(bytes.Join(lines, []byte("\n")))))
}
