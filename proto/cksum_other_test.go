//go:build !amd64 || purego

package proto

// cksumArchImpls returns the assembly variants this build has: none.
func cksumArchImpls() []cksumImpl { return nil }
