//go:build !amd64 || purego

package proto

// Only amd64 has a carry-less-multiply folding implementation
// (cksum_amd64.s); elsewhere CRCUpdate uses the tables or hash/crc32.

// cksumUseFold reports whether CRCUpdate can use cksumUpdateFold.
const cksumUseFold = false

// cksumFoldMin is the input length from which CRCUpdate folds rather than
// uses the tables.
const cksumFoldMin = 64

// cksumUpdateFold stands in for the amd64 folding code; CRCUpdate never
// calls it here.
func cksumUpdateFold(crc uint32, p []byte) uint32 { return cksumUpdateTable(crc, p) }
