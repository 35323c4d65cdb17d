//go:build !purego

// Carry-less-multiply folding for the MSB-first cksum CRC; cksum_amd64.go
// explains the method and derives the constants in cksumFoldK.

#include "textflag.h"

// Offsets into cksumFoldK.
#define K_SHUF ·cksumFoldK+0(SB)
#define K_FOLD1K ·cksumFoldK+16(SB)
#define K_FOLD512 ·cksumFoldK+32(SB)
#define K_FOLD256 ·cksumFoldK+48(SB)
#define K_FOLD128 ·cksumFoldK+64(SB)
#define K_REDUCE ·cksumFoldK+80(SB)
#define K_BARRETT ·cksumFoldK+96(SB)

// FOLD moves lane acc forward onto lane dst with the fold pair in k:
// dst ^= acc_lo*k_lo ^ acc_hi*k_hi. It clobbers acc and t.
#define FOLD(k, acc, dst, t) \
	MOVO      acc, t;        \
	PCLMULQDQ $0x00, k, acc; \
	PCLMULQDQ $0x11, k, t;   \
	PXOR      acc, dst;      \
	PXOR      t, dst

// FOLDLOAD folds lane acc forward by the distance of the fold pair in k
// onto the 16 bytes at off(SI): acc = acc*x^d + lane(off(SI)) (mod P).
// X10 holds the byte-reversing shuffle; t and u are clobbered.
#define FOLDLOAD(k, off, acc, t, u) \
	MOVOU     off(SI), u;           \
	PSHUFB    X10, u;               \
	MOVO      acc, t;               \
	PCLMULQDQ $0x00, k, acc;        \
	PCLMULQDQ $0x11, k, t;          \
	PXOR      u, acc;               \
	PXOR      t, acc

// VFOLDLOAD is FOLDLOAD on the two lanes of a YMM register; Y10 holds the
// shuffle in both halves.
#define VFOLDLOAD(k, off, acc, t, u) \
	VMOVDQU    off(SI), u;           \
	VPSHUFB    Y10, u, u;            \
	VPCLMULQDQ $0x00, k, acc, t;     \
	VPCLMULQDQ $0x11, k, acc, acc;   \
	VPXOR      u, t, t;              \
	VPXOR      t, acc, acc

// VFOLD is FOLD on the two lanes of YMM registers.
#define VFOLD(k, acc, dst, t)      \
	VPCLMULQDQ $0x00, k, acc, t;   \
	VPCLMULQDQ $0x11, k, acc, acc; \
	VPXOR      t, dst, dst;        \
	VPXOR      acc, dst, dst

// TAIL folds the remaining CX bytes (a multiple of 16) at SI into lane X0,
// one lane at a time, then reduces X0 to the 32-bit register
// X0*x^32 mod P, stores it in ret+32(FP) and returns. X10 must hold the
// shuffle. The reduction, with A = X0: X1 = A_lo*x^32 (MOVQ clears the
// high qword, PSLLO shifts by 4 bytes); X0 = A_hi*(x^96 mod P) ^ X1 = B.
// X1 = B_lo; X0 = B_hi*(x^64 mod P) ^ X1 = C, under 64 bits. Barrett:
// X1 = floor(C/x^32)*mu, then floor(X1/x^32)*P, whose low 32 bits xored
// into C's are C mod P.
#define TAIL \
	MOVOU     K_FOLD128, X11;           \
tailLoop:                               \
	CMPQ      CX, $16;                  \
	JB        reduce;                   \
	FOLDLOAD(X11, 0, X0, X8, X9);       \
	ADDQ      $16, SI;                  \
	SUBQ      $16, CX;                  \
	JMP       tailLoop;                 \
reduce:                                 \
	MOVOU     K_REDUCE, X11;            \
	MOVQ      X0, X1;                   \
	PSLLO     $4, X1;                   \
	PCLMULQDQ $0x11, X11, X0;           \
	PXOR      X1, X0;                   \
	MOVQ      X0, X1;                   \
	PCLMULQDQ $0x01, X11, X0;           \
	PXOR      X1, X0;                   \
	MOVOU     K_BARRETT, X11;           \
	MOVO      X0, X1;                   \
	PSRLQ     $32, X1;                  \
	PCLMULQDQ $0x00, X11, X1;           \
	PSRLQ     $32, X1;                  \
	PCLMULQDQ $0x10, X11, X1;           \
	PXOR      X1, X0;                   \
	MOVQ      X0, AX;                   \
	MOVL      AX, ret+32(FP);           \
	RET

// func cksumFoldSSE(crc uint32, p []byte) uint32
TEXT ·cksumFoldSSE(SB), NOSPLIT, $0-36
	MOVL  crc+0(FP), AX
	MOVQ  p_base+8(FP), SI
	MOVQ  p_len+16(FP), CX
	MOVOU K_SHUF, X10

	// The initial register goes into the first 4 bytes of the message:
	// bits 96-127 of the first lane.
	MOVQ  AX, X11
	PSLLO $12, X11

	CMPQ CX, $128
	JB   one

	// Eight lanes, 128 bytes, in X0-X7.
	MOVOU  0(SI), X0
	MOVOU  16(SI), X1
	MOVOU  32(SI), X2
	MOVOU  48(SI), X3
	MOVOU  64(SI), X4
	MOVOU  80(SI), X5
	MOVOU  96(SI), X6
	MOVOU  112(SI), X7
	PSHUFB X10, X0
	PSHUFB X10, X1
	PSHUFB X10, X2
	PSHUFB X10, X3
	PSHUFB X10, X4
	PSHUFB X10, X5
	PSHUFB X10, X6
	PSHUFB X10, X7
	PXOR   X11, X0
	ADDQ   $128, SI
	SUBQ   $128, CX

	MOVOU K_FOLD1K, X11

loop8:
	CMPQ CX, $128
	JB   merge8
	FOLDLOAD(X11, 0, X0, X8, X9)
	FOLDLOAD(X11, 16, X1, X12, X13)
	FOLDLOAD(X11, 32, X2, X14, X15)
	FOLDLOAD(X11, 48, X3, X8, X9)
	FOLDLOAD(X11, 64, X4, X12, X13)
	FOLDLOAD(X11, 80, X5, X14, X15)
	FOLDLOAD(X11, 96, X6, X8, X9)
	FOLDLOAD(X11, 112, X7, X12, X13)
	ADDQ $128, SI
	SUBQ $128, CX
	JMP  loop8

merge8:
	MOVOU K_FOLD512, X11
	FOLD(X11, X0, X4, X8)
	FOLD(X11, X1, X5, X9)
	FOLD(X11, X2, X6, X12)
	FOLD(X11, X3, X7, X13)
	MOVOU K_FOLD256, X11
	FOLD(X11, X4, X6, X8)
	FOLD(X11, X5, X7, X9)
	MOVOU K_FOLD128, X11
	FOLD(X11, X6, X7, X8)
	MOVO  X7, X0
	JMP   tail

one:
	MOVOU  (SI), X0
	PSHUFB X10, X0
	PXOR   X11, X0
	ADDQ   $16, SI
	SUBQ   $16, CX

tail:
	TAIL

// func cksumFoldAVX2(crc uint32, p []byte) uint32
TEXT ·cksumFoldAVX2(SB), NOSPLIT, $0-36
	MOVL           crc+0(FP), AX
	MOVQ           p_base+8(FP), SI
	MOVQ           p_len+16(FP), CX
	VBROADCASTI128 K_SHUF, Y10

	// The initial register in bits 96-127 of the first lane; VEX
	// encodings clear the rest of Y11.
	VMOVQ   AX, X11
	VPSLLDQ $12, X11, X11

	// Eight lanes, 128 bytes, two in each of Y0-Y3 (the lower address in
	// the low half).
	VMOVDQU 0(SI), Y0
	VMOVDQU 32(SI), Y1
	VMOVDQU 64(SI), Y2
	VMOVDQU 96(SI), Y3
	VPSHUFB Y10, Y0, Y0
	VPSHUFB Y10, Y1, Y1
	VPSHUFB Y10, Y2, Y2
	VPSHUFB Y10, Y3, Y3
	VPXOR   Y11, Y0, Y0
	ADDQ    $128, SI
	SUBQ    $128, CX

	VBROADCASTI128 K_FOLD1K, Y11

loop4:
	CMPQ CX, $128
	JB   merge4
	VFOLDLOAD(Y11, 0, Y0, Y4, Y5)
	VFOLDLOAD(Y11, 32, Y1, Y6, Y7)
	VFOLDLOAD(Y11, 64, Y2, Y8, Y9)
	VFOLDLOAD(Y11, 96, Y3, Y12, Y13)
	ADDQ $128, SI
	SUBQ $128, CX
	JMP  loop4

merge4:
	VBROADCASTI128 K_FOLD512, Y11
	VFOLD(Y11, Y0, Y2, Y4)
	VFOLD(Y11, Y1, Y3, Y5)
	VBROADCASTI128 K_FOLD256, Y11
	VFOLD(Y11, Y2, Y3, Y4)

	// Fold the low lane of Y3 onto its high lane.
	VEXTRACTI128 $1, Y3, X0
	VZEROUPPER
	MOVOU        K_FOLD128, X11
	FOLD(X11, X3, X0, X4)
	TAIL

// func cksumCPUID(leaf, sub uint32) (eax, ebx, ecx, edx uint32)
TEXT ·cksumCPUID(SB), NOSPLIT, $0-24
	MOVL leaf+0(FP), AX
	MOVL sub+4(FP), CX
	CPUID
	MOVL AX, eax+8(FP)
	MOVL BX, ebx+12(FP)
	MOVL CX, ecx+16(FP)
	MOVL DX, edx+20(FP)
	RET

// func cksumXGETBV() (eax, edx uint32)
TEXT ·cksumXGETBV(SB), NOSPLIT, $0-8
	MOVL $0, CX
	XGETBV
	MOVL AX, eax+0(FP)
	MOVL DX, edx+4(FP)
	RET
