package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// options is everything weftd's command line and environment can say. Flag names
// follow flanneld's where flanneld has one, so that unit files carry over.
type options struct {
	etcdEndpoints    []string
	etcdPrefix       string
	etcdCAFile       string
	etcdCertFile     string
	etcdKeyFile      string
	etcdUsername     string
	etcdPassword     string
	etcdPasswordFile string
	etcdPlainPasswd  bool // --etcd-allow-plaintext-password

	ifaces     []string
	ifaceRegex []string
	publicIP   string
	publicIP6  string // --public-ipv6

	txChecksum    string // --tx-checksum-offload: auto, on, off
	kernelRelease string // --kernel-release (hidden): uname -r, for tests of the checksum policy

	ipMasq     bool
	subnetFile string
	services   bool

	forwardRules   bool           // --iptables-forward-rules
	vxlanAllow     []string       // --vxlan-allow-cidr, as given
	vxlanAllowNets []netip.Prefix // parsed

	metricsAddr    string
	leaseTTL       time.Duration
	resyncInterval time.Duration
	iptablesResync time.Duration
	readyEtcdGrace time.Duration
	logLevel       string
	logFormat      string
	showVersion    bool

	kube kubeOptions // Kubernetes mode (kube.go)
}

// envPrefix is prepended to a flag's name, upper-cased with dashes turned into
// underscores, to give the environment variable that sets it: --etcd-endpoints
// is WEFTD_ETCD_ENDPOINTS.
const envPrefix = "WEFTD_"

// parseFlags reads args, then fills every flag not given on the command line from
// its WEFTD_ environment variable. The command line wins over the environment.
func parseFlags(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	var o options
	fs := pflag.NewFlagSet("weftd", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringSliceVar(&o.etcdEndpoints, "etcd-endpoints", []string{"http://127.0.0.1:2379"}, "etcd endpoints, comma separated")
	fs.StringVar(&o.etcdPrefix, "etcd-prefix", "/coreos.com/network", "etcd key prefix of the network config and subnet leases")
	fs.StringVar(&o.etcdCAFile, "etcd-cafile", "", "CA bundle that signs etcd's server certificate (enables TLS)")
	fs.StringVar(&o.etcdCertFile, "etcd-certfile", "", "client certificate for etcd (mutual TLS)")
	fs.StringVar(&o.etcdKeyFile, "etcd-keyfile", "", "client key for etcd (mutual TLS)")
	fs.StringVar(&o.etcdUsername, "etcd-username", "", "etcd user name")
	fs.StringVar(&o.etcdPassword, "etcd-password", "", "etcd password (visible in the process list: prefer --etcd-password-file or WEFTD_ETCD_PASSWORD)")
	fs.StringVar(&o.etcdPasswordFile, "etcd-password-file", "", "file holding the etcd password")
	fs.BoolVar(&o.etcdPlainPasswd, "etcd-allow-plaintext-password", false, "send the etcd password over plaintext http:// to an endpoint not on loopback (refused otherwise)")
	fs.StringArrayVar(&o.ifaces, "iface", nil, "interface name or address for the underlay; repeat to give candidates in order")
	fs.StringArrayVar(&o.ifaceRegex, "iface-regex", nil, "regular expression matching interface names or addresses; repeatable")
	fs.StringVar(&o.publicIP, "public-ip", "", "address other nodes send VXLAN packets to (default: the interface's first address)")
	fs.StringVar(&o.publicIP6, "public-ipv6", "", "IPv6 address other nodes send VXLAN packets to in a dual-stack or IPv6-only network (default: the interface's first global IPv6 address)")
	fs.StringVar(&o.txChecksum, "tx-checksum-offload", "auto", "transmit checksum offload of the VXLAN devices: auto (off only on kernels before 5.7, which corrupt NATed VXLAN checksums), on or off")
	fs.StringVar(&o.kernelRelease, "kernel-release", "", "the kernel release the checksum policy judges (default: uname -r); for tests")
	_ = fs.MarkHidden("kernel-release")
	fs.BoolVar(&o.ipMasq, "ip-masq", false, "masquerade container traffic that leaves the overlay")
	fs.BoolVar(&o.forwardRules, "iptables-forward-rules", true, "add FORWARD rules that accept this node's containers' traffic (flannel's flag); false leaves FORWARD alone")
	fs.StringArrayVar(&o.vxlanAllow, "vxlan-allow-cidr", nil, "also accept VXLAN packets from this IPv4 range besides the peers' addresses; repeatable")
	fs.BoolVar(&o.services, "services", true, "program the services in etcd into the kernel (false leaves them to something else, such as kube-proxy)")
	fs.StringVar(&o.subnetFile, "subnet-file", "/run/flannel/subnet.env", "where to write the node's subnet for Docker or CNI")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:8285", "address serving /metrics, /healthz, /readyz and /status; empty disables")
	fs.DurationVar(&o.leaseTTL, "lease-ttl", 24*time.Hour, "TTL of the node's etcd lease, renewed by keep-alive")
	fs.DurationVar(&o.resyncInterval, "resync-interval", 10*time.Second, "full comparison of the data plane with the kernel")
	fs.DurationVar(&o.iptablesResync, "iptables-resync", 5*time.Second, "check and repair of weft's iptables rules")
	fs.DurationVar(&o.readyEtcdGrace, "ready-etcd-grace", 60*time.Second, "how long /readyz stays ready after etcd was last in sync")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&o.logFormat, "log-format", "text", "text or json")
	fs.BoolVar(&o.showVersion, "version", false, "print the version and exit")
	addKubeFlags(fs, &o.kube)

	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q: weftd takes only flags", fs.Arg(0))
	}
	var errs []error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v := getenv(name)
		if v == "" {
			return
		}
		if sv, ok := f.Value.(pflag.SliceValue); ok {
			if err := sv.Replace(splitList(v)); err != nil {
				errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
			}
			return
		}
		if err := f.Value.Set(v); err != nil {
			errs = append(errs, fmt.Errorf("%s=%q: %w", name, v, err))
		}
	})
	if err := errors.Join(errs...); err != nil {
		return o, err
	}
	if err := o.kube.fromEnv(getenv); err != nil {
		return o, err
	}
	if err := o.kube.servicesOff(&o.services, fs.Changed("services")); err != nil {
		return o, err
	}
	if len(o.etcdEndpoints) == 0 {
		return o, errors.New("--etcd-endpoints: at least one endpoint is needed")
	}
	if o.leaseTTL < 10*time.Second {
		return o, fmt.Errorf("--lease-ttl %v: must be at least 10s", o.leaseTTL)
	}
	for name, d := range map[string]time.Duration{"--resync-interval": o.resyncInterval, "--iptables-resync": o.iptablesResync} {
		if d < 100*time.Millisecond {
			return o, fmt.Errorf("%s %v: must be at least 100ms", name, d)
		}
	}
	for _, v := range o.vxlanAllow {
		for _, c := range splitList(v) {
			p, err := netip.ParsePrefix(c)
			if err != nil || !p.Addr().Is4() {
				return o, fmt.Errorf("--vxlan-allow-cidr %q: not an IPv4 prefix such as 10.9.0.0/16", c)
			}
			o.vxlanAllowNets = append(o.vxlanAllowNets, p.Masked())
		}
	}
	if (o.etcdCertFile == "") != (o.etcdKeyFile == "") {
		return o, errors.New("--etcd-certfile and --etcd-keyfile go together: give both or neither")
	}
	if o.etcdPassword != "" && o.etcdPasswordFile != "" {
		return o, errors.New("--etcd-password and --etcd-password-file: give one, not both")
	}
	if o.etcdPasswordFile != "" {
		b, err := os.ReadFile(o.etcdPasswordFile)
		if err != nil {
			return o, fmt.Errorf("reading --etcd-password-file: %w", err)
		}
		o.etcdPassword = strings.TrimRight(string(b), "\r\n")
	}
	return o, nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
