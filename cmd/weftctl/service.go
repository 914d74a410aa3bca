package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/pflag"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/service"
)

// svcFlags are the flags of every service command: etcd's, the namespace,
// and the output format.
type svcFlags struct {
	etcd      etcdFlags
	namespace string
	all       bool
	output    string
	file      string
}

func newSvcFlags(name string, stderr io.Writer, withFile, withOutput bool) (*pflag.FlagSet, *svcFlags) {
	fs := pflag.NewFlagSet(name, pflag.ContinueOnError)
	fs.SetOutput(stderr)
	f := &svcFlags{}
	f.etcd.register(fs)
	fs.StringVarP(&f.namespace, "namespace", "n", "", `namespace (default "default"; a file's own metadata.namespace wins)`)
	if withFile {
		fs.StringVarP(&f.file, "file", "f", "", "JSON file to read (- for stdin)")
	}
	if withOutput {
		fs.StringVarP(&f.output, "output", "o", "", "output format: json, or a table when empty")
	}
	return fs, f
}

func (f *svcFlags) ns() string {
	if f.namespace == "" {
		return service.DefaultNamespace
	}
	return f.namespace
}

func (f *svcFlags) store(stderr io.Writer) (*service.Store, *clientv3.Client, error) {
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	_, cli, err := f.etcd.registry(log)
	if err != nil {
		return nil, nil, err
	}
	return service.NewStore(cli, f.etcd.prefix), cli, nil
}

func (f *svcFlags) read(stdin io.Reader) ([]byte, error) {
	switch f.file {
	case "":
		return nil, errors.New("-f FILE is required")
	case "-":
		return io.ReadAll(stdin)
	}
	b, err := os.ReadFile(f.file)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", f.file, err)
	}
	return b, nil
}

// runService is `weftctl service create|get|list|delete|network`.
func runService(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	const use = "usage: weftctl service create -f FILE | get NAME [-o json] | list [-A] | delete NAME | network [CIDR]"
	if len(args) == 0 {
		fmt.Fprintln(stderr, use)
		return errUsage
	}
	verb := args[0]
	fs, f := newSvcFlags("weftctl service "+verb, stderr, verb == "create", verb == "get" || verb == "list")
	if verb == "list" {
		fs.BoolVarP(&f.all, "all-namespaces", "A", false, "list the services of every namespace")
	}
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	nargs := map[string]int{"create": 0, "get": 1, "list": 0, "delete": 1, "network": -1}
	want, ok := nargs[verb]
	if !ok {
		fmt.Fprintf(stderr, "weftctl service: unknown verb %q\n%s\n", verb, use)
		return errUsage
	}
	if want >= 0 && fs.NArg() != want || want < 0 && fs.NArg() > 1 {
		fmt.Fprintln(stderr, use)
		return errUsage
	}
	var data []byte
	if verb == "create" {
		var err error
		if data, err = f.read(stdin); err != nil {
			return err
		}
	}
	st, cli, err := f.store(stderr)
	if err != nil {
		return err
	}
	defer cli.Close()

	switch verb {
	case "create":
		svc, err := service.ParseService(data, f.ns())
		if err != nil {
			return fmt.Errorf("%s: %w", f.file, err)
		}
		svc, err = st.Create(ctx, svc)
		if err != nil {
			return err
		}
		fmt.Fprintf(stderr, "service %s created\n", svc.Ref())
		fmt.Fprintln(stdout, svc.ClusterIP)
		return nil
	case "get":
		svc, err := st.Get(ctx, f.ns(), fs.Arg(0))
		if err != nil {
			return err
		}
		if f.output == "json" {
			return printJSON(stdout, svc)
		}
		return printServices(ctx, st, stdout, []service.Service{svc})
	case "list":
		ns := f.ns()
		if f.all {
			ns = ""
		}
		svcs, bad, err := st.List(ctx, ns)
		if err != nil {
			return err
		}
		for k, e := range bad {
			fmt.Fprintf(stderr, "weftctl: skipping %s: %v\n", k, e)
		}
		if f.output == "json" {
			return printJSON(stdout, map[string]any{"kind": "List", "apiVersion": "v1", "items": svcs})
		}
		return printServices(ctx, st, stdout, svcs)
	case "delete":
		if err := st.Delete(ctx, f.ns(), fs.Arg(0)); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "service %s deleted\n", service.Ref(f.ns(), fs.Arg(0)))
		return nil
	}
	// network
	if fs.NArg() == 0 {
		p, err := st.Network(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, p)
		return nil
	}
	p, err := st.SetNetwork(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "service network set to %s\n", p)
	return nil
}

func printJSON(w io.Writer, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

func printServices(ctx context.Context, st *service.Store, w io.Writer, svcs []service.Service) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tCLUSTER-IP\tPORT(S)\tAFFINITY\tENDPOINTS")
	for _, s := range svcs {
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s", p.Port, p.Protocol))
		}
		aff := "None"
		if s.AffinityTimeout > 0 {
			aff = fmt.Sprintf("ClientIP(%ds)", s.AffinityTimeout)
		}
		eps := "<none>"
		if e, err := st.GetEndpoints(ctx, s.Namespace, s.Name); err == nil {
			eps = endpointList(e)
		} else if !errors.Is(err, service.ErrNotFound) {
			return err
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", s.Namespace, s.Name, s.ClusterIP, strings.Join(ports, ","), aff, eps)
	}
	return tw.Flush()
}

func endpointList(e service.Endpoints) string {
	var out []string
	for _, sub := range e.Subsets {
		for _, a := range sub.Addresses {
			for _, p := range sub.Ports {
				out = append(out, netip.AddrPortFrom(a, p.Port).String())
			}
		}
	}
	if len(out) == 0 {
		return "<none>"
	}
	return strings.Join(out, ",")
}

// runEndpoints is `weftctl endpoints set NAME [ADDR:PORT ...] | get NAME`.
func runEndpoints(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	const use = "usage: weftctl endpoints set NAME [ADDR:PORT ...] | get NAME [-o json]"
	if len(args) == 0 || (args[0] != "set" && args[0] != "get") {
		fmt.Fprintln(stderr, use)
		return errUsage
	}
	verb := args[0]
	fs, f := newSvcFlags("weftctl endpoints "+verb, stderr, false, verb == "get")
	if err := parse(fs, args[1:]); err != nil {
		return err
	}
	if fs.NArg() < 1 || verb == "get" && fs.NArg() != 1 {
		fmt.Fprintln(stderr, use)
		return errUsage
	}
	name := fs.Arg(0)
	var addrs []netip.AddrPort
	for _, a := range fs.Args()[1:] {
		ap, err := netip.ParseAddrPort(a)
		if err != nil || !ap.Addr().Is4() || ap.Port() == 0 {
			return fmt.Errorf("endpoint %q: want IPv4ADDR:PORT, such as 172.16.78.9:80", a)
		}
		addrs = append(addrs, ap)
	}
	st, cli, err := f.store(stderr)
	if err != nil {
		return err
	}
	defer cli.Close()
	if verb == "get" {
		e, err := st.GetEndpoints(ctx, f.ns(), name)
		if err != nil {
			return err
		}
		if f.output == "json" {
			return printJSON(stdout, e)
		}
		tw := tabwriter.NewWriter(stdout, 0, 8, 2, ' ', 0)
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tENDPOINTS")
		fmt.Fprintf(tw, "%s\t%s\t%s\n", e.Namespace, e.Name, endpointList(e))
		return tw.Flush()
	}
	svc, err := st.Get(ctx, f.ns(), name)
	if err != nil {
		return err
	}
	e, err := endpointsFor(svc, addrs)
	if err != nil {
		return err
	}
	if err := st.SetEndpoints(ctx, e); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "endpoints %s set: %s\n", e.Ref(), endpointList(e))
	return nil
}

// endpointsFor groups addrs by port into subsets, naming each port after the
// service port whose targetPort it is (or the only port of a one-port
// service), so that every endpoint serves the right service port.
func endpointsFor(svc service.Service, addrs []netip.AddrPort) (service.Endpoints, error) {
	e := service.Endpoints{Namespace: svc.Namespace, Name: svc.Name}
	byPort := map[uint16]int{}
	for _, ap := range addrs {
		i, ok := byPort[ap.Port()]
		if !ok {
			var ports []service.EndpointPort
			for _, p := range svc.Ports {
				if p.TargetPort == ap.Port() || len(svc.Ports) == 1 {
					ports = append(ports, service.EndpointPort{Name: p.Name, Protocol: p.Protocol, Port: ap.Port()})
				}
			}
			if len(ports) == 0 {
				return e, fmt.Errorf("endpoint %s: port %d is the targetPort of no port of service %s", ap, ap.Port(), svc.Ref())
			}
			i = len(e.Subsets)
			byPort[ap.Port()] = i
			e.Subsets = append(e.Subsets, service.Subset{Ports: ports})
		}
		e.Subsets[i].Addresses = append(e.Subsets[i].Addresses, ap.Addr())
	}
	return e, nil
}

// runApply is `weftctl apply -f FILE`.
func runApply(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs, f := newSvcFlags("weftctl apply", stderr, true, false)
	if err := parse(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		fmt.Fprintln(stderr, "usage: weftctl apply -f FILE   (a Service, an Endpoints, or a v1 List of them)")
		return errUsage
	}
	data, err := f.read(stdin)
	if err != nil {
		return err
	}
	objs, err := service.ParseObjects(data, f.ns())
	if err != nil {
		return fmt.Errorf("%s: %w", f.file, err)
	}
	st, cli, err := f.store(stderr)
	if err != nil {
		return err
	}
	defer cli.Close()
	res, err := st.Apply(ctx, objs)
	if err != nil {
		return err
	}
	if len(res.Services) == 1 && res.Endpoints == 0 {
		fmt.Fprintf(stdout, "service %s applied: %s\n", res.Services[0].Ref(), res.Services[0].ClusterIP)
		return nil
	}
	fmt.Fprintf(stdout, "applied %d services (%d created) and %d endpoints in %s etcd transactions\n",
		len(res.Services), res.Created, res.Endpoints, strconv.Itoa(res.Transactions))
	return nil
}
