package main

import (
	"context"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/weft-net/weft/backend/vxlan"
	"github.com/weft-net/weft/network"
)

// vxlanDataplane adapts backend/vxlan's Device to the loop's Dataplane.
type vxlanDataplane struct{ *vxlan.Device }

var _ network.Dataplane = vxlanDataplane{}

func newVXLAN(cfg vxlan.Config, log *slog.Logger, _ prometheus.Registerer) (network.Dataplane, error) {
	d, err := vxlan.New(cfg, log)
	if err != nil {
		return nil, err
	}
	return vxlanDataplane{d}, nil
}

func (v vxlanDataplane) Reconcile(ctx context.Context) (map[string]int, error) {
	r, err := v.Device.Reconcile(ctx)
	return map[string]int{"link": r.Link, "fdb": r.FDB, "neigh": r.Neigh, "route": r.Route}, err
}
