package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// PingOpts shape one Ping. The zero value sends until 1 reply arrives, for up to 2s.
type PingOpts struct {
	Count        int           // replies wanted; default 1
	Size         int           // ICMP payload bytes (-s); 0 = ping's default 56. IPv4 packet = Size+28
	DontFragment bool          // -M do: set DF and never fragment locally; too big fails with "message too long"
	Timeout      time.Duration // deadline for all replies (-w); default 2s
	Source       netip.Addr    // -I: send from this address; zero = the kernel's choice
}

// Ping pings to from namespace fromNS and succeeds once Count replies arrived before the
// deadline. ping keeps sending (every 0.2s) until then, so a path that needs a moment
// (ARP, a neighbour entry) still passes; use a PingStream to count losses. The error
// includes ping's output.
func Ping(ctx context.Context, fromNS string, to netip.Addr, opts PingOpts) error {
	if opts.Count <= 0 {
		opts.Count = 1
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	args := []string{"ping", "-n", "-i", "0.2",
		"-c", strconv.Itoa(opts.Count),
		"-w", strconv.Itoa(int(math.Ceil(opts.Timeout.Seconds())))}
	if opts.Size > 0 {
		args = append(args, "-s", strconv.Itoa(opts.Size))
	}
	if opts.DontFragment {
		args = append(args, "-M", "do")
	}
	if opts.Source.IsValid() {
		args = append(args, "-I", opts.Source.String())
	}
	args = append(args, to.String())
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout+5*time.Second)
	defer cancel()
	if _, err := execIn(ctx, discard, fromNS, args...); err != nil {
		return fmt.Errorf("pinging %v from %s: %w", to, fromNS, err)
	}
	return nil
}

// PingStream is a ping running until Stop, for measuring loss across an event such as a
// daemon restart.
type PingStream struct {
	cmd  *exec.Cmd
	out  bytes.Buffer // read only after done
	done chan struct{}
	err  error
}

// PingResult is what a PingStream saw.
type PingResult struct {
	Sent, Received int
	Lost           []int  // icmp_seq numbers with no reply (first 65535 only)
	Output         string // ping's whole output
}

// StartPingStream starts `ping -n -i interval -W 1 to` in fromNS. As root, interval may be
// as short as 1ms; 50ms is a good choice to measure outages.
func StartPingStream(fromNS string, to netip.Addr, interval time.Duration) (*PingStream, error) {
	s := &PingStream{done: make(chan struct{})}
	s.cmd = exec.Command("ip", "netns", "exec", fromNS, "ping", "-n", "-W", "1",
		"-i", strconv.FormatFloat(interval.Seconds(), 'f', 3, 64), to.String())
	s.cmd.Stdout, s.cmd.Stderr = &s.out, &s.out
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting ping stream to %v from %s: %w", to, fromNS, err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()
	return s, nil
}

// Stop interrupts ping (SIGINT, so it prints its summary) and returns what it saw. The
// error is set when ping died early or its summary cannot be read; the result still
// holds the output.
func (s *PingStream) Stop() (PingResult, error) {
	s.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-s.done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill()
		<-s.done
	}
	res, err := ParsePing(s.out.String())
	if err != nil {
		return res, fmt.Errorf("stopping ping stream: %w (ping: %v)", err, s.err)
	}
	return res, nil
}

var (
	summaryRE = regexp.MustCompile(`(\d+) packets transmitted, (\d+) (?:packets )?received`)
	replyRE   = regexp.MustCompile(`(?m)^\d+ bytes from .*icmp_seq=(\d+) `)
)

// ParsePing reads ping's output: the summary line for Sent and Received, and the reply
// lines for Lost. Duplicate replies do not count twice.
func ParsePing(out string) (PingResult, error) {
	res := PingResult{Output: out}
	m := summaryRE.FindStringSubmatch(out)
	if m == nil {
		return res, errors.New("no ping summary in output: " + lastLines(out, 3))
	}
	res.Sent, _ = strconv.Atoi(m[1])
	res.Received, _ = strconv.Atoi(m[2])
	seen := map[int]bool{}
	for _, r := range replyRE.FindAllStringSubmatch(out, -1) {
		if n, err := strconv.Atoi(r[1]); err == nil {
			seen[n] = true
		}
	}
	for seq := 1; seq <= min(res.Sent, 65535); seq++ {
		if !seen[seq] {
			res.Lost = append(res.Lost, seq)
		}
	}
	// The last request may still be in flight when ping was interrupted; ping does not
	// count it as received either, so Lost and Sent-Received agree.
	return res, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
