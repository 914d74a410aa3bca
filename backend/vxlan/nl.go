package vxlan

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/rtnl"
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

	// TxChecksum and SetTxChecksum read and set the device's transmit
	// checksum offload (ethtool's tx-checksumming).
	TxChecksum(name string) (bool, error)
	SetTxChecksum(name string, on bool) error

	AddrList(link netlink.Link, family int) ([]netlink.Addr, error)
	AddrAdd(link netlink.Link, addr *netlink.Addr) error
	AddrDel(link netlink.Link, addr *netlink.Addr) error

	// Write applies ops to the entries of device index, in order, and
	// calls fail for each op that did not take effect.
	Write(index int, ops []rtnl.Op, fail func(i int, err error))
	// DumpRoutes, DumpNeighs and DumpFDB call each with every route of
	// the main table (at least those through device index and those to
	// its peers' subnets), every IPv4 and IPv6 neighbour of the device,
	// and every entry of its FDB; each must not keep the pointer. They
	// may return rtnl.ErrDumpInterrupted, after calling each for part of
	// the entries.
	DumpRoutes(index int, each func(*rtnl.Route)) error
	DumpNeighs(index int, each func(*rtnl.Neigh)) error
	DumpFDB(index int, each func(*rtnl.FDB)) error
}

// kernel is the real nlAPI: links and addresses, which change rarely,
// through a *netlink.Handle; entries through an rtnl.Conn (batches and
// kernel-filtered dumps).
type kernel struct {
	*netlink.Handle
	conn *rtnl.Conn
	ns   netns.NsHandle
}

var _ nlAPI = (*kernel)(nil)

func newKernel(ns netns.NsHandle) (*kernel, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("opening netlink handle: %w", err)
	}
	c, err := rtnl.Open(ns)
	if err != nil {
		h.Close()
		return nil, err
	}
	return &kernel{Handle: h, conn: c, ns: ns}, nil
}

func (k *kernel) close() {
	k.Handle.Close()
	k.conn.Close()
}

func (k *kernel) TxChecksum(name string) (bool, error) { return rtnl.TxChecksum(k.ns, name) }

func (k *kernel) SetTxChecksum(name string, on bool) error { return rtnl.SetTxChecksum(k.ns, name, on) }

func (k *kernel) Write(index int, ops []rtnl.Op, fail func(i int, err error)) {
	k.conn.Write(index, ops, fail)
}

func (k *kernel) DumpRoutes(index int, each func(*rtnl.Route)) error {
	return k.conn.DumpRoutes(index, each)
}

func (k *kernel) DumpNeighs(index int, each func(*rtnl.Neigh)) error {
	return k.conn.DumpNeighs(index, each)
}

func (k *kernel) DumpFDB(index int, each func(*rtnl.FDB)) error {
	return k.conn.DumpFDB(index, each)
}
