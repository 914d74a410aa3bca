package rtnl

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// RouteProtocol marks the routes weft installs. RTPROT_BOOT is what
// "ip route add" and flannel use, and "ip route" does not print it.
const RouteProtocol = unix.RTPROT_BOOT

// DumpAttempts bounds retries of a dump the kernel reported as interrupted
// (NLM_F_DUMP_INTR: the table changed while it was being read).
const DumpAttempts = 10

// RetryDump calls dump until it completes without being interrupted; dump
// must start over each time. Every dump of entries goes through it (the caller calls it: a dump that
// compares as it streams must reset its own state on each attempt).
func RetryDump(what string, dump func() error) error {
	var err error
	for range DumpAttempts {
		err = dump()
		if err == nil {
			return nil
		}
		if !errors.Is(err, ErrDumpInterrupted) {
			return fmt.Errorf("listing %s: %w", what, err)
		}
	}
	return fmt.Errorf("listing %s: still interrupted after %d attempts: %w", what, DumpAttempts, err)
}
