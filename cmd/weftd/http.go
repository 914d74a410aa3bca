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

// starting is the one reason weftd is not ready before the loop exists: it is
// still waiting for etcd and the network config.
const starting = "starting: waiting for etcd and the network config"

// routes serves /metrics, /healthz (the process is working: waiting for etcd,
// or its loop turning), /readyz (the node carries traffic) and /status (the
// node's state as JSON, for weftctl status). It registers weft_ready on reg,
// so that what /readyz answers can be alerted on.
//
// /healthz is a liveness check and stays 200 while weftd waits for etcd or
// the config at start: restarting it would not bring etcd back, and a
// supervisor that did so would only add a crash loop to an etcd outage.
func (a *agent) routes(reg *prometheus.Registry) http.Handler {
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "weft_ready",
		Help: "1 when /readyz answers 200: lease held, subnet file written, last snapshot programmed, etcd in sync within --ready-etcd-grace.",
	}, func() float64 {
		if len(a.notReady(time.Now())) == 0 {
			return 1
		}
		return 0
	}))

	mux := http.NewServeMux()
	// Uncompressed: a gzip writer costs a megabyte of heap, kept in a pool
	// between scrapes, to save a few kilobytes a scrape on the node's own
	// network.
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, DisableCompression: true}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		node := a.node.Load()
		if node == nil {
			fmt.Fprintln(w, starting)
			return
		}
		if !node.Status().Alive(time.Now()) {
			http.Error(w, "main loop not turning", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if why := a.notReady(time.Now()); len(why) > 0 {
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
			_ = json.NewEncoder(w).Encode(map[string]any{"ready": false, "notReady": a.notReady(time.Now())})
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

// notReady lists, one line each, why the node does not carry traffic yet.
func (a *agent) notReady(now time.Time) []string {
	node := a.node.Load()
	if node == nil {
		if why := a.refused.Load(); why != nil {
			return []string{*why}
		}
		return []string{starting}
	}
	return node.Status().NotReady(now, a.opts.readyEtcdGrace)
}
