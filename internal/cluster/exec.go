package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The only ways this package runs commands. Each one names the target namespace, so none
// can act on the caller's namespace by accident.

// ipIn runs `ip -n ns args...`.
func ipIn(ctx context.Context, log *slog.Logger, ns string, args ...string) (string, error) {
	if ns == "" {
		return "", errors.New("ip: empty namespace name")
	}
	return command(ctx, log, "ip", append([]string{"-n", ns}, args...)...)
}

// bridgeIn runs `bridge -n ns args...`.
func bridgeIn(ctx context.Context, log *slog.Logger, ns string, args ...string) (string, error) {
	if ns == "" {
		return "", errors.New("bridge: empty namespace name")
	}
	return command(ctx, log, "bridge", append([]string{"-n", ns}, args...)...)
}

// execIn runs `ip netns exec ns args...`.
func execIn(ctx context.Context, log *slog.Logger, ns string, args ...string) (string, error) {
	if ns == "" || len(args) == 0 {
		return "", errors.New("netns exec: empty namespace name or command")
	}
	return command(ctx, log, "ip", append([]string{"netns", "exec", ns}, args...)...)
}

// ipNetns runs `ip netns sub args...` for namespace administration.
func ipNetns(ctx context.Context, log *slog.Logger, sub string, args ...string) (string, error) {
	switch sub {
	case "add", "del", "list", "pids":
	default:
		return "", fmt.Errorf("ip netns %s: not allowed", sub)
	}
	return command(ctx, log, "ip", append([]string{"netns", sub}, args...)...)
}

// command runs name args and returns combined output; the error names the command and
// carries its output, so a failed step explains itself in a test log.
func command(ctx context.Context, log *slog.Logger, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = time.Second // a daemon keeping our pipe open must not hang us
	out, err := cmd.CombinedOutput()
	log.Debug("run", "cmd", name+" "+strings.Join(args, " "), "err", err)
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// killAll SIGKILLs every process inside ns and waits until none is left, so that deleting
// the namespace really frees it (a namespace lives on while a process is in it).
func killAll(ctx context.Context, log *slog.Logger, ns string) error {
	for {
		out, err := ipNetns(ctx, log, "pids", ns)
		if err != nil {
			if strings.Contains(out, "No such file") {
				return nil
			}
			return err
		}
		pids := strings.Fields(out)
		if len(pids) == 0 {
			return nil
		}
		for _, s := range pids {
			if pid, err := strconv.Atoi(s); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("killing processes %v in %s: %w", pids, ns, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}
