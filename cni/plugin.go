package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	types100 "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
)

// Versions are the CNI spec versions weft-cni accepts: 1.0.0, the older
// ones runtimes still send, and 1.1.0 for STATUS.
var Versions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Funcs are the plugin's commands, for skel.PluginMainFuncs. GC (1.1.0) is
// left to skel, which answers it with success: there is nothing weft-cni
// holds beyond the delegate's state and its own per-container files.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{Add: cmdAdd, Check: cmdCheck, Del: cmdDel, Status: cmdStatus}
}

// errPluginNotAvailable is the spec's (1.1.0) STATUS code for "cannot serve
// ADD requests now".
const errPluginNotAvailable uint = 50

// confError is the spec's decoding failure, for a config that is not the
// JSON weft-cni reads or whose fields cannot be used.
func confError(err error) *types.Error {
	return types.NewError(types.ErrDecodingFailure, err.Error(), "")
}

// envError turns a subnet.env problem into the spec's error: try again later
// while the file is missing (weftd has not leased a subnet yet), an invalid
// network config when it is there but unusable.
func envError(err error) *types.Error {
	if errors.Is(err, errNoSubnetEnv) {
		return types.NewError(types.ErrTryAgainLater, err.Error(), "")
	}
	return types.NewError(types.ErrInvalidNetworkConfig, err.Error(), "")
}

func cmdAdd(args *skel.CmdArgs) error {
	n, err := parseConf(args.StdinData)
	if err != nil {
		return confError(err)
	}
	env, err := readSubnetEnv(n.SubnetFile)
	if err != nil {
		return envError(err)
	}
	ctx := context.Background()
	typ, raw, err := buildDelegate(ctx, n, env)
	if err != nil {
		return err
	}
	// Recorded before the delegate runs: if the plugin dies half way, DEL
	// still knows what to undo.
	cache := cachePath(n.DataDir, args)
	if err := writeCache(cache, raw); err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	res, err := invoke.DelegateAdd(ctx, typ, raw, nil)
	if err != nil {
		// Undo what the delegate may have done; keep the record if that
		// fails too, so the runtime's DEL can finish the job.
		if derr := invoke.DelegateDel(ctx, typ, raw, nil); derr == nil {
			os.Remove(cache)
		}
		return err
	}
	return types.PrintResult(res, n.CNIVersion)
}

// buildDelegate returns the delegate's plugin type and its config as JSON.
// The plugin must be found in CNI_PATH: nothing is recorded or attempted for
// a delegate that is not installed.
func buildDelegate(ctx context.Context, n *netConf, env subnetEnv) (string, []byte, error) {
	typ := "bridge"
	if t, ok := n.Delegate["type"].(string); ok && t != "" {
		typ = t
	}
	path, err := invoke.FindInPath(typ, filepath.SplitList(os.Getenv("CNI_PATH")))
	if err != nil {
		return "", nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("delegate plugin %q: %v (CNI_PATH=%s)", typ, err, os.Getenv("CNI_PATH")), "")
	}
	ver, err := delegateVersion(ctx, path, n.CNIVersion)
	if err != nil {
		return "", nil, err
	}
	d, err := delegateConf(n, env, ver)
	if err != nil {
		return "", nil, confError(err)
	}
	raw, err := json.Marshal(d)
	if err != nil {
		return "", nil, confError(fmt.Errorf("encoding the delegate's config: %w", err))
	}
	return typ, raw, nil
}

// delegateVersion is the spec version to speak with the delegate at path:
// the config's own, except that a 1.1.0 config meets plugins that stop at
// 1.0.0 (Debian 12's) with 1.0.0, whose results have the same form.
func delegateVersion(ctx context.Context, path, confVersion string) (string, error) {
	if newer, err := version.GreaterThan(confVersion, "1.0.0"); err != nil || !newer {
		return confVersion, nil
	}
	info, err := invoke.GetVersionInfo(ctx, path, nil)
	if err != nil {
		return "", fmt.Errorf("asking delegate plugin %s for its versions: %w", path, err)
	}
	supported := info.SupportedVersions()
	if slices.Contains(supported, confVersion) {
		return confVersion, nil
	}
	if slices.Contains(supported, "1.0.0") {
		return "1.0.0", nil
	}
	return confVersion, nil // the delegate says what it thinks of it
}

func cmdDel(args *skel.CmdArgs) error {
	n, err := parseConf(args.StdinData)
	if err != nil {
		return confError(err)
	}
	ctx := context.Background()
	cache := cachePath(n.DataDir, args)
	raw, err := os.ReadFile(cache)
	switch {
	case err == nil:
	case errors.Is(err, os.ErrNotExist):
		// No record: never added, or already deleted. Still hand the
		// delegate a DEL built from today's subnet.env, which releases an
		// address a lost record would otherwise leak; without subnet.env
		// there is nothing left to do.
		env, eerr := readSubnetEnv(n.SubnetFile)
		if eerr != nil {
			return nil
		}
		typ, raw, err := buildDelegate(ctx, n, env)
		if err != nil {
			return nil
		}
		return invoke.DelegateDel(ctx, typ, raw, nil)
	default:
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	typ, err := cachedType(raw, cache)
	if err != nil {
		return err
	}
	if err := invoke.DelegateDel(ctx, typ, raw, nil); err != nil {
		return err
	}
	if err := os.Remove(cache); err != nil && !errors.Is(err, os.ErrNotExist) {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	return nil
}

func cmdCheck(args *skel.CmdArgs) error {
	n, err := parseConf(args.StdinData)
	if err != nil {
		return confError(err)
	}
	cache := cachePath(n.DataDir, args)
	raw, err := os.ReadFile(cache)
	if errors.Is(err, os.ErrNotExist) {
		return types.NewError(types.ErrUnknownContainer,
			fmt.Sprintf("no record of container %s interface %s in %s: it was not added by weft-cni", args.ContainerID, args.IfName, n.DataDir), "")
	}
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	if len(n.PrevResult) == 0 {
		return types.NewError(types.ErrInvalidNetworkConfig, "CHECK needs prevResult, the result of ADD", "")
	}
	var d map[string]any
	if err := json.Unmarshal(raw, &d); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("%s: %v", cache, err), "")
	}
	typ, err := cachedType(raw, cache)
	if err != nil {
		return err
	}
	prev, err := version.NewResult(n.CNIVersion, n.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
	}
	// The node's lease must still be the one the container got its address
	// from: after weftd moved to another subnet, the overlay no longer
	// routes the old one here.
	env, err := readSubnetEnv(n.SubnetFile)
	if err != nil {
		return envError(err)
	}
	if err := inLease(prev, env); err != nil {
		return err
	}
	dver, _ := d["cniVersion"].(string)
	conv, err := prev.GetAsVersion(dver)
	if err != nil {
		return types.NewError(types.ErrIncompatibleCNIVersion, fmt.Sprintf("prevResult as version %s: %v", dver, err), "")
	}
	d["prevResult"] = conv
	withPrev, err := json.Marshal(d)
	if err != nil {
		return confError(err)
	}
	return invoke.DelegateCheck(context.Background(), typ, withPrev, nil)
}

// inLease checks that every address of the result lies in the node's lease.
func inLease(res types.Result, env subnetEnv) error {
	conv, err := res.GetAsVersion("1.0.0")
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
	}
	r, ok := conv.(*types100.Result)
	if !ok {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: unexpected type %T", conv), "")
	}
	for _, ipc := range r.IPs {
		a, ok := netip.AddrFromSlice(ipc.Address.IP)
		if !ok || !env.lease().Contains(a.Unmap()) {
			return fmt.Errorf("container address %v is outside this node's subnet %v (subnet.env changed since ADD)", ipc.Address.IP, env.lease())
		}
	}
	return nil
}

func cmdStatus(args *skel.CmdArgs) error {
	n, err := parseConf(args.StdinData)
	if err != nil {
		return confError(err)
	}
	if _, err := readSubnetEnv(n.SubnetFile); err != nil {
		return types.NewError(errPluginNotAvailable, err.Error(), "")
	}
	return nil
}

// cachePath is the file that records one attachment's delegate config.
func cachePath(dataDir string, args *skel.CmdArgs) string {
	return filepath.Join(dataDir, args.ContainerID+"-"+args.IfName)
}

// writeCache writes b to path atomically, creating dataDir if needed.
func writeCache(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating data dir: %w", err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("writing %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

// cachedType reads the delegate's plugin type from a recorded config.
func cachedType(raw []byte, path string) (string, error) {
	var c struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(raw, &c); err != nil || c.Type == "" {
		return "", types.NewError(types.ErrDecodingFailure, fmt.Sprintf("%s: not a delegate config (%v)", path, err), "")
	}
	return c.Type, nil
}
