package vxlan

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// nlAPI is the part of netlink this package uses. *netlink.Handle implements
// it; fakeNL (in the tests) implements it in memory.
type nlAPI interface {
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

	RouteListFiltered(family int, filter *netlink.Route, filterMask uint64) ([]netlink.Route, error)
	RouteReplace(route *netlink.Route) error
	RouteDel(route *netlink.Route) error

	// NeighListExecute, NeighSet and NeighDel serve both the neighbour
	// table (family AF_INET/AF_INET6) and the VXLAN FDB (AF_BRIDGE).
	NeighListExecute(msg netlink.Ndmsg) ([]netlink.Neigh, error)
	NeighSet(neigh *netlink.Neigh) error
	NeighDel(neigh *netlink.Neigh) error
}

var _ nlAPI = (*kernel)(nil)

// kernel is the real nlAPI: two netlink handles in the Device's namespace.
// The strict one has NETLINK_GET_STRICT_CHK set, so route dumps filtered by
// device and table are filtered by the kernel. Neighbour and FDB dumps go
// through the loose one: netlink v1.3.1 sends its Ndmsg header by casting a
// Go struct with padding to bytes, the padding is not always zero, and a
// strict kernel rejects such a dump request with EINVAL (seen on 6.18). The
// library filters those dumps by device in user space instead.
type kernel struct {
	*netlink.Handle
	loose *netlink.Handle
}

func newKernel(ns netns.NsHandle) (*kernel, error) {
	strict, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink handle: %w", err)
	}
	if err := strict.SetStrictCheck(true); err != nil {
		strict.Close()
		return nil, fmt.Errorf("enabling netlink strict checking: %w", err)
	}
	loose, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		strict.Close()
		return nil, fmt.Errorf("opening netlink handle: %w", err)
	}
	return &kernel{Handle: strict, loose: loose}, nil
}

func (k *kernel) NeighListExecute(msg netlink.Ndmsg) ([]netlink.Neigh, error) {
	return k.loose.NeighListExecute(msg)
}

func (k *kernel) close() {
	k.Handle.Close()
	k.loose.Close()
}

// routeProtocol marks the routes this package installs. RTPROT_BOOT is what
// "ip route add" and flannel use, and "ip route" does not print it, so the
// table reads exactly like the reference deployment's.
const routeProtocol = unix.RTPROT_BOOT

// dumpAttempts bounds retries of a dump the kernel reported as interrupted
// (NLM_F_DUMP_INTR: the table changed while it was being read).
const dumpAttempts = 10

// retryDump calls dump until it returns a result that was not interrupted.
// Every dump in this package goes through it.
func retryDump[T any](what string, dump func() ([]T, error)) ([]T, error) {
	var err error
	for range dumpAttempts {
		var res []T
		res, err = dump()
		if err == nil {
			return res, nil
		}
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return nil, fmt.Errorf("listing %s: %w", what, err)
		}
	}
	return nil, fmt.Errorf("listing %s: still interrupted after %d attempts: %w", what, dumpAttempts, err)
}

// listRoutes returns the main table's routes through the device.
func listRoutes(n nlAPI, index int) ([]netlink.Route, error) {
	filter := &netlink.Route{LinkIndex: index, Table: unix.RT_TABLE_MAIN}
	return retryDump("routes", func() ([]netlink.Route, error) {
		return n.RouteListFiltered(netlink.FAMILY_ALL, filter, netlink.RT_FILTER_OIF|netlink.RT_FILTER_TABLE)
	})
}

// listNeighs returns the IPv4 and IPv6 neighbours on the device.
func listNeighs(n nlAPI, index int) ([]netlink.Neigh, error) {
	return retryDump("neighbours", func() ([]netlink.Neigh, error) {
		return n.NeighListExecute(netlink.Ndmsg{Index: uint32(index)})
	})
}

// listFDB returns the FDB entries of the device.
func listFDB(n nlAPI, index int) ([]netlink.Neigh, error) {
	return retryDump("FDB entries", func() ([]netlink.Neigh, error) {
		return n.NeighListExecute(netlink.Ndmsg{Family: unix.AF_BRIDGE, Index: uint32(index)})
	})
}

// isMissing reports whether a removal failed because the entry was already
// gone.
func isMissing(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH)
}
