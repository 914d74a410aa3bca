package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// routes serves /metrics, /healthz (the loop is turning), /readyz (the node
// carries traffic) and /status (the node's state as JSON, for weftctl status).
func (a *agent) routes(reg *prometheus.Registry) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		node := a.node.Load()
		if node == nil || !node.Status().Alive(time.Now()) {
			http.Error(w, "main loop not turning", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		node := a.node.Load()
		if node == nil {
			http.Error(w, "starting: waiting for etcd and the network config", http.StatusServiceUnavailable)
			return
		}
		if why := node.Status().NotReady(time.Now(), a.opts.readyEtcdGrace); len(why) > 0 {
			http.Error(w, strings.Join(why, "\n"), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		node := a.node.Load()
		if node == nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]any{"ready": false, "notReady": []string{"starting"}})
			return
		}
		st := node.Status()
		why := st.NotReady(time.Now(), a.opts.readyEtcdGrace)
		_ = json.NewEncoder(w).Encode(struct {
			Status   any      `json:"status"`
			Ready    bool     `json:"ready"`
			NotReady []string `json:"notReady,omitempty"`
		}{st, len(why) == 0, why})
	})
	return mux
}
