package e2e

import (
	"testing"
	"time"
)

func TestScratchMetrics(t *testing.T) {
	e := newEnv(t, clusterOpts{nodes: 2})
	time.Sleep(3 * time.Second)
	n := e.nodes[0]
	for _, p := range []string{"/metrics", "/readyz", "/healthz", "/status"} {
		out, err := n.Run(e.ctx, "curl", "-s", "-i", "http://127.0.0.1:8285"+p)
		t.Logf("%s: %v\n%s", p, err, out)
	}
	out, err := n.Run(e.ctx, e.bin+"/weftctl", "status")
	t.Logf("status: %v\n%s", err, out)
	t.Logf("log:\n%s", n.proc.Tail(40))
}
