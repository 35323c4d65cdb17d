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
	// pendingKeyFile holds a new key from just before a registration sends
	// it to the server until the server's answer (see Client.Register).
	pendingKeyFile = "client_key.pending.pem"
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
		return nil, fmt.Errorf("cannot read %s (%v): check that --home names this client's directory, and its permissions", filepath.Join(home, identityFile), unwrapPathError(err))
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

// regKey is the key a registration proves it holds: the saved key, or a new
// one that becomes the saved key only once a server has registered it.
type regKey struct {
	priv    *rsa.PrivateKey
	saved   bool   // it is in keyFile
	pem     []byte // a key not in keyFile yet, encoded
	pending bool   // it is in pendingKeyFile
	wrote   bool   // this registration wrote pendingKeyFile
}

// registrationKey returns the key to register with: home/client_key.pem;
// else the pending key of a registration whose answer never came (the
// server may have registered it); else a new RSA key of the given size,
// held only in memory.
func registrationKey(home string, bits int, notice func(string, ...any)) (*regKey, error) {
	key, err := loadKey(filepath.Join(home, keyFile))
	if err == nil {
		return &regKey{priv: key, saved: true}, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	pending := filepath.Join(home, pendingKeyFile)
	key, err = loadKey(pending)
	if err == nil {
		notice("using the key in %s, left by a registration that got no answer", pending)
		return &regKey{priv: key, pending: true}, nil
	}
	if !errors.Is(err, os.ErrNotExist) {
		return nil, err
	}
	notice("generating a %d-bit RSA key (saved in %s once registered)", bits, filepath.Join(home, keyFile))
	key, err = rsa.GenerateKey(rand.Reader, bits)
	if err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return &regKey{priv: key, pem: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})}, nil
}

// savePending writes a new key to home/client_key.pending.pem, before the
// server can learn it.
func (k *regKey) savePending(home string) error {
	if k.saved || k.pending {
		return nil
	}
	if err := writeFileAtomic(filepath.Join(home, pendingKeyFile), k.pem, 0o600); err != nil {
		return fmt.Errorf("cannot save the new key in %s (%v): fix the permissions there, or give --home another directory", home, err)
	}
	k.pending, k.wrote = true, true
	return nil
}

// forget removes the pending key this registration wrote, once the server
// has refused to register it.
func (k *regKey) forget(home string) {
	if k.wrote {
		os.Remove(filepath.Join(home, pendingKeyFile))
		k.pending, k.wrote = false, false
	}
}

// keep makes a registered key the saved key, home/client_key.pem.
func (k *regKey) keep(home string) error {
	switch {
	case k.saved:
		return nil
	case k.pending:
		if err := os.Rename(filepath.Join(home, pendingKeyFile), filepath.Join(home, keyFile)); err != nil {
			return err
		}
		if err := syncDir(home); err != nil {
			return err
		}
	default:
		if err := writeFileAtomic(filepath.Join(home, keyFile), k.pem, 0o600); err != nil {
			return err
		}
	}
	k.saved, k.pending = true, false
	return nil
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
		return nil, fmt.Errorf("%s holds no PEM key: restore this client's key from a copy", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s is damaged (its PEM block holds no PKCS #8 private key): restore this client's key from a copy", path)
	}
	key, ok := k.(*rsa.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s holds a key, but not an RSA key as qbackup makes: restore this client's key from a copy", path)
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
