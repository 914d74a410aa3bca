package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/subnet"
)

// runLeases is `weftctl leases`: every subnet key, valid or not.
func runLeases(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("weftctl leases", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	var ef etcdFlags
	ef.register(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	reg, cli, err := ef.registry(slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))
	if err != nil {
		return err
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	leases, _, err := reg.ListLeases(ctx)
	if err != nil {
		return err
	}
	printLeases(stdout, leases)
	return nil
}

func printLeases(w io.Writer, leases []subnet.Lease) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SUBNET\tPUBLIC IP\tVTEP MAC\tTTL")
	for _, l := range leases {
		if l.Err != nil {
			fmt.Fprintf(tw, "%s\t-\t-\tinvalid: %s\n", printable(l.Key), printable(l.Err.Error()))
			continue
		}
		ttl := "reserved"
		if l.TTL >= 0 {
			ttl = l.TTL.Round(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", l.Subnet, l.Attrs.PublicIP, l.Attrs.VtepMAC, ttl)
		if l.Subnet6.IsValid() { // a dual-stack lease's IPv6 half, on a line of its own
			fmt.Fprintf(tw, "  %s\t%s\t%s\t\n", l.Subnet6, l.Attrs.PublicIP6, l.Attrs.VtepMAC6)
		}
	}
	tw.Flush()
}

// printable makes a string from etcd safe for a terminal: anything written
// under the prefix can be a key, so a key or a reason holding a control
// character (a terminal escape), a tab (which would shift the columns) or
// anything else unprintable is shown Go-quoted, and a long one is cut.
func printable(s string) string {
	const most = 120
	long := len(s) > most
	if long {
		s = s[:most]
	}
	clean := utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) })
	if !clean {
		s = strconv.Quote(s)
	}
	if long {
		s += "..."
	}
	return s
}
