package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qbackup/qbackup/quic"
)

// TestStoreRoundTrip sends a tree with -store and checks that the server
// stored every file whole, under its index.
func TestStoreRoundTrip(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	rng := rand.New(rand.NewPCG(1, 2))
	sizes := []int{0, 1, 4095, 65536, defaultChunk, defaultChunk + 1, 3*defaultChunk + 512}
	for i, n := range sizes {
		p := filepath.Join(src, "d"+strconv.Itoa(i%2), "f"+strconv.Itoa(i))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		b := make([]byte, n)
		for j := range b {
			b[j] = byte(rng.Uint32())
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	st, err := openStore(filepath.Join(dir, "dst"), defaultChunk)
	if err != nil {
		t.Fatal(err)
	}
	addr, served := serveOnce(t, st)
	if err := client([]string{"-addr", addr, "-streams", "3", "-store", src}); err != nil {
		t.Fatal(err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	// The client numbers files in the order it walks them.
	i := 0
	err = filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		want, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		got, err := os.ReadFile(filepath.Join(dir, "dst", strconv.Itoa(i)))
		if err != nil {
			return err
		}
		if !bytes.Equal(got, want) {
			t.Errorf("file %d (%s): stored %d bytes, not the %d sent", i, p, len(got), len(want))
		}
		i++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if i != len(sizes) {
		t.Fatalf("walked %d files, want %d", i, len(sizes))
	}
}

// TestStoreBadPieces checks that a stream whose piece headers make no
// sense ends with an error.
func TestStoreBadPieces(t *testing.T) {
	hdr := func(file int, size, off int64, n int) []byte {
		b := make([]byte, pieceHeaderSize)
		putPieceHeader(b, file, size, off, n)
		return b
	}
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	tests := []struct {
		name string
		in   []byte
	}{
		{"piece past the file's end", cat(hdr(0, 10, 8, 4), make([]byte, 4))},
		{"offset past the size", cat(hdr(0, 10, 11, 0))},
		{"piece longer than a chunk", cat(hdr(0, 4*defaultChunk, 0, defaultChunk+1), make([]byte, defaultChunk+1))},
		{"negative size", cat(hdr(0, -1, 0, 0))},
		{"sizes disagree", cat(hdr(0, 10, 0, 5), make([]byte, 5), hdr(0, 12, 5, 5), make([]byte, 5))},
		{"header cut short", hdr(0, 10, 0, 5)[:7]},
		{"piece cut short", cat(hdr(0, 10, 0, 5), make([]byte, 3))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			st, err := openStore(filepath.Join(dir, "dst"), defaultChunk)
			if err != nil {
				t.Fatal(err)
			}
			err = st.receive(bytes.NewReader(tt.in), func(int) {})
			if err == nil {
				t.Fatal("no error")
			}
			if err == io.EOF {
				t.Fatalf("plain EOF for a stream cut short; want an error that says so")
			}
		})
	}
}

// serveOnce serves one connection on a loopback port with st (nil: discard)
// and returns the address and where receive's result goes.
func serveOnce(t *testing.T, st *store) (string, chan error) {
	t.Helper()
	cert, err := selfSigned()
	if err != nil {
		t.Fatal(err)
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13}
	ln, err := quic.ListenAddr("127.0.0.1:0", tlsConf, serverConfig(defaultChunk, defaultStreams))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	t.Cleanup(cancel)
	served := make(chan error, 1)
	go func() {
		conn, err := ln.Accept(ctx)
		if err != nil {
			served <- err
			return
		}
		served <- receive(conn, st)
	}()
	return ln.Addr().String(), served
}

// TestStoreModeMismatch checks that a client and a server that disagree
// on -store fail, rather than count headers as data (or data as headers).
func TestStoreModeMismatch(t *testing.T) {
	src := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(src, bytes.Repeat([]byte("x"), 3*defaultChunk), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name        string
		serverStore bool
		clientArgs  []string
	}{
		{"client stores, server does not", false, []string{"-store"}},
		{"server stores, client does not", true, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var st *store
			if tt.serverStore {
				var err error
				if st, err = openStore(filepath.Join(t.TempDir(), "dst"), defaultChunk); err != nil {
					t.Fatal(err)
				}
			}
			addr, served := serveOnce(t, st)
			args := append([]string{"-addr", addr}, tt.clientArgs...)
			if err := client(append(args, src)); err == nil {
				t.Error("client: no error")
			}
			if err := <-served; err == nil || !strings.Contains(err.Error(), "-store") {
				t.Errorf("server: %v, want an error about -store", err)
			}
		})
	}
}
