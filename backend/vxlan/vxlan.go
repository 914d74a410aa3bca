package vxlan

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/backend"
	"github.com/weft-net/weft/rtnl"
)

// Defaults match flannel's, so weft and flannel nodes can share an overlay.
const (
	DefaultVNI  = 1
	DefaultPort = 8472
)

// Overhead of VXLAN encapsulation on an IPv4 and an IPv6 underlay: outer IP
// header, UDP (8), VXLAN (8) and the inner Ethernet header (14).
const (
	overheadV4 = 20 + 8 + 8 + 14
	overheadV6 = 40 + 8 + 8 + 14
)

// Config describes the node's VXLAN device.
type Config struct {
	// Name of the device; "flannel.<VNI>" when empty, "flannel-v6.<VNI>"
	// for an IPv6 Local (flannel's names).
	Name string
	// VNI is the VXLAN network identifier; DefaultVNI when 0.
	VNI uint32
	// Port is the UDP destination port; DefaultPort when 0.
	Port uint16
	// Local is the node's public (underlay) address, the outer source. Its
	// family is the device's: one Device per family carries that family's
	// half of every peer (peer.Peer.Half), over that family's underlay.
	Local netip.Addr
	// UplinkIndex is the index of the underlay interface that holds Local.
	UplinkIndex int
	// MTU of the device; the uplink's MTU minus the encapsulation overhead
	// when 0.
	MTU int
	// MAC is the device's hardware address (the VTEP MAC peers program).
	// When nil, an existing device's address is kept, or the kernel picks one.
	MAC net.HardwareAddr
	// Subnet is this node's own subnet; the device gets its first address
	// (for example 172.16.28.0/32).
	Subnet netip.Prefix
	// DirectRouting (flannel's Backend.DirectRouting) routes a peer whose
	// PublicIP lies in one of OnLink, the uplink's own networks, straight
	// to it: "<subnet> via <PublicIP> dev <uplink>", with no neighbour and
	// no FDB entry; other peers stay on VXLAN.
	DirectRouting bool
	OnLink        []netip.Prefix
	// Network is the overlay. weft's own direct routes on the uplink into
	// it (RTPROT_BOOT, the peer metric) that no peer wants are removed:
	// those of peers that left while weftd was down, or of a run with
	// DirectRouting on when it is now off. Zero: none is ever removed.
	Network netip.Prefix
	// TxChecksum, when not nil, is the device's transmit checksum offload,
	// kept like its MTU (see network.ChecksumPolicy); nil leaves it alone.
	TxChecksum *bool
}

// Option changes how New builds a Device.
type Option func(*options)

type options struct {
	ns netns.NsHandle
	nl nlAPI // tests only
}

// WithNamespace makes the Device work in the network namespace ns instead of
// the caller's one. The Device does not close ns; it must stay open until
// Close.
func WithNamespace(ns netns.NsHandle) Option {
	return func(o *options) { o.ns = ns }
}

// withNL replaces the kernel with a fake (tests).
func withNL(n nlAPI) Option {
	return func(o *options) { o.nl = n }
}

// Device is the node's VXLAN device and the per-peer entries on it. It is safe
// for concurrent use.
type Device struct {
	cfg    Config
	log    *slog.Logger
	nl     nlAPI
	kernel *kernel        // nil with a fake; closed by Close
	ns     netns.NsHandle // where the device lives; None = the caller's

	// curIndex mirrors index for the subscription filter, which must not
	// wait for mu while a long Set holds it.
	curIndex atomic.Int32

	// subMu guards the live subscription and its kick, which a large Set
	// pauses (see pauseEvents).
	subMu sync.Mutex
	sub   *rtnl.Subscription
	kick  func()
	// closing ends every subscription's goroutine, which subs counts, so
	// that Close returns only once they are gone with their sockets.
	closing    context.Context
	closeSubs  context.CancelFunc
	subs       sync.WaitGroup
	closedOnce sync.Once

	mu sync.Mutex // guards the fields below
	// index and mtu of the device, valid after Ensure.
	index int
	mtu   int
	// checksumFixed says fixChecksumLocked changed the offload.
	checksumFixed bool
	mac           net.HardwareAddr
	// synced means the kernel holds exactly the entries of want, as far as
	// this Device knows. It is false after New, after the device was
	// (re)created and after any change failed; the next Set then compares
	// with the kernel instead of trusting its own diff.
	synced bool
	stamp  uint64 // counts comparisons with the kernel; wantedPeer.*OK
	// last is the input of the last Set, sorted by subnet; next is the
	// buffer the following Set fills (they swap).
	last, next []entry
	// Scratch space reused by Set and Reconcile.
	changes []change
	ops     [rtnl.NumOpKinds][]rtnl.Op
	fill    []rtnl.Op

	// wantMu guards the maps below against the subscription's filter, which
	// reads them; they change only with mu held too, so mu's holder reads
	// them freely.
	wantMu sync.RWMutex
	// want is the wanted peers by VTEP address (their subnet's address);
	// nil before the first Set, so that Reconcile does not delete entries
	// before it knows the peers.
	want map[netip.Addr]*wantedPeer
	// macs is the wanted peers by VTEP MAC.
	macs map[rtnl.MAC]*wantedPeer
}

var _ backend.Backend = (*Device)(nil)

// New checks cfg, fills in defaults and opens its netlink sockets. It does
// not touch the kernel's configuration; call Ensure for that.
func New(cfg Config, log *slog.Logger, opts ...Option) (*Device, error) {
	var o options
	o.ns = netns.None()
	for _, opt := range opts {
		opt(&o)
	}
	if cfg.VNI == 0 {
		cfg.VNI = DefaultVNI
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName(cfg.VNI, cfg.Local.Unmap().Is6())
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	cfg.Local = cfg.Local.Unmap()
	cfg.Subnet = cfg.Subnet.Masked()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	d := &Device{
		cfg: cfg,
		log: log.With("component", "vxlan", "device", cfg.Name),
		nl:  o.nl,
		ns:  o.ns,
		mac: cfg.MAC,
	}
	d.closing, d.closeSubs = context.WithCancel(context.Background())
	if d.nl == nil {
		k, err := newKernel(o.ns)
		if err != nil {
			return nil, err
		}
		d.kernel = k
		d.nl = k
	}
	return d, nil
}

func (c Config) validate() error {
	var errs []error
	if len(c.Name) > 15 {
		errs = append(errs, fmt.Errorf("device name %q longer than 15 bytes", c.Name))
	}
	if c.VNI >= 1<<24 {
		errs = append(errs, fmt.Errorf("VNI %d does not fit in 24 bits", c.VNI))
	}
	if !c.Local.IsValid() {
		errs = append(errs, errors.New("no local (public) address"))
	}
	if c.UplinkIndex <= 0 {
		errs = append(errs, errors.New("no uplink interface index"))
	}
	if !c.Subnet.IsValid() {
		errs = append(errs, errors.New("no subnet"))
	} else if c.Local.IsValid() && c.Subnet.Addr().Is4() != c.Local.Unmap().Is4() {
		errs = append(errs, fmt.Errorf("subnet %v and local address %v are of different families", c.Subnet, c.Local))
	}
	if c.MTU < 0 {
		errs = append(errs, fmt.Errorf("negative MTU %d", c.MTU))
	}
	if c.MAC != nil && len(c.MAC) != 6 {
		errs = append(errs, fmt.Errorf("MAC %v is not a 6-byte Ethernet address", c.MAC))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("checking vxlan config: %w", err)
	}
	return nil
}

// Close ends the subscriptions, waits for their goroutines and releases the
// netlink sockets. It leaves the device and its entries in place, so packets
// keep flowing while weftd restarts. A closed Device must not be used again;
// Close may be called more than once.
func (d *Device) Close() {
	d.closedOnce.Do(func() {
		d.closeSubs()
		d.subs.Wait()
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.kernel != nil {
			d.kernel.close()
		}
	})
}

// Name returns the device's name.
func (d *Device) Name() string { return d.cfg.Name }

// Index returns the device's interface index; 0 before Ensure.
func (d *Device) Index() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.index
}

// MTU returns the device's MTU; 0 before Ensure.
func (d *Device) MTU() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mtu
}

// MAC returns the device's hardware address: Config.MAC, or, when that was
// nil, the address the device has after Ensure.
func (d *Device) MAC() net.HardwareAddr {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.mac
}

// Ensure creates the device or adopts an existing one, and reports whether it
// changed anything. A device whose VNI, port, local address, uplink, learning
// or proxy settings are wrong, or which is not a VXLAN device, is deleted and
// recreated (its peers are then reprogrammed by the next Set or Reconcile); a
// wrong MTU, MAC, address or down state is fixed in place. A matching device
// is adopted untouched, entries included.
func (d *Device) Ensure(ctx context.Context) (changed bool, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.ensureLocked(ctx)
}

func (d *Device) ensureLocked(ctx context.Context) (changed bool, err error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	uplink, err := d.nl.LinkByIndex(d.cfg.UplinkIndex)
	if err != nil {
		return false, fmt.Errorf("looking up uplink index %d: %w", d.cfg.UplinkIndex, err)
	}
	mtu := d.cfg.MTU
	if mtu == 0 {
		mtu = uplink.Attrs().MTU - overheadV4
		if d.cfg.Local.Is6() {
			mtu = uplink.Attrs().MTU - overheadV6
		}
	}

	link, err := d.nl.LinkByName(d.cfg.Name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		link = nil
		d.setIndexLocked(0)
		d.synced = false
	case err != nil:
		return false, fmt.Errorf("looking up device %s: %w", d.cfg.Name, err)
	}
	if link != nil {
		if why := d.mismatch(link); why != "" {
			d.log.Warn("recreating device", "reason", why)
			if d.mac == nil {
				d.mac = link.Attrs().HardwareAddr
			}
			if err := d.nl.LinkDel(link); err != nil {
				return false, fmt.Errorf("deleting device %s (%s): %w", d.cfg.Name, why, err)
			}
			d.setIndexLocked(0)
			d.synced = false
			link = nil
		}
	}
	if link == nil {
		link, err = d.createLocked(mtu)
		if err != nil {
			return true, err
		}
		changed = true
		d.synced = false
	}
	d.setIndexLocked(link.Attrs().Index)
	if d.mac == nil {
		d.mac = link.Attrs().HardwareAddr
	}

	fixed, err := d.fixInPlaceLocked(link, mtu)
	if cerr := d.fixChecksumLocked(); cerr != nil {
		err = errors.Join(err, cerr)
	} else if d.checksumFixed {
		d.checksumFixed, fixed = false, true
	}
	d.mtu = link.Attrs().MTU
	if err == nil {
		d.mtu = mtu
	}
	return changed || fixed, err
}

// mismatch says why an existing link cannot be adopted, or "" if it can.
func (d *Device) mismatch(link netlink.Link) string {
	vx, ok := link.(*netlink.Vxlan)
	if !ok {
		return fmt.Sprintf("is a %s device, not vxlan", link.Type())
	}
	local, _ := netip.AddrFromSlice(vx.SrcAddr)
	switch {
	case uint32(vx.VxlanId) != d.cfg.VNI:
		return fmt.Sprintf("VNI %d, want %d", vx.VxlanId, d.cfg.VNI)
	case vx.Port != int(d.cfg.Port):
		return fmt.Sprintf("port %d, want %d", vx.Port, d.cfg.Port)
	case local.Unmap() != d.cfg.Local:
		return fmt.Sprintf("local %v, want %v", vx.SrcAddr, d.cfg.Local)
	case vx.VtepDevIndex != d.cfg.UplinkIndex:
		return fmt.Sprintf("uplink index %d, want %d", vx.VtepDevIndex, d.cfg.UplinkIndex)
	case vx.Learning:
		return "learning on"
	case vx.Proxy || vx.L2miss || vx.L3miss || vx.FlowBased || vx.GBP:
		return "proxy, l2miss, l3miss, external or gbp set"
	case len(vx.Group) > 0 && !vx.Group.IsUnspecified():
		return fmt.Sprintf("remote/group %v set", vx.Group)
	}
	return ""
}

func (d *Device) createLocked(mtu int) (netlink.Link, error) {
	vx := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:         d.cfg.Name,
			MTU:          mtu,
			HardwareAddr: d.mac,
		},
		VxlanId:      int(d.cfg.VNI),
		VtepDevIndex: d.cfg.UplinkIndex,
		SrcAddr:      d.cfg.Local.AsSlice(),
		Port:         int(d.cfg.Port),
		Learning:     false,
	}
	if err := d.nl.LinkAdd(vx); err != nil {
		return nil, fmt.Errorf("creating device %s: %w", d.cfg.Name, err)
	}
	d.log.Debug("created device", "vni", d.cfg.VNI, "port", d.cfg.Port, "local", d.cfg.Local, "mtu", mtu)
	link, err := d.nl.LinkByName(d.cfg.Name)
	if err != nil {
		return nil, fmt.Errorf("looking up device %s after creating it: %w", d.cfg.Name, err)
	}
	return link, nil
}

// fixInPlaceLocked sets the MTU, MAC, address and up state of an adoptable
// link.
func (d *Device) fixInPlaceLocked(link netlink.Link, mtu int) (changed bool, err error) {
	var errs []error
	a := link.Attrs()
	if a.MTU != mtu {
		if err := d.nl.LinkSetMTU(link, mtu); err != nil {
			errs = append(errs, fmt.Errorf("setting MTU of %s to %d: %w", d.cfg.Name, mtu, err))
		} else {
			d.log.Debug("set MTU", "from", a.MTU, "to", mtu)
			changed = true
		}
	}
	if d.mac != nil && a.HardwareAddr.String() != d.mac.String() {
		if err := d.nl.LinkSetHardwareAddr(link, d.mac); err != nil {
			errs = append(errs, fmt.Errorf("setting MAC of %s to %v: %w", d.cfg.Name, d.mac, err))
		} else {
			d.log.Debug("set MAC", "from", a.HardwareAddr, "to", d.mac)
			changed = true
		}
	}
	addrChanged, err := d.fixAddrsLocked(link)
	if err != nil {
		errs = append(errs, err)
	}
	changed = changed || addrChanged
	if a.Flags&net.FlagUp == 0 {
		if err := d.nl.LinkSetUp(link); err != nil {
			errs = append(errs, fmt.Errorf("bringing %s up: %w", d.cfg.Name, err))
		} else {
			changed = true
		}
	}
	return changed, errors.Join(errs...)
}

// fixAddrsLocked makes the subnet's first address the device's only address
// (besides IPv6 link-local ones, which the kernel owns).
func (d *Device) fixAddrsLocked(link netlink.Link) (changed bool, err error) {
	want := netip.PrefixFrom(d.cfg.Subnet.Addr(), d.cfg.Subnet.Addr().BitLen())
	addrs, err := d.nl.AddrList(link, netlink.FAMILY_ALL)
	if err != nil {
		return false, fmt.Errorf("listing addresses of %s: %w", d.cfg.Name, err)
	}
	var errs []error
	have := false
	for _, a := range addrs {
		p, ok := prefixOf(a.IPNet)
		if !ok || p.Addr().IsLinkLocalUnicast() {
			continue
		}
		if p == want {
			have = true
			continue
		}
		if err := d.nl.AddrDel(link, &a); err != nil {
			errs = append(errs, fmt.Errorf("removing stale address %v from %s: %w", p, d.cfg.Name, err))
			continue
		}
		d.log.Debug("removed stale address", "addr", p)
		changed = true
	}
	if !have {
		if err := d.nl.AddrAdd(link, &netlink.Addr{IPNet: ipNet(want)}); err != nil {
			errs = append(errs, fmt.Errorf("adding address %v to %s: %w", want, d.cfg.Name, err))
		} else {
			changed = true
		}
	}
	return changed, errors.Join(errs...)
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	if n == nil {
		return netip.Prefix{}, false
	}
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones), true
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func (d *Device) setIndexLocked(index int) {
	d.index = index
	d.curIndex.Store(int32(index))
}
