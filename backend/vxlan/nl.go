package vxlan

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// nlAPI is the kernel as this package uses it. kernel implements it; fakeNL
// (in the tests) implements it in memory.
type nlAPI interface {
	// Links and addresses, as *netlink.Handle has them.
	LinkByName(name string) (netlink.Link, error)
	LinkByIndex(index int) (netlink.Link, error)
	LinkAdd(link netlink.Link) error
	LinkDel(link netlink.Link) error
	LinkSetUp(link netlink.Link) error
	LinkSetMTU(link netlink.Link, mtu int) error
	LinkSetHardwareAddr(link netlink.Link, hwaddr net.HardwareAddr) error

	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	AddrAdd(link netlink.Link, addr *netlink.Addr) error
	AddrDel(link netlink.Link, addr *netlink.Addr) error

	// write applies ops to the entries of device index, in order, and
	// calls fail for each op that did not take effect.
	write(index int, ops []op, fail func(i int, err error))
	// routes, neighs and fdb call each with every route of the main table
	// (at least those through device index and those to its peers'
	// subnets), every IPv4 and IPv6 neighbour of the device, and every
	// entry of its FDB; each must not keep the pointer. They may return
	// errDumpInterrupted, after calling each for part of the entries.
	routes(index int, each func(*kRoute)) error
	neighs(index int, each func(*kNeigh)) error
	fdb(index int, each func(*kFDB)) error
}

// routeProtocol marks the routes this package installs. RTPROT_BOOT is what
// "ip route add" and flannel use, and "ip route" does not print it.
const routeProtocol = unix.RTPROT_BOOT

// dumpAttempts bounds retries of a dump the kernel reported as interrupted
// (NLM_F_DUMP_INTR: the table changed while it was being read).
const dumpAttempts = 10

// retryDump calls dump until it completes without being interrupted; dump
// must start over each time. Every dump in this package goes through it.
func retryDump(what string, dump func() error) error {
	var err error
	for range dumpAttempts {
		err = dump()
		if err == nil {
			return nil
		}
		if !errors.Is(err, errDumpInterrupted) {
			return fmt.Errorf("listing %s: %w", what, err)
		}
	}
	return fmt.Errorf("listing %s: still interrupted after %d attempts: %w", what, dumpAttempts, err)
}
