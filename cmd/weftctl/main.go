// Command weftctl is the operator's tool for weft: it sets and validates the
// network config in etcd, lists leases, shows a node's state, prints Docker's
// options from subnet.env, and runs a demo overlay on this one machine.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `weftctl: the operator's tool for weft

Usage:
  weftctl config get|set|validate [flags]   the network config in etcd
  weftctl leases [flags]                    every node's lease: subnet, public IP, VTEP MAC, TTL left
  weftctl status [flags]                    the local weftd's lease, peers, reconcile, etcd and readiness
  weftctl docker-opts [flags]               Docker's --bip, --mtu and --ip-masq from subnet.env
  weftctl demo [flags]                      a whole overlay in network namespaces on this machine
  weftctl service create|get|list|delete    services: -f FILE (a v1 Service), NAME; -n NAMESPACE
  weftctl endpoints set|get NAME [ADDR:PORT ...]  a service's endpoints
  weftctl apply -f FILE                     create or replace a Service, Endpoints or a v1 List of them

Run "weftctl COMMAND --help" for a command's flags.
`

// errUsage means the command line was wrong; the message has been printed.
var errUsage = errors.New("usage")

// errHelp means help was asked for and printed.
var errHelp = errors.New("help")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	switch {
	case err == nil, errors.Is(err, errHelp):
	case errors.Is(err, errUsage):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "weftctl:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "config":
		return runConfig(ctx, rest, stdin, stdout, stderr)
	case "leases":
		return runLeases(ctx, rest, stdout, stderr)
	case "status":
		return runStatus(ctx, rest, stdout, stderr)
	case "docker-opts":
		return runDockerOpts(rest, stdout, stderr)
	case "demo":
		return runDemo(ctx, rest, stdout, stderr)
	case "service", "services", "svc":
		return runService(ctx, rest, stdin, stdout, stderr)
	case "endpoints", "ep":
		return runEndpoints(ctx, rest, stdout, stderr)
	case "apply":
		return runApply(ctx, rest, stdin, stdout, stderr)
	}
	fmt.Fprintf(stderr, "weftctl: unknown command %q\n\n%s", cmd, usage)
	return errUsage
}
