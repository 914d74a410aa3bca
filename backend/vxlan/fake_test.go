package vxlan

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/weft-net/weft/rtnl"
)

// fakeNL is an in-memory kernel: links, addresses, main-table routes,
// neighbours and a VXLAN FDB with the kernel's keys and replace semantics.
// String prints it as the iproute2 commands that would rebuild it; ops logs
// every change made through it.
type fakeNL struct {
	links     map[int]netlink.Link
	nextIndex int
	addrs     map[int][]netip.Prefix
	routeTab  map[routeKey]rtnl.Route
	neighTab  map[neighKey]rtnl.Neigh
	fdbTab    map[fdbKey][]rtnl.FDB // the remotes of a MAC (one for unicast)

	ops   []string
	dumps int
	// fail, when it returns an error for an op (as logged), fails that op.
	fail func(op string) error
	// txOff holds the devices whose tx checksum offload is off.
	txOff map[string]bool
	// interrupt makes that many dumps return errDumpInterrupted.
	interrupt int
}

var _ nlAPI = (*fakeNL)(nil)

// routeKey is how the kernel tells routes apart in one table.
type routeKey struct {
	dst    netip.Prefix
	metric uint32
	tos    uint8
}

type neighKey struct {
	index int
	ip    netip.Addr
}

type fdbKey struct {
	index int
	mac   rtnl.MAC
}

// newFakeNL returns a fake with an uplink "eth0" (index 2, MTU 1500).
func newFakeNL() *fakeNL {
	f := &fakeNL{
		links:     map[int]netlink.Link{},
		nextIndex: 10,
		addrs:     map[int][]netip.Prefix{},
		routeTab:  map[routeKey]rtnl.Route{},
		neighTab:  map[neighKey]rtnl.Neigh{},
		fdbTab:    map[fdbKey][]rtnl.FDB{},
	}
	f.links[2] = &netlink.Dummy{LinkAttrs: netlink.LinkAttrs{Index: 2, Name: "eth0", MTU: 1500, Flags: net.FlagUp}}
	return f
}

func (f *fakeNL) do(op string) error {
	if f.fail != nil {
		if err := f.fail(op); err != nil {
			return err
		}
	}
	f.ops = append(f.ops, op)
	return nil
}

func (f *fakeNL) takeOps() []string {
	ops := f.ops
	f.ops = nil
	return ops
}

func (f *fakeNL) name(index int) string {
	if l, ok := f.links[index]; ok {
		return l.Attrs().Name
	}
	return fmt.Sprintf("if%d", index)
}

func copyLink(l netlink.Link) netlink.Link {
	switch l := l.(type) {
	case *netlink.Vxlan:
		c := *l
		return &c
	case *netlink.Dummy:
		c := *l
		return &c
	}
	panic(fmt.Sprintf("fake: unsupported link type %T", l))
}

func (f *fakeNL) LinkByName(name string) (netlink.Link, error) {
	for _, l := range f.links {
		if l.Attrs().Name == name {
			return copyLink(l), nil
		}
	}
	return nil, netlink.LinkNotFoundError{}
}

func (f *fakeNL) LinkByIndex(index int) (netlink.Link, error) {
	if l, ok := f.links[index]; ok {
		return copyLink(l), nil
	}
	return nil, netlink.LinkNotFoundError{}
}

func (f *fakeNL) LinkAdd(link netlink.Link) error {
	if _, err := f.LinkByName(link.Attrs().Name); err == nil {
		return unix.EEXIST
	}
	if err := f.do("link add " + link.Attrs().Name); err != nil {
		return err
	}
	l := copyLink(link)
	a := l.Attrs()
	a.Index = f.nextIndex
	f.nextIndex++
	if a.HardwareAddr == nil {
		a.HardwareAddr = net.HardwareAddr{0x02, 0xff, 0, 0, 0, byte(a.Index)}
	}
	if a.MTU == 0 {
		a.MTU = 1500
	}
	f.links[a.Index] = l
	return nil
}

func (f *fakeNL) LinkDel(link netlink.Link) error {
	idx := link.Attrs().Index
	if _, ok := f.links[idx]; !ok {
		return unix.ENODEV
	}
	if err := f.do("link del " + link.Attrs().Name); err != nil {
		return err
	}
	delete(f.links, idx)
	delete(f.addrs, idx)
	for k, r := range f.routeTab {
		if r.Index == idx {
			delete(f.routeTab, k)
		}
	}
	for k := range f.neighTab {
		if k.index == idx {
			delete(f.neighTab, k)
		}
	}
	for k := range f.fdbTab {
		if k.index == idx {
			delete(f.fdbTab, k)
		}
	}
	return nil
}

func (f *fakeNL) setLink(link netlink.Link, op string, change func(a *netlink.LinkAttrs)) error {
	l, ok := f.links[link.Attrs().Index]
	if !ok {
		return unix.ENODEV
	}
	if err := f.do(fmt.Sprintf("link set %s %s", l.Attrs().Name, op)); err != nil {
		return err
	}
	change(l.Attrs())
	return nil
}

func (f *fakeNL) LinkSetUp(link netlink.Link) error {
	return f.setLink(link, "up", func(a *netlink.LinkAttrs) { a.Flags |= net.FlagUp })
}

func (f *fakeNL) LinkSetMTU(link netlink.Link, mtu int) error {
	return f.setLink(link, fmt.Sprintf("mtu %d", mtu), func(a *netlink.LinkAttrs) { a.MTU = mtu })
}

func (f *fakeNL) LinkSetHardwareAddr(link netlink.Link, hw net.HardwareAddr) error {
	return f.setLink(link, "address "+hw.String(), func(a *netlink.LinkAttrs) { a.HardwareAddr = hw })
}

func (f *fakeNL) TxChecksum(name string) (bool, error) {
	if f.txOff == nil {
		return true, nil
	}
	return !f.txOff[name], nil
}

func (f *fakeNL) SetTxChecksum(name string, on bool) error {
	if err := f.do(fmt.Sprintf("ethtool -K %s tx %s", name, map[bool]string{true: "on", false: "off"}[on])); err != nil {
		return err
	}
	if f.txOff == nil {
		f.txOff = map[string]bool{}
	}
	f.txOff[name] = !on
	return nil
}

func (f *fakeNL) AddrList(link netlink.Link, family int) ([]netlink.Addr, error) {
	f.dumps++
	var res []netlink.Addr
	for _, p := range f.addrs[link.Attrs().Index] {
		res = append(res, netlink.Addr{IPNet: ipNet(p), LinkIndex: link.Attrs().Index})
	}
	return res, nil
}

func (f *fakeNL) AddrAdd(link netlink.Link, addr *netlink.Addr) error {
	p, _ := prefixOf(addr.IPNet)
	idx := link.Attrs().Index
	if slices.Contains(f.addrs[idx], p) {
		return unix.EEXIST
	}
	if err := f.do(fmt.Sprintf("addr add %v dev %s", p, f.name(idx))); err != nil {
		return err
	}
	f.addrs[idx] = append(f.addrs[idx], p)
	return nil
}

func (f *fakeNL) AddrDel(link netlink.Link, addr *netlink.Addr) error {
	p, _ := prefixOf(addr.IPNet)
	idx := link.Attrs().Index
	i := slices.Index(f.addrs[idx], p)
	if i < 0 {
		return unix.EADDRNOTAVAIL
	}
	if err := f.do(fmt.Sprintf("addr del %v dev %s", p, f.name(idx))); err != nil {
		return err
	}
	f.addrs[idx] = slices.Delete(f.addrs[idx], i, i+1)
	return nil
}

func (f *fakeNL) dump() error {
	f.dumps++
	if f.interrupt > 0 {
		f.interrupt--
		return rtnl.ErrDumpInterrupted
	}
	return nil
}

// DumpRoutes shows the whole main table, as the kernel's dump filtered by
// table does.
func (f *fakeNL) DumpRoutes(index int, each func(*rtnl.Route)) error {
	if err := f.dump(); err != nil {
		return err
	}
	for _, r := range f.routeTab {
		each(&r)
	}
	return nil
}

func (f *fakeNL) DumpNeighs(index int, each func(*rtnl.Neigh)) error {
	if err := f.dump(); err != nil {
		return err
	}
	for k, n := range f.neighTab {
		if k.index == index {
			each(&n)
		}
	}
	return nil
}

func (f *fakeNL) DumpFDB(index int, each func(*rtnl.FDB)) error {
	if err := f.dump(); err != nil {
		return err
	}
	for k, remotes := range f.fdbTab {
		if k.index == index {
			for _, r := range remotes {
				each(&r)
			}
		}
	}
	return nil
}

func (f *fakeNL) Write(index int, ops []rtnl.Op, fail func(i int, err error)) {
	for i := range ops {
		if err := f.apply(index, &ops[i]); err != nil {
			fail(i, err)
		}
	}
}

// apply makes one change with the kernel's semantics: replacements create
// or overwrite, removals of what is not there fail with ENOENT or ESRCH.
func (f *fakeNL) apply(index int, o *rtnl.Op) error {
	if _, ok := f.links[index]; !ok {
		return unix.ENODEV
	}
	switch o.Kind {
	case rtnl.RouteDel:
		dev := index
		if o.OIF != 0 {
			dev = o.OIF
		}
		k := routeKey{o.Dst, o.Metric, o.TOS}
		if r, ok := f.routeTab[k]; !ok || (dev > 0 && r.Index != dev) {
			return unix.ESRCH
		}
	case rtnl.NeighDel:
		if _, ok := f.neighTab[neighKey{index, o.IP}]; !ok {
			return unix.ENOENT
		}
	case rtnl.FDBDel:
		remotes := f.fdbTab[fdbKey{index, o.MAC}]
		if len(remotes) == 0 {
			return unix.ENOENT
		}
		if !slices.ContainsFunc(remotes, func(r rtnl.FDB) bool { return sameRemote(r, o) }) {
			// Like vxlan_fdb_delete: a known MAC with another
			// remote is "deleted" successfully, untouched.
			return nil
		}
	}
	if err := f.do(o.String()); err != nil {
		return err
	}
	switch o.Kind {
	case rtnl.FDBSet:
		// A unicast MAC has one remote, which replace rewrites in place.
		f.fdbTab[fdbKey{index, o.MAC}] = []rtnl.FDB{{MAC: o.MAC, Dst: o.IP, State: unix.NUD_PERMANENT, Index: index}}
	case rtnl.NeighSet:
		f.neighTab[neighKey{index, o.IP}] = rtnl.Neigh{IP: o.IP, MAC: o.MAC, State: unix.NUD_PERMANENT, Index: index}
	case rtnl.RouteSet:
		dev, onlink := index, true
		if o.OIF > 0 { // a direct route
			dev, onlink = o.OIF, false
		}
		f.routeTab[routeKey{o.Dst, o.Metric, 0}] = rtnl.Route{
			Dst: o.Dst, GW: o.IP, Metric: o.Metric, Proto: rtnl.RouteProtocol, Scope: unix.RT_SCOPE_UNIVERSE,
			Type: unix.RTN_UNICAST, Onlink: onlink, Table: unix.RT_TABLE_MAIN, Index: dev,
		}
	case rtnl.RouteDel:
		delete(f.routeTab, routeKey{o.Dst, o.Metric, o.TOS})
	case rtnl.NeighDel:
		delete(f.neighTab, neighKey{index, o.IP})
	case rtnl.FDBDel:
		k := fdbKey{index, o.MAC}
		remotes := slices.DeleteFunc(f.fdbTab[k], func(r rtnl.FDB) bool { return sameRemote(r, o) })
		if len(remotes) == 0 {
			delete(f.fdbTab, k)
		} else {
			f.fdbTab[k] = remotes
		}
	}
	return nil
}

func sameRemote(r rtnl.FDB, o *rtnl.Op) bool {
	return r.Dst == o.IP && r.Port == o.Port && r.HasVNI == o.HasVNI && r.VNI == o.VNI && r.RemoteIf == o.RemoteIf
}

// String prints the links and addresses, then entries.
func (f *fakeNL) String() string {
	var lines []string
	for _, l := range f.links {
		vx, ok := l.(*netlink.Vxlan)
		if !ok {
			continue
		}
		learning := "nolearning"
		if vx.Learning {
			learning = "learning"
		}
		up := ""
		if vx.Flags&net.FlagUp != 0 {
			up = " up"
		}
		lines = append(lines, fmt.Sprintf("ip link add %s address %v mtu %d type vxlan id %d local %v dev %s dstport %d %s%s",
			vx.Name, vx.HardwareAddr, vx.MTU, vx.VxlanId, vx.SrcAddr, f.name(vx.VtepDevIndex), vx.Port, learning, up))
		for _, p := range f.addrs[vx.Index] {
			lines = append(lines, fmt.Sprintf("ip addr add %v dev %s", p, vx.Name))
		}
	}
	slices.Sort(lines)
	return strings.Join(append(lines, f.entries()), "\n")
}

// entries prints the FDB entries, neighbours and routes, one per line.
func (f *fakeNL) entries() string {
	var fdb, neighs, routes []string
	for k, remotes := range f.fdbTab {
		for _, r := range remotes {
			fdb = append(fdb, fmt.Sprintf("bridge fdb add %v dev %s dst %v self%s", k.mac, f.name(k.index), r.Dst, state(r.State, " permanent")))
		}
	}
	for k, n := range f.neighTab {
		neighs = append(neighs, fmt.Sprintf("ip neigh add %v lladdr %v dev %s%s", k.ip, n.MAC, f.name(k.index), state(n.State, " nud permanent")))
	}
	for _, r := range f.routeTab {
		s := fmt.Sprintf("ip route add %v via %v dev %s", r.Dst, r.GW, f.name(r.Index))
		if r.Onlink {
			s += " onlink"
		}
		if r.Metric != 0 {
			s += fmt.Sprintf(" metric %d", r.Metric)
		}
		if r.Proto != unix.RTPROT_BOOT {
			s += fmt.Sprintf(" proto %d", r.Proto)
		}
		routes = append(routes, s)
	}
	var out []string
	for _, part := range [][]string{fdb, neighs, routes} {
		slices.Sort(part)
		out = append(out, part...)
	}
	return strings.Join(out, "\n")
}

func state(s uint16, permanent string) string {
	if s&unix.NUD_PERMANENT != 0 {
		return permanent
	}
	return fmt.Sprintf(" nud %#x", s)
}
