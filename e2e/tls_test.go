package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/cluster"
)

// tlsEnv is a cluster whose etcd serves TLS with a certificate for
// 172.17.42.30 from a CA of the test's, with the network config written.
func tlsEnv(t *testing.T, o etcdTLS) (*env, etcdTLS) {
	t.Helper()
	e := newBareEnv(t)
	if o.ca == nil {
		o.ca = newPKI(t, "etcd CA")
	}
	o.cert, o.key = o.ca.issue("etcd", etcdAddr)
	e.startEtcdTLS(o)
	client, clientKey := o.ca.issue("test")
	e.cli = e.tlsClient(o.ca, client, clientKey, "", "")
	if _, err := e.cli.Put(e.ctx, prefix+"/config", netConfig); err != nil {
		t.Fatalf("writing the network config: %v", err)
	}
	return e, o
}

// TestEtcdTLS: with only --etcd-cafile, weftd verifies etcd and works; it
// refuses a plaintext endpoint next to a CA file, and an etcd whose
// certificate is from another CA or for another address.
func TestEtcdTLS(t *testing.T) {
	e, o := tlsEnv(t, etcdTLS{otherAddr: "172.17.42.29"})
	ca := o.ca
	args := []string{"--etcd-endpoints", etcdTLSURL, "--etcd-cafile", ca.CAFile}
	a := e.addWeftd("node1", "172.17.42.31", nil, args...)
	b := e.addWeftd("node2", "172.17.42.32", nil, args...)
	a.waitReady(t, 1, 15*time.Second)
	b.waitReady(t, 1, 15*time.Second)
	if log := a.proc.Tail(100000); strings.Contains(log, "plaintext") {
		t.Errorf("weftd over TLS warns about plaintext:\n%s", log)
	}

	t.Run("http endpoint with a CA file", func(t *testing.T) {
		n := e.addWeftd("node3", "172.17.42.33", nil, "--etcd-endpoints", etcdURL, "--etcd-cafile", ca.CAFile)
		select {
		case <-n.proc.Done():
		case <-time.After(5 * time.Second):
			t.Fatalf("weftd kept running with an http:// endpoint and a CA file:\n%s", n.proc.Tail(20))
		}
		const want = `plaintext http with TLS files given; use https:// (weft never falls back to plaintext)`
		if err := n.proc.Wait(); err == nil || !strings.Contains(n.proc.Tail(5), want) {
			t.Errorf("weftd exited with %v, want an error saying %q:\n%s", err, want, n.proc.Tail(5))
		}
	})

	for _, tc := range []struct {
		name, host, addr string
		args             []string
		want             string
	}{
		{"etcd's certificate from another CA", "node4", "172.17.42.34",
			[]string{"--etcd-endpoints", etcdTLSURL, "--etcd-cafile", newPKI(t, "another CA").CAFile},
			"x509: certificate signed by unknown authority"},
		// 172.17.42.29 is the same etcd, but its certificate names only .30:
		// a client that does not check the address would accept it.
		{"etcd's certificate for another address", "node5", "172.17.42.35",
			[]string{"--etcd-endpoints", "https://172.17.42.29:2379", "--etcd-cafile", ca.CAFile},
			"x509: certificate is valid for 172.17.42.30, not 172.17.42.29"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n := e.addWeftd(tc.host, tc.addr, nil, tc.args...)
			err := cluster.WaitFor(e.ctx, 10*time.Second, 50*time.Millisecond, func() (bool, string) {
				_, err := os.Stat(n.subnetFile)
				return err == nil || strings.Contains(n.proc.Tail(100), tc.want), n.proc.Tail(20)
			})
			if _, serr := os.Stat(n.subnetFile); serr == nil {
				t.Fatalf("weftd trusted etcd and took a subnet:\n%s", n.proc.Tail(20))
			}
			if err != nil {
				t.Fatalf("weftd did not log %q: %v", tc.want, err)
			}
			if code, body := n.weftdGet(e.ctx, "/readyz"); code != http.StatusServiceUnavailable {
				t.Errorf("/readyz: %d %q, want 503", code, body)
			}
		})
	}
}

// TestEtcdMutualTLS: etcd wants client certificates; weftd with one works,
// weftd without one cannot connect and says what is missing.
func TestEtcdMutualTLS(t *testing.T) {
	e, o := tlsEnv(t, etcdTLS{clientCertAuth: true})
	ca := o.ca
	cert, key := ca.issue("weft")
	a := e.addWeftd("node1", "172.17.42.31", nil,
		"--etcd-endpoints", etcdTLSURL, "--etcd-cafile", ca.CAFile, "--etcd-certfile", cert, "--etcd-keyfile", key)
	a.waitReady(t, 0, 15*time.Second)

	b := e.addWeftd("node2", "172.17.42.32", nil, "--etcd-endpoints", etcdTLSURL, "--etcd-cafile", ca.CAFile)
	b.waitLog(t, "etcd asks for a client certificate and none is configured: give --etcd-certfile and --etcd-keyfile", 10*time.Second)
	if code, body := b.weftdGet(e.ctx, "/readyz"); code != http.StatusServiceUnavailable {
		t.Errorf("/readyz without a client certificate: %d %q, want 503", code, body)
	}
	if code, _ := b.weftdGet(e.ctx, "/healthz"); code != http.StatusOK {
		t.Errorf("/healthz while waiting for etcd: %d, want 200", code)
	}
}

// TestEtcdPassword: etcd with users; weftd logs in with the password from
// --etcd-password-file or from WEFTD_ETCD_PASSWORD, and the password shows in
// neither its log nor its command line.
func TestEtcdPassword(t *testing.T) {
	e, o := tlsEnv(t, etcdTLS{})
	password, rootPassword := secret(t), secret(t)
	enableAuth(t, e, "weft", password, rootPassword)

	common := []string{"--etcd-endpoints", etcdTLSURL, "--etcd-cafile", o.ca.CAFile, "--etcd-username", "weft"}
	pwFile := passwordFile(t, password)
	a := e.addWeftd("node1", "172.17.42.31", nil, append(common, "--etcd-password-file", pwFile)...)
	// Inherited, as from systemd's EnvironmentFile or a Kubernetes Secret;
	// not through env(1), whose command line the cluster logs.
	t.Setenv("WEFTD_ETCD_PASSWORD", password)
	b := e.addWeftd("node2", "172.17.42.32", nil, common...)
	a.waitReady(t, 1, 15*time.Second)
	b.waitReady(t, 1, 15*time.Second)
	// Both serve traffic and must stay up: their command lines are read
	// while they are known to be running, before anything else happens.
	for _, n := range []*node{a, b} {
		checkCmdline(t, n, password)
	}

	t.Setenv("WEFTD_ETCD_PASSWORD", "")
	wrong := filepath.Join(t.TempDir(), "wrong-password")
	if err := os.WriteFile(wrong, []byte("not-"+password), 0o600); err != nil {
		t.Fatal(err)
	}
	c := e.addWeftd("node3", "172.17.42.33", nil, append(common, "--etcd-password-file", wrong)...)
	c.waitLog(t, "authentication failed", 10*time.Second)
	// A refused password is not an outage to wait out: weftd exits.
	select {
	case <-c.proc.Done():
	case <-time.After(10 * time.Second):
		t.Errorf("weftd with a wrong password kept running:\n%s", c.proc.Tail(10))
	}

	for _, n := range []*node{a, b, c} {
		if log := n.proc.Tail(100000); strings.Contains(log, password) {
			t.Errorf("%s: the password is in weftd's log:\n%s", n.Name, log)
		}
	}
}

// checkCmdline asserts that n's weftd, which must be running, does not carry
// password on its command line. /proc/<pid>/cmdline of a process that exited
// is empty (a zombie) or gone, so the process must be alive both before and
// after the read: only then was the pid, not yet reaped, still n's weftd.
func checkCmdline(t *testing.T, n *node, password string) {
	t.Helper()
	alive := func() bool {
		select {
		case <-n.proc.Done():
			return false
		default:
			return true
		}
	}
	if !alive() {
		t.Fatalf("%s: weftd exited:\n%s", n.Name, n.proc.Tail(20))
	}
	argv, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", n.proc.Pid()))
	if !alive() {
		t.Fatalf("%s: weftd exited while its command line was read:\n%s", n.Name, n.proc.Tail(20))
	}
	if err != nil {
		t.Fatal(err)
	}
	if len(argv) == 0 { // a zombie not reaped yet: exited all the same
		t.Fatalf("%s: weftd exited:\n%s", n.Name, n.proc.Tail(20))
	}
	if !strings.Contains(string(argv), "weftd") || strings.Contains(string(argv), password) {
		t.Errorf("%s: weftd's command line %q holds the password", n.Name, argv)
	}
}

// TestEtcdPasswordWaitsForEtcd: weftd with a password, started while etcd is
// down (a node booting before etcd), waits for etcd as it does without one.
func TestEtcdPasswordWaitsForEtcd(t *testing.T) {
	e, o := tlsEnv(t, etcdTLS{})
	password := secret(t)
	enableAuth(t, e, "weft", password, secret(t))
	e.stopEtcd()
	n := e.addWeftd("node1", "172.17.42.31", nil, "--etcd-endpoints", etcdTLSURL, "--etcd-cafile", o.ca.CAFile,
		"--etcd-username", "weft", "--etcd-password-file", passwordFile(t, password))
	select {
	case <-n.proc.Done():
		t.Fatalf("weftd exited while etcd was down:\n%s", n.proc.Tail(10))
	case <-time.After(6 * time.Second): // past the etcd client's 5 s dial timeout
	}
	e.startEtcdTLS(o)
	n.waitReady(t, 0, 15*time.Second)
}

func passwordFile(t *testing.T, password string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "etcd-password")
	if err := os.WriteFile(f, []byte(password+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

func secret(t *testing.T) string {
	t.Helper()
	b := make([]byte, 12)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return "pw-" + hex.EncodeToString(b)
}

// enableAuth turns on etcd's users: root, and user with read and write on
// the network's prefix only.
func enableAuth(t *testing.T, e *env, user, password, rootPassword string) {
	t.Helper()
	ctx, cli := e.ctx, e.cli
	steps := []func() error{
		func() error { _, err := cli.RoleAdd(ctx, "root"); return err },
		func() error { _, err := cli.UserAdd(ctx, "root", rootPassword); return err },
		func() error { _, err := cli.UserGrantRole(ctx, "root", "root"); return err },
		func() error { _, err := cli.RoleAdd(ctx, user); return err },
		func() error {
			_, err := cli.RoleGrantPermission(ctx, user, prefix+"/", clientv3.GetPrefixRangeEnd(prefix+"/"),
				clientv3.PermissionType(clientv3.PermReadWrite))
			return err
		},
		func() error { _, err := cli.UserAdd(ctx, user, password); return err },
		func() error { _, err := cli.UserGrantRole(ctx, user, user); return err },
		func() error { _, err := cli.AuthEnable(ctx); return err },
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("enabling etcd auth, step %d: %v", i+1, err)
		}
	}
}

// TestEtcdCertRotation moves etcd and weft to a new CA: weft's CA file,
// certificate and key are replaced on disk and etcd restarts with the new
// CA. The running weftds reconnect with the new files and program a peer
// that appears afterwards, without a restart.
func TestEtcdCertRotation(t *testing.T) {
	oldCA := newPKI(t, "old CA")
	e, _ := tlsEnv(t, etcdTLS{ca: oldCA, clientCertAuth: true})
	dir := t.TempDir()
	caFile, certFile, keyFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "weft.pem"), filepath.Join(dir, "weft-key.pem")
	cert, key := oldCA.issue("weft")
	replaceFile(t, oldCA.CAFile, caFile)
	replaceFile(t, cert, certFile)
	replaceFile(t, key, keyFile)
	args := []string{"--etcd-endpoints", etcdTLSURL, "--etcd-cafile", caFile, "--etcd-certfile", certFile, "--etcd-keyfile", keyFile}
	a := e.addWeftd("node1", "172.17.42.31", nil, args...)
	b := e.addWeftd("node2", "172.17.42.32", nil, args...)
	a.waitReady(t, 1, 15*time.Second)
	b.waitReady(t, 1, 15*time.Second)

	newCA := newPKI(t, "new CA")
	cert, key = newCA.issue("weft")
	replaceFile(t, newCA.CAFile, caFile)
	replaceFile(t, cert, certFile)
	replaceFile(t, key, keyFile)
	e.stopEtcd()
	srvCert, srvKey := newCA.issue("etcd", etcdAddr)
	e.startEtcdTLS(etcdTLS{ca: newCA, cert: srvCert, key: srvKey, clientCertAuth: true})
	cert, key = newCA.issue("test")
	cli := e.tlsClient(newCA, cert, key, "", "")
	ctx, cancel := context.WithTimeout(e.ctx, time.Second)
	_, err := e.cli.Get(ctx, prefix+"/config")
	cancel()
	if err == nil {
		t.Fatal("a client of the old CA still reaches etcd: etcd did not move to the new CA")
	}

	e.putPeer(cli, "172.16.250.0/24", "172.17.42.99", "0e:5d:9f:0a:0b:99")
	for _, n := range []*node{a, b} {
		e.eventually(n.Name+" programs the peer added after the rotation", 20*time.Second, func() (bool, string) {
			routes, _ := n.Routes(e.ctx)
			return hasRoute(routes, mustPrefix("172.16.250.0/24")), routes + n.proc.Tail(10)
		})
		select {
		case <-n.proc.Done():
			t.Errorf("%s: weftd exited during the rotation:\n%s", n.Name, n.proc.Tail(20))
		default:
		}
		if starts := strings.Count(n.proc.Tail(100000), "msg=starting"); starts != 1 {
			t.Errorf("%s: weftd started %d times, want once", n.Name, starts)
		}
	}
}

// TestPlaintextEtcdWarning: a plaintext endpoint on the network earns one
// warning at start; one on loopback none.
func TestPlaintextEtcdWarning(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 1})
	n := e.nodes[0]
	var warnings []string
	for _, l := range strings.Split(n.proc.Tail(100000), "\n") {
		if strings.Contains(l, "level=WARN") && strings.Contains(l, "plaintext") {
			warnings = append(warnings, l)
		}
	}
	if len(warnings) != 1 || !strings.Contains(warnings[0], "endpoints="+etcdURL) {
		t.Errorf("plaintext warnings for %s: %q, want exactly one naming it", etcdURL, warnings)
	}

	local := e.addWeftd("node2", "172.17.42.32", nil, "--etcd-endpoints", "http://127.0.0.1:2379")
	// weftd serves /healthz once it has read its etcd flags.
	e.eventually("weftd on node2 answers /healthz", 10*time.Second, func() (bool, string) {
		code, body := local.weftdGet(e.ctx, "/healthz")
		return code == http.StatusOK, body
	})
	if log := local.proc.Tail(100000); strings.Contains(log, "plaintext") {
		t.Errorf("a loopback endpoint earned a plaintext warning:\n%s", log)
	}
}
