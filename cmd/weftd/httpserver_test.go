package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// serve runs weftd's HTTP server with lim on a loopback port and returns its
// address.
func serve(t *testing.T, lim httpLimits) string {
	t.Helper()
	a := &agent{opts: options{readyEtcdGrace: time.Minute}}
	srv := newHTTPServer("127.0.0.1:0", a.routes(prometheus.NewRegistry()), lim)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String()
}

func TestHTTPMethods(t *testing.T) {
	addr := serve(t, defaultHTTPLimits)
	do := func(method, path string) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, "http://"+addr+path, strings.NewReader("x=1"))
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}
	if resp, body := do(http.MethodGet, "/healthz"); resp.StatusCode != http.StatusOK {
		t.Errorf("GET /healthz: %d %q, want 200", resp.StatusCode, body)
	}
	if resp, body := do(http.MethodHead, "/readyz"); resp.StatusCode != http.StatusServiceUnavailable || body != "" {
		t.Errorf("HEAD /readyz while starting: %d %q, want 503 without a body", resp.StatusCode, body)
	}
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions, "PROPFIND"} {
		for _, path := range []string{"/metrics", "/healthz", "/readyz", "/status", "/nope"} {
			resp, body := do(m, path)
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("%s %s: %d Allow=%q %q, want 405 with Allow: GET, HEAD", m, path, resp.StatusCode, resp.Header.Get("Allow"), body)
			}
		}
	}
}

func TestHTTPHeaderLimit(t *testing.T) {
	addr := serve(t, defaultHTTPLimits)
	req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("GET with 64 KiB of headers: %d, want 431", resp.StatusCode)
	}
}

// closedWithin reports whether the server closes c within d, reading and
// discarding whatever it sends before.
func closedWithin(c net.Conn, d time.Duration) error {
	c.SetReadDeadline(time.Now().Add(d))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return errors.New("connection still open")
	}
	return nil // EOF (copied as nil) or a reset: closed by the server
}

// TestHTTPTimeouts: a client that stalls in its headers or its body, or
// holds a keep-alive connection idle, is dropped. Each case sets one limit
// short and the others long, so each proves its own limit.
func TestHTTPTimeouts(t *testing.T) {
	const short, long = 200 * time.Millisecond, time.Minute
	for _, tc := range []struct {
		name string
		lim  httpLimits
		send string
		idle bool // read one answer first, then wait on the idle connection
	}{
		{"stalled in its headers", httpLimits{readHeader: short, read: long, write: long, idle: long, maxHeader: 1 << 10},
			"GET /healthz HTTP/1.1\r\nHost: x\r\n", false}, // and never the blank line
		{"stalled in its body", httpLimits{readHeader: long, read: short, write: long, idle: long, maxHeader: 1 << 10},
			"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc", false},
		{"idle after an answer", httpLimits{readHeader: long, read: long, write: long, idle: short, maxHeader: 1 << 10},
			"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", serve(t, tc.lim))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := io.WriteString(c, tc.send); err != nil {
				t.Fatal(err)
			}
			if tc.idle {
				resp, err := http.ReadResponse(bufio.NewReader(c), nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
				if resp.StatusCode != http.StatusOK || resp.Close {
					t.Fatalf("keep-alive GET /healthz: %d close=%v, want 200 on a kept connection", resp.StatusCode, resp.Close)
				}
			}
			if err := closedWithin(c, 5*time.Second); err != nil {
				t.Errorf("%v after 5s, want closed after %v", err, short)
			}
		})
	}
}

// TestHTTPDefaultLimits: the limits weftd runs with are all set.
func TestHTTPDefaultLimits(t *testing.T) {
	s := newHTTPServer("127.0.0.1:8285", http.NotFoundHandler(), defaultHTTPLimits)
	if s.ReadHeaderTimeout <= 0 || s.ReadTimeout <= 0 || s.WriteTimeout <= 0 || s.IdleTimeout <= 0 || s.MaxHeaderBytes <= 0 {
		t.Errorf("weftd's HTTP server runs without a limit: %+v", defaultHTTPLimits)
	}
}
