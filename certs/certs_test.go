package certs_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/qbackup/qbackup/certs"
)

func TestLoadOrCreateCreatesThenLoads(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	c1, err := certs.LoadOrCreate(dir)
	if err != nil {
		t.Fatalf("LoadOrCreate (create): %v", err)
	}

	if runtime.GOOS != "windows" {
		for _, tc := range []struct {
			path string
			want fs.FileMode
		}{
			{dir, 0o700 | fs.ModeDir},
			{filepath.Join(dir, "key.pem"), 0o600},
			{filepath.Join(dir, "cert.pem"), 0o644},
		} {
			fi, err := os.Stat(tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if got := fi.Mode(); got != tc.want {
				t.Errorf("mode of %s = %v, want %v", tc.path, got, tc.want)
			}
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 2 {
		t.Errorf("dir has %d entries, want 2 (no temp files left): %v", len(ents), ents)
	}

	keyPEM, err := os.ReadFile(filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(keyPEM), "-----BEGIN PRIVATE KEY-----\n") {
		t.Errorf("key.pem is not PKCS#8 PEM:\n%s", keyPEM)
	}

	leaf := c1.Leaf
	if leaf == nil {
		t.Fatal("Leaf not set")
	}
	if got, want := leaf.Subject.CommonName, "qbackupd"; got != want {
		t.Errorf("CN = %q, want %q", got, want)
	}
	if got := leaf.DNSNames; len(got) != 1 || got[0] != "qbackupd" {
		t.Errorf("DNSNames = %q, want [qbackupd]", got)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T is not ECDSA P-256", leaf.PublicKey)
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("KeyUsage = %v", leaf.KeyUsage)
	}
	if got := leaf.ExtKeyUsage; len(got) != 1 || got[0] != x509.ExtKeyUsageServerAuth {
		t.Errorf("ExtKeyUsage = %v", got)
	}
	if leaf.IsCA {
		t.Error("IsCA set")
	}
	if leaf.SerialNumber.Sign() <= 0 || leaf.SerialNumber.BitLen() > 128 {
		t.Errorf("serial %v is not a positive 128-bit number", leaf.SerialNumber)
	}
	now := time.Now()
	if d := now.Sub(leaf.NotBefore); d < 59*time.Minute || d > 61*time.Minute {
		t.Errorf("NotBefore %v is not about an hour ago", leaf.NotBefore)
	}
	if y := leaf.NotAfter.Sub(leaf.NotBefore).Hours() / 24 / 365.25; y < 19.99 || y > 20.01 {
		t.Errorf("validity is %.2f years, want 20", y)
	}
	if err := leaf.CheckSignature(leaf.SignatureAlgorithm, leaf.RawTBSCertificate, leaf.Signature); err != nil {
		t.Errorf("not self-signed: %v", err)
	}

	c2, err := certs.LoadOrCreate(dir)
	if err != nil {
		t.Fatalf("LoadOrCreate (load): %v", err)
	}
	if got, want := certs.Fingerprint(c2.Certificate[0]), certs.Fingerprint(c1.Certificate[0]); got != want {
		t.Errorf("second call fingerprint = %s, want %s", got, want)
	}
	if c2.Leaf == nil || !c2.Leaf.Equal(c1.Leaf) {
		t.Error("second call Leaf differs")
	}
	if !c2.PrivateKey.(*ecdsa.PrivateKey).Equal(c1.PrivateKey) {
		t.Error("second call private key differs")
	}
}

func TestLoadOrCreateErrors(t *testing.T) {
	// A valid pair to copy from, and a second one for a mismatched key.
	good := t.TempDir()
	if _, err := certs.LoadOrCreate(good); err != nil {
		t.Fatal(err)
	}
	other := t.TempDir()
	if _, err := certs.LoadOrCreate(other); err != nil {
		t.Fatal(err)
	}
	read := func(dir, name string) []byte {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	goodCert, goodKey := read(good, "cert.pem"), read(good, "key.pem")
	otherKey := read(other, "key.pem")

	type file struct {
		data []byte
		mode fs.FileMode
	}
	tests := []struct {
		name    string
		cert    *file
		key     *file
		wantErr string // substring
		unix    bool   // only meaningful where permission bits are
	}{
		{name: "only cert", cert: &file{goodCert, 0o644}, wantErr: "key.pem does not"},
		{name: "only key", key: &file{goodKey, 0o600}, wantErr: "cert.pem does not"},
		{name: "key group readable", cert: &file{goodCert, 0o644}, key: &file{goodKey, 0o640}, wantErr: "chmod 600", unix: true},
		{name: "key world readable", cert: &file{goodCert, 0o644}, key: &file{goodKey, 0o604}, wantErr: "chmod 600", unix: true},
		{name: "garbage cert", cert: &file{[]byte("hello\n"), 0o644}, key: &file{goodKey, 0o600}, wantErr: "no PEM \"CERTIFICATE\""},
		{name: "garbage key", cert: &file{goodCert, 0o644}, key: &file{[]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600}, wantErr: "key.pem"},
		{name: "empty key", cert: &file{goodCert, 0o644}, key: &file{nil, 0o600}, wantErr: "no PEM \"PRIVATE KEY\""},
		{name: "mismatched pair", cert: &file{goodCert, 0o644}, key: &file{otherKey, 0o600}, wantErr: "does not belong to the certificate"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.unix && runtime.GOOS == "windows" {
				t.Skip("no Unix permissions")
			}
			dir := t.TempDir()
			for name, f := range map[string]*file{"cert.pem": tc.cert, "key.pem": tc.key} {
				if f == nil {
					continue
				}
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, f.data, f.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(p, f.mode); err != nil { // undo umask
					t.Fatal(err)
				}
			}
			before := snapshot(t, dir)
			_, err := certs.LoadOrCreate(dir)
			if err == nil {
				t.Fatalf("LoadOrCreate succeeded, want error containing %q", tc.wantErr)
			}
			if got := err.Error(); !strings.HasPrefix(got, "certs: ") || !strings.Contains(got, tc.wantErr) {
				t.Errorf("error = %q, want prefix \"certs: \" and %q", got, tc.wantErr)
			}
			if after := snapshot(t, dir); after != before {
				t.Errorf("directory changed on error:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// snapshot describes the names and contents of the files in dir.
func snapshot(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		sum := sha256.Sum256(data)
		b.WriteString(e.Name() + "=" + hex.EncodeToString(sum[:4]) + " ")
	}
	return b.String()
}

func TestFingerprint(t *testing.T) {
	der := []byte("not really DER, but any bytes will do")
	sum := sha256.Sum256(der)
	if got, want := certs.Fingerprint(der), hex.EncodeToString(sum[:]); got != want {
		t.Errorf("Fingerprint = %s, want %s", got, want)
	}
	if got := certs.Fingerprint(nil); len(got) != 64 || strings.ToLower(got) != got {
		t.Errorf("Fingerprint(nil) = %q, want 64 lowercase hex digits", got)
	}
}

func TestParseFingerprint(t *testing.T) {
	const fp = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	upperColons := strings.ToUpper(fp[0:2])
	for i := 2; i < len(fp); i += 2 {
		upperColons += ":" + strings.ToUpper(fp[i:i+2])
	}
	tests := []struct {
		in      string
		want    string
		wantErr string
	}{
		{in: fp, want: fp},
		{in: strings.ToUpper(fp), want: fp},
		{in: "sha256:" + fp, want: fp},
		{in: "SHA256:" + fp, want: fp},
		{in: "Sha256:" + fp, want: fp},
		{in: upperColons, want: fp}, // openssl x509 -fingerprint -sha256
		{in: "SHA256:" + upperColons, want: fp},
		{in: strings.ReplaceAll(upperColons, ":", " "), want: fp},
		{in: "  " + fp[:32] + " " + fp[32:] + "\n", want: fp}, // pasted with surrounding space
		{in: "", wantErr: "0 hex digits"},
		{in: "sha256:", wantErr: "0 hex digits"},
		{in: fp[:62], wantErr: "62 hex digits"},
		{in: fp + "00", wantErr: "66 hex digits"},
		{in: fp[:63] + "g", wantErr: "not hexadecimal"},
		{in: "sha1:" + fp, wantErr: "not hexadecimal"},
		{in: "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU", wantErr: "not hexadecimal"}, // ssh-style base64
		{in: fp[:32] + "-" + fp[32:], wantErr: "not hexadecimal"},
	}
	for _, tc := range tests {
		got, err := certs.ParseFingerprint(tc.in)
		if tc.wantErr != "" {
			if err == nil {
				t.Errorf("ParseFingerprint(%q) = %q, want error containing %q", tc.in, got, tc.wantErr)
				continue
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "certs: ") || !strings.Contains(msg, tc.wantErr) || !strings.Contains(msg, "64 hex digits") {
				t.Errorf("ParseFingerprint(%q) error = %q, want it to contain %q and explain the format", tc.in, msg, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseFingerprint(%q) = %q, %v; want %q, nil", tc.in, got, err, tc.want)
		}
	}
}
