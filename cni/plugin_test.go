package cni

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weft-net/weft/internal/cluster"
)

// These tests drive the built weft-cni binary as a runtime does: CNI_*
// environment variables, the config on stdin, the result or error on stdout.
// The kernel tests run it inside a node namespace against pod namespaces,
// with Debian's bridge and host-local plugins (/usr/lib/cni) as delegates.

const debianPlugins = "/usr/lib/cni"

var pluginBin string // weft-cni, built once by TestMain or taken from $WEFT_BIN

func TestMain(m *testing.M) {
	code, err := buildAndRun(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	os.Exit(code)
}

func buildAndRun(m *testing.M) (int, error) {
	if d := os.Getenv("WEFT_BIN"); d != "" {
		pluginBin = filepath.Join(d, "weft-cni")
		return m.Run(), nil
	}
	dir, err := os.MkdirTemp("", "weft-cni-test-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	pluginBin = filepath.Join(dir, "weft-cni")
	if out, err := exec.Command("go", "build", "-o", pluginBin, "../cmd/weft-cni").CombinedOutput(); err != nil {
		return 0, fmt.Errorf("building weft-cni: %v\n%s", err, out)
	}
	return m.Run(), nil
}

// call is one invocation of the plugin.
type call struct {
	command     string
	containerID string
	netns       string
	ifName      string
	path        string // CNI_PATH; default the Debian plugins
	conf        string
}

// run executes c inside namespace hostNS ("" for the test's own, for calls
// that never reach the kernel). It returns stdout on success; on failure it
// checks the spec's error form (exit status non-zero, a JSON error with a
// code and a message on stdout) and returns it.
func run(t *testing.T, hostNS string, c call) ([]byte, *types.Error) {
	t.Helper()
	args := []string{pluginBin}
	if hostNS != "" {
		args = append([]string{"ip", "netns", "exec", hostNS}, args...)
	}
	cmd := exec.Command(args[0], args[1:]...)
	if c.path == "" {
		c.path = debianPlugins
	}
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "CNI_COMMAND=" + c.command, "CNI_PATH=" + c.path}
	for k, v := range map[string]string{"CNI_CONTAINERID": c.containerID, "CNI_NETNS": c.netns, "CNI_IFNAME": c.ifName} {
		if v != "" {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.Stdin = strings.NewReader(c.conf)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if err == nil {
		return stdout.Bytes(), nil
	}
	if _, ok := err.(*exec.ExitError); !ok {
		t.Fatalf("running weft-cni %s: %v", c.command, err)
	}
	var e types.Error
	if jerr := json.Unmarshal(stdout.Bytes(), &e); jerr != nil || e.Code == 0 || e.Msg == "" {
		t.Fatalf("weft-cni %s failed (%v) without a spec error on stdout: %q (stderr %q)", c.command, err, stdout.String(), stderr.String())
	}
	return nil, &e
}

func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root for network namespaces")
	}
	for _, p := range []string{"bridge", "host-local", "portmap"} {
		if _, err := os.Stat(filepath.Join(debianPlugins, p)); err != nil {
			t.Fatalf("Debian's containernetworking-plugins are not installed (make deps installs them): %v", err)
		}
	}
}

const goodEnv = "FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// confFor is a weft-cni config of version v whose files live under dir.
func confFor(v, dir string) string {
	return fmt.Sprintf(`{"cniVersion":%q,"name":"weft","type":"weft-cni","subnetFile":%q,"dataDir":%q,"ipam":{"dataDir":%q}}`,
		v, filepath.Join(dir, "subnet.env"), filepath.Join(dir, "data"), filepath.Join(dir, "ipam"))
}

func TestVersion(t *testing.T) {
	out, e := run(t, "", call{command: "VERSION", conf: `{"cniVersion":"1.0.0"}`})
	if e != nil {
		t.Fatal(e)
	}
	var info struct {
		CNIVersion string   `json:"cniVersion"`
		Supported  []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("VERSION printed %q: %v", out, err)
	}
	if want := []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}; !slices.Equal(info.Supported, want) {
		t.Errorf("supported versions %v, want %v", info.Supported, want)
	}
}

// TestSpecErrors covers the errors a runtime gets before anything touches
// the kernel: each has the spec's code and names what is wrong.
func TestSpecErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad")
	if err := os.Mkdir(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(bad, "subnet.env"), "FLANNEL_NETWORK=172.16.0.0/12\nFLANNEL_SUBNET=172.16.28.1/24\nFLANNEL_MTU=lots\nFLANNEL_IPMASQ=true\n")
	good := filepath.Join(dir, "good")
	if err := os.Mkdir(good, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(good, "subnet.env"), goodEnv)
	add := call{command: "ADD", containerID: "c1", netns: "/var/run/netns/none", ifName: "eth0"}
	for _, tc := range []struct {
		name string
		c    call
		code uint
		msg  []string
	}{
		{"malformed config", withConf(add, `{"cniVersion":"1.0.0","name":"weft",`), types.ErrDecodingFailure, []string{"unexpected end of JSON"}},
		{"field of the wrong type", withConf(add, `{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","dataDir":["/x"]}`), types.ErrDecodingFailure, []string{"dataDir"}},
		{"unusable delegate field", withConf(add, strings.Replace(confFor("1.0.0", good), `"ipam"`, `"delegate":{"isDefaultGateway":"yes"},"ipam"`, 1)), types.ErrDecodingFailure, []string{"delegate.isDefaultGateway: want true or false"}},
		{"unknown CNI version", withConf(add, confFor("9.9.9", dir)), types.ErrIncompatibleCNIVersion, []string{"incompatible"}},
		{"version older than 0.3.0", withConf(add, confFor("0.2.0", dir)), types.ErrIncompatibleCNIVersion, []string{"incompatible"}},
		{"CHECK on a 0.3.1 config", call{command: "CHECK", containerID: "c1", netns: "/x", ifName: "eth0", conf: confFor("0.3.1", dir)}, types.ErrIncompatibleCNIVersion, []string{"CHECK"}},
		{"missing subnet.env", withConf(add, confFor("1.0.0", dir)), types.ErrTryAgainLater, []string{filepath.Join(dir, "subnet.env"), "does not exist"}},
		{"malformed subnet.env", withConf(add, confFor("1.0.0", bad)), types.ErrInvalidNetworkConfig, []string{filepath.Join(bad, "subnet.env"), `line 3: FLANNEL_MTU "lots": not a number`}},
		{"delegate not installed", withConf(add, strings.Replace(confFor("1.0.0", good), `"ipam"`, `"delegate":{"type":"nosuch"},"ipam"`, 1)), types.ErrInvalidNetworkConfig, []string{`delegate plugin "nosuch"`, "CNI_PATH=" + debianPlugins}},
		{"CHECK of a container never added", call{command: "CHECK", containerID: "c9", netns: "/x", ifName: "eth0", conf: confFor("1.0.0", dir)}, types.ErrUnknownContainer, []string{"c9", "not added"}},
		{"STATUS without subnet.env", call{command: "STATUS", conf: confFor("1.1.0", dir)}, 50, []string{filepath.Join(dir, "subnet.env"), "does not exist"}},
		{"STATUS with a malformed subnet.env", call{command: "STATUS", conf: confFor("1.1.0", bad)}, 50, []string{"FLANNEL_MTU"}},
		{"STATUS on a 1.0.0 config", call{command: "STATUS", conf: confFor("1.0.0", dir)}, types.ErrIncompatibleCNIVersion, []string{"STATUS"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, e := run(t, "", tc.c)
			if e == nil {
				t.Fatal("succeeded, want an error")
			}
			if e.Code != tc.code {
				t.Errorf("code %d (%s), want %d", e.Code, e.Msg, tc.code)
			}
			for _, m := range tc.msg {
				if !strings.Contains(e.Msg+" "+e.Details, m) {
					t.Errorf("error %q (details %q) does not say %q", e.Msg, e.Details, m)
				}
			}
		})
	}
}

func withConf(c call, conf string) call { c.conf = conf; return c }

// TestStatusAndDelWithoutKernel: STATUS turns ready once subnet.env exists;
// DEL of a container weft-cni never saw succeeds, with or without subnet.env.
func TestStatusAndDelWithoutKernel(t *testing.T) {
	dir := t.TempDir()
	del := call{command: "DEL", containerID: "never", ifName: "eth0", conf: confFor("1.0.0", dir)}
	if _, e := run(t, "", del); e != nil {
		t.Errorf("DEL without subnet.env or record: %v", e)
	}
	status := call{command: "STATUS", conf: confFor("1.1.0", dir)}
	if _, e := run(t, "", status); e == nil || e.Code != 50 {
		t.Fatalf("STATUS before subnet.env: %v, want code 50", e)
	}
	writeFile(t, filepath.Join(dir, "subnet.env"), goodEnv)
	if out, e := run(t, "", status); e != nil || len(out) != 0 {
		t.Errorf("STATUS with subnet.env: %v, output %q; want success and no output", e, out)
	}
}

// node is a namespace host with a subnet.env, ready for pods.
type node struct {
	*cluster.Host
	dir string
}

func newNode(t *testing.T) *node {
	t.Helper()
	needRoot(t)
	ctx := context.Background()
	c, err := cluster.New(ctx, cluster.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("removing namespaces: %v", err)
		}
	})
	h, err := c.AddHost(ctx, "node", netip.MustParsePrefix("172.17.42.31/16"))
	if err != nil {
		t.Fatal(err)
	}
	n := &node{Host: h, dir: t.TempDir()}
	writeFile(t, filepath.Join(n.dir, "subnet.env"), goodEnv)
	return n
}

func (n *node) pod(t *testing.T, name string) *cluster.Container {
	t.Helper()
	p, err := n.AddPod(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// add runs ADD for pod and returns its result, parsed in the config's version.
func (n *node) add(t *testing.T, conf string, p *cluster.Container) types.Result {
	t.Helper()
	out, e := run(t, n.NS, call{command: "ADD", containerID: "id-" + p.Name, netns: p.NetnsPath(), ifName: "eth0", conf: conf})
	if e != nil {
		t.Fatalf("ADD %s: %v", p.Name, e)
	}
	var v struct {
		CNIVersion string `json:"cniVersion"`
	}
	json.Unmarshal(out, &v)
	res, err := version.NewResult(v.CNIVersion, out)
	if err != nil {
		t.Fatalf("ADD %s printed %q: %v", p.Name, out, err)
	}
	return res
}

// addrOf is the one address of an ADD result.
func addrOf(t *testing.T, res types.Result) netip.Prefix {
	t.Helper()
	r, err := types100.GetResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.IPs) != 1 {
		t.Fatalf("result has %d addresses, want 1: %v", len(r.IPs), r)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	ones, _ := r.IPs[0].Address.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones)
}

// withPrev is conf with prevResult set, as a runtime sends CHECK and DEL.
func withPrev(t *testing.T, conf string, res types.Result) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(conf), &m); err != nil {
		t.Fatal(err)
	}
	m["prevResult"] = res
	b, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ipamFiles lists host-local's reservations: one file per address in use.
func (n *node) ipamFiles(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(n.dir, "ipam", "weft"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := netip.ParseAddr(e.Name()); err == nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// bridgePorts lists the interfaces attached to cni0 on the node.
func (n *node) bridgePorts(t *testing.T) []string {
	t.Helper()
	out, err := n.IP(context.Background(), "-br", "link", "show", "master", "cni0")
	if err != nil {
		t.Fatal(err)
	}
	var ports []string
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 {
			ports = append(ports, f[0])
		}
	}
	return ports
}

func hasLink(t *testing.T, p *cluster.Container, name string) bool {
	t.Helper()
	out, err := p.Run(context.Background(), "ip", "-br", "link")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(out) {
		if f := strings.Fields(line); len(f) > 0 && strings.Split(f[0], "@")[0] == name {
			return true
		}
	}
	return false
}
