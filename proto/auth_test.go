package proto_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"math/big"
	"reflect"
	"sync"
	"testing"

	"github.com/qbackup/qbackup/proto"
)

// RSA key generation is slow: the test binary makes one 2048-bit key (and
// one 1024-bit key for the negative cases) and shares them.
var (
	rsaOnce     sync.Once
	rsaKey      *rsa.PrivateKey
	rsaKeyErr   error
	smallOnce   sync.Once
	smallKey    *rsa.PrivateKey
	smallKeyErr error
)

func testRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	rsaOnce.Do(func() { rsaKey, rsaKeyErr = rsa.GenerateKey(rand.Reader, 2048) })
	if rsaKeyErr != nil {
		t.Fatalf("rsa.GenerateKey(2048) error = %v, want nil", rsaKeyErr)
	}
	return rsaKey
}

// smallRSAKey returns a 1024-bit key, or skips the test where the crypto
// library refuses to make one (e.g. FIPS 140-3 mode).
func smallRSAKey(t testing.TB) *rsa.PrivateKey {
	t.Helper()
	smallOnce.Do(func() { smallKey, smallKeyErr = rsa.GenerateKey(rand.Reader, 1024) })
	if smallKeyErr != nil {
		t.Skipf("rsa.GenerateKey(1024) error = %v: this platform refuses 1024-bit keys", smallKeyErr)
	}
	return smallKey
}

func marshalPub(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatalf("MarshalPKIXPublicKey(%T) error = %v, want nil", pub, err)
	}
	return der
}

// fakeRSAPublicKey returns the DER of an RSA public key whose modulus has
// exactly bits bits. It is not a real key (the modulus is not a product of
// two primes) but parses like one, which is all the size checks need.
func fakeRSAPublicKey(t testing.TB, bits int) []byte {
	n := new(big.Int).Lsh(big.NewInt(1), uint(bits-1))
	n.Add(n, big.NewInt(12345))
	n.SetBit(n, 0, 1)
	return marshalPub(t, &rsa.PublicKey{N: n, E: 65537})
}

func ekm(seed byte) []byte { return pattern(proto.ExporterLen, seed) }

func TestProofRoundTrip(t *testing.T) {
	key := testRSAKey(t)
	der := marshalPub(t, &key.PublicKey)
	tests := []struct {
		name   string
		digest []byte
	}{
		{"register", proto.RegisterDigest(ekm(1), "laptop", der)},
		{"registerMaxName", proto.RegisterDigest(ekm(2), string(bytes.Repeat([]byte("n"), proto.MaxClientNameLen)), der)},
		{"reconnect", proto.ReconnectDigest(ekm(3), id16(4))},
		{"reconnectZero", proto.ReconnectDigest(make([]byte, proto.ExporterLen), [16]byte{})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sig, err := proto.SignProof(key, tt.digest)
			if err != nil {
				t.Fatalf("SignProof error = %v, want nil", err)
			}
			if got := len(sig); got != 256 || got > proto.MaxSignatureLen {
				t.Errorf("len(signature) = %d, want 256 (at most MaxSignatureLen %d)", got, proto.MaxSignatureLen)
			}
			if err := proto.VerifyProof(&key.PublicKey, tt.digest, sig); err != nil {
				t.Errorf("VerifyProof error = %v, want nil", err)
			}
			// PSS is randomized: a second signature differs and verifies too.
			sig2, err := proto.SignProof(key, tt.digest)
			if err != nil {
				t.Fatalf("second SignProof error = %v, want nil", err)
			}
			if bytes.Equal(sig, sig2) {
				t.Errorf("two SignProof signatures are equal, want different (random salt)")
			}
			if err := proto.VerifyProof(&key.PublicKey, tt.digest, sig2); err != nil {
				t.Errorf("VerifyProof(second signature) error = %v, want nil", err)
			}
		})
	}
}

func TestProofRejects(t *testing.T) {
	key := testRSAKey(t)
	der := marshalPub(t, &key.PublicKey)
	otherDER := fakeRSAPublicKey(t, 2048)
	id := id16(5)
	regDigest := proto.RegisterDigest(ekm(1), "laptop", der)
	regSig, err := proto.SignProof(key, regDigest)
	if err != nil {
		t.Fatalf("SignProof error = %v, want nil", err)
	}
	recDigest := proto.ReconnectDigest(ekm(1), id)
	recSig, err := proto.SignProof(key, recDigest)
	if err != nil {
		t.Fatalf("SignProof error = %v, want nil", err)
	}
	flipped := func(sig []byte, i int) []byte {
		s := append([]byte(nil), sig...)
		s[i] ^= 1
		return s
	}
	otherID := id
	otherID[0] ^= 1

	pub := func(*testing.T) *rsa.PublicKey { return &key.PublicKey }
	smallPub := func(t *testing.T) *rsa.PublicKey { return &smallRSAKey(t).PublicKey }
	tests := []struct {
		name   string
		pub    func(t *testing.T) *rsa.PublicKey
		digest []byte
		sig    []byte
	}{
		{"registerOtherExporter", pub, proto.RegisterDigest(ekm(2), "laptop", der), regSig},
		{"registerOtherName", pub, proto.RegisterDigest(ekm(1), "laptoq", der), regSig},
		{"registerOtherPublicKey", pub, proto.RegisterDigest(ekm(1), "laptop", otherDER), regSig},
		{"reconnectOtherExporter", pub, proto.ReconnectDigest(ekm(2), id), recSig},
		{"reconnectOtherClientID", pub, proto.ReconnectDigest(ekm(1), otherID), recSig},
		{"registerProofAsReconnect", pub, recDigest, regSig},
		{"reconnectProofAsRegister", pub, regDigest, recSig},
		{"signatureFirstBit", pub, regDigest, flipped(regSig, 0)},
		{"signatureLastBit", pub, regDigest, flipped(regSig, len(regSig)-1)},
		{"signatureTruncated", pub, regDigest, regSig[:len(regSig)-1]},
		{"signatureExtended", pub, regDigest, append(append([]byte(nil), regSig...), 0)},
		{"signatureEmpty", pub, regDigest, nil},
		{"signatureGarbage", pub, regDigest, pattern(256, 6)},
		{"otherKey", smallPub, regDigest, regSig},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := proto.VerifyProof(tt.pub(t), tt.digest, tt.sig)
			if !errors.Is(err, proto.ErrBadProof) {
				t.Errorf("VerifyProof error = %v, want %v", err, proto.ErrBadProof)
			}
			if got := proto.CodeOf(err); got != proto.CodeBadProof {
				t.Errorf("CodeOf(VerifyProof error) = %v, want %v", got, proto.CodeBadProof)
			}
		})
	}
}

func TestDigests(t *testing.T) {
	e := ekm(1)
	id := id16(2)
	pub := pattern(294, 3)

	if got := proto.RegisterDigest(e, "laptop", pub); len(got) != sha256.Size {
		t.Errorf("len(RegisterDigest) = %d, want %d", len(got), sha256.Size)
	}
	if got := proto.ReconnectDigest(e, id); len(got) != sha256.Size {
		t.Errorf("len(ReconnectDigest) = %d, want %d", len(got), sha256.Size)
	}
	if a, b := proto.RegisterDigest(e, "laptop", pub), proto.RegisterDigest(ekm(1), "laptop", pattern(294, 3)); !bytes.Equal(a, b) {
		t.Errorf("RegisterDigest of equal inputs = %x and %x, want equal", a, b)
	}
	if a, b := proto.ReconnectDigest(e, id), proto.ReconnectDigest(ekm(1), id16(2)); !bytes.Equal(a, b) {
		t.Errorf("ReconnectDigest of equal inputs = %x and %x, want equal", a, b)
	}

	tests := []struct {
		name string
		a, b []byte
	}{
		// The same bytes fed to both: the op code keeps them apart.
		{"registerVsReconnect", proto.RegisterDigest(e, string(id[:]), nil), proto.ReconnectDigest(e, id)},
		{"registerVsReconnectEmpty", proto.RegisterDigest(e, "", nil), proto.ReconnectDigest(e, [16]byte{})},
		{"registerVsReconnectKey", proto.RegisterDigest(e, "", id[:]), proto.ReconnectDigest(e, id)},
		// Length prefixes keep the name/key boundary unambiguous.
		{"nameKeyBoundary", proto.RegisterDigest(e, "ab", []byte("c")), proto.RegisterDigest(e, "a", []byte("bc"))},
		{"emptyName", proto.RegisterDigest(e, "", []byte("abc")), proto.RegisterDigest(e, "abc", nil)},
		{"exporter", proto.RegisterDigest(e, "laptop", pub), proto.RegisterDigest(ekm(9), "laptop", pub)},
		{"reconnectExporter", proto.ReconnectDigest(e, id), proto.ReconnectDigest(ekm(9), id)},
		{"clientID", proto.ReconnectDigest(e, id), proto.ReconnectDigest(e, id16(9))},
	}
	for _, tt := range tests {
		if bytes.Equal(tt.a, tt.b) {
			t.Errorf("%s: digests = %x and %x, want different", tt.name, tt.a, tt.b)
		}
	}
}

func TestParsePublicKey(t *testing.T) {
	key := testRSAKey(t)
	der := marshalPub(t, &key.PublicKey)
	ecKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("ecdsa.GenerateKey error = %v, want nil", err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatalf("ed25519.GenerateKey error = %v, want nil", err)
	}
	pkcs1 := x509.MarshalPKCS1PublicKey(&key.PublicKey)

	tests := []struct {
		name    string
		der     func(t *testing.T) []byte
		wantErr bool
	}{
		{"rsa2048", func(t *testing.T) []byte { return der }, false},
		{"fake2048", func(t *testing.T) []byte { return fakeRSAPublicKey(t, 2048) }, false},
		{"fake8192", func(t *testing.T) []byte { return fakeRSAPublicKey(t, proto.MaxRSABits) }, false},
		{"nil", func(t *testing.T) []byte { return nil }, true},
		{"garbage", func(t *testing.T) []byte { return []byte("not a key at all") }, true},
		{"randomBytes", func(t *testing.T) []byte { return pattern(294, 1) }, true},
		{"truncated", func(t *testing.T) []byte { return der[:len(der)-1] }, true},
		{"trailing", func(t *testing.T) []byte { return append(append([]byte(nil), der...), 0) }, true},
		{"pkcs1NotPKIX", func(t *testing.T) []byte { return pkcs1 }, true},
		{"ecdsaP256", func(t *testing.T) []byte { return marshalPub(t, &ecKey.PublicKey) }, true},
		{"ed25519", func(t *testing.T) []byte { return marshalPub(t, edPub) }, true},
		{"rsa1024", func(t *testing.T) []byte { return marshalPub(t, &smallRSAKey(t).PublicKey) }, true},
		{"fake2047", func(t *testing.T) []byte { return fakeRSAPublicKey(t, proto.MinRSABits-1) }, true},
		{"fake8193", func(t *testing.T) []byte { return fakeRSAPublicKey(t, proto.MaxRSABits+1) }, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := tt.der(t)
			pub, err := proto.ParsePublicKey(b)
			if !tt.wantErr {
				if err != nil {
					t.Fatalf("ParsePublicKey error = %v, want nil", err)
				}
				if pub == nil {
					t.Fatalf("ParsePublicKey = nil, want a key")
				}
				if tt.name == "rsa2048" && !pub.Equal(&key.PublicKey) {
					t.Errorf("ParsePublicKey = %v, want the marshalled key", pub)
				}
				return
			}
			if pub != nil {
				t.Errorf("ParsePublicKey = %v, want nil", pub)
			}
			if got := proto.CodeOf(err); got != proto.CodeBadKey {
				t.Errorf("CodeOf(ParsePublicKey error %v) = %v, want %v", err, got, proto.CodeBadKey)
			}
		})
	}
}

func TestWrapKeyRoundTrip(t *testing.T) {
	key := testRSAKey(t)
	for _, sk := range []proto.SessionKey{sessionKey(1), {}, func() (k proto.SessionKey) {
		for i := range k {
			k[i] = 0xff
		}
		return k
	}()} {
		wrapped, err := proto.WrapKey(&key.PublicKey, &sk)
		if err != nil {
			t.Fatalf("WrapKey error = %v, want nil", err)
		}
		if got := len(wrapped); got != 256 || got > proto.MaxWrappedKeyLen {
			t.Errorf("len(WrapKey) = %d, want 256 (at most MaxWrappedKeyLen %d)", got, proto.MaxWrappedKeyLen)
		}
		got, err := proto.UnwrapKey(key, wrapped)
		if err != nil {
			t.Fatalf("UnwrapKey error = %v, want nil", err)
		}
		if got != sk {
			t.Errorf("UnwrapKey(WrapKey(%x)) = %x, want %x", sk, got, sk)
		}
		wrapped2, err := proto.WrapKey(&key.PublicKey, &sk)
		if err != nil {
			t.Fatalf("second WrapKey error = %v, want nil", err)
		}
		if bytes.Equal(wrapped, wrapped2) {
			t.Errorf("two WrapKey ciphertexts are equal, want different (OAEP is randomized)")
		}
	}

	// The wrapped key survives a Welcome message.
	sk := sessionKey(2)
	wrapped, err := proto.WrapKey(&key.PublicKey, &sk)
	if err != nil {
		t.Fatalf("WrapKey error = %v, want nil", err)
	}
	m, err := proto.ParseMessage(proto.TypeWelcome, payloadOf(&proto.Welcome{ClientID: id16(3), WrappedKey: wrapped, ChunkSize: 1 << 20, Streams: 4}))
	if err != nil {
		t.Fatalf("ParseMessage(Welcome) error = %v, want nil", err)
	}
	if got, err := proto.UnwrapKey(key, m.(*proto.Welcome).WrappedKey); err != nil || got != sk {
		t.Errorf("UnwrapKey(Welcome.WrappedKey) = %x, %v, want %x, nil", got, err, sk)
	}
}

func TestUnwrapKeyRejects(t *testing.T) {
	key := testRSAKey(t)
	sk := sessionKey(4)
	wrapped, err := proto.WrapKey(&key.PublicKey, &sk)
	if err != nil {
		t.Fatalf("WrapKey error = %v, want nil", err)
	}
	flip := func(i int) []byte {
		w := append([]byte(nil), wrapped...)
		w[i] ^= 1
		return w
	}
	// Valid OAEP ciphertexts with the right label but the wrong content.
	const wrapLabel = "qbackup/1 session key"
	oaep := func(t *testing.T, msg []byte, label string) []byte {
		c, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, &key.PublicKey, msg, []byte(label))
		if err != nil {
			t.Fatalf("EncryptOAEP error = %v, want nil", err)
		}
		return c
	}
	tests := []struct {
		name    string
		priv    func(t testing.TB) *rsa.PrivateKey
		wrapped func(t *testing.T) []byte
	}{
		{"otherKey", smallRSAKey, func(t *testing.T) []byte { return wrapped }},
		// Wrapped for the 1024-bit key, unwrapped with the 2048-bit one.
		{"wrappedForOtherKey", testRSAKey, func(t *testing.T) []byte {
			w, err := proto.WrapKey(&smallRSAKey(t).PublicKey, &sk)
			if err != nil {
				t.Fatalf("WrapKey(1024-bit key) error = %v, want nil", err)
			}
			return w
		}},
		{"firstBit", testRSAKey, func(t *testing.T) []byte { return flip(0) }},
		{"lastBit", testRSAKey, func(t *testing.T) []byte { return flip(len(wrapped) - 1) }},
		{"truncated", testRSAKey, func(t *testing.T) []byte { return wrapped[:len(wrapped)-1] }},
		{"extended", testRSAKey, func(t *testing.T) []byte { return append(append([]byte(nil), wrapped...), 0) }},
		{"nil", testRSAKey, func(t *testing.T) []byte { return nil }},
		{"zeros", testRSAKey, func(t *testing.T) []byte { return make([]byte, len(wrapped)) }},
		{"maxLenGarbage", testRSAKey, func(t *testing.T) []byte { return pattern(proto.MaxWrappedKeyLen, 5) }},
		{"noLabel", testRSAKey, func(t *testing.T) []byte { return oaep(t, sk[:], "") }},
		{"shortKey", testRSAKey, func(t *testing.T) []byte { return oaep(t, sk[:16], wrapLabel) }},
		{"longKey", testRSAKey, func(t *testing.T) []byte { return oaep(t, append(sk[:], 0), wrapLabel) }},
		{"emptyKey", testRSAKey, func(t *testing.T) []byte { return oaep(t, nil, wrapLabel) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := proto.UnwrapKey(tt.priv(t), tt.wrapped(t))
			if err == nil {
				t.Errorf("UnwrapKey error = nil, want an error")
			}
			if got != (proto.SessionKey{}) {
				t.Errorf("UnwrapKey = %x, want the zero key", got)
			}
		})
	}
	// The label test above is only meaningful if the real label unwraps.
	if got, err := proto.UnwrapKey(key, oaep(t, sk[:], wrapLabel)); err != nil || got != sk {
		t.Errorf("UnwrapKey(EncryptOAEP(label %q)) = %x, %v, want %x, nil", wrapLabel, got, err, sk)
	}
}

// TestRegisterFlow runs the client and server halves of a registration.
func TestRegisterFlow(t *testing.T) {
	key := testRSAKey(t)
	exporter := ekm(7)

	// Client.
	der := marshalPub(t, &key.PublicKey)
	sig, err := proto.SignProof(key, proto.RegisterDigest(exporter, "laptop", der))
	if err != nil {
		t.Fatalf("SignProof error = %v, want nil", err)
	}
	frame := encode(&proto.Register{Version: proto.Version, Name: "laptop", PublicKey: der, Signature: sig})

	// Server.
	m, err := proto.NewMessageReader(bytes.NewReader(frame)).Read()
	if err != nil {
		t.Fatalf("Read error = %v, want nil", err)
	}
	reg, ok := m.(*proto.Register)
	if !ok {
		t.Fatalf("Read = %T, want *proto.Register", m)
	}
	pub, err := proto.ParsePublicKey(reg.PublicKey)
	if err != nil {
		t.Fatalf("ParsePublicKey error = %v, want nil", err)
	}
	if err := proto.VerifyProof(pub, proto.RegisterDigest(exporter, reg.Name, reg.PublicKey), reg.Signature); err != nil {
		t.Errorf("VerifyProof error = %v, want nil", err)
	}
	// The same proof on another connection (another exporter) fails.
	if err := proto.VerifyProof(pub, proto.RegisterDigest(ekm(8), reg.Name, reg.PublicKey), reg.Signature); !errors.Is(err, proto.ErrBadProof) {
		t.Errorf("VerifyProof on another connection error = %v, want %v", err, proto.ErrBadProof)
	}
	sk := sessionKey(9)
	wrapped, err := proto.WrapKey(pub, &sk)
	if err != nil {
		t.Fatalf("WrapKey error = %v, want nil", err)
	}
	welcome := &proto.Welcome{ClientID: id16(10), WrappedKey: wrapped, ChunkSize: 1 << 20, Streams: 4}

	// Client.
	m, err = proto.NewMessageReader(bytes.NewReader(encode(welcome))).Read()
	if err != nil {
		t.Fatalf("Read(Welcome) error = %v, want nil", err)
	}
	if !reflect.DeepEqual(m, proto.Message(welcome)) {
		t.Errorf("Read(Welcome) = %+v, want %+v", m, welcome)
	}
	if got, err := proto.UnwrapKey(key, m.(*proto.Welcome).WrappedKey); err != nil || got != sk {
		t.Errorf("UnwrapKey = %x, %v, want %x, nil", got, err, sk)
	}
}

func TestAuthConstants(t *testing.T) {
	got := []any{proto.ExporterLabel, proto.ExporterLen, proto.MinRSABits, proto.MaxRSABits, proto.DefaultRSABits, proto.ALPN, proto.Version}
	want := []any{"EXPORTER-qbackup/1 auth", 32, 2048, 8192, 3072, "qbackup/1", 2}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("(ExporterLabel, ExporterLen, MinRSABits, MaxRSABits, DefaultRSABits, ALPN, Version) = %v, want %v", got, want)
	}
	if proto.DefaultRSABits < proto.MinRSABits || proto.DefaultRSABits > proto.MaxRSABits {
		t.Errorf("DefaultRSABits = %d, want in %d..%d", proto.DefaultRSABits, proto.MinRSABits, proto.MaxRSABits)
	}
	// An 8192-bit key's signature and wrapped key fit their limits.
	if got, want := proto.MaxRSABits/8, proto.MaxSignatureLen; got > want {
		t.Errorf("MaxRSABits/8 = %d, want at most MaxSignatureLen %d", got, want)
	}
	if got, want := proto.MaxRSABits/8, proto.MaxWrappedKeyLen; got > want {
		t.Errorf("MaxRSABits/8 = %d, want at most MaxWrappedKeyLen %d", got, want)
	}
	if got, want := len(fakeRSAPublicKey(t, proto.MaxRSABits)), proto.MaxPublicKeyLen; got > want {
		t.Errorf("DER length of an 8192-bit key = %d, want at most MaxPublicKeyLen %d", got, want)
	}
}
