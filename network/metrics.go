package network

import (
	"net/netip"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/subnet"
)

// Metrics are the loop's Prometheus series. None carries a per-peer label, so
// their number stays fixed however large the cluster grows.
type Metrics struct {
	leaseInfo         *prometheus.GaugeVec
	leaseExpiry       *prometheus.GaugeVec // no labels: a vector so that it can be absent
	peersDesired      prometheus.Gauge
	peersProgrammed   prometheus.Gauge
	programLatency    prometheus.Histogram
	reconcileDuration prometheus.Histogram
	repairs           *prometheus.CounterVec
	lastReconcile     prometheus.Gauge
	netlinkErrors     *prometheus.CounterVec
	// dropped reads the ingress filter's counters at scrape time; set by
	// NewNode.
	dropped func() map[string]uint64
}

// droppedCollector is weft_dropped_packets_total, read from the nftables
// counters of the ingress filter whenever Prometheus scrapes.
type droppedCollector struct{ m *Metrics }

var droppedDesc = prometheus.NewDesc("weft_dropped_packets_total",
	"Packets the VXLAN ingress filter dropped, by reason: not_a_peer (VXLAN from an address that is no peer), "+
		"from_containers (VXLAN sent by this node's containers), inner_source (decapsulated with a source outside the overlay or inside this node's subnet).",
	[]string{"reason"}, nil)

func (c droppedCollector) Describe(ch chan<- *prometheus.Desc) { ch <- droppedDesc }

func (c droppedCollector) Collect(ch chan<- prometheus.Metric) {
	if c.m.dropped == nil {
		return
	}
	counts := c.m.dropped()
	for _, reason := range counterNames {
		if v, ok := counts[reason]; ok {
			ch <- prometheus.MustNewConstMetric(droppedDesc, prometheus.CounterValue, float64(v), reason)
		}
	}
}

// NewMetrics makes the loop's metrics and registers them on reg when it is not nil.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	peers := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "weft_peers",
		Help: "Peers the node should forward to (desired) and has in the kernel (programmed).",
	}, []string{"state"})
	m := &Metrics{
		leaseInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weft_lease_info",
			Help: "The node's lease; the value is always 1.",
		}, []string{"subnet", "public_ip", "vtep_mac"}),
		leaseExpiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "weft_lease_expiry_timestamp_seconds",
			Help: "When the node's etcd lease expires unless renewed: the last keep-alive plus the TTL etcd reported. Absent for a reservation.",
		}, nil),
		peersDesired:    peers.WithLabelValues("desired"),
		peersProgrammed: peers.WithLabelValues("programmed"),
		programLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "weft_program_latency_seconds",
			Help:    "From receiving an etcd change to the kernel being programmed.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
		reconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "weft_reconcile_duration_seconds",
			Help:    "Time of one full comparison of the data plane with the kernel.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		repairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "weft_reconcile_repairs_total",
			Help: "Kernel state weft found missing, altered or extra and fixed, by kind.",
		}, []string{"kind"}),
		lastReconcile: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "weft_last_reconcile_success_timestamp_seconds",
			Help: "When the last full comparison with the kernel succeeded.",
		}),
	}
	m.netlinkErrors = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "weft_netlink_errors_total",
		Help: "Data-plane operations the kernel refused, by operation (ensure, set, reconcile, subscribe, ingress).",
	}, []string{"op"})
	for _, op := range []string{"ensure", "set", "reconcile", "subscribe", "ingress"} {
		m.netlinkErrors.WithLabelValues(op)
	}
	for _, k := range []string{"route", "neigh", "fdb", "link", "rule"} {
		m.repairs.WithLabelValues(k)
	}
	if reg != nil {
		reg.MustRegister(m.leaseInfo, m.leaseExpiry, peers, m.programLatency, m.reconcileDuration, m.repairs, m.lastReconcile, m.netlinkErrors,
			droppedCollector{m})
	}
	return m
}

func (m *Metrics) setLease(l subnet.Lease, pub netip.Addr, mac string) {
	m.leaseInfo.Reset()
	m.leaseInfo.WithLabelValues(l.Subnet.String(), pub.String(), mac).Set(1)
}
