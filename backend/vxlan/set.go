package vxlan

import (
	"context"
	"errors"
	"time"

	"github.com/weft-net/weft/backend"
)

// errNoDevice is returned by Set and Reconcile before a successful Ensure.
var errNoDevice = errors.New("device not set up; call Ensure first")

// Set makes the device forward to exactly peers. It applies only the
// difference to the peers of the previous Set; the first call after New,
// after the device was recreated or after a change failed compares against
// the kernel instead (see Reconcile). Peers that cannot be programmed are
// reported in the error and skipped; the others are still applied. Peers
// sorted by subnet, as snapshots from etcd are, cost least; Set does not
// keep the slice (or the VtepMACs in it) after it returns.
func (d *Device) Set(ctx context.Context, peers []backend.Peer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.index == 0 {
		return errNoDevice
	}
	start := time.Now()
	changes, werr := d.updateLocked(peers)
	d.changes = keepSmall(changes)
	if d.gate != nil {
		// Admitted before any entry goes in, released once all are out
		// (or failed: the next Reconcile takes them out). Release is
		// called at the end of every Set that compared its peers, with
		// none if none went: the Gate learns that every wanted peer is
		// admitted.
		d.gateLists(changes)
		if len(d.admit) > 0 {
			d.gate.Admit(d.admit)
		}
		defer func() {
			d.gate.Release(d.release)
			d.admit, d.release = keepSmall(d.admit), keepSmall(d.release)
		}()
	}
	if !d.synced {
		// Up to three operations a peer: pause as for a large change.
		if 3*len(d.want) >= pauseEventsOps {
			defer d.pauseEvents()()
		}
		rep, err := d.reconcileLocked(ctx)
		if rep.Total() > 0 || err != nil {
			d.log.Info("programmed peers", "peers", len(d.want), "fdb", rep.FDB, "neigh", rep.Neigh,
				"route", rep.Route, "link", rep.Link, "took", time.Since(start).Round(time.Microsecond))
		}
		return errors.Join(werr, err)
	}
	d.planChanges(changes, &d.ops)
	n := 0
	for k := range d.ops {
		n += len(d.ops[k])
	}
	if n >= pauseEventsOps {
		defer d.pauseEvents()()
	}
	done, err := d.applyLocked(&d.ops, nil)
	if done.Total() > 0 || err != nil {
		d.log.Debug("programmed peers", "peers", len(d.want), "changed", len(changes),
			"fdb", done.FDB, "neigh", done.Neigh, "route", done.Route, "took", time.Since(start).Round(time.Microsecond))
	}
	return errors.Join(werr, err)
}

// SetGate makes g the Gate of the public addresses of the peers of later
// Sets. Call it before the first Set: a Gate set later hears of changes
// only, not of the peers already programmed.
func (d *Device) SetGate(g backend.Gate) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.gate = g
}

// gateLists fills d.admit with the public addresses of the peers changes
// claim, and d.release with those of the peers they let go of: one each per
// peer, so that the Gate can count the peers using an address.
func (d *Device) gateLists(changes []change) {
	d.admit, d.release = d.admit[:0], d.release[:0]
	for k := range changes {
		c := &changes[k]
		if c.old.ok() {
			d.release = append(d.release, c.old.public)
		}
		if c.new.ok() {
			d.admit = append(d.admit, c.new.public)
		}
	}
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
		d.log.Debug("repaired kernel state", "link", rep.Link, "fdb", rep.FDB, "neigh", rep.Neigh, "route", rep.Route)
	}
	return rep, err
}

func (d *Device) reconcileLocked(ctx context.Context) (Repairs, error) {
	var rep Repairs
	changed, eerr := d.ensureLocked(ctx)
	if changed {
		rep.Link++
	}
	if d.index == 0 || ctx.Err() != nil || d.want == nil {
		return rep, eerr
	}
	st, err := d.compareLocked(&d.ops)
	if err != nil {
		d.synced = false
		for k := range d.ops {
			d.ops[k] = d.ops[k][:0]
		}
		return rep, errors.Join(eerr, err)
	}
	done, aerr := d.applyLocked(&d.ops, &st)
	rep.FDB, rep.Neigh, rep.Route = done.FDB, done.Neigh, done.Route
	return rep, errors.Join(eerr, aerr)
}
