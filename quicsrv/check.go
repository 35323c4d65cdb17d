package quicsrv

import (
	"context"
	"io"

	"github.com/qbackup/qbackup/proto"
)

// Damage on the server's disk is found by store.Check, which marks a
// damaged version (the server then refuses to restore it, with
// CodeDamaged, and treats the file as changed, so the client's next send
// uploads it and heals it): qbackupd check, run by the operator
// (cli.go), runs it.

// fileSums is the store.SumFunc of qbackupd check: the checksums a
// client compares, read at full speed. The store's reader fails once ctx
// is done.
func fileSums(_ context.Context, r io.ReaderAt, size int64) (uint32, [32]byte, error) {
	return proto.FileChecksums(r, size)
}
