package vxlan

import (
	"context"
	"fmt"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// subscribeBuffer is the receive buffer asked for on each subscription
// socket: a full reprogram of thousands of peers makes three events per peer,
// and an overflow costs a resubscription.
const subscribeBuffer = 4 << 20

// Resubscription backoff after a subscription fails.
const (
	resubscribeMin = 100 * time.Millisecond
	resubscribeMax = 10 * time.Second
)

// subscriber starts one netlink subscription whose events go through the
// filter to kick. It returns a channel closed when the subscription ends on
// its own (an error); done ends it from outside.
type subscriber func(done <-chan struct{}, onErr func(error), kick func()) (ended <-chan struct{}, err error)

// Subscribe calls kick whenever a link, address, route or neighbour
// (including FDB) change touches the device or its uplink, in the Device's
// namespace. It returns once the subscriptions are in place; they last until
// ctx is done and are renewed (with a kick, since events may have been
// missed) when one fails. kick must not block for long; debouncing and the
// Reconcile that follows are the caller's job. The Device's own changes kick
// too.
func (d *Device) Subscribe(ctx context.Context, kick func()) error {
	subs := map[string]subscriber{
		"link":      d.subscribeLinks,
		"address":   d.subscribeAddrs,
		"route":     d.subscribeRoutes,
		"neighbour": d.subscribeNeighs,
	}
	type started struct {
		name  string
		done  chan struct{}
		ended <-chan struct{}
	}
	var all []started
	for name, sub := range subs {
		done := make(chan struct{})
		ended, err := sub(done, d.subscriptionError(ctx, name), kick)
		if err != nil {
			close(done)
			for _, s := range all {
				close(s.done)
			}
			return fmt.Errorf("subscribing to %s changes: %w", name, err)
		}
		all = append(all, started{name, done, ended})
	}
	for _, s := range all {
		go d.keepSubscribed(ctx, s.name, subs[s.name], s.done, s.ended, kick)
	}
	return nil
}

func (d *Device) subscriptionError(ctx context.Context, name string) func(error) {
	return func(err error) {
		if ctx.Err() == nil { // closing the socket at the end is no failure
			d.log.Warn("netlink subscription failed", "kind", name, "err", err)
		}
	}
}

// keepSubscribed renews one subscription whenever it ends, until ctx is done.
func (d *Device) keepSubscribed(ctx context.Context, name string, sub subscriber, done chan struct{}, ended <-chan struct{}, kick func()) {
	backoff := resubscribeMin
	since := time.Now()
	for {
		select {
		case <-ctx.Done():
			close(done)
			return
		case <-ended:
			close(done)
		}
		if time.Since(since) > resubscribeMax {
			backoff = resubscribeMin // it worked for a while: not a loop
		}
		for {
			t := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			backoff = min(2*backoff, resubscribeMax)
			done = make(chan struct{})
			var err error
			ended, err = sub(done, d.subscriptionError(ctx, name), kick)
			if err == nil {
				since = time.Now()
				break
			}
			close(done)
			d.log.Warn("renewing netlink subscription", "kind", name, "err", err)
		}
		d.log.Info("renewed netlink subscription", "kind", name)
		kick()
	}
}

func (d *Device) ns() *netns.NsHandle {
	if d.subNS != nil {
		return d.subNS
	}
	none := netns.None()
	return &none
}

// mine reports whether an interface index is the device's or the uplink's.
func (d *Device) mine(index int) bool {
	return index != 0 && (index == int(d.curIndex.Load()) || index == d.cfg.UplinkIndex)
}

// forward reads updates until the channel closes, kicking for those the
// filter accepts, and closes ended then.
func forward[T any](ch <-chan T, accept func(T) bool, kick func()) <-chan struct{} {
	ended := make(chan struct{})
	go func() {
		defer close(ended)
		for u := range ch {
			if accept(u) {
				kick()
			}
		}
	}()
	return ended
}

func (d *Device) subscribeLinks(done <-chan struct{}, onErr func(error), kick func()) (<-chan struct{}, error) {
	ch := make(chan netlink.LinkUpdate, 64)
	err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
		Namespace: d.ns(), ErrorCallback: onErr, ReceiveBufferSize: subscribeBuffer,
	})
	if err != nil {
		return nil, err
	}
	return forward(ch, func(u netlink.LinkUpdate) bool {
		a := u.Attrs()
		return a != nil && (d.mine(a.Index) || a.Name == d.cfg.Name)
	}, kick), nil
}

func (d *Device) subscribeAddrs(done <-chan struct{}, onErr func(error), kick func()) (<-chan struct{}, error) {
	ch := make(chan netlink.AddrUpdate, 64)
	err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{
		Namespace: d.ns(), ErrorCallback: onErr, ReceiveBufferSize: subscribeBuffer,
	})
	if err != nil {
		return nil, err
	}
	return forward(ch, func(u netlink.AddrUpdate) bool {
		return u.LinkIndex != 0 && u.LinkIndex == int(d.curIndex.Load())
	}, kick), nil
}

func (d *Device) subscribeRoutes(done <-chan struct{}, onErr func(error), kick func()) (<-chan struct{}, error) {
	ch := make(chan netlink.RouteUpdate, 256)
	err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
		Namespace: d.ns(), ErrorCallback: onErr, ReceiveBufferSize: subscribeBuffer,
	})
	if err != nil {
		return nil, err
	}
	return forward(ch, func(u netlink.RouteUpdate) bool {
		idx := int(d.curIndex.Load())
		if idx == 0 {
			return false
		}
		if u.LinkIndex == idx {
			return true
		}
		for _, nh := range u.MultiPath {
			if nh.LinkIndex == idx {
				return true
			}
		}
		return false
	}, kick), nil
}

func (d *Device) subscribeNeighs(done <-chan struct{}, onErr func(error), kick func()) (<-chan struct{}, error) {
	ch := make(chan netlink.NeighUpdate, 256)
	err := netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{
		Namespace: d.ns(), ErrorCallback: onErr, ReceiveBufferSize: subscribeBuffer,
	})
	if err != nil {
		return nil, err
	}
	return forward(ch, func(u netlink.NeighUpdate) bool {
		return u.LinkIndex != 0 && u.LinkIndex == int(d.curIndex.Load())
	}, kick), nil
}
