package kube

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	peerEvents *prometheus.CounterVec
	apiErrors  prometheus.Counter
	lists      prometheus.Counter
}

// newMetrics makes the Manager's metrics. weft_peer_events_total has the
// name and labels of etcd mode's, so that dashboards and alerts carry over.
func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		peerEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_peer_events_total",
			Help: "Peer changes seen in the Node objects, by type (added, removed, changed, invalid).",
		}, []string{"type"}),
		apiErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_kube_api_errors_total",
			Help: "Failed list and watch requests to the Kubernetes API server.",
		}),
		lists: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_kube_node_lists_total",
			Help: "Full listings of the Nodes: the first, and each re-list after the watch could not resume.",
		}),
	}
	for _, t := range []string{"added", "removed", "changed", "invalid"} {
		m.peerEvents.WithLabelValues(t)
	}
	if reg == nil {
		return m
	}
	for _, c := range []prometheus.Collector{m.peerEvents, m.apiErrors, m.lists} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				panic(err)
			}
		}
	}
	return m
}
