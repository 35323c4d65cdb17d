//go:build race

package bbr

// raceBuild: the race detector slows the simulations tenfold and can find
// nothing in them (they run on one goroutine); scripts/test runs them
// without it.
const raceBuild = true
