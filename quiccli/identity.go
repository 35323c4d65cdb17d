package quiccli

import (
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
)

// Files under the client's home directory.
const (
	identityFile = "identity.json"
	keyFile      = "client_key.pem"
)

// Identity is what a registered client remembers about itself. It is saved
// as identity.json under the home directory; the private key is kept
// beside it in client_key.pem (mode 0600). The session key is never saved.
type Identity struct {
	Server      string `json:"server"`      // host:port
	Name        string `json:"name"`        // the name registered
	ClientID    string `json:"client_id"`   // 32 hex digits, from the server
	Fingerprint string `json:"fingerprint"` // pinned server certificate, hex SHA-256
}

// ID returns the client ID as bytes.
func (id *Identity) ID() ([16]byte, error) {
	var out [16]byte
	b, err := hex.DecodeString(id.ClientID)
	if err != nil || len(b) != 16 {
		return out, fmt.Errorf("identity has a malformed client ID %q", id.ClientID)
	}
	copy(out[:], b)
	return out, nil
}

// errNoIdentity is returned by loadIdentity when the home has none.
var errNoIdentity = errors.New("no identity")

// loadIdentity reads home/identity.json.
func loadIdentity(home string) (*Identity, error) {
	b, err := os.ReadFile(filepath.Join(home, identityFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil, errNoIdentity
	}
	if err != nil {
		return nil, err
	}
	var id Identity
	if err := json.Unmarshal(b, &id); err != nil {
		return nil, fmt.Errorf("%s is damaged (%v); move it away and register again", filepath.Join(home, identityFile), err)
	}
	if _, err := id.ID(); err != nil {
		return nil, fmt.Errorf("%s is damaged (%v); move it away and register again", filepath.Join(home, identityFile), err)
	}
	return &id, nil
}

// save writes home/identity.json atomically.
func (id *Identity) save(home string) error {
	b, err := json.MarshalIndent(id, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(home, identityFile), append(b, '\n'), 0o600)
}

// loadOrCreateKey loads home/client_key.pem or, if there is none, creates
// an RSA key of the given size there.
func loadOrCreateKey(home string, bits int) (*rsa.PrivateKey, error) {
	path := filepath.Join(home, keyFile)
	key, err := loadKey(path)
	if !errors.Is(err, os.ErrNotExist) {
		return key, err
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return nil, err
	}
	key, err = rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err := writeFileAtomic(path, pemBytes, 0o600); err != nil {
		return nil, err
	}
	return key, nil
}

func loadKey(path string) (*rsa.PrivateKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if fi, err := f.Stat(); err == nil && runtime.GOOS != "windows" && fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%s is readable by others (mode %v); run: chmod 600 %s", path, fi.Mode().Perm(), path)
	}
	b, err := readAllLimited(f, 64<<10)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("%s holds no PEM key", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", path, err)
	}
	key, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s holds a %T, want an RSA key", path, k)
	}
	return key, nil
}

func readAllLimited(f *os.File, max int64) ([]byte, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() > max {
		return nil, fmt.Errorf("%s is too large to be a key", f.Name())
	}
	b := make([]byte, fi.Size())
	_, err = f.ReadAt(b, 0)
	return b, err
}

// writeFileAtomic writes data to a temporary file beside path, syncs it and
// renames it over path, then syncs the directory.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	return syncDir(dir)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && runtime.GOOS != "windows" {
		return err
	}
	return nil
}
