// Package certs creates, loads and pins the TLS certificate of the qbackup
// server.
//
// qbackupd uses a self-signed certificate (see [LoadOrCreate]); there is no
// CA. Clients authenticate the server by pinning the SHA-256 fingerprint of
// that certificate (see [Fingerprint] and [ClientConfig]): the pin is either
// given up front (e.g. --fingerprint, see [ParseFingerprint]) or recorded on
// first use, like SSH's StrictHostKeyChecking=accept-new. A certificate that
// differs from the pinned one afterwards is a hard error ([*MismatchError]).
//
// The pin is checked in [tls.Config.VerifyConnection], which, unlike
// VerifyPeerCertificate, also runs on resumed sessions.
package certs

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"
)

const (
	// CertFile and KeyFile are the file names LoadOrCreate uses inside its
	// directory.
	CertFile = "cert.pem"
	KeyFile  = "key.pem"

	// ServerName is the name in the generated certificate and the SNI the
	// client sends. It is not a DNS name that is ever resolved.
	ServerName = "qbackupd"

	validity = 20 // years
)

// LoadOrCreate loads dir/cert.pem and dir/key.pem, or creates them when
// both are absent: a self-signed ECDSA P-256 certificate for "qbackupd",
// valid from an hour ago for 20 years. dir is created with mode 0700,
// key.pem (PKCS#8, "PRIVATE KEY") with 0600 and cert.pem with 0644; each
// file is written atomically.
//
// It never overwrites an existing file: if only one of the two files
// exists, or the key does not belong to the certificate, it returns an
// error. It also refuses a key.pem that group or others can access.
//
// The returned certificate has Leaf set.
func LoadOrCreate(dir string) (tls.Certificate, error) {
	certPath := filepath.Join(dir, CertFile)
	keyPath := filepath.Join(dir, KeyFile)

	certExists, err := exists(certPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	keyExists, err := exists(keyPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	switch {
	case certExists && keyExists:
		return load(certPath, keyPath)
	case certExists:
		return tls.Certificate{}, fmt.Errorf("certs: %s exists but %s does not; restore %s, or remove %s to generate a new certificate (clients that pinned the old one will then refuse to connect until re-pinned)",
			certPath, keyPath, KeyFile, certPath)
	case keyExists:
		return tls.Certificate{}, fmt.Errorf("certs: %s exists but %s does not; restore %s, or remove %s to generate a new key and certificate (clients that pinned the old one will then refuse to connect until re-pinned)",
			keyPath, certPath, CertFile, keyPath)
	}
	return create(dir, certPath, keyPath)
}

func exists(path string) (bool, error) {
	_, err := os.Lstat(path)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	default:
		return false, fmt.Errorf("certs: %w", err)
	}
}

func load(certPath, keyPath string) (tls.Certificate, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: %w", err)
	}
	keyPEM, err := readKeyFile(keyPath)
	if err != nil {
		return tls.Certificate{}, err
	}

	var chain [][]byte
	rest := certPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type == "CERTIFICATE" {
			chain = append(chain, b.Bytes)
		}
	}
	if len(chain) == 0 {
		return tls.Certificate{}, fmt.Errorf("certs: %s: no PEM \"CERTIFICATE\" block found", certPath)
	}
	leaf, err := x509.ParseCertificate(chain[0])
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: %s: %w", certPath, err)
	}

	key, err := parseKey(keyPEM)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: %s: %w", keyPath, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return tls.Certificate{}, fmt.Errorf("certs: %s does not belong to the certificate in %s; restore the matching pair (a new pair means every client must re-pin)", keyPath, certPath)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}, nil
}

// readKeyFile reads the key file, refusing it if group or others have any
// access to it. The mode is taken from the opened file, not the path.
func readKeyFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("certs: %s is not a regular file", path)
	}
	// Unix permission bits are not meaningful on Windows.
	if perm := fi.Mode().Perm(); runtime.GOOS != "windows" && perm&0o077 != 0 {
		return nil, fmt.Errorf("certs: private key %s is accessible by group or others (mode %#o); run: chmod 600 %s", path, perm, path)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	return b, nil
}

// parseKey accepts PKCS#8 ("PRIVATE KEY", what LoadOrCreate writes) and,
// for keys supplied by hand, SEC 1 ("EC PRIVATE KEY") and PKCS#1
// ("RSA PRIVATE KEY").
func parseKey(keyPEM []byte) (crypto.Signer, error) {
	rest := keyPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return nil, errors.New("no PEM \"PRIVATE KEY\" block found")
		}
		var k any
		var err error
		switch b.Type {
		case "PRIVATE KEY":
			k, err = x509.ParsePKCS8PrivateKey(b.Bytes)
		case "EC PRIVATE KEY":
			k, err = x509.ParseECPrivateKey(b.Bytes)
		case "RSA PRIVATE KEY":
			k, err = x509.ParsePKCS1PrivateKey(b.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, err
		}
		s, ok := k.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", k)
		}
		return s, nil
	}
}

func create(dir, certPath, keyPath string) (tls.Certificate, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: %w", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: generating serial number: %w", err)
	}
	if serial.Sign() == 0 { // RFC 5280 wants a positive serial
		serial.SetInt64(1)
	}
	notBefore := time.Now().Add(-time.Hour)
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: ServerName},
		DNSNames:              []string{ServerName},
		NotBefore:             notBefore,
		NotAfter:              notBefore.AddDate(validity, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: creating certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: parsing new certificate: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("certs: encoding key: %w", err)
	}

	// Key first: if we crash in between, LoadOrCreate reports the lone
	// key.pem rather than silently replacing anything.
	if err := writeAtomic(dir, keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8}), 0o600); err != nil {
		return tls.Certificate{}, err
	}
	if err := writeAtomic(dir, certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}, nil
}

// writeAtomic writes data to path via a temporary file in dir: write,
// fsync, rename, fsync dir.
func writeAtomic(dir, path string, data []byte, perm fs.FileMode) (err error) {
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("certs: %w", err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
			err = fmt.Errorf("certs: writing %s: %w", path, err)
		}
	}()
	// CreateTemp uses 0600; Chmod is not subject to the umask.
	if err = f.Chmod(perm); err != nil {
		return err
	}
	if _, err = f.Write(data); err != nil {
		return err
	}
	if err = f.Sync(); err != nil {
		return err
	}
	if err = f.Close(); err != nil {
		return err
	}
	if err = os.Rename(tmp, path); err != nil {
		return err
	}
	if runtime.GOOS == "windows" { // directories cannot be fsynced there
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Fingerprint is the lowercase hex SHA-256 of a certificate's DER bytes
// (64 characters). For a tls.Certificate c use Fingerprint(c.Certificate[0]).
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

// ParseFingerprint normalizes a user-supplied fingerprint. It accepts an
// optional "sha256:" prefix (any case), upper or lower case hex digits and
// optional ':' or ' ' separators, and returns the 64-character lowercase
// hex form that [Fingerprint] returns.
func ParseFingerprint(s string) (string, error) {
	t := strings.TrimSpace(s)
	if len(t) >= len("sha256:") && strings.EqualFold(t[:len("sha256:")], "sha256:") {
		t = t[len("sha256:"):]
	}
	t = strings.NewReplacer(":", "", " ", "").Replace(t)
	t = strings.ToLower(t)
	const want = 2 * sha256.Size
	if _, err := hex.DecodeString(t); err != nil || len(t) != want {
		reason := fmt.Sprintf("%d hex digits", len(t))
		if err != nil {
			reason = "not hexadecimal"
		}
		return "", fmt.Errorf("certs: invalid fingerprint %q (%s): a fingerprint is the SHA-256 of the server certificate as %d hex digits, optionally prefixed with \"sha256:\" and separated by ':' or spaces, e.g. sha256:%s",
			s, reason, want, strings.Repeat("0123456789abcdef", want/16))
	}
	return t, nil
}

// ServerConfig returns a TLS 1.3-only server configuration presenting cert
// and offering the given ALPN protocols.
func ServerConfig(cert tls.Certificate, alpn ...string) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		NextProtos:   append([]string(nil), alpn...),
	}
}

// ClientConfig returns a TLS 1.3-only client configuration that accepts
// exactly the server certificate whose fingerprint is pin. pin goes
// through [ParseFingerprint], so user input may be passed as is; if it is
// malformed, every handshake fails with the parse error.
//
// If pin is "", the first certificate presented is accepted (trust on
// first use): onFirstUse is called with its fingerprint from inside the
// handshake, and if it returns an error the handshake fails with that
// error. Once onFirstUse has returned nil, the config (and its clones)
// remembers the fingerprint and checks later handshakes against it, so
// onFirstUse is called at most once successfully; concurrent first
// handshakes are serialized around the call. If pin is "" and onFirstUse
// is nil, every handshake fails.
//
// A certificate that does not match the pin fails the handshake with a
// [*MismatchError], and crypto/tls sends the server a bad_certificate
// alert. With crypto/tls over TCP the handshake returns the
// *MismatchError itself; quic-go's Dial returns a *quic.TransportError
// (CRYPTO_ERROR 0x12a, local) that wraps it (and also net.ErrClosed, so
// test for the mismatch first). Use errors.As to find it.
func ClientConfig(pin string, onFirstUse func(fp string) error, alpn ...string) *tls.Config {
	p := &pinner{onFirstUse: onFirstUse}
	if pin != "" {
		p.pin, p.pinErr = ParseFingerprint(pin)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		ServerName: ServerName,
		NextProtos: append([]string(nil), alpn...),
		// The server's certificate is self-signed, so the standard chain
		// and hostname verification would always fail. It is skipped, and
		// VerifyConnection does the real check instead: it compares the
		// leaf certificate's SHA-256 against the pin. Unlike
		// VerifyPeerCertificate, VerifyConnection also runs on resumed
		// sessions, so resumption cannot bypass the pin.
		InsecureSkipVerify: true,
		VerifyConnection:   p.verify,
	}
}

type pinner struct {
	onFirstUse func(fp string) error
	pinErr     error

	mu  sync.Mutex
	pin string // "" until known
}

func (p *pinner) verify(cs tls.ConnectionState) error {
	if p.pinErr != nil {
		return p.pinErr
	}
	if len(cs.PeerCertificates) == 0 {
		return errors.New("certs: server presented no certificate")
	}
	// Only the leaf matters; anything else the server sends is ignored.
	fp := Fingerprint(cs.PeerCertificates[0].Raw)

	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pin == "" {
		if p.onFirstUse == nil {
			return fmt.Errorf("certs: no fingerprint pinned for the server and trust on first use is disabled; server presented sha256:%s", fp)
		}
		if err := p.onFirstUse(fp); err != nil {
			return err
		}
		p.pin = fp
		return nil
	}
	if fp != p.pin {
		return &MismatchError{Pinned: p.pin, Presented: fp}
	}
	return nil
}

// MismatchError reports a server certificate that differs from the pinned
// one. Pinned and Presented are lowercase hex SHA-256 fingerprints.
type MismatchError struct {
	Pinned, Presented string
}

func (e *MismatchError) Error() string {
	return fmt.Sprintf("certs: server certificate changed: pinned sha256:%s, server presented sha256:%s", e.Pinned, e.Presented)
}
