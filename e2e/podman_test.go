package e2e

import (
	"archive/tar"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestPodman is weft-cni under a real container runtime: Debian's podman
// (CNI backend, runc) on two weftd nodes, pointed at flannel's conflist with
// type weft-cni. Containers on the two nodes ping each other over the
// overlay, and `podman rm` gives back the address and the interfaces.
func TestPodman(t *testing.T) {
	for _, tool := range []string{"podman", "runc", "conmon", "nsenter"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed (make deps installs podman and runc): %v", tool, err)
		}
	}
	e := newEnv(t, clusterOpts{nodes: 2})
	ctx := e.ctx
	bin := cniBin(t)
	image := busyboxTarball(t)

	pm := make([]*podmanNode, len(e.nodes))
	for i, n := range e.nodes {
		pm[i] = newPodmanNode(t, newCNINode(t, n, bin, "1.0.0"))
		pm[i].podman(ctx, t, "import", image, "localhost/weft-busybox")
	}
	addrs := make([]netip.Addr, len(pm))
	for i, p := range pm {
		p.podman(ctx, t, "run", "-d", "--name", "web", "--network", p.list.Name, "localhost/weft-busybox", "sleep", "600")
		out := p.podman(ctx, t, "inspect", "-f", `{{(index .NetworkSettings.Networks "`+p.list.Name+`").IPAddress}}`, "web")
		a, err := netip.ParseAddr(strings.TrimSpace(out))
		if err != nil || !p.subnet().Contains(a) {
			t.Fatalf("container on %s has address %q (%v), want one of %v", p.Name, out, err, p.subnet())
		}
		addrs[i] = a
	}

	for i, p := range pm {
		to := addrs[(i+1)%len(addrs)]
		out := p.podman(ctx, t, "exec", "web", "ping", "-c", "3", "-W", "2", to.String())
		t.Logf("%s: podman exec web ping -c 3 %v\n%s", p.Name, to, out)
		if !strings.Contains(out, "3 packets received") {
			t.Errorf("container on %s pinging %v:\n%s", p.Name, to, out)
		}
	}
	if out := pm[0].podman(ctx, t, "exec", "web", "ping", "-c", "1", "-W", "2", outsideAddr); !strings.Contains(out, "1 packets received") {
		t.Errorf("container on %s pinging the outside host:\n%s", pm[0].Name, out)
	}

	p := pm[0]
	record := filepath.Join(p.dir, "weft")
	p.podman(ctx, t, "rm", "-f", "-t", "0", "web")
	if got := p.reserved(t); slices.Contains(got, addrs[0].String()) {
		t.Errorf("%v still reserved after podman rm: %v", addrs[0], got)
	}
	if ports := p.bridgePorts(ctx, t); len(ports) != 0 {
		t.Errorf("cni0 on %s still has ports after podman rm: %v", p.Name, ports)
	}
	if left, _ := os.ReadDir(record); len(left) != 0 {
		t.Errorf("weft-cni records left after podman rm: %v", left)
	}
}

// podmanNode is podman on one namespace node, with storage, state and
// network config of its own.
type podmanNode struct {
	*cniNode
	env []string
	top string
}

func newPodmanNode(t *testing.T, c *cniNode) *podmanNode {
	t.Helper()
	top := filepath.Join(filepath.Dir(c.subnetFile), "podman")
	netd := filepath.Join(top, "net.d")
	for _, d := range []string{netd, filepath.Join(top, "tmp")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	conflist := shippedConflist(t, "1.0.0", c.subnetFile, c.dir)
	if err := os.WriteFile(filepath.Join(netd, "10-weft.conflist"), []byte(conflist), 0o644); err != nil {
		t.Fatal(err)
	}
	// default_ulimits, cgroupfs and runc: what podman needs on this kind of
	// machine (no systemd, cgroup v1); the CNI backend reads our conflist.
	conf := fmt.Sprintf(`[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
tmp_dir = %q

[network]
network_backend = "cni"
cni_plugin_dirs = [%q, %q]
network_config_dir = %q
`, filepath.Join(top, "tmp"), strings.Split(c.path, ":")[0], debianCNIPlugins, netd)
	confPath := filepath.Join(top, "containers.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &podmanNode{cniNode: c, top: top, env: append(os.Environ(), "CONTAINERS_CONF="+confPath)}
	// Runs before the cluster's cleanup: the containers' namespaces are
	// podman's, and only podman removes them.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if out, err := p.run(ctx, "rm", "-f", "-t", "0", "--all"); err != nil {
			t.Errorf("removing %s's containers: %v\n%s", c.Name, err, out)
		}
	})
	return p
}

// run runs podman inside the node's network namespace. nsenter, because
// `ip netns exec` remounts /sys and hides the cgroup mounts runc needs.
func (p *podmanNode) run(ctx context.Context, args ...string) (string, error) {
	full := append([]string{"--net=/var/run/netns/" + p.NS, "podman",
		"--root", filepath.Join(p.top, "root"), "--runroot", filepath.Join(p.top, "runroot"),
		"--storage-driver", "vfs"}, args...)
	cmd := exec.CommandContext(ctx, "nsenter", full...)
	cmd.Env = p.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (p *podmanNode) podman(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	out, err := p.run(ctx, args...)
	if err != nil {
		t.Fatalf("podman %s on %s: %v\n%s", strings.Join(args, " "), p.Name, err, out)
	}
	return out
}

// busyboxTarball writes a root filesystem holding Debian's busybox-static
// and its applets, for `podman import`.
func busyboxTarball(t *testing.T) string {
	t.Helper()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is not installed (make deps installs it): %v", err)
	}
	path := filepath.Join(t.TempDir(), "busybox.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := tar.NewWriter(f)
	hdrs := []*tar.Header{
		{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777},
		{Name: "bin/busybox", Typeflag: tar.TypeReg, Mode: 0o755, Size: int64(len(bb))},
	}
	for _, applet := range []string{"sh", "sleep", "ping", "ip", "cat", "nc"} {
		hdrs = append(hdrs, &tar.Header{Name: "bin/" + applet, Typeflag: tar.TypeSymlink, Linkname: "busybox", Mode: 0o777})
	}
	for _, h := range hdrs {
		if err := w.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Name == "bin/busybox" {
			if _, err := w.Write(bb); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}
