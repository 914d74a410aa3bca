package e2e

import (
	"encoding/json"
	"os"
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
}
