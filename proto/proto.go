// Package proto is qbackup's wire format: the messages of the control stream,
// the chunk frames of the data streams, the session crypto (key wrapping,
// proof of possession, chunk sealing), the POSIX cksum CRC and the error
// codes. PROTOCOL.md at the top of the repository is the specification; this
// package is its reference implementation and imports neither QUIC nor SQLite.
//
// A session, as the client sees it:
//
//	client                                          server
//	  | QUIC handshake, ALPN "qbackup/1", pinned cert   |
//	  |-- control stream (bidi, first stream) -------->|
//	  |   Register{name, pubkey, sig(ekm)}             |
//	  |   or Reconnect{clientID, sig(ekm)}             |
//	  |<--------------- Welcome{clientID, RSA-OAEP(K)} |
//	  |   UploadRequest{req, name, kind, size, meta...}|
//	  |<------- UploadReady{req, xfer, id, missing...} |
//	  |== uni streams: ChunkFrame{xfer, off, len} ===> |  sealed with K
//	  |<------------- UploadChecksum{xfer, crc, sha}   |
//	  |   UploadCommit{xfer} | UploadAbort{xfer}       |
//	  |<-------------- UploadResult{xfer, status, v}   |
//	  |   RestoreRequest{req, name, version}           |
//	  |<--------- RestoreReady{req, xfer, id, size...} |
//	  |<== uni streams: ChunkFrame{xfer, off, len} ==  |
//	  |   ListRequest{req, prefix} -> ListEntry*, ListEnd
//
// Version history:
//
//	1: first version.
//	2: names are byte strings; entries have a kind (directories, symbolic
//	   links, special files) and a metadata record; mode carries setuid,
//	   setgid and sticky; ListEntry flags say damaged; RestoreDone says
//	   a checksum mismatch; error code 0x11 (damaged).
package proto

// ALPN is the TLS application protocol both ends require.
const ALPN = "qbackup/1"

// Version is the protocol version carried in Register and Reconnect.
const Version = 2

// Limits every decoder enforces before it allocates.
const (
	// MaxControlFrame is the largest control-stream message payload.
	MaxControlFrame = 64 << 10
	// MaxNameLen is the longest stored file name, in bytes.
	MaxNameLen = 4096
	// MaxClientNameLen is the longest client name, in bytes.
	MaxClientNameLen = 64
	// MaxInviteLen is the longest invite token in a Register.
	MaxInviteLen = 128
	// MaxPublicKeyLen is the longest PKIX DER public key accepted.
	MaxPublicKeyLen = 2048
	// MaxSignatureLen is the longest signature accepted (RSA-8192 = 1024 bytes).
	MaxSignatureLen = 1024
	// MaxWrappedKeyLen is the longest RSA-OAEP ciphertext accepted.
	MaxWrappedKeyLen = 1024
	// MaxMessageLen is the longest error message carried in an Error.
	MaxMessageLen = 1024
	// MaxChunkSize is the largest plaintext a chunk frame may carry.
	MaxChunkSize = 4 << 20
	// MaxRanges is the most byte ranges one UploadReady may list: as many
	// as fit in one control frame beside its 31 bytes of fixed fields.
	MaxRanges = (MaxControlFrame - 31) / 16
	// MaxResumeRanges is the most byte ranges one RestoreResume may list:
	// what fits beside its fixed fields and a name of MaxNameLen bytes
	// is more than a client ever needs (a restore leaves a few gaps, one
	// per chunk in flight), so a round number well below it.
	MaxResumeRanges = 1024
	// MaxFileSize is the largest file the protocol describes (1 PiB).
	MaxFileSize = 1 << 50
	// MaxStreams is the most data streams either end opens at once; each
	// end accepts this many from its peer.
	MaxStreams = 64
)
