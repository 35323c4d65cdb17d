package quiccli

import "github.com/alecthomas/kong"

// homeless is implemented by the commands that keep no identity, so run
// without a home directory (cksum).
type homeless interface{ homeless() }

// needsHome reports whether the command kctx selected needs a home
// directory.
func needsHome(kctx *kong.Context) bool {
	n := kctx.Selected()
	if n == nil || !n.Target.CanAddr() {
		return true
	}
	_, ok := n.Target.Addr().Interface().(homeless)
	return !ok
}
