package proto

import (
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
)

// ExporterLabel is the TLS exporter label both ends use to derive the
// 32-byte value a client signs to prove it holds its private key. The value
// is unique to the TLS connection, so a proof cannot be replayed on another.
const ExporterLabel = "EXPORTER-qbackup/1 auth"

// ExporterLen is the length of the exported value.
const ExporterLen = 32

// Key sizes accepted for client RSA keys.
const (
	MinRSABits     = 2048
	MaxRSABits     = 8192
	DefaultRSABits = 3072
)

const (
	authLabel = "qbackup/1 auth\x00"
	wrapLabel = "qbackup/1 session key"
)

// RegisterDigest is what a registering client signs: SHA-256 over the
// label, op 0x01, the exporter value, and the name and public key, each
// with a uint16 length.
func RegisterDigest(ekm []byte, name string, publicKey []byte) []byte {
	h := sha256.New()
	h.Write([]byte(authLabel))
	h.Write([]byte{byte(TypeRegister)})
	h.Write(ekm)
	h.Write(binary.BigEndian.AppendUint16(nil, uint16(len(name))))
	h.Write([]byte(name))
	h.Write(binary.BigEndian.AppendUint16(nil, uint16(len(publicKey))))
	h.Write(publicKey)
	return h.Sum(nil)
}

// ReconnectDigest is what a reconnecting client signs: SHA-256 over the
// label, op 0x02, the exporter value and the client ID.
func ReconnectDigest(ekm []byte, clientID [16]byte) []byte {
	h := sha256.New()
	h.Write([]byte(authLabel))
	h.Write([]byte{byte(TypeReconnect)})
	h.Write(ekm)
	h.Write(clientID[:])
	return h.Sum(nil)
}

var pssOptions = &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash, Hash: crypto.SHA256}

// SignProof signs a digest with RSA-PSS (SHA-256, salt length 32).
func SignProof(key *rsa.PrivateKey, digest []byte) ([]byte, error) {
	return rsa.SignPSS(rand.Reader, key, crypto.SHA256, digest, pssOptions)
}

// ErrBadProof is returned by VerifyProof when the signature does not verify.
var ErrBadProof = &Error{Code: CodeBadProof, Message: "signature does not verify"}

// VerifyProof checks an RSA-PSS signature made by SignProof.
func VerifyProof(pub *rsa.PublicKey, digest, sig []byte) error {
	if err := rsa.VerifyPSS(pub, crypto.SHA256, digest, sig, pssOptions); err != nil {
		return ErrBadProof
	}
	return nil
}

// ParsePublicKey parses a PKIX DER public key and accepts only RSA keys of
// MinRSABits to MaxRSABits bits.
func ParsePublicKey(der []byte) (*rsa.PublicKey, error) {
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, Errorf(CodeBadKey, "public key does not parse: %v", err)
	}
	pub, ok := k.(*rsa.PublicKey)
	if !ok {
		return nil, Errorf(CodeBadKey, "public key is %T, want RSA", k)
	}
	if n := pub.N.BitLen(); n < MinRSABits || n > MaxRSABits {
		return nil, Errorf(CodeBadKey, "%d-bit RSA key; want %d to %d bits", n, MinRSABits, MaxRSABits)
	}
	return pub, nil
}

// WrapKey encrypts a session key for a client with RSA-OAEP (SHA-256).
func WrapKey(pub *rsa.PublicKey, key *SessionKey) ([]byte, error) {
	return rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, key[:], []byte(wrapLabel))
}

// UnwrapKey decrypts a session key wrapped by WrapKey.
func UnwrapKey(priv *rsa.PrivateKey, wrapped []byte) (SessionKey, error) {
	var k SessionKey
	p, err := rsa.DecryptOAEP(sha256.New(), nil, priv, wrapped, []byte(wrapLabel))
	if err != nil {
		return k, errors.New("proto: session key does not unwrap with this client's private key")
	}
	if len(p) != KeySize {
		return k, fmt.Errorf("proto: session key is %d bytes, want %d", len(p), KeySize)
	}
	copy(k[:], p)
	clear(p)
	return k, nil
}
