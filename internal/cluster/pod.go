package cluster

import (
	"context"
	"fmt"
)

// AddPod creates namespace "<prefix><host>-<name>" with lo up and nothing else: a
// container's network namespace before a CNI plugin wires it, as a runtime makes it.
// The returned Container has no address. Close removes the namespace, and with it
// whatever a plugin put inside.
func (h *Host) AddPod(ctx context.Context, name string) (*Container, error) {
	if err := checkName("pod", name); err != nil {
		return nil, err
	}
	ct := &Container{Name: name, NS: h.NS + "-" + name, Host: h}
	if err := h.cluster.addNamespace(ctx, ct.NS); err != nil {
		return nil, fmt.Errorf("adding pod %s on %s: %w", name, h.Name, err)
	}
	return ct, nil
}

// NetnsPath is the namespace's path, the CNI_NETNS a runtime hands a CNI plugin.
func (ct *Container) NetnsPath() string { return "/var/run/netns/" + ct.NS }
