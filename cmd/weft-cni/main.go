// Command weft-cni is the CNI plugin of type "weft-cni": it attaches
// containers of any CNI runtime to weft's overlay by delegating to the bridge
// and host-local plugins with the node's subnet from subnet.env. See package
// cni for what it does and the README's "Containers without Docker".
package main

import (
	"github.com/containernetworking/cni/pkg/skel"

	"github.com/weft-net/weft/cni"
)

var version = "dev"

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.Versions, "CNI plugin weft-cni "+version)
}
