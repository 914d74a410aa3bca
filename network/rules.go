package network

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

// weft's iptables rules.
//
// weft keeps its rules in two chains of its own, each entered by one jump
// from a built-in chain, and owns those chains whole: whatever is in them
// that weft did not put there is removed, and nothing outside them is
// touched except the two jumps.
//
//	nat     POSTROUTING -> WEFT-POSTRTG   (only with IPMasq; jump at the top)
//	filter  FORWARD     -> WEFT-FWD       (unless SkipForward; jump appended)
//
// The FORWARD jump is appended, as flannel does, and never moved: rules
// already in FORWARD (Docker's DOCKER-USER, an operator's restrictions) keep
// deciding first. WEFT-FWD accepts what the overlay needs and no more, so a
// node with the FORWARD policy at DROP (as Docker sets it) still carries its
// containers' traffic, and a node is no router into the overlay for hosts
// that merely send it packets for other nodes' subnets. For 172.16.28.0/24
// on flannel.1:
//
//	-s 172.16.28.0/24 -j ACCEPT                                     this node's containers, to anywhere
//	-d 172.16.28.0/24 -i flannel.1 -j ACCEPT                        the overlay to this node's containers
//	-d 172.16.28.0/24 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT   replies to them
//	-o flannel.1 -m conntrack --ctstate DNAT -j ACCEPT              connections a service rule sent into the overlay
//	-i flannel.1 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT        and their replies
//	-o flannel.1 -j DROP                                            anything else into the overlay
//	-i flannel.1 -j DROP                                            or out of it
//
// flannel decides "the packet stays in the overlay" by address
// (-s Network -d Network -j RETURN). That is wrong when the underlay lies
// inside the overlay's Network, as in the reference deployment
// (172.17.0.0/16 inside 172.16.0.0/12): a container talking to an underlay
// host such as 172.17.42.200 would keep its container address, which that
// host cannot answer. weft decides by the output device instead: a packet
// that leaves through the overlay device stays in the overlay and keeps its
// source; one from the node's subnet that leaves any other way is
// masqueraded. For 172.16.28.0/24 on flannel.1 the nat chain is
//
//	-s 172.16.28.0/24 -d 172.16.28.0/24 -j RETURN          inside the subnet (bridged with br_netfilter)
//	-s 172.16.28.0/24 -o flannel.1 -j RETURN               overlay traffic keeps its source
//	! -s 172.16.28.0/24 -o flannel.1 -j MASQUERADE         foreign sources enter the overlay as this node
//	-s 172.16.28.0/24 -d 224.0.0.0/4 -j RETURN             multicast is never masqueraded
//	-s 172.16.28.0/24 -j MASQUERADE                        leaving the overlay
//
// The third rule is flannel's "! -s Network -d Network -j MASQUERADE" by
// device: a packet with a source outside the node's subnet (a DNATed
// connection from outside, or a host process bound to the uplink address)
// that enters the overlay takes the overlay device's address, <subnet>.0, so
// the peer's answer comes back through the overlay rather than by the
// underlay, where a strict rp_filter would drop it. The node's own traffic to
// remote containers already leaves with <subnet>.0 as its source (the kernel
// picks the overlay device's address) and matches the second rule.
//
// MASQUERADE carries --random-fully when the iptables binary supports it
// (1.6.2 and later; the kernel has had it since 3.13), as flannel does: it
// picks source ports at random instead of sequentially, which avoids the
// conntrack insert races that drop SYNs when many containers open
// connections to the same destination at once.
//
// Ensure lists each chain once (-S CHAIN) and compares the text with what it
// would write, the same way iptables-save prints it; in the common case that
// is four execs of iptables and no change. A chain that differs is rewritten
// by inserting the wanted rules at the top and then deleting the old ones
// below them, so the chain never passes through an empty state in which new
// connections would escape masquerading and stay un-NATed for their life.

// DefaultRulesInterval is how often Run checks the rules when not told.
const DefaultRulesInterval = 5 * time.Second

const (
	natTable       = "nat"
	filterTable    = "filter"
	natChain       = "WEFT-POSTRTG"
	filterChain    = "WEFT-FWD"
	natHook        = "POSTROUTING"
	filterHook     = "FORWARD"
	commentNatJump = "weft: masquerade traffic leaving the overlay"
	commentFwdJump = "weft: forward overlay traffic"
)

// RulesConfig is the desired state of weft's rules.
type RulesConfig struct {
	Network netip.Prefix // the whole overlay, e.g. 172.16.0.0/12
	Subnet  netip.Prefix // the node's lease, e.g. 172.16.28.0/24; host bits are ignored
	Device  string       // the overlay device, e.g. flannel.1
	IPMasq  bool         // masquerade traffic that leaves the overlay
	// SkipForward leaves FORWARD alone (--iptables-forward-rules=false):
	// no WEFT-FWD chain and no jump; one left by an earlier run is removed.
	SkipForward bool
	// Uplink, with DirectRouting, is the underlay interface that direct
	// routes to peers go through, and Underlay its networks. Traffic
	// between this node's containers and Network through the uplink is
	// then overlay traffic too: it keeps its source (except to the
	// underlay's own hosts, which are no peers' subnets), and peers'
	// containers reach this node's through FORWARD. Empty without
	// DirectRouting.
	Uplink   string
	Underlay []netip.Prefix
}

// normalize checks c and returns it with the prefixes masked.
func (c RulesConfig) normalize() (RulesConfig, error) {
	if !c.Network.IsValid() || !c.Subnet.IsValid() {
		return c, fmt.Errorf("rules need a Network and a Subnet, have %v and %v", c.Network, c.Subnet)
	}
	c.Network, c.Subnet = c.Network.Masked(), c.Subnet.Masked()
	if c.Network.Addr().Is4() != c.Subnet.Addr().Is4() || !c.Network.Contains(c.Subnet.Addr()) ||
		c.Subnet.Bits() < c.Network.Bits() {
		return c, fmt.Errorf("subnet %v is not inside network %v", c.Subnet, c.Network)
	}
	if c.Device == "" || len(c.Device) > 15 || strings.ContainsAny(c.Device, " \t\n/:!+\"'\\") {
		return c, fmt.Errorf("device name %q is not a valid interface name", c.Device)
	}
	return c, nil
}

// iptablesAPI is the part of go-iptables weft uses.
type iptablesAPI interface {
	List(table, chain string) ([]string, error)
	ChainExists(table, chain string) (bool, error)
	NewChain(table, chain string) error
	Insert(table, chain string, pos int, rulespec ...string) error
	Append(table, chain string, rulespec ...string) error
	DeleteById(table, chain string, id int) error
	ListById(table, chain string, id int) (string, error)
	ClearAndDeleteChain(table, chain string) error
	HasRandomFully() bool
}

var _ iptablesAPI = (*iptables.IPTables)(nil)

// Rules keeps weft's iptables chains as configured. It is safe for
// concurrent use.
type Rules struct {
	log *slog.Logger
	ipt iptablesAPI

	mu  sync.Mutex // guards cfg and serialises changes to the kernel
	cfg RulesConfig
}

// RulesOption changes how NewRules reaches iptables.
type RulesOption func(*rulesOptions)

type rulesOptions struct {
	path string // the iptables binary; "" finds it in $PATH
}

// WithIptablesPath runs path instead of the iptables (or ip6tables) found in
// $PATH, e.g. a wrapper that runs iptables in another network namespace.
func WithIptablesPath(path string) RulesOption {
	return func(o *rulesOptions) { o.path = path }
}

// NewRules returns Rules for cfg. It changes nothing in the kernel until
// Ensure. The address family of cfg.Subnet picks iptables or ip6tables.
func NewRules(cfg RulesConfig, log *slog.Logger, opts ...RulesOption) (*Rules, error) {
	cfg, err := cfg.normalize()
	if err != nil {
		return nil, err
	}
	var o rulesOptions
	for _, opt := range opts {
		opt(&o)
	}
	proto := iptables.ProtocolIPv4
	if cfg.Subnet.Addr().Is6() {
		proto = iptables.ProtocolIPv6
	}
	// go-iptables' option type is unexported, so the calls are spelled out.
	var ipt *iptables.IPTables
	if o.path != "" {
		ipt, err = iptables.New(iptables.IPFamily(proto), iptables.Timeout(5), iptables.Path(o.path))
	} else {
		ipt, err = iptables.New(iptables.IPFamily(proto), iptables.Timeout(5))
	}
	if err != nil {
		return nil, fmt.Errorf("finding iptables: %w", err)
	}
	return newRules(cfg, log, ipt), nil
}

func newRules(cfg RulesConfig, log *slog.Logger, ipt iptablesAPI) *Rules {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Rules{log: log.With("component", "iptables"), ipt: ipt, cfg: cfg}
}

// Update changes the desired rules, e.g. when the node's subnet changed, and
// applies them: rules for the old subnet are gone when it returns nil.
func (r *Rules) Update(cfg RulesConfig) error {
	cfg, err := cfg.normalize()
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if cfg.Subnet.Addr().Is4() != r.cfg.Subnet.Addr().Is4() {
		return fmt.Errorf("updating rules from %v to %v: cannot change address family", r.cfg.Subnet, cfg.Subnet)
	}
	r.cfg = cfg
	_, err = r.ensureLocked()
	return err
}

// Ensure checks weft's chains and jumps against the configuration and
// repairs what differs. It returns how many chains or jumps it had to fix:
// 0 when all was right. The first call on a fresh host counts the install.
func (r *Rules) Ensure() (repaired int, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ensureLocked()
}

// Remove deletes weft's chains and the jumps to them, whatever their
// content. weftd does not call it on exit: rules stay so restarts lose no
// packet. It is for tests and demo teardown.
func (r *Rules) Remove() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for _, c := range r.chainsLocked() {
		_, err := r.removeChain(c)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Run calls Ensure every interval (DefaultRulesInterval if not positive)
// until ctx is done, starting at once. The first successful Ensure installs;
// later ones that fix something are repairs: logged once each at info and
// reported to onRepair (which may be nil). Errors are logged when they
// first appear or change, not on every tick.
func (r *Rules) Run(ctx context.Context, interval time.Duration, onRepair func(n int)) {
	if interval <= 0 {
		interval = DefaultRulesInterval
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	installed, lastErr := false, ""
	for {
		n, err := r.Ensure()
		switch {
		case err != nil:
			if err.Error() != lastErr {
				r.log.Warn("checking iptables rules", "err", err, "fixed", n)
				lastErr = err.Error()
			}
		case lastErr != "":
			r.log.Info("iptables rules in place again")
			lastErr = ""
		}
		switch {
		case !installed:
			installed = err == nil
		case n > 0:
			r.log.Info("repaired iptables rules", "fixed", n)
			if onRepair != nil {
				onRepair(n)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// chain is one of weft's chains, the built-in chain that jumps to it and
// what it should hold.
type chain struct {
	table, name, hook string
	jump              rule
	want              bool   // false: the chain and its jump must not exist
	appendJump        bool   // the jump may sit anywhere and is appended when missing
	rules             []rule // in order
}

func (r *Rules) chainsLocked() []chain {
	c := r.cfg
	sub, dev := c.Subnet.String(), c.Device
	mcast := "224.0.0.0/4"
	if c.Subnet.Addr().Is6() {
		mcast = "ff00::/8"
	}
	masq := rule{"-j", "MASQUERADE"}
	if r.ipt.HasRandomFully() {
		masq = append(masq, "--random-fully")
	}
	nat := chain{
		table: natTable, name: natChain, hook: natHook, want: c.IPMasq,
		jump: comment(commentNatJump, "-j", natChain),
		rules: []rule{
			match("-s", sub, "-d", sub).then(comment("weft: inside this node subnet", "-j", "RETURN")),
			match("-s", sub, "-o", dev).then(comment("weft: overlay traffic keeps its source", "-j", "RETURN")),
			match("!", "-s", sub, "-o", dev).then(comment("weft: foreign sources enter the overlay as this node", masq...)),
		},
	}
	if c.Uplink != "" {
		for _, u := range c.Underlay {
			if u.Addr().Is4() == c.Subnet.Addr().Is4() {
				nat.rules = append(nat.rules, match("-s", sub, "-d", u.Masked().String(), "-o", c.Uplink).then(comment("weft: to underlay hosts, not direct peers", masq...)))
			}
		}
		nat.rules = append(nat.rules, match("-s", sub, "-d", c.Network.String(), "-o", c.Uplink).then(comment("weft: directly routed overlay traffic keeps its source", "-j", "RETURN")))
	}
	nat.rules = append(nat.rules, []rule{
		match("-s", sub, "-d", mcast).then(comment("weft: multicast stays as is", "-j", "RETURN")),
		match("-s", sub).then(comment("weft: leaving the overlay", masq...)),
	}...)
	fwd := chain{
		table: filterTable, name: filterChain, hook: filterHook, want: !c.SkipForward, appendJump: true,
		jump: comment(commentFwdJump, "-j", filterChain),
		rules: []rule{
			match("-s", sub).then(comment("weft: from local containers", "-j", "ACCEPT")),
			match("-d", sub, "-i", dev).then(comment("weft: overlay to local containers", "-j", "ACCEPT")),
			match("-d", sub, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED").then(comment("weft: replies to local containers", "-j", "ACCEPT")),
			match("-o", dev, "-m", "conntrack", "--ctstate", "DNAT").then(comment("weft: connections sent into the overlay by DNAT", "-j", "ACCEPT")),
			match("-i", dev, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED").then(comment("weft: replies from the overlay", "-j", "ACCEPT")),
			match("-o", dev).then(comment("weft: no routing into the overlay for others", "-j", "DROP")),
			match("-i", dev).then(comment("weft: no routing out of the overlay for others", "-j", "DROP")),
		},
	}
	if c.Uplink != "" {
		fwd.rules = slices.Insert(fwd.rules, 2,
			match("-s", c.Network.String(), "-d", sub, "-i", c.Uplink).then(comment("weft: direct peers to local containers", "-j", "ACCEPT")))
	}
	return []chain{nat, fwd}
}

func (r *Rules) ensureLocked() (int, error) {
	var errs []error
	n := 0
	for _, c := range r.chainsLocked() {
		var k int
		var err error
		if c.want {
			k, err = r.ensureChain(c)
		} else {
			k, err = r.removeChain(c)
		}
		n += k
		if err != nil {
			errs = append(errs, fmt.Errorf("%s table: %w", c.table, err))
		}
	}
	return n, errors.Join(errs...)
}

// ensureChain makes c.name hold exactly c.rules and the top of c.hook jump
// to it, in that order so the jump never leads to a missing chain.
func (r *Rules) ensureChain(c chain) (int, error) {
	fixed := 0
	have, exists, err := r.listRules(c.table, c.name)
	if err != nil {
		return 0, err
	}
	if !exists {
		if err := r.ipt.NewChain(c.table, c.name); err != nil {
			return 0, fmt.Errorf("creating chain %s: %w", c.name, err)
		}
	}
	if !sameRules(have, c.name, c.rules) {
		fixed++
		r.log.Debug("rewriting chain", "table", c.table, "chain", c.name, "had", have)
		// Wanted rules first, then the old ones below them go.
		for i, ru := range c.rules {
			if err := r.ipt.Insert(c.table, c.name, i+1, ru...); err != nil {
				return fixed, fmt.Errorf("adding to %s %q: %w", c.name, ru, err)
			}
		}
		for range have {
			if err := r.ipt.DeleteById(c.table, c.name, len(c.rules)+1); err != nil {
				return fixed, fmt.Errorf("deleting an old rule from %s: %w", c.name, err)
			}
		}
	}
	k, err := r.ensureJump(c)
	return fixed + k, err
}

// ensureJump makes the first rule of c.hook the jump to c.name, and the only
// one; with c.appendJump, the jump may be anywhere and a missing one is
// appended.
func (r *Rules) ensureJump(c chain) (int, error) {
	hook, _, err := r.listRules(c.table, c.hook)
	if err != nil {
		return 0, err
	}
	want := c.jump.line(c.hook)
	if c.appendJump {
		return r.ensureAppendedJump(c, hook, want)
	}
	atTop := len(hook) > 0 && hook[0] == want
	stale := jumpsTo(hook, c.name)
	if atTop {
		stale = stale[1:]
	}
	if atTop && len(stale) == 0 {
		return 0, nil
	}
	shift := 0
	if !atTop {
		if err := r.ipt.Insert(c.table, c.hook, 1, c.jump...); err != nil {
			return 1, fmt.Errorf("adding the jump from %s to %s: %w", c.hook, c.name, err)
		}
		shift = 1
	}
	for i := len(stale) - 1; i >= 0; i-- {
		if err := r.deleteHookRule(c.table, c.hook, stale[i]+1+shift, hook[stale[i]]); err != nil {
			return 1, fmt.Errorf("deleting a stale jump from %s to %s: %w", c.hook, c.name, err)
		}
	}
	return 1, nil
}

// ensureAppendedJump keeps the first jump to c.name that reads as wanted
// wherever it is, deletes any other jump to c.name, and appends the wanted
// one if there is none: rules that were in c.hook before keep their places.
func (r *Rules) ensureAppendedJump(c chain, hook []string, want string) (int, error) {
	keep := -1
	for i, l := range hook {
		if l == want {
			keep = i
			break
		}
	}
	stale := slices.DeleteFunc(jumpsTo(hook, c.name), func(i int) bool { return i == keep })
	if keep >= 0 && len(stale) == 0 {
		return 0, nil
	}
	for i := len(stale) - 1; i >= 0; i-- {
		if err := r.deleteHookRule(c.table, c.hook, stale[i]+1, hook[stale[i]]); err != nil {
			return 1, fmt.Errorf("deleting a stale jump from %s to %s: %w", c.hook, c.name, err)
		}
	}
	if keep < 0 {
		if err := r.ipt.Append(c.table, c.hook, c.jump...); err != nil {
			return 1, fmt.Errorf("adding the jump from %s to %s: %w", c.hook, c.name, err)
		}
	}
	return 1, nil
}

// deleteHookRule deletes the rule at pos of a built-in chain if it still
// reads line. Stale jumps (misplaced, duplicated, with an old comment) are
// deleted by position, bottom up so positions above stay valid, because
// deleting by spec would remove the first of two identical jumps, the one
// at the top. Other programs (Docker, kube-proxy) write to the same chains;
// checking the line first keeps a rule of theirs that moved into that
// position in the meantime from being deleted.
func (r *Rules) deleteHookRule(table, chain string, pos int, line string) error {
	now, err := r.ipt.ListById(table, chain, pos)
	if err != nil {
		return err
	}
	if now != line {
		return fmt.Errorf("%s changed while weft was editing it (rule %d is now %q), will retry", chain, pos, now)
	}
	return r.ipt.DeleteById(table, chain, pos)
}

// removeChain deletes the jumps to c.name and the chain.
func (r *Rules) removeChain(c chain) (int, error) {
	fixed := 0
	hook, _, err := r.listRules(c.table, c.hook)
	if err != nil {
		return 0, err
	}
	stale := jumpsTo(hook, c.name)
	for i := len(stale) - 1; i >= 0; i-- {
		if err := r.deleteHookRule(c.table, c.hook, stale[i]+1, hook[stale[i]]); err != nil {
			return fixed, fmt.Errorf("deleting the jump from %s to %s: %w", c.hook, c.name, err)
		}
		fixed = 1
	}
	exists, err := r.ipt.ChainExists(c.table, c.name)
	if err != nil {
		return fixed, fmt.Errorf("looking for chain %s: %w", c.name, err)
	}
	if exists {
		if err := r.ipt.ClearAndDeleteChain(c.table, c.name); err != nil {
			return fixed, fmt.Errorf("deleting chain %s: %w", c.name, err)
		}
		fixed++
	}
	return fixed, nil
}

// listRules returns the -A lines of chain as iptables -S prints them, and
// whether the chain exists. iptables-nft 1.8.9 reports a missing chain as
// "chain `X' in table `nat' is incompatible", which go-iptables does not
// recognise, so a failed list is followed by an existence check.
func (r *Rules) listRules(table, name string) (rules []string, exists bool, err error) {
	lines, err := r.ipt.List(table, name)
	if err != nil {
		ok, err2 := r.ipt.ChainExists(table, name)
		if err2 == nil && !ok {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("listing chain %s: %w", name, err)
	}
	for _, l := range lines {
		if strings.HasPrefix(l, "-A ") {
			rules = append(rules, l)
		}
	}
	return rules, true, nil
}

func sameRules(have []string, chain string, want []rule) bool {
	if len(have) != len(want) {
		return false
	}
	for i, ru := range want {
		if have[i] != ru.line(chain) {
			return false
		}
	}
	return true
}

// jumpsTo returns the indexes (0-based) of the rules in lines that jump to
// target.
func jumpsTo(lines []string, target string) []int {
	var idx []int
	for i, l := range lines {
		if strings.HasSuffix(l, " -j "+target) || strings.Contains(l, " -j "+target+" ") {
			idx = append(idx, i)
		}
	}
	return idx
}

// rule is the argument list of one rule, in the order iptables -S prints
// the options, so that its text matches iptables' own listing.
type rule []string

// line renders the rule as iptables -S prints it in chain.
func (ru rule) line(chain string) string {
	var b strings.Builder
	b.WriteString("-A ")
	b.WriteString(chain)
	for i, a := range ru {
		b.WriteByte(' ')
		if i > 0 && ru[i-1] == "--comment" {
			b.WriteString(saveString(a))
		} else {
			b.WriteString(a)
		}
	}
	return b.String()
}

// saveString quotes a string option as iptables' xtables_save_string does.
func saveString(s string) string {
	const plain = "_-0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
	if s != "" && strings.Trim(s, plain) == "" {
		return s
	}
	var b strings.Builder
	b.WriteByte('"')
	for _, c := range []byte(s) {
		if c == '"' || c == '\\' || c == '\'' {
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	b.WriteByte('"')
	return b.String()
}

// comment returns -m comment --comment text followed by target.
func comment(text string, target ...string) rule {
	return append(rule{"-m", "comment", "--comment", text}, target...)
}

func match(args ...string) rule { return args }

func (ru rule) then(rest rule) rule { return append(ru[:len(ru):len(ru)], rest...) }
