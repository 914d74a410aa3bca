package main

import (
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestKubeFlags(t *testing.T) {
	o, err := parseFlags(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	k := o.kube
	if k.enabled || k.netConfPath != "/etc/kube-flannel/net-conf.json" || k.prefix != "flannel.alpha.coreos.com" || !k.setNetAvail {
		t.Errorf("Kubernetes-mode defaults (flanneld's): %+v", k)
	}

	o, err = parseFlags([]string{"--kube-subnet-mgr", "--kubeconfig-file", "/k", "--kube-api-url", "https://10.0.0.1:6443",
		"--kube-annotation-prefix", "weft.example.com", "--set-node-network-unavailable=false"},
		env(map[string]string{"NODE_NAME": "n1"}), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.services {
		t.Error("weft's service VIPs are on in Kubernetes mode; kube-proxy serves the Services")
	}
	if _, err := parseFlags([]string{"--kube-subnet-mgr", "--services"}, env(map[string]string{"NODE_NAME": "n1"}), io.Discard); err == nil ||
		!strings.Contains(err.Error(), "--services") {
		t.Errorf("--services with --kube-subnet-mgr: %v, want an error naming --services", err)
	}
	k = o.kube
	if !k.enabled || k.kubeconfig != "/k" || k.apiURL != "https://10.0.0.1:6443" || k.prefix != "weft.example.com" || k.setNetAvail || k.nodeName != "n1" {
		t.Errorf("Kubernetes-mode flags: %+v", k)
	}

	// POD_NAME and POD_NAMESPACE stand in for NODE_NAME.
	if _, err := parseFlags([]string{"--kube-subnet-mgr"}, env(map[string]string{"POD_NAME": "weft-x", "POD_NAMESPACE": "kube-system"}), io.Discard); err != nil {
		t.Errorf("POD_NAME and POD_NAMESPACE: %v", err)
	}
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
	}{
		{[]string{"--kube-subnet-mgr"}, nil, "NODE_NAME"},
		{[]string{"--kube-subnet-mgr"}, map[string]string{"POD_NAME": "weft-x"}, "POD_NAMESPACE"},
		{[]string{"--kube-subnet-mgr", "--kube-annotation-prefix", "Bad/Prefix"}, map[string]string{"NODE_NAME": "n1"}, "--kube-annotation-prefix"},
	} {
		_, err := parseFlags(tc.args, env(tc.env), io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v %v: error %v, want one naming %s", tc.args, tc.env, err, tc.want)
		}
	}
}

func TestKubeRestConfig(t *testing.T) {
	k := kubeOptions{apiURL: "https://10.0.0.1:6443"}
	c, err := k.restConfig()
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "https://10.0.0.1:6443" || !strings.Contains(c.ContentType, "protobuf") {
		t.Errorf("rest config from --kube-api-url: host %q, content type %q", c.Host, c.ContentType)
	}
	k = kubeOptions{kubeconfig: "/does/not/exist"}
	if _, err := k.restConfig(); err == nil || !strings.Contains(err.Error(), "--kubeconfig-file") {
		t.Errorf("a missing kubeconfig: %v, want an error naming --kubeconfig-file", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := (&kubeOptions{}).restConfig(); err == nil || !strings.Contains(err.Error(), "in-cluster") {
		t.Errorf("neither flag outside a cluster: %v, want an error about the in-cluster config", err)
	}
}

// An IPv6 net-conf.json is refused in Kubernetes mode (the podCIDRs read
// are IPv4) before weftd contacts the API server or touches the host.
func TestKubeRefusesIPv6Config(t *testing.T) {
	for _, conf := range []string{
		`{"Network":"10.5.0.0/16","EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"vxlan"}}`,
		`{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd42::/48","Backend":{"Type":"vxlan"}}`,
	} {
		path := filepath.Join(t.TempDir(), "net-conf.json")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		o := options{kube: kubeOptions{enabled: true, netConfPath: path, apiURL: "https://127.0.0.1:1", nodeName: "n1"}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := wireKube(ctx, o, slog.New(slog.DiscardHandler))
		cancel()
		if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "IPv4 podCIDRs only") {
			t.Errorf("%s: error %v, want one naming the file and saying IPv4 only", conf, err)
		}
	}
}
