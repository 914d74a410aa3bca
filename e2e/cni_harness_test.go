package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/weft-net/weft/internal/cluster"
)

// Helpers for the CNI tests: a node's CNI setup as a runtime has it (plugin
// directories, a conflist, state directories of its own, since the namespace
// nodes share one filesystem), and libcni, the library containerd and podman
// use, running the plugins inside the node's namespace.

const debianCNIPlugins = "/usr/lib/cni"

// cniBin is the directory holding weft-cni: $WEFT_BIN, else a fresh build.
func cniBin(t *testing.T) string {
	t.Helper()
	if _, err := os.Stat(debianCNIPlugins + "/bridge"); err != nil {
		t.Fatalf("Debian's containernetworking-plugins are not installed (make deps installs them): %v", err)
	}
	dir := weftBin(t)
	if _, err := os.Stat(filepath.Join(dir, "weft-cni")); err == nil {
		return dir
	}
	out, err := exec.Command("go", "build", "-o", filepath.Join(dir, "weft-cni"), "../cmd/weft-cni").CombinedOutput()
	if err != nil {
		t.Fatalf("building weft-cni: %v\n%s", err, out)
	}
	return dir
}

// shippedConflist is deploy/cni/10-weft.conflist (kube-flannel's conflist
// with "type" changed to weft-cni) at cniVersion, plus the paths a namespace
// node needs because all nodes share this machine's /run and /var/lib.
func shippedConflist(t *testing.T, cniVersion, subnetFile, dir string) string {
	t.Helper()
	b, err := os.ReadFile("../deploy/cni/10-weft.conflist")
	if err != nil {
		t.Fatal(err)
	}
	var list map[string]any
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatalf("deploy/cni/10-weft.conflist: %v", err)
	}
	list["cniVersion"] = cniVersion
	weft := list["plugins"].([]any)[0].(map[string]any)
	weft["subnetFile"] = subnetFile
	weft["dataDir"] = filepath.Join(dir, "weft")
	weft["ipam"] = map[string]any{"dataDir": filepath.Join(dir, "ipam")}
	out, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// cniNode is a weft node with a CNI runtime's view of it.
type cniNode struct {
	*node
	dir  string // the node's CNI state: weft/, ipam/, cache/
	list *libcni.NetworkConfigList
	cni  *libcni.CNIConfig
	path string // CNI_PATH
}

func newCNINode(t *testing.T, n *node, bin, cniVersion string) *cniNode {
	t.Helper()
	c := &cniNode{node: n, dir: filepath.Join(filepath.Dir(n.subnetFile), "cni"), path: bin + ":" + debianCNIPlugins}
	if err := os.MkdirAll(c.dir, 0o755); err != nil {
		t.Fatal(err)
	}
	list, err := libcni.ConfListFromBytes([]byte(shippedConflist(t, cniVersion, n.subnetFile, c.dir)))
	if err != nil {
		t.Fatalf("loading the conflist: %v", err)
	}
	c.list = list
	c.cni = libcni.NewCNIConfigWithCacheDir([]string{bin, debianCNIPlugins}, filepath.Join(c.dir, "cache"), &nsExec{ns: n.NS})
	return c
}

// nsExec runs plugins inside a node's network namespace, as a runtime on that
// node would. nsenter, not `ip netns exec`, so that /sys stays the host's.
type nsExec struct{ ns string }

var _ invoke.Exec = (*nsExec)(nil)

func (x *nsExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, "nsenter", "--net=/var/run/netns/"+x.ns, pluginPath)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		e := &types.Error{}
		if jerr := json.Unmarshal(stdout.Bytes(), e); jerr != nil || e.Msg == "" {
			return nil, fmt.Errorf("%s in %s: %v (stdout %q, stderr %q)", pluginPath, x.ns, err, stdout.String(), stderr.String())
		}
		return nil, e
	}
	return stdout.Bytes(), nil
}

func (x *nsExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

func (x *nsExec) Decode(b []byte) (version.PluginInfo, error) {
	return (&version.PluginDecoder{}).Decode(b)
}

func (c *cniNode) rt(p *cluster.Container, caps map[string]any) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: "id-" + c.Name + "-" + p.Name, NetNS: p.NetnsPath(), IfName: "eth0", CapabilityArgs: caps}
}

// addPod makes a pod namespace and attaches it through the conflist.
func (c *cniNode) addPod(ctx context.Context, t *testing.T, name string, caps map[string]any) (*cluster.Container, netip.Addr) {
	t.Helper()
	p, err := c.AddPod(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return p, c.attach(ctx, t, p, caps)
}

func (c *cniNode) attach(ctx context.Context, t *testing.T, p *cluster.Container, caps map[string]any) netip.Addr {
	t.Helper()
	res, err := c.cni.AddNetworkList(ctx, c.list, c.rt(p, caps))
	if err != nil {
		t.Fatalf("ADD %s on %s: %v", p.Name, c.Name, err)
	}
	return resultAddr(t, res)
}

func resultAddr(t *testing.T, res types.Result) netip.Addr {
	t.Helper()
	r, err := types100.GetResult(res)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.IPs) != 1 {
		t.Fatalf("ADD result has %d addresses, want 1: %v", len(r.IPs), r)
	}
	a, _ := netip.AddrFromSlice(r.IPs[0].Address.IP)
	return a.Unmap()
}

// reserved lists host-local's reservations on the node, one per address.
func (c *cniNode) reserved(t *testing.T) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(c.dir, "ipam", c.list.Name))
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

// bridgePorts lists the interfaces on the node's cni0.
func (c *cniNode) bridgePorts(ctx context.Context, t *testing.T) []string {
	t.Helper()
	out, err := c.IP(ctx, "-br", "link", "show", "master", "cni0")
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

// runWeftCNI drives weft-cni itself by the spec inside the node's namespace
// and returns the spec error it printed, nil on success.
func (c *cniNode) runWeftCNI(t *testing.T, env []string, conf string) *types.Error {
	t.Helper()
	cmd := exec.Command("nsenter", "--net=/var/run/netns/"+c.NS, filepath.Join(strings.Split(c.path, ":")[0], "weft-cni"))
	cmd.Env = append([]string{"CNI_PATH=" + c.path, "PATH=" + os.Getenv("PATH")}, env...)
	cmd.Stdin = strings.NewReader(conf)
	out, err := cmd.Output()
	if err == nil {
		return nil
	}
	e := &types.Error{}
	if jerr := json.Unmarshal(out, e); jerr != nil || e.Code == 0 {
		t.Fatalf("weft-cni failed (%v) without a spec error on stdout: %q", err, out)
	}
	return e
}

// linkNames lists a pod's interfaces.
func linkNames(ctx context.Context, t *testing.T, p *cluster.Container) string {
	t.Helper()
	out, err := p.Run(ctx, "ip", "-br", "link")
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func libcniList(conf string) (*libcni.NetworkConfigList, error) {
	return libcni.ConfListFromBytes([]byte(conf))
}
