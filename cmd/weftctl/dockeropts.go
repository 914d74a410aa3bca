package main

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/network"
)

// runDockerOpts is `weftctl docker-opts`: what flannel's mk-docker-opts.sh
// printed, from subnet.env. Docker must not masquerade when weft does.
func runDockerOpts(args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("weftctl docker-opts", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.StringP("subnet-file", "f", "/run/flannel/subnet.env", "subnet.env written by weftd")
	key := fs.StringP("key", "k", "DOCKER_OPTS", "variable name to print")
	out := fs.StringP("output", "d", "", "write to this file instead of stdout")
	if err := parse(fs, args); err != nil {
		return err
	}
	env, err := network.ReadSubnetEnv(*file)
	if err != nil {
		return err
	}
	line := fmt.Sprintf("%s=%q\n", *key, dockerOpts(env))
	if *out == "" {
		_, err = io.WriteString(stdout, line)
		return err
	}
	return os.WriteFile(*out, []byte(line), 0o644)
}

// dockerOpts adds, as flannel's mk-docker-opts.sh does, "--ipv6
// --fixed-cidr-v6=<FLANNEL_IPV6_SUBNET>" when the node has an IPv6 subnet;
// an IPv6-only node has no --bip.
func dockerOpts(env network.SubnetEnv) string {
	var opts []string
	if env.Subnet.IsValid() {
		opts = append(opts, "--bip="+env.Subnet.String())
	}
	if env.Subnet6.IsValid() {
		opts = append(opts, "--ipv6", "--fixed-cidr-v6="+env.Subnet6.String())
	}
	opts = append(opts, fmt.Sprintf("--ip-masq=%t", !env.IPMasq), fmt.Sprintf("--mtu=%d", env.MTU))
	return strings.Join(opts, " ")
}
