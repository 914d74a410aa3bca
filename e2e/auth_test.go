package e2e

import (
	"context"
	"fmt"
	"github.com/weft-net/weft/service"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/ip"
	"github.com/weft-net/weft/subnet"
)

// etcdPlainURL is a second, plaintext listener of the master's etcd in
// TestEtcdRoles, for the plaintext password checks.
const etcdPlainURL = "http://172.17.42.30:2381"

// TestEtcdRoles sets etcd's users up with deploy/etcd/setup-roles.sh, turns
// auth on, and runs weft with them: nodes with the node role take and hold
// subnets; a node with the read-only role comes up on its reservation without
// writing anything; the node role cannot write the config, the operator role
// can (weftctl config set). A password is refused over plaintext to an
// address not on loopback unless --etcd-allow-plaintext-password is given.
func TestEtcdRoles(t *testing.T) {
	e := newBareEnv(t)
	etcdctl, err := exec.LookPath("etcdctl")
	if err != nil {
		t.Fatalf("etcdctl is not installed (make deps installs etcd-client): %v", err)
	}
	script, err := filepath.Abs("../deploy/etcd/setup-roles.sh")
	if err != nil {
		t.Fatal(err)
	}
	ca := newPKI(t, "etcd CA")
	cert, key := ca.issue("etcd", etcdAddr)
	e.runEtcd(etcdTLSURL+","+etcdPlainURL, etcdTLSURL, "--cert-file", cert, "--key-file", key)
	e.cli = e.tlsClient(ca, "", "", "", "")
	ctx := e.ctx
	if _, err := e.cli.Put(ctx, prefix+"/config", netConfig); err != nil {
		t.Fatalf("writing the network config: %v", err)
	}
	// node3's reservation, carrying exactly the value its weftd would write.
	reserved := mustPrefix("172.16.99.0/24")
	resKey := fmt.Sprintf("%s/subnets/%s-%d", prefix, reserved.Addr(), reserved.Bits())
	node3IP := netip.MustParseAddr("172.17.42.33")
	val, err := subnet.LeaseAttrs{PublicIP: node3IP, BackendType: "vxlan", VNI: 1, VtepMAC: ip.VTEPMAC(node3IP, 1)}.MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	put, err := e.cli.Put(ctx, resKey, string(val))
	if err != nil {
		t.Fatalf("writing the reservation: %v", err)
	}

	rootPW, nodePW, readerPW, opPW := secret(t), secret(t), secret(t), secret(t)
	rootFile, nodeFile, readerFile, opFile := passwordFile(t, rootPW), passwordFile(t, nodePW), passwordFile(t, readerPW), passwordFile(t, opPW)
	setup := func(args ...string) string {
		t.Helper()
		cmd := append([]string{"env", "PATH=" + filepath.Dir(etcdctl) + ":/usr/sbin:/usr/bin:/sbin:/bin",
			"ETCDCTL_ENDPOINTS=" + etcdTLSURL, "ETCDCTL_CACERT=" + ca.CAFile, "bash", script}, args...)
		out, err := e.master.Run(ctx, cmd...)
		if err != nil {
			t.Fatalf("setup-roles.sh: %v", err)
		}
		return out
	}
	out := setup("--enable-auth", "--root-password-file", rootFile,
		"--node-password-file", nodeFile, "--operator-password-file", opFile,
		"--readonly-user", "weft-reader", "--readonly-password-file", readerFile)
	for _, want := range []string{"user weft-node created", "user weft-reader created", "user weft-operator created", "auth enabled"} {
		if !strings.Contains(out, want) {
			t.Errorf("setup-roles.sh said:\n%s\nwant a line %q", out, want)
		}
	}
	if _, err := e.cli.Get(ctx, prefix+"/config"); err == nil {
		t.Fatal("a client without a user still reads etcd: auth is not on")
	}
	root := e.tlsClient(ca, "", "", "root", rootPW)
	wantPerms := map[string][]string{
		"weft-node":          {"READ " + prefix + "/config", "READ " + prefix + "/services/*", "READWRITE " + prefix + "/subnets/*"},
		"weft-node-readonly": {"READ " + prefix + "/config", "READ " + prefix + "/services/*", "READ " + prefix + "/subnets/*"},
		"weft-operator":      {"READWRITE " + prefix + "/config", "READWRITE " + prefix + "/services/*", "READWRITE " + prefix + "/subnets/*"},
	}
	checkRoles := func(when string) {
		t.Helper()
		for role, want := range wantPerms {
			if got := rolePerms(t, root, role); !slices.Equal(got, want) {
				t.Errorf("%s: role %s has %q, want %q", when, role, got, want)
			}
		}
	}
	checkRoles("after setup-roles.sh")
	// Again, as an operator re-running it would, with root's password only.
	if out := setup("--root-password-file", rootFile, "--readonly-user", "weft-reader"); strings.Contains(out, "created") {
		t.Errorf("setup-roles.sh run again created something:\n%s", out)
	}
	checkRoles("after running setup-roles.sh again")

	tlsArgs := func(user, pwFile string) []string {
		return []string{"--etcd-endpoints", etcdTLSURL, "--etcd-cafile", ca.CAFile, "--etcd-username", user, "--etcd-password-file", pwFile}
	}
	n1 := e.addWeftd("node1", "172.17.42.31", nil, tlsArgs("weft-node", nodeFile)...)
	n2 := e.addWeftd("node2", "172.17.42.32", nil, tlsArgs("weft-node", nodeFile)...)
	n3 := e.addWeftd("node3", node3IP.String(), nil, tlsArgs("weft-reader", readerFile)...)
	for _, n := range []*node{n1, n2, n3} {
		n.waitReady(t, 2, 30*time.Second)
		if log := n.proc.Tail(100000); strings.Contains(log, "permission denied") {
			t.Errorf("%s: etcd denied weftd something:\n%s", n.Name, log)
		}
	}

	t.Run("read-only node comes up on its reservation without writing", func(t *testing.T) {
		if got := n3.subnet(); got != reserved {
			t.Errorf("node3 runs on %v, want its reservation %v", got, reserved)
		}
		// And again after a restart, with its subnet.env naming the subnet.
		n3.stop()
		n3.start()
		n3.waitReady(t, 2, 30*time.Second)
		if log := n3.proc.Tail(100000); strings.Contains(log, "permission denied") {
			t.Errorf("etcd denied the read-only node something:\n%s", log)
		}
		resp, err := root.Get(ctx, resKey)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("reading the reservation: %v %v", resp, err)
		}
		if kv := resp.Kvs[0]; kv.ModRevision != put.Header.Revision || kv.Lease != 0 || string(kv.Value) != string(val) {
			t.Errorf("the reservation changed: mod revision %d (was %d), etcd lease %x, value %s", kv.ModRevision, put.Header.Revision, kv.Lease, kv.Value)
		}
		reader := e.tlsClient(ca, "", "", "weft-reader", readerPW)
		if _, err := reader.Put(ctx, resKey, string(val)); !isDenied(err) {
			t.Errorf("the read-only role wrote its reservation: %v, want permission denied", err)
		}
	})

	t.Run("node role cannot write the config, operator role can", func(t *testing.T) {
		nodeCli := e.tlsClient(ca, "", "", "weft-node", nodePW)
		if _, err := nodeCli.Put(ctx, prefix+"/config", `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`); !isDenied(err) {
			t.Errorf("the node role wrote the config: %v, want permission denied", err)
		}
		before := kvAt(t, root, prefix+"/config")
		weftctl := filepath.Join(e.bin, "weftctl")
		// A config that differs from the stored one (an equal one is no
		// write at all), forced past the compare-and-swap's question.
		set := []string{weftctl, "config", "set", "--force", `{"Network":"172.16.0.0/12","SubnetMax":"172.31.254.0","Backend":{"Type":"vxlan"}}`}
		out, err := e.master.Run(ctx, append(set, tlsArgs("weft-node", nodeFile)...)...)
		if err == nil || !strings.Contains(out, "permission denied") {
			t.Errorf("weftctl config set as weft-node: %v\n%s\nwant it refused with permission denied", err, out)
		}
		if after := kvAt(t, root, prefix+"/config"); after.ModRevision != before.ModRevision {
			t.Errorf("the config changed after a refused weftctl config set: %s", after.Value)
		}
		out, err = e.master.Run(ctx, append(set, tlsArgs("weft-operator", opFile)...)...)
		if err != nil {
			t.Fatalf("weftctl config set as weft-operator: %v", err)
		}
		after := kvAt(t, root, prefix+"/config")
		cfg, err := subnet.ParseConfig(after.Value)
		if after.ModRevision <= before.ModRevision || err != nil || cfg.Network != mustPrefix("172.16.0.0/12") {
			t.Errorf("weftctl config set as weft-operator said %q; the config is %s (%v) at revision %d (was %d)",
				out, after.Value, err, after.ModRevision, before.ModRevision)
		}

		// Services: nodes read them, operators write them.
		svcFile := filepath.Join(t.TempDir(), "service.yml")
		if err := os.WriteFile(svcFile, []byte(service.ReferenceService), 0o644); err != nil {
			t.Fatal(err)
		}
		create := []string{weftctl, "service", "create", "-f", svcFile}
		if out, err := e.master.Run(ctx, append(create, tlsArgs("weft-node", nodeFile)...)...); err == nil || !strings.Contains(out, "permission denied") {
			t.Errorf("weftctl service create as weft-node: %v\n%s\nwant it refused with permission denied", err, out)
		}
		if out, err := e.master.Run(ctx, append(create, tlsArgs("weft-operator", opFile)...)...); err != nil {
			t.Errorf("weftctl service create as weft-operator: %v\n%s", err, out)
		}
	})

	t.Run("password over plaintext to the network", func(t *testing.T) {
		plain := []string{"--etcd-endpoints", etcdPlainURL, "--etcd-username", "weft-node", "--etcd-password-file", nodeFile}
		want := fmt.Sprintf(`--etcd-endpoints %q: plaintext http to an address not on loopback would carry the etcd password`, etcdPlainURL)
		n4 := e.addWeftd("node4", "172.17.42.34", nil, plain...)
		select {
		case <-n4.proc.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("weftd kept running with a password over %s:\n%s", etcdPlainURL, n4.proc.Tail(20))
		}
		if err := n4.proc.Wait(); err == nil || !strings.Contains(n4.proc.Tail(5), want) {
			t.Errorf("weftd exited with %v, want an error saying %q:\n%s", err, want, n4.proc.Tail(5))
		}
		weftctl := filepath.Join(e.bin, "weftctl")
		out, err := e.master.Run(ctx, append([]string{weftctl, "config", "get"}, plain...)...)
		if err == nil || !strings.Contains(out, want) {
			t.Errorf("weftctl config get with a password over %s: %v\n%s\nwant an error saying %q", etcdPlainURL, err, out, want)
		}

		allowed := append(plain, "--etcd-allow-plaintext-password")
		if out, err := e.master.Run(ctx, append([]string{weftctl, "config", "get"}, allowed...)...); err != nil {
			t.Errorf("weftctl config get with --etcd-allow-plaintext-password: %v\n%s", err, out)
		}
		n5 := e.addWeftd("node5", "172.17.42.35", nil, allowed...)
		n5.waitReady(t, 3, 30*time.Second)
	})

	t.Run("read-only node whose reservation differs says so", func(t *testing.T) {
		// The reservation names node6 but not its VTEP MAC: weftd would have
		// to write, and may not.
		// A subnet no node holds: a reservation written over a live node's
		// key would be that node's to write back (own-key repair).
		free := ""
		for i := 200; i < 256 && free == ""; i++ {
			s := fmt.Sprintf("172.16.%d.0/24", i)
			if r, err := root.Get(ctx, fmt.Sprintf("%s/subnets/172.16.%d.0-24", prefix, i)); err == nil && len(r.Kvs) == 0 {
				free = s
			}
		}
		key := e.putReservation(root, free, "172.17.42.36", "0e:5d:9f:0a:0b:36")
		before := kvAt(t, root, key)
		n6 := e.addWeftd("node6", "172.17.42.36", nil, tlsArgs("weft-reader", readerFile)...)
		n6.waitLog(t, "A node with a read-only etcd role needs a reservation holding exactly this value", 15*time.Second)
		if code, body := n6.weftdGet(ctx, "/readyz"); code != http.StatusServiceUnavailable {
			t.Errorf("/readyz of a node that could not take its subnet: %d %q, want 503", code, body)
		}
		if after := kvAt(t, root, key); after.ModRevision != before.ModRevision {
			t.Errorf("the reservation changed: %s", after.Value)
		}
	})
}

// putReservation writes a subnet key with no etcd lease for publicIP.
func (e *env) putReservation(cli *clientv3.Client, subnet, publicIP, mac string) string {
	e.t.Helper()
	p := netip.MustParsePrefix(subnet)
	key := fmt.Sprintf("%s/subnets/%s-%d", prefix, p.Addr(), p.Bits())
	val := fmt.Sprintf(`{"PublicIP":%q,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":%q}}`, publicIP, mac)
	if _, err := cli.Put(e.ctx, key, val); err != nil {
		e.t.Fatalf("writing %s: %v", key, err)
	}
	return key
}

// rolePerms lists role's permissions as "READ key" or "READWRITE prefix*".
func rolePerms(t *testing.T, cli *clientv3.Client, role string) []string {
	t.Helper()
	resp, err := cli.RoleGet(context.Background(), role)
	if err != nil {
		t.Fatalf("reading role %s: %v", role, err)
	}
	var out []string
	for _, p := range resp.Perm {
		k := string(p.Key)
		switch string(p.RangeEnd) {
		case "":
		case clientv3.GetPrefixRangeEnd(k):
			k += "*"
		default:
			k += " to " + string(p.RangeEnd)
		}
		out = append(out, p.PermType.String()+" "+k)
	}
	slices.Sort(out)
	return out
}

// kvAt reads key as etcd holds it.
func kvAt(t *testing.T, cli *clientv3.Client, key string) *mvccpb.KeyValue {
	t.Helper()
	resp, err := cli.Get(context.Background(), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading %s: %v %v", key, resp, err)
	}
	return resp.Kvs[0]
}

func isDenied(err error) bool {
	return err != nil && rpctypes.Error(err) == rpctypes.ErrPermissionDenied
}
