package vxlan

import (
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// fakeNL is an in-memory kernel: links, addresses, main-table routes,
// neighbours and a VXLAN FDB with the kernel's keys and replace semantics.
// String prints it as the iproute2 commands that would rebuild it; ops logs
// every change made through it.
type fakeNL struct {
	links     map[int]netlink.Link
	nextIndex int
	addrs     map[int][]netip.Prefix
	routes    map[routeKey]netlink.Route
	neighs    map[neighKey]netlink.Neigh
	fdb       map[fdbKey][]netlink.Neigh // the remote of a MAC (one for unicast)

	ops   []string
	dumps int
	// fail, when it returns an error for an op (as logged), fails that op.
	fail func(op string) error
	// interrupt makes that many dumps return ErrDumpInterrupted.
	interrupt int
}

var _ nlAPI = (*fakeNL)(nil)

type routeKey struct {
	dst      netip.Prefix
	priority int
}

type neighKey struct {
	index int
	ip    netip.Addr
}

type fdbKey struct {
	index int
	mac   string
}

// newFakeNL returns a fake with an uplink "eth0" (index 2, MTU 1500).
func newFakeNL() *fakeNL {
	f := &fakeNL{
		links:     map[int]netlink.Link{},
		nextIndex: 10,
		addrs:     map[int][]netip.Prefix{},
		routes:    map[routeKey]netlink.Route{},
		neighs:    map[neighKey]netlink.Neigh{},
		fdb:       map[fdbKey][]netlink.Neigh{},
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
	for k, r := range f.routes {
		if r.LinkIndex == idx {
			delete(f.routes, k)
		}
	}
	for k := range f.neighs {
		if k.index == idx {
			delete(f.neighs, k)
		}
	}
	for k := range f.fdb {
		if k.index == idx {
			delete(f.fdb, k)
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
		return netlink.ErrDumpInterrupted
	}
	return nil
}

func (f *fakeNL) RouteListFiltered(family int, filter *netlink.Route, mask uint64) ([]netlink.Route, error) {
	if err := f.dump(); err != nil {
		return nil, err
	}
	var res []netlink.Route
	for _, r := range f.routes {
		if mask&netlink.RT_FILTER_OIF != 0 && r.LinkIndex != filter.LinkIndex {
			continue
		}
		res = append(res, r)
	}
	return res, nil
}

func (f *fakeNL) RouteReplace(r *netlink.Route) error {
	dst, _ := prefixOf(r.Dst)
	if _, ok := f.links[r.LinkIndex]; !ok {
		return unix.ENODEV
	}
	if err := f.do("route replace " + dst.String()); err != nil {
		return err
	}
	c := *r
	c.Family = unix.AF_INET
	if dst.Addr().Is6() {
		c.Family = unix.AF_INET6
	}
	f.routes[routeKey{dst, r.Priority}] = c
	return nil
}

func (f *fakeNL) RouteDel(r *netlink.Route) error {
	dst := routeDst(*r)
	k := routeKey{dst, r.Priority}
	if _, ok := f.routes[k]; !ok {
		return unix.ESRCH
	}
	if err := f.do("route del " + dst.String()); err != nil {
		return err
	}
	delete(f.routes, k)
	return nil
}

func (f *fakeNL) NeighListExecute(msg netlink.Ndmsg) ([]netlink.Neigh, error) {
	if err := f.dump(); err != nil {
		return nil, err
	}
	var res []netlink.Neigh
	if msg.Family == unix.AF_BRIDGE {
		for k, remotes := range f.fdb {
			if msg.Index == 0 || k.index == int(msg.Index) {
				res = append(res, remotes...)
			}
		}
		return res, nil
	}
	for k, n := range f.neighs {
		if msg.Index == 0 || k.index == int(msg.Index) {
			res = append(res, n)
		}
	}
	return res, nil
}

func (f *fakeNL) NeighSet(n *netlink.Neigh) error {
	ip, _ := netip.AddrFromSlice(n.IP)
	ip = ip.Unmap()
	c := *n
	if n.Family == unix.AF_BRIDGE {
		if err := f.do(fmt.Sprintf("fdb replace %v dst %v", n.HardwareAddr, ip)); err != nil {
			return err
		}
		// A unicast MAC has one remote, which replace rewrites in place.
		f.fdb[fdbKey{n.LinkIndex, n.HardwareAddr.String()}] = []netlink.Neigh{c}
		return nil
	}
	if err := f.do(fmt.Sprintf("neigh replace %v lladdr %v", ip, n.HardwareAddr)); err != nil {
		return err
	}
	f.neighs[neighKey{n.LinkIndex, ip}] = c
	return nil
}

func (f *fakeNL) NeighDel(n *netlink.Neigh) error {
	ip, _ := netip.AddrFromSlice(n.IP)
	ip = ip.Unmap()
	if n.Family == unix.AF_BRIDGE {
		k := fdbKey{n.LinkIndex, n.HardwareAddr.String()}
		remotes := f.fdb[k]
		i := slices.IndexFunc(remotes, func(r netlink.Neigh) bool { return r.IP.Equal(n.IP) })
		switch {
		case len(remotes) == 0:
			return unix.ENOENT
		case i < 0:
			// Like vxlan_fdb_delete: a known MAC with another
			// destination is "deleted" successfully, untouched.
			return nil
		}
		if err := f.do(fmt.Sprintf("fdb del %v dst %v", n.HardwareAddr, ip)); err != nil {
			return err
		}
		remotes = slices.Delete(remotes, i, i+1)
		if len(remotes) == 0 {
			delete(f.fdb, k)
		} else {
			f.fdb[k] = remotes
		}
		return nil
	}
	k := neighKey{n.LinkIndex, ip}
	if _, ok := f.neighs[k]; !ok {
		return unix.ENOENT
	}
	if err := f.do(fmt.Sprintf("neigh del %v", ip)); err != nil {
		return err
	}
	delete(f.neighs, k)
	return nil
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
	for k, remotes := range f.fdb {
		for _, r := range remotes {
			fdb = append(fdb, fmt.Sprintf("bridge fdb add %s dev %s dst %v self%s", k.mac, f.name(k.index), r.IP, state(r.State, " permanent")))
		}
	}
	for k, n := range f.neighs {
		neighs = append(neighs, fmt.Sprintf("ip neigh add %v lladdr %v dev %s%s", k.ip, n.HardwareAddr, f.name(k.index), state(n.State, " nud permanent")))
	}
	for k, r := range f.routes {
		s := fmt.Sprintf("ip route add %v via %v dev %s", k.dst, r.Gw, f.name(r.LinkIndex))
		if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
			s += " onlink"
		}
		if r.Priority != 0 {
			s += fmt.Sprintf(" metric %d", r.Priority)
		}
		if r.Protocol != unix.RTPROT_BOOT {
			s += fmt.Sprintf(" proto %d", r.Protocol)
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

func state(s int, permanent string) string {
	if s&netlink.NUD_PERMANENT != 0 {
		return permanent
	}
	return fmt.Sprintf(" nud %#x", s)
}
