package subnet

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	reqDuration   *prometheus.HistogramVec
	watchRestarts *prometheus.CounterVec
	etcdUp        prometheus.Gauge
	peerEvents    *prometheus.CounterVec
	conflicts     prometheus.Counter
	repairs       prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		reqDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "weft_etcd_request_duration_seconds",
			Help:    "Duration of etcd requests by operation.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5},
		}, []string{"op"}),
		watchRestarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_etcd_watch_restarts_total",
			Help: "Times the peer watch re-listed, by reason (compacted, error, reconnect).",
		}, []string{"reason"}),
		etcdUp: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_etcd_up",
			Help: "1 if the last etcd health probe succeeded.",
		}),
		peerEvents: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_peer_events_total",
			Help: "Peer changes seen in etcd, by type (added, removed, changed, invalid).",
		}, []string{"type"}),
		conflicts: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_lease_conflicts_total",
			Help: "Times another live node's claim was found on this node's subnet key.",
		}),
		repairs: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_lease_repairs_total",
			Help: "Times this node wrote its lease back over a foreign value that was no claim (garbage, or another address without an etcd lease of its own).",
		}),
	}
	// Every label value exists from the start, so that increase() sees the
	// first event too.
	for _, r := range []string{"compacted", "error", "reconnect"} {
		m.watchRestarts.WithLabelValues(r)
	}
	for _, t := range []string{"added", "removed", "changed", "invalid"} {
		m.peerEvents.WithLabelValues(t)
	}
	if reg == nil {
		return m
	}
	m.reqDuration = register(reg, m.reqDuration)
	m.watchRestarts = register(reg, m.watchRestarts)
	m.etcdUp = register(reg, m.etcdUp)
	m.peerEvents = register(reg, m.peerEvents)
	m.conflicts = register(reg, m.conflicts)
	m.repairs = register(reg, m.repairs)
	return m
}

// register registers c, or returns the collector already registered under
// the same name (several Registries may share one Registerer).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
		panic(err) // a name clash with a different type: a programming error
	}
	return c
}
