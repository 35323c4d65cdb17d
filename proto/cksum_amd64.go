//go:build !purego

package proto

// Carry-less-multiply folding for the MSB-first cksum CRC on amd64, after
// Gopal et al., "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ
// Instruction" (Intel, 2009), in its non-reflected form. The assembly is in
// cksum_amd64.s; this file derives its constants and picks a variant.
//
// Notation: P = x^32 + 0x04C11DB7, and a run of bytes is a polynomial whose
// highest coefficient is the top bit of its first byte. Feeding a message M
// of n bytes into register R gives (R*x^(8n) + M*x^32) mod P; a nonzero R
// therefore equals xoring R, big-endian, into the first 4 bytes of M.
//
// The assembly loads 16-byte lanes and reverses their bytes (PSHUFB with
// cksumFoldK.shuf), so that bit i of the 128-bit register is the
// coefficient of x^i. A lane A that ends d bits before a later lane ends is
// moved onto that lane by
//
//	A*x^d = A_hi*x^(d+64) + A_lo*x^d ≡ A_hi*(x^(d+64) mod P) + A_lo*(x^d mod P),
//
// two 64x32-bit carry-less products of at most 95 bits, which are xored into
// that later lane. Congruence mod P is all that matters, because the final
// register is itself a remainder mod P. The main loop keeps 8 lanes (128
// bytes) in flight and folds each by d = 1024 bits per step; the lanes are
// then merged pairwise at d = 512, 256 and 128, leftover 16-byte lanes are
// folded in at d = 128, and the last lane A is reduced to A*x^32 mod P.

// cksumFoldK holds the constants the assembly reads (by symbol, so it is a
// value, not a pointer).
var cksumFoldK = newCksumFoldConsts()

// cksumFoldConsts is the layout of cksumFoldK; the field comments give the
// byte offsets cksum_amd64.s uses (K_SHUF, ...). Each fold pair is
// {x^d mod P, x^(d+64) mod P}: the low qword multiplies A_lo, the high one
// A_hi.
type cksumFoldConsts struct {
	shuf    [2]uint64 // 0: PSHUFB control reversing the 16 bytes of a lane
	fold1K  [2]uint64 // 16: d = 1024, one step of the 128-byte main loop
	fold512 [2]uint64 // 32: d = 512
	fold256 [2]uint64 // 48: d = 256
	fold128 [2]uint64 // 64: d = 128, one lane ahead
	reduce  [2]uint64 // 80: {x^64 mod P, x^96 mod P}, 128 bits -> 64 bits
	barrett [2]uint64 // 96: {floor(x^64 / P), P}, 64 bits -> 32 bits
}

func newCksumFoldConsts() cksumFoldConsts {
	fold := func(d int) [2]uint64 {
		return [2]uint64{uint64(cksumXPow(d)), uint64(cksumXPow(d + 64))}
	}
	return cksumFoldConsts{
		// Byte i of the result is byte 15-i of the lane.
		shuf:    [2]uint64{0x08090a0b0c0d0e0f, 0x0001020304050607},
		fold1K:  fold(1024),
		fold512: fold(512),
		fold256: fold(256),
		fold128: fold(128),
		// The last lane A stands for A*x^32 mod P. First A_hi*x^96 is
		// replaced by A_hi*(x^96 mod P), leaving
		// B = A_hi*(x^96 mod P) + A_lo*x^32 of under 96 bits; then B's top
		// 32 bits, B_hi*x^64, by B_hi*(x^64 mod P), leaving C of under 64
		// bits. Barrett reduction gives C mod P as
		// C + floor(floor(C/x^32) * mu / x^32) * P, mu = floor(x^64 / P),
		// exactly for polynomials over GF(2).
		reduce:  [2]uint64{uint64(cksumXPow(64)), uint64(cksumXPow(96))},
		barrett: [2]uint64{cksumBarrettMu(), 1<<32 | cksumPoly},
	}
}

// cksumXPow returns x^d mod P.
func cksumXPow(d int) uint32 {
	r := uint32(1)
	for range d {
		r = cksumMulX(r)
	}
	return r
}

// cksumBarrettMu returns floor(x^64 / P), a polynomial of degree 32, by long
// division. The first quotient bit (x^32) is always set and leaves
// x^64 + x^32*P = (P - x^32)*x^32, which fits in 64 bits.
func cksumBarrettMu() uint64 {
	q := uint64(1) << 32
	rem := uint64(cksumPoly) << 32
	for i := 31; i >= 0; i-- {
		if rem>>(32+i)&1 != 0 {
			q |= 1 << i
			rem ^= (1<<32 | cksumPoly) << i
		}
	}
	return q
}

// CPU support, from CPUID and XGETBV. cksumHasPCLMUL: PCLMULQDQ and SSSE3
// (for PSHUFB), all that cksumFoldSSE needs beyond the SSE2 baseline.
// cksumHasVPCLMUL: also AVX2 and VPCLMULQDQ, with YMM state enabled by the
// OS, for cksumFoldAVX2. These are variable initializers rather than an
// init func so that cksumUseFold, which depends on them, is set after them.
var cksumHasPCLMUL, cksumHasVPCLMUL = cksumDetectCPU()

func cksumDetectCPU() (pclmul, vpclmul bool) {
	const (
		ecx1PCLMUL  = 1 << 1
		ecx1SSSE3   = 1 << 9
		ecx1OSXSAVE = 1 << 27
		ecx1AVX     = 1 << 28
		ebx7AVX2    = 1 << 5
		ecx7VPCLMUL = 1 << 10
		xcr0SSEAVX  = 1<<1 | 1<<2 // XMM and YMM state saved by the OS
	)
	maxLeaf, _, _, _ := cksumCPUID(0, 0)
	if maxLeaf < 1 {
		return false, false
	}
	_, _, ecx1, _ := cksumCPUID(1, 0)
	pclmul = ecx1&(ecx1PCLMUL|ecx1SSSE3) == ecx1PCLMUL|ecx1SSSE3
	if !pclmul || maxLeaf < 7 || ecx1&(ecx1OSXSAVE|ecx1AVX) != ecx1OSXSAVE|ecx1AVX {
		return pclmul, false
	}
	if xcr0, _ := cksumXGETBV(); xcr0&xcr0SSEAVX != xcr0SSEAVX {
		return pclmul, false
	}
	_, ebx7, ecx7, _ := cksumCPUID(7, 0)
	return pclmul, ebx7&ebx7AVX2 != 0 && ecx7&ecx7VPCLMUL != 0
}

// cksumUseFold reports whether CRCUpdate can use cksumUpdateFold.
var cksumUseFold = cksumHasPCLMUL

// cksumFoldMin is the input length from which CRCUpdate folds rather than
// uses the tables.
const cksumFoldMin = 64

// cksumFoldChunk bounds the bytes one assembly call takes. The runtime
// cannot preempt a goroutine inside assembly, so a long input is folded in
// pieces of some tens of microseconds each; splitting costs one reduction
// per piece.
const cksumFoldChunk = 256 << 10

// cksumUpdateFold is CRCUpdate by carry-less-multiply folding; it needs
// cksumUseFold. The assembly takes whole 16-byte lanes and the tables the
// rest.
func cksumUpdateFold(crc uint32, p []byte) uint32 {
	for len(p) >= 16 {
		n := min(len(p), cksumFoldChunk) &^ 15
		if n >= 128 && cksumHasVPCLMUL {
			crc = cksumFoldAVX2(crc, p[:n])
		} else {
			crc = cksumFoldSSE(crc, p[:n])
		}
		p = p[n:]
	}
	return cksumUpdateTable(crc, p)
}

// cksumFoldSSE returns the register after feeding p into crc, using
// PCLMULQDQ on XMM registers. len(p) must be a positive multiple of 16 and
// the CPU must have cksumHasPCLMUL.
//
//go:noescape
func cksumFoldSSE(crc uint32, p []byte) uint32

// cksumFoldAVX2 is cksumFoldSSE with VPCLMULQDQ on YMM registers. len(p)
// must be a multiple of 16 and at least 128, and the CPU must have
// cksumHasVPCLMUL.
//
//go:noescape
func cksumFoldAVX2(crc uint32, p []byte) uint32

// cksumCPUID executes CPUID with EAX = leaf and ECX = sub.
func cksumCPUID(leaf, sub uint32) (eax, ebx, ecx, edx uint32)

// cksumXGETBV returns extended control register XCR0; call it only when
// CPUID reports OSXSAVE.
func cksumXGETBV() (eax, edx uint32)
