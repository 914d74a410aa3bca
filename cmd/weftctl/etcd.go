package main

import (
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/etcdconn"
	"github.com/weft-net/weft/subnet"
)

// etcdFlags are the etcd flags every etcd-using command shares, with weftd's
// names and the same WEFTD_ environment variables as defaults.
type etcdFlags struct {
	endpoints    []string
	prefix       string
	caFile       string
	certFile     string
	keyFile      string
	username     string
	passwordFile string
	plainPasswd  bool // --etcd-allow-plaintext-password
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

func (e *etcdFlags) register(fs *pflag.FlagSet) {
	fs.StringSliceVar(&e.endpoints, "etcd-endpoints", strings.Split(envOr("WEFTD_ETCD_ENDPOINTS", "http://127.0.0.1:2379"), ","), "etcd endpoints")
	fs.StringVar(&e.prefix, "etcd-prefix", envOr("WEFTD_ETCD_PREFIX", "/coreos.com/network"), "etcd key prefix")
	fs.StringVar(&e.caFile, "etcd-cafile", envOr("WEFTD_ETCD_CAFILE", ""), "CA bundle for etcd's server certificate")
	fs.StringVar(&e.certFile, "etcd-certfile", envOr("WEFTD_ETCD_CERTFILE", ""), "client certificate for etcd")
	fs.StringVar(&e.keyFile, "etcd-keyfile", envOr("WEFTD_ETCD_KEYFILE", ""), "client key for etcd")
	fs.StringVar(&e.username, "etcd-username", envOr("WEFTD_ETCD_USERNAME", ""), "etcd user name")
	fs.StringVar(&e.passwordFile, "etcd-password-file", envOr("WEFTD_ETCD_PASSWORD_FILE", ""), "file holding the etcd password (or set WEFTD_ETCD_PASSWORD)")
	plain, _ := strconv.ParseBool(envOr("WEFTD_ETCD_ALLOW_PLAINTEXT_PASSWORD", "false"))
	fs.BoolVar(&e.plainPasswd, "etcd-allow-plaintext-password", plain, "send the etcd password over plaintext http:// to an endpoint not on loopback (refused otherwise)")
}

// registry connects to etcd and returns the subnet registry on it.
func (e *etcdFlags) registry(log *slog.Logger) (*subnet.Registry, *clientv3.Client, error) {
	pw := os.Getenv("WEFTD_ETCD_PASSWORD")
	if e.passwordFile != "" {
		b, err := os.ReadFile(e.passwordFile)
		if err != nil {
			return nil, nil, fmt.Errorf("reading --etcd-password-file: %w", err)
		}
		pw = strings.TrimRight(string(b), "\r\n")
	}
	cfg, err := etcdconn.Config(etcdconn.Options{
		Endpoints: e.endpoints, CAFile: e.caFile, CertFile: e.certFile, KeyFile: e.keyFile,
		Username: e.username, Password: pw, AllowPlaintextPassword: e.plainPasswd,
	}, log)
	if err != nil {
		return nil, nil, err
	}
	cli, err := clientv3.New(cfg)
	if err != nil {
		return nil, nil, fmt.Errorf("connecting to etcd: %w", err)
	}
	return subnet.NewRegistry(cli, e.prefix, log, nil), cli, nil
}

// parse parses a subcommand's flags, printing help on request.
func parse(fs *pflag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if err == pflag.ErrHelp {
			return errHelp
		}
		return errUsage
	}
	return nil
}
