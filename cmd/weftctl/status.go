package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"text/tabwriter"
	"time"

	"github.com/spf13/pflag"

	"github.com/weft-net/weft/network"
)

type statusReply struct {
	Status   network.Status `json:"status"`
	Ready    bool           `json:"ready"`
	NotReady []string       `json:"notReady"`
}

// runStatus is `weftctl status`: the local weftd's view of itself, read from
// its /status endpoint.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("weftctl status", pflag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("metrics-addr", envOr("WEFTD_METRICS_ADDR", "127.0.0.1:8285"), "weftd's --metrics-addr")
	output := fs.StringP("output", "o", "text", "text or json")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+"/status", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("asking weftd at %s: %w", *addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading weftd's status: %w", err)
	}
	if *output == "json" {
		_, err := stdout.Write(body)
		return err
	}
	var r statusReply
	if err := json.Unmarshal(body, &r); err != nil {
		return fmt.Errorf("weftd at %s answered %q: %w", *addr, body, err)
	}
	printStatus(stdout, r, time.Now())
	return nil
}

func printStatus(w io.Writer, r statusReply, now time.Time) {
	s := r.Status
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	ago := func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return now.Sub(t).Round(time.Millisecond).String() + " ago"
	}
	lease := "none"
	if s.HasLease {
		lease = s.Subnet.String()
	}
	fmt.Fprintf(tw, "lease:\t%s\n", lease)
	fmt.Fprintf(tw, "public IP:\t%s\n", s.PublicIP)
	fmt.Fprintf(tw, "VTEP MAC:\t%s\n", s.VtepMAC)
	if !s.LeaseExpiry.IsZero() {
		fmt.Fprintf(tw, "lease expires:\t%s (in %s)\n", s.LeaseExpiry.Format(time.RFC3339), s.LeaseExpiry.Sub(now).Round(time.Second))
	}
	fmt.Fprintf(tw, "peers:\t%d desired, %d programmed\n", s.Desired, s.Programmed)
	fmt.Fprintf(tw, "last reconcile:\t%s\n", ago(s.LastReconcile))
	fmt.Fprintf(tw, "etcd last in sync:\t%s\n", ago(s.LastEtcdSync))
	fmt.Fprintf(tw, "subnet file:\t%s\n", map[bool]string{true: "written", false: "not written"}[s.SubnetFile])
	if s.ConfigPending != "" {
		fmt.Fprintf(tw, "config:\t%s\n", s.ConfigPending)
	}
	if r.Ready {
		fmt.Fprintf(tw, "ready:\tyes\n")
	} else {
		fmt.Fprintf(tw, "ready:\tno\n")
		for _, why := range r.NotReady {
			fmt.Fprintf(tw, "\t- %s\n", why)
		}
	}
	tw.Flush()
}
