package cluster

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Proc is a background process running in a host's namespace, tracked by the cluster so
// Close stops it.
type Proc struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error // set before done is closed
}

// Start runs args in the host's namespace in the background. Its stdout and stderr are
// appended to <Dir>/<host>-<name>.log, after a header line, so a restarted daemon keeps
// one log. For environment variables use `env K=V cmd ...` as args.
//
// The process is in its own process group and has Pdeathsig SIGKILL: it dies with the
// test binary. (Pdeathsig fires when the OS thread that started it exits; Go only ends
// threads whose goroutine exits while locked with runtime.LockOSThread, which this package
// never does.)
func (h *Host) Start(name string, args ...string) (*Proc, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("starting %s on %s: no command", name, h.Name)
	}
	path := filepath.Join(h.cluster.Dir, h.Name+"-"+name+".log")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("starting %s on %s: %w", name, h.Name, err)
	}
	defer f.Close() // the child has its own copy
	fmt.Fprintf(f, "=== %s: %s\n", time.Now().Format(time.RFC3339Nano), strings.Join(args, " "))
	cmd := exec.Command("ip", append([]string{"netns", "exec", h.NS}, args...)...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s on %s: %w", name, h.Name, err)
	}
	p := &Proc{cmd: cmd, log: path, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := h.cluster.track(p); err != nil {
		p.Kill()
		return nil, fmt.Errorf("starting %s on %s: %w", name, h.Name, err)
	}
	h.cluster.log.Info("started", "host", h.Name, "name", name, "pid", p.Pid(), "log", path)
	return p, nil
}

// Pid is the process id of the program itself (`ip netns exec` execs it in place).
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// LogPath is the file receiving the process's stdout and stderr.
func (p *Proc) LogPath() string { return p.log }

// Signal sends sig to the process; os.ErrProcessDone after it exited.
func (p *Proc) Signal(sig os.Signal) error {
	select {
	case <-p.done:
		return os.ErrProcessDone
	default:
	}
	return p.cmd.Process.Signal(sig)
}

// Kill sends SIGKILL to the process's whole group and waits for the process to exit.
func (p *Proc) Kill() error {
	select {
	case <-p.done:
		return nil
	default:
	}
	syscall.Kill(-p.Pid(), syscall.SIGKILL)
	<-p.done
	return nil
}

// Stop sends SIGTERM and waits up to timeout for the process to exit, then kills its group.
// It returns the exit error of a process that was still running (nil for a daemon that
// exits cleanly on SIGTERM), nil if it was already gone. Children left behind in the
// namespace are killed by Close.
func (p *Proc) Stop(timeout time.Duration) error {
	if err := p.Signal(syscall.SIGTERM); errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.Kill()
		return fmt.Errorf("process %d did not exit %v after SIGTERM; killed", p.Pid(), timeout)
	}
	return p.err
}

// Wait waits for the process to exit and returns its exit error.
func (p *Proc) Wait() error {
	<-p.done
	return p.err
}

// Done is closed when the process has exited.
func (p *Proc) Done() <-chan struct{} { return p.done }

// Tail returns the last n lines of the process's log, for test failure messages.
func (p *Proc) Tail(n int) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	lines := strings.SplitAfter(string(b), "\n")
	if lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	return strings.Join(lines[max(0, len(lines)-n):], "")
}
