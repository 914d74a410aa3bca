package e2e

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHTTPSurface: the weftd binary's HTTP server answers GET and HEAD only
// and refuses oversized headers. weftd serves it while it waits for etcd, so
// no etcd runs here.
func TestHTTPSurface(t *testing.T) {
	e := newBareEnv(t)
	n := e.addWeftd("node1", "172.17.42.31", nil, "--etcd-endpoints", etcdURL)
	e.eventually("weftd answers /healthz", 10*time.Second, func() (bool, string) {
		code, body := n.weftdGet(e.ctx, "/healthz")
		return code == http.StatusOK, body
	})
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: n.DialContext, DisableKeepAlives: true}}
	do := func(method string, header http.Header) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequestWithContext(e.ctx, method, "http://127.0.0.1:8285/metrics", strings.NewReader("a=b"))
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range header {
			req.Header[k] = v
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s /metrics: %v", method, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200)) // enough to say what it is
		return resp, string(b)
	}
	if resp, body := do(http.MethodHead, nil); resp.StatusCode != http.StatusOK || body != "" {
		t.Errorf("HEAD /metrics: %d %q, want 200 and no body", resp.StatusCode, body)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		if resp, body := do(m, nil); resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
			t.Errorf("%s /metrics: %d Allow=%q %q, want 405 with Allow: GET, HEAD", m, resp.StatusCode, resp.Header.Get("Allow"), body)
		}
	}
	if resp, _ := do(http.MethodGet, http.Header{"X-Big": {strings.Repeat("a", 64<<10)}}); resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("GET /metrics with 64 KiB of headers: %d, want 431", resp.StatusCode)
	}
}
