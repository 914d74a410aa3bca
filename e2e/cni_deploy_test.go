package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

// TestCNIDeployFiles: what operators install for weft-cni is what the tests
// run, and is flannel's setup with the plugin's type changed.
func TestCNIDeployFiles(t *testing.T) {
	read := func(path string) string {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	t.Run("conflist is kube-flannel's with type weft-cni", func(t *testing.T) {
		shipped := read("../deploy/cni/10-weft.conflist")
		list, err := libcni.ConfListFromBytes([]byte(shipped))
		if err != nil {
			t.Fatalf("libcni rejects deploy/cni/10-weft.conflist: %v", err)
		}
		if len(list.Plugins) != 2 || list.Plugins[0].Network.Type != "weft-cni" || list.Plugins[1].Network.Type != "portmap" {
			t.Fatalf("plugins are not weft-cni then portmap: %+v", list.Plugins)
		}
		// kube-flannel.yml's cni-conf.json, with "type" changed (and the
		// version raised to 1.0.0, which CHECK needs).
		flannel := `{"name":"cbr0","cniVersion":"1.0.0","plugins":[{"type":"weft-cni","delegate":{"hairpinMode":true,"isDefaultGateway":true}},{"type":"portmap","capabilities":{"portMappings":true}}]}`
		var got, want any
		json.Unmarshal([]byte(shipped), &got)
		json.Unmarshal([]byte(flannel), &want)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("deploy/cni/10-weft.conflist is\n%s\nwant flannel's\n%s", shipped, flannel)
		}
	})
	t.Run("image and DaemonSet install the plugin and the conflist", func(t *testing.T) {
		df := read("../Dockerfile")
		for _, want := range []string{"-o /out/weft-cni ./cmd/weft-cni", "/out/weft-cni /usr/local/bin/", "COPY deploy/cni/10-weft.conflist /etc/weft/cni/"} {
			if !strings.Contains(df, want) {
				t.Errorf("Dockerfile lacks %q", want)
			}
		}
		mk := read("../Makefile")
		if !strings.Contains(mk, "-o $(BIN)/weft-cni ./cmd/weft-cni") {
			t.Error("make build does not build weft-cni")
		}
		ds := read("../deploy/kubernetes/weft-daemonset.yaml")
		for _, want := range []string{"initContainers:", "mv /opt/cni/bin/.weft-cni.tmp /opt/cni/bin/weft-cni",
			"mv /etc/cni/net.d/.10-weft.conflist.tmp /etc/cni/net.d/10-weft.conflist", "path: /opt/cni/bin", "path: /etc/cni/net.d"} {
			if !strings.Contains(ds, want) {
				t.Errorf("the DaemonSet lacks %q", want)
			}
		}
	})
	t.Run("the init container's script installs over a running plugin", func(t *testing.T) {
		script := initScript(t, read("../deploy/kubernetes/weft-daemonset.yaml"))
		root := t.TempDir()
		for _, d := range []string{"usr/local/bin", "etc/weft/cni", "opt/cni/bin", "etc/cni/net.d"} {
			if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		plugin := []byte("#!/bin/sh\necho new weft-cni\n")
		conflist := []byte(read("../deploy/cni/10-weft.conflist"))
		os.WriteFile(filepath.Join(root, "usr/local/bin/weft-cni"), plugin, 0o755)
		os.WriteFile(filepath.Join(root, "etc/weft/cni/10-weft.conflist"), conflist, 0o644)
		// An older weft-cni is running on the node while the new one is
		// installed: overwriting it in place would fail with "text file busy".
		old := filepath.Join(root, "opt/cni/bin/weft-cni")
		sleep, err := os.ReadFile("/bin/sleep")
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(old, sleep, 0o755); err != nil {
			t.Fatal(err)
		}
		running := exec.Command(old, "30")
		if err := running.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { running.Process.Kill(); running.Wait() })

		for _, p := range []string{"/usr/local/bin/", "/etc/weft/cni/", "/opt/cni/bin/", "/etc/cni/net.d/"} {
			script = strings.ReplaceAll(script, p, root+p)
		}
		if out, err := exec.Command("sh", "-ec", script).CombinedOutput(); err != nil {
			t.Fatalf("the init script failed: %v\n%s\nscript:\n%s", err, out, script)
		}
		if b, _ := os.ReadFile(old); !bytes.Equal(b, plugin) {
			t.Error("/opt/cni/bin/weft-cni is not the image's weft-cni")
		}
		if b, _ := os.ReadFile(filepath.Join(root, "etc/cni/net.d/10-weft.conflist")); !bytes.Equal(b, conflist) {
			t.Error("/etc/cni/net.d/10-weft.conflist is not deploy/cni's")
		}
		if left, _ := filepath.Glob(filepath.Join(root, "*/*/.*.tmp")); len(left) > 0 {
			t.Errorf("temporary files left: %v", left)
		}
	})
}

// initScript is the shell script of the DaemonSet's install-cni container:
// the block after "- |" in its command.
func initScript(t *testing.T, yaml string) string {
	t.Helper()
	_, rest, ok := strings.Cut(yaml, "- name: install-cni")
	if !ok {
		t.Fatal("the DaemonSet has no install-cni container")
	}
	_, rest, ok = strings.Cut(rest, "- |\n")
	if !ok {
		t.Fatal("install-cni has no script block")
	}
	var lines []string
	indent := ""
	for line := range strings.Lines(rest) {
		trimmed := strings.TrimLeft(line, " ")
		if indent == "" {
			indent = line[:len(line)-len(trimmed)]
		}
		if !strings.HasPrefix(line, indent) {
			break
		}
		lines = append(lines, strings.TrimPrefix(line, indent))
	}
	return strings.Join(lines, "")
}
