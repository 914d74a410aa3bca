package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/cluster"
)

// TestChecksumPolicy: --tx-checksum-offload=auto turns transmit checksum
// offload off on flannel.1 on a kernel before 5.7 (faked with the hidden
// --kernel-release) and says why, leaves it on for a kernel with the fix,
// and on or off given explicitly wins; pods reach each other either way.
func TestChecksumPolicy(t *testing.T) {
	if _, err := exec.LookPath("ethtool"); err != nil {
		t.Skip("needs ethtool (Debian package ethtool)")
	}
	e := newBareEnv(t)
	ctx := e.ctx
	e.startEtcd()
	e.cli = e.client()
	if _, err := e.cli.Put(ctx, prefix+"/config", netConfig); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		on   bool
		log  string
	}{
		{[]string{"--kernel-release", "5.4.0-150-generic"}, false, "kernel 5.4 is older than 5.7"},
		{[]string{"--kernel-release", "6.1.0-18-amd64"}, true, "kernel 6.1 has the VXLAN checksum fix"},
		{[]string{"--kernel-release", "5.4.0-150-generic", "--tx-checksum-offload=on"}, true, "--tx-checksum-offload=on"},
	}
	var nodes []*node
	for i, c := range cases {
		nodes = append(nodes, e.addNode(fmt.Sprintf("node%d", i+1), mustPrefix(fmt.Sprintf("172.17.42.%d/16", 31+i)), c.args...))
	}
	for i, n := range nodes {
		n.waitSubnetFile(30 * time.Second)
		n.waitLog(t, cases[i].log, 5*time.Second)
		out, err := n.Run(ctx, "ethtool", "-k", "flannel.1")
		want := "tx-checksumming: " + map[bool]string{true: "on", false: "off"}[cases[i].on]
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("%s (%v): ethtool -k flannel.1 lacks %q: %v\n%s", n.Name, cases[i].args, want, err, out)
		}
		n.dockerUp()
		n.addContainer("c1", 5)
	}
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				if err := cluster.Ping(context.Background(), a.containers[0].NS, b.containers[0].Addr, cluster.PingOpts{Timeout: 5 * time.Second}); err != nil {
					t.Errorf("%s -> %s: %v", a.Name, b.Name, err)
				}
			}
		}
	}
}
