package main

import (
	"net/http"
	"time"
)

// httpLimits bound what one client of the local HTTP server can hold: a
// connection that sends its request slowly, reads its answer slowly or sits
// idle is closed, and a request's headers cannot grow past maxHeader. Every
// answer weftd gives is small and made at once, so the limits are generous
// for Prometheus and kubelet probes and short for anything else.
type httpLimits struct {
	readHeader, read, write, idle time.Duration
	maxHeader                     int // bytes; net/http allows 4 KiB of slack on top
}

var defaultHTTPLimits = httpLimits{
	readHeader: 5 * time.Second,
	read:       10 * time.Second,
	write:      30 * time.Second,
	idle:       60 * time.Second,
	maxHeader:  16 << 10,
}

// newHTTPServer is the server of --metrics-addr: h behind readOnly, with lim.
func newHTTPServer(addr string, h http.Handler, lim httpLimits) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           readOnly(h),
		ReadHeaderTimeout: lim.readHeader,
		ReadTimeout:       lim.read,
		WriteTimeout:      lim.write,
		IdleTimeout:       lim.idle,
		MaxHeaderBytes:    lim.maxHeader,
	}
}

// readOnly answers 405 with an Allow header to every method but GET and
// HEAD: nothing weftd serves changes state, so no other method has a
// meaning, and refusing them keeps request bodies out entirely.
func readOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method "+r.Method+" not allowed: weftd's HTTP server answers GET and HEAD only", http.StatusMethodNotAllowed)
			return
		}
		h.ServeHTTP(w, r)
	})
}
