package vxlan

import (
	"context"
	"errors"
	"fmt"

	"github.com/weft-net/weft/backend"
)

// errNoDevice is returned by Set and Reconcile before a successful Ensure.
var errNoDevice = errors.New("device not set up; call Ensure first")

// Set makes the device forward to exactly peers. It applies only the
// difference to what it programmed before; the first call after New or after
// the device was recreated compares against the kernel instead (see
// Reconcile). Peers that cannot be programmed are reported in the error and
// skipped; the others are still applied.
func (d *Device) Set(ctx context.Context, peers []backend.Peer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.index == 0 {
		return errNoDevice
	}
	want, werr := d.desired(peers, d.spare)
	d.want, d.spare = want, d.want
	if d.record == nil {
		rep, err := d.reconcileLocked(ctx)
		if rep.Total() > 0 {
			d.log.Info("programmed peers", "peers", len(want.routes), "fdb", rep.FDB, "neigh", rep.Neigh, "route", rep.Route, "link", rep.Link)
		}
		return errors.Join(werr, err)
	}
	p := d.diffRecord(d.record, want)
	if p.empty() {
		return werr
	}
	done, err := d.applyLocked(p)
	d.log.Info("programmed peers", "peers", len(want.routes),
		"added", len(p.routeSet), "removed", len(p.routeDel),
		"fdb", done.FDB, "neigh", done.Neigh, "route", done.Route)
	return errors.Join(werr, err)
}

// Reconcile compares the kernel with the peers of the last Set and repairs
// the difference: it ensures the device (see Ensure), then dumps the device's
// routes, neighbours and FDB entries, restores what is missing or altered and
// removes what no peer wants. It returns how many changes of each kind it
// made. Before the first Set it only ensures the device, so that a Reconcile
// racing start-up never removes entries of peers it has not heard of yet.
func (d *Device) Reconcile(ctx context.Context) (Repairs, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	rep, err := d.reconcileLocked(ctx)
	if rep.Total() > 0 {
		d.log.Info("repaired kernel state", "link", rep.Link, "fdb", rep.FDB, "neigh", rep.Neigh, "route", rep.Route)
	}
	return rep, err
}

func (d *Device) reconcileLocked(ctx context.Context) (Repairs, error) {
	var rep Repairs
	changed, eerr := d.ensureLocked(ctx)
	if changed {
		rep.Link++
	}
	if d.index == 0 || ctx.Err() != nil {
		return rep, eerr
	}
	if d.want == nil {
		return rep, eerr
	}
	routes, err := listRoutes(d.nl, d.index)
	if err != nil {
		return rep, errors.Join(eerr, fmt.Errorf("reading routes of %s: %w", d.cfg.Name, err))
	}
	neighs, err := listNeighs(d.nl, d.index)
	if err != nil {
		return rep, errors.Join(eerr, fmt.Errorf("reading neighbours of %s: %w", d.cfg.Name, err))
	}
	fdb, err := listFDB(d.nl, d.index)
	if err != nil {
		return rep, errors.Join(eerr, fmt.Errorf("reading FDB of %s: %w", d.cfg.Name, err))
	}
	p := d.diffKernel(d.want, routes, neighs, fdb)
	d.record = d.want.clone()
	done, aerr := d.applyLocked(p)
	rep.FDB, rep.Neigh, rep.Route = done.FDB, done.Neigh, done.Route
	return rep, errors.Join(eerr, aerr)
}
