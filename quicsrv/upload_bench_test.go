package quicsrv_test

import (
	"fmt"
	"testing"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// BenchmarkUploadSmall stores 16 KiB files, each a new file, over UDP
// loopback through the raw client: request, one chunk, checksum, commit
// and result, with one file or 32 in flight, as a client sending a tree
// has. It measures the server's per-file path: the request's checks, the
// store's upload and group commit, the receive path and the checkpoint
// rule (an upload committed this fast is never checkpointed).
func BenchmarkUploadSmall(b *testing.B) {
	for _, inFlight := range []int{1, 32} {
		b.Run(fmt.Sprintf("inflight=%d", inFlight), func(b *testing.B) {
			srv := srvtest.Start(b, func(s *quicsrv.Server) { s.Logger = nil })
			key, _ := testKeys(b)
			c := registered(b, srv, "bench", key)
			data := seededBytes(1, 16<<10)
			b.SetBytes(int64(len(data)))
			b.ResetTimer()
			for i := 0; i < b.N; i += inFlight {
				n := min(inFlight, b.N-i)
				ms := make([]proto.Message, n)
				for j := range ms {
					ms[j] = c.uploadReq(fmt.Sprintf("d%d/f%d", (i+j)%100, i+j), data)
				}
				c.send(ms...)
				frames := make([][]byte, n)
				for j := range frames {
					r := expect[*proto.UploadReady](c)
					frames[j] = c.frame(r.Xfer, r.UploadID, 0, data)
				}
				c.sendData(frames...)
				for results := 0; results < n; {
					switch m := expectAny(c).(type) {
					case *proto.UploadChecksum:
						c.send(&proto.UploadCommit{Xfer: m.Xfer})
					case *proto.UploadResult:
						if m.Status != proto.ResultStored {
							b.Fatalf("result %+v", m)
						}
						results++
					default:
						b.Fatalf("unexpected %v %+v", m.Type(), m)
					}
				}
			}
		})
	}
}
