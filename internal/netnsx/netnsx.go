// Package netnsx runs a function with the calling process's view moved into
// another network namespace, without moving the caller. It exists for the one
// thing namespaces allow a socket to keep: the namespace it was created in. A
// socket opened inside Do stays in that namespace when used from any goroutine.
package netnsx

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netns"
)

// Do runs fn on a fresh goroutine whose locked OS thread has entered ns, and
// returns fn's error. The caller's thread never moves. If the thread cannot
// be switched back, its goroutine exits still locked and the Go runtime
// discards the thread instead of reusing it in the wrong namespace.
func Do(ns netns.NsHandle, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("reading the current network namespace: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			errc <- fmt.Errorf("entering network namespace: %w", err) // thread state unknown: stay locked
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- fmt.Errorf("leaving network namespace: %w", err) // stay locked: the thread is discarded
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// DoNamed is Do for the namespace `ip netns` knows by name.
func DoNamed(name string, fn func() error) error {
	ns, err := netns.GetFromName(name)
	if err != nil {
		return fmt.Errorf("opening network namespace %s: %w", name, err)
	}
	defer ns.Close()
	if err := Do(ns, fn); err != nil {
		return fmt.Errorf("in network namespace %s: %w", name, err)
	}
	return nil
}
