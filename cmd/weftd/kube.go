package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/weft-net/weft/kube"
	"github.com/weft-net/weft/network"
	"github.com/weft-net/weft/subnet"
)

// kubeOptions are the flags of Kubernetes mode, flanneld's names and
// defaults, and the environment flanneld reads for the node's name.
type kubeOptions struct {
	enabled     bool   // --kube-subnet-mgr
	kubeconfig  string // --kubeconfig-file
	apiURL      string // --kube-api-url
	netConfPath string // --net-config-path
	prefix      string // --kube-annotation-prefix
	setNetAvail bool   // --set-node-network-unavailable

	nodeName, podName, podNamespace string // NODE_NAME, POD_NAME, POD_NAMESPACE
}

func addKubeFlags(fs *pflag.FlagSet, k *kubeOptions) {
	fs.BoolVar(&k.enabled, "kube-subnet-mgr", false, "take the subnet and the peers from the Kubernetes API (Node podCIDRs and annotations) instead of etcd")
	fs.StringVar(&k.kubeconfig, "kubeconfig-file", "", "kubeconfig for the API server (default: the in-cluster service account)")
	fs.StringVar(&k.apiURL, "kube-api-url", "", "API server URL, overriding the kubeconfig's")
	fs.StringVar(&k.netConfPath, "net-config-path", "/etc/kube-flannel/net-conf.json", "network config in Kubernetes mode, the same JSON as etcd mode's config key")
	fs.StringVar(&k.prefix, "kube-annotation-prefix", kube.DefaultPrefix, "prefix of the Node annotations weft reads and writes")
	fs.BoolVar(&k.setNetAvail, "set-node-network-unavailable", true, "set the Node's NetworkUnavailable condition to false once the data plane is ready")
}

// fromEnv reads the node's name as flanneld does: NODE_NAME, or the Node of
// the pod POD_NAME in POD_NAMESPACE.
func (k *kubeOptions) fromEnv(getenv func(string) string) error {
	k.nodeName, k.podName, k.podNamespace = getenv("NODE_NAME"), getenv("POD_NAME"), getenv("POD_NAMESPACE")
	if !k.enabled {
		return nil
	}
	if err := kube.CheckPrefix(k.prefix); err != nil {
		return fmt.Errorf("--kube-annotation-prefix: %w", err)
	}
	if k.nodeName == "" && (k.podName == "" || k.podNamespace == "") {
		return errors.New("--kube-subnet-mgr: set NODE_NAME to this node's name, or POD_NAME and POD_NAMESPACE to weftd's pod")
	}
	return nil
}

// servicesOff turns weft's own service VIPs off in Kubernetes mode, where
// kube-proxy serves the Services (and weft's come from etcd, which this
// mode does not use); asking for them there is an error.
func (k *kubeOptions) servicesOff(services *bool, given bool) error {
	if !k.enabled {
		return nil
	}
	if given && *services {
		return errors.New("--services: weft's service VIPs are read from etcd and are off with --kube-subnet-mgr, where kube-proxy serves the Services")
	}
	*services = false
	return nil
}

// restConfig is the API server's address and credentials: the kubeconfig
// and URL flags, or the pod's service account when neither is given.
func (k *kubeOptions) restConfig() (*rest.Config, error) {
	var (
		c   *rest.Config
		err error
	)
	if k.kubeconfig == "" && k.apiURL == "" {
		c, err = rest.InClusterConfig()
		if err != nil {
			return nil, fmt.Errorf("--kube-subnet-mgr without --kubeconfig-file or --kube-api-url needs the in-cluster service account: %w", err)
		}
	} else if c, err = clientcmd.BuildConfigFromFlags(k.apiURL, k.kubeconfig); err != nil {
		return nil, fmt.Errorf("--kubeconfig-file %q / --kube-api-url %q: %w", k.kubeconfig, k.apiURL, err)
	}
	// Protobuf halves what a list of thousands of Nodes costs to decode.
	c.ContentType = "application/vnd.kubernetes.protobuf"
	c.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	c.UserAgent = "weftd/" + buildVersion()
	return c, nil
}

// wireKube is wire for --kube-subnet-mgr: the network config from a file,
// the subnet and the peers from the Node objects.
func wireKube(ctx context.Context, o options, log *slog.Logger) (*agent, error) {
	k := o.kube
	raw, err := os.ReadFile(k.netConfPath)
	if err != nil {
		return nil, fmt.Errorf("--net-config-path: %w", err)
	}
	cfg, err := subnet.ParseConfig(raw)
	if err != nil {
		return nil, fmt.Errorf("--net-config-path %s: %w", k.netConfPath, err)
	}
	if cfg.EnableIPv6() {
		return nil, fmt.Errorf("--net-config-path %s: Kubernetes mode takes IPv4 podCIDRs only so far; remove IPv6Network/EnableIPv6 or use etcd mode", k.netConfPath)
	}
	rc, err := k.restConfig()
	if err != nil {
		return nil, err
	}
	client, err := kube.NewClient(rc)
	if err != nil {
		return nil, err
	}

	a, promReg, err := newAgent(o, log)
	if err != nil {
		return nil, err
	}

	name, err := k.resolveNodeName(ctx, client, log)
	if err != nil {
		return nil, err
	}
	mgr, err := kube.New(kube.Config{Nodes: client, NodeName: name, Prefix: k.prefix, Network: cfg, Log: log, Registerer: promReg})
	if err != nil {
		return nil, err
	}
	kctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		mgr.Run(kctx)
	}()
	a.closers = append(a.closers, func() { stop(); <-done })
	fail := func(err error) (*agent, error) { a.close(); return nil, err }

	// public-ip-overwrite on the Node wins over the interface's address.
	publicIP := o.publicIP
	over, err := mgr.PublicIPOverwrite(ctx)
	if err != nil {
		return fail(fmt.Errorf("reading Node %s: %w", name, err))
	}
	if over.IsValid() {
		log.Info("using the Node's public-ip-overwrite", "node", name, "public_ip", over)
		publicIP = over.String()
	}
	up, err := network.SelectUplink(network.UplinkChoice{Ifaces: o.ifaces, Regexes: o.ifaceRegex, PublicIP: publicIP, PublicIP6: o.publicIP6})
	if err != nil {
		return fail(err)
	}
	log.Info("Kubernetes mode", "node", name, "annotation_prefix", k.prefix)
	// weft's own service VIPs are off in this mode (servicesOff): the
	// loop is fed by the Manager alone, and the config is the file's.
	node, err := a.newNode(cfg, up, nodeSource{holder: mgr, watcher: mgr, synced: mgr.LastSync}, promReg)
	if err != nil {
		return fail(err)
	}
	a.node.Store(node)
	if k.setNetAvail {
		a.starters = append(a.starters, func(ctx context.Context) { a.markNetworkAvailable(ctx, mgr) })
	}
	return a, nil
}

// resolveNodeName is NODE_NAME, or the node weftd's own pod runs on.
func (k *kubeOptions) resolveNodeName(ctx context.Context, client *kube.Client, log *slog.Logger) (string, error) {
	if k.nodeName != "" {
		return k.nodeName, nil
	}
	for {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		node, err := client.PodNode(rctx, k.podNamespace, k.podName)
		cancel()
		if err == nil && node != "" {
			return node, nil
		}
		if err == nil {
			err = errors.New("spec.nodeName is empty")
		}
		log.Warn("finding this node's name from POD_NAME and POD_NAMESPACE, will retry", "pod", k.podNamespace+"/"+k.podName, "err", err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
}

// markNetworkAvailable sets the Node's NetworkUnavailable condition to
// false once the node is first ready, retrying until the API server takes it.
func (a *agent) markNetworkAvailable(ctx context.Context, mgr *kube.Manager) {
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	backoff := time.Second
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if len(a.node.Load().Status().NotReady(time.Now(), a.opts.readyEtcdGrace)) > 0 {
			continue
		}
		err := mgr.SetNetworkAvailable(ctx)
		if err == nil {
			a.log.Info("set the Node's NetworkUnavailable condition to false")
			return
		}
		a.log.Error("marking the Node's network available, will retry", "err", err, "in", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 30*time.Second)
	}
}
