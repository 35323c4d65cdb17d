//go:build !purego

package proto

import (
	"math/bits"
	"os"
	"slices"
	"strings"
	"testing"
	"unsafe"
)

// cksumArchImpls returns the assembly folding variants this CPU can run,
// each wrapped to take any input: the assembly gets the longest prefix it
// accepts, in one call, and the tables the rest.
func cksumArchImpls() []cksumImpl {
	var impls []cksumImpl
	if cksumHasPCLMUL {
		impls = append(impls, cksumImpl{"sse", cksumAsmAnyLen(cksumFoldSSE, 16), 16})
	}
	if cksumHasVPCLMUL {
		impls = append(impls, cksumImpl{"avx2", cksumAsmAnyLen(cksumFoldAVX2, 128), 128})
	}
	return impls
}

func cksumAsmAnyLen(asm func(uint32, []byte) uint32, minLen int) func(uint32, []byte) uint32 {
	return func(crc uint32, p []byte) uint32 {
		if n := len(p) &^ 15; n >= minLen {
			crc = asm(crc, p[:n])
			p = p[n:]
		}
		return cksumUpdateTable(crc, p)
	}
}

// clmul returns the 128-bit carry-less product of a and b as hi, lo.
func clmul(a, b uint64) (hi, lo uint64) {
	for i := range 64 {
		if b>>i&1 != 0 {
			lo ^= a << i
			if i > 0 {
				hi ^= a >> (64 - i)
			}
		}
	}
	return hi, lo
}

func TestCksumFoldConsts(t *testing.T) {
	// x^d mod P, independently: the register after feeding the message
	// 0x01 followed by m zero bytes is x^(8m) * x^32 mod P.
	xPow := func(d int) uint64 {
		if d%8 != 0 || d < 32 {
			t.Fatalf("xPow(%d): want a multiple of 8, at least 32", d)
		}
		msg := make([]byte, 1+(d-32)/8)
		msg[0] = 1
		return uint64(cksumUpdateTable(0, msg))
	}
	pair := func(d int) [2]uint64 { return [2]uint64{xPow(d), xPow(d + 64)} }
	k := cksumFoldK
	tests := []struct {
		name      string
		got, want [2]uint64
	}{
		{"fold1K", k.fold1K, pair(1024)},
		{"fold512", k.fold512, pair(512)},
		{"fold256", k.fold256, pair(256)},
		{"fold128", k.fold128, pair(128)},
		{"reduce", k.reduce, [2]uint64{xPow(64), xPow(96)}},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("cksumFoldK.%s = %#x, want %#x", tc.name, tc.got, tc.want)
		}
	}
	// cksum_amd64.s reads the fields at these offsets.
	offsets := []struct {
		name      string
		got, want uintptr
	}{
		{"shuf", unsafe.Offsetof(k.shuf), 0},
		{"fold1K", unsafe.Offsetof(k.fold1K), 16},
		{"fold512", unsafe.Offsetof(k.fold512), 32},
		{"fold256", unsafe.Offsetof(k.fold256), 48},
		{"fold128", unsafe.Offsetof(k.fold128), 64},
		{"reduce", unsafe.Offsetof(k.reduce), 80},
		{"barrett", unsafe.Offsetof(k.barrett), 96},
	}
	for _, o := range offsets {
		if o.got != o.want {
			t.Errorf("offset of cksumFoldK.%s = %d, want %d (K_ in cksum_amd64.s)", o.name, o.got, o.want)
		}
	}
	// The shuffle reverses the 16 bytes of a lane.
	var shuf [16]byte
	for i := range shuf {
		shuf[i] = byte(k.shuf[i/8] >> (8 * (i % 8)))
	}
	for i, b := range shuf {
		if int(b) != 15-i {
			t.Errorf("cksumFoldK.shuf byte %d = %d, want %d", i, b, 15-i)
		}
	}
	// Barrett: mu*P = x^64 + r with deg r < 32, which defines
	// mu = floor(x^64 / P) since deg P = 32.
	mu, p := k.barrett[0], k.barrett[1]
	if p != 1<<32|cksumPoly {
		t.Errorf("cksumFoldK.barrett P = %#x, want %#x", p, uint64(1<<32|cksumPoly))
	}
	if bits.Len64(mu) != 33 {
		t.Errorf("mu = %#x has degree %d, want 32", mu, bits.Len64(mu)-1)
	}
	if hi, lo := clmul(mu, p); hi != 1 || lo>>32 != 0 {
		t.Errorf("mu*P = %#x:%016x, want x^64 plus a remainder under x^32", hi, lo)
	}
}

func TestCksumDetectCPU(t *testing.T) {
	t.Logf("PCLMULQDQ+SSSE3: %v, VPCLMULQDQ+AVX2: %v", cksumHasPCLMUL, cksumHasVPCLMUL)
	if cksumUseFold != cksumHasPCLMUL {
		t.Errorf("cksumUseFold = %v, want %v (cksumHasPCLMUL)", cksumUseFold, cksumHasPCLMUL)
	}
	// Linux lists in /proc/cpuinfo the features the kernel has enabled.
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skipf("no /proc/cpuinfo: %v", err)
	}
	var flags []string
	for line := range strings.Lines(string(info)) {
		if name, val, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(name) == "flags" {
			flags = strings.Fields(val)
			break
		}
	}
	if flags == nil {
		t.Skip("no flags line in /proc/cpuinfo")
	}
	has := func(names ...string) bool {
		for _, n := range names {
			if !slices.Contains(flags, n) {
				return false
			}
		}
		return true
	}
	if want := has("pclmulqdq", "ssse3"); cksumHasPCLMUL != want {
		t.Errorf("cksumHasPCLMUL = %v, /proc/cpuinfo says %v", cksumHasPCLMUL, want)
	}
	if want := has("pclmulqdq", "ssse3", "avx2", "vpclmulqdq"); cksumHasVPCLMUL != want {
		t.Errorf("cksumHasVPCLMUL = %v, /proc/cpuinfo says %v", cksumHasVPCLMUL, want)
	}
}
