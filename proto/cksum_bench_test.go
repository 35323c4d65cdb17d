package proto

import (
	"strconv"
	"testing"
)

var cksumBenchSink uint32

// BenchmarkCksum measures each CRC path over 64 B to 1 MiB: "auto" is
// CRCUpdate (the path used by Cksum and CksumBytes), "table" the
// slicing-by-16 tables, "rev" hash/crc32's hardware IEEE code on
// bit-reversed bytes, and "sse" and "avx2", where the CPU has them, the
// amd64 folding assembly (PCLMULQDQ on XMM, VPCLMULQDQ on YMM) in one call,
// for sizes it takes. 32 KiB is what io.Copy hands Cksum.Write.
func BenchmarkCksum(b *testing.B) {
	paths := []cksumImpl{
		{"auto", CRCUpdate, 0},
		{"table", cksumUpdateTable, 0},
		{"rev", cksumUpdateRev, 0},
	}
	paths = append(paths, cksumArchImpls()...)
	for _, size := range []int{64, 256, 4 << 10, 32 << 10, 1 << 20} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(i*131 + i>>8)
		}
		for _, p := range paths {
			if size < p.minLen {
				continue
			}
			b.Run(p.name+"/"+cksumBenchSize(size), func(b *testing.B) {
				b.SetBytes(int64(size))
				b.ReportAllocs()
				var crc uint32
				for b.Loop() {
					crc = p.f(crc, data)
				}
				cksumBenchSink = crc
			})
		}
	}
}

// BenchmarkCksumWrite measures the hash.Hash32 interface with 32 KiB writes.
func BenchmarkCksumWrite(b *testing.B) {
	data := make([]byte, 32<<10)
	h := NewCksum()
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		h.Write(data)
	}
	cksumBenchSink = h.Sum32()
}

// BenchmarkCRCCombine measures combining registers for a 1 GiB second part.
func BenchmarkCRCCombine(b *testing.B) {
	b.ReportAllocs()
	crc := uint32(0x12345678)
	for b.Loop() {
		crc = CRCCombine(crc, 0x9abcdef0, 1<<30+12345)
	}
	cksumBenchSink = crc
}

func cksumBenchSize(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return strconv.Itoa(n>>20) + "MiB"
	case n >= 1<<10 && n%(1<<10) == 0:
		return strconv.Itoa(n>>10) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}
