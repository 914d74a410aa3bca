package proxy

import "github.com/prometheus/client_golang/prometheus"

// metrics are the proxy's Prometheus series.
type metrics struct {
	ports    prometheus.Gauge
	rebuilds prometheus.Counter
	errors   prometheus.Counter
	commit   prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		ports: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_service_ports",
			Help: "Service ports programmed in the kernel (table ip weft-svc).",
		}),
		rebuilds: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_service_rebuilds_total",
			Help: "Whole-table rebuilds of weft-svc: at start, and when someone else changed the table.",
		}),
		errors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "weft_service_program_errors_total",
			Help: "nf_tables transactions of weft-svc the kernel refused (each followed by a rebuild).",
		}),
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "weft_service_commit_seconds",
			Help:    "Time to send one weft-svc transaction and have it acknowledged.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.ports, m.rebuilds, m.errors, m.commit)
	}
	return m
}
