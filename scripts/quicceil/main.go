// Command quicceil is the ceiling scripts/bench measures qbackup against: a
// bare quic-go transfer of the same bytes on one connection, with the QUIC
// settings qbackup uses but nothing else. No application crypto (QUIC's own
// TLS 1.3 encryption only), no checksums, no disk on the server side: the
// server reads every unidirectional stream and discards the bytes.
//
//	quicceil server [-listen 127.0.0.1:0] [-once [-store DIR]]
//	quicceil client -addr HOST:PORT [-streams 8] [-chunk 1048576] [-mem] [-store] PATH...
//
// The server prints "listening ADDR" on stdout once it is ready. The client
// sends every regular file under PATH... in pieces of at most -chunk bytes,
// round robin over -streams unidirectional streams (read from the files as
// it goes, or read into memory first with -mem), then waits until the
// server has confirmed every byte. Both print "BYTES bytes SECONDS s"
// (handshake included on the client side) and a rate.
//
// On the control stream (the one bidirectional stream) the client sends the
// total as 8 bytes big-endian, its top bit set with -store; the server
// answers with the same 8 bytes once it has received that many on the
// data streams.
//
// With -store on both sides (and -once) the server also stores what it
// receives, as the least a backup server must do: every piece carries a
// header (file index, file size, offset, length: 24 bytes), the server
// writes it at its offset into a file of DIR named by the index (pwrite,
// through the page cache), and once every byte is there it makes them
// all durable with one syncfs before it confirms. This is the ceiling for
// a tool that keeps what it receives: on a machine where writing to the
// disk is dear, it is what bounds qbackup, whose server stores every byte
// (and fsyncs it) before it confirms.
package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/qbackup/qbackup/quic"
)

const alpn = "qbackup-quicceil"

// Defaults as in quicsrv (DefaultChunkSize, DefaultStreams) and the
// receive windows of quicsrv.Server.QUICConfig and quiccli's client config.
const (
	defaultChunk   = 1 << 20
	defaultStreams = 8
)

func serverConfig(chunk, streams int) *quic.Config {
	return &quic.Config{
		Versions:                       []quic.Version{quic.Version1},
		HandshakeIdleTimeout:           10 * time.Second,
		MaxIdleTimeout:                 60 * time.Second,
		KeepAlivePeriod:                10 * time.Second,
		MaxIncomingStreams:             1,
		MaxIncomingUniStreams:          int64(streams),
		InitialStreamReceiveWindow:     uint64(chunk) * 2,
		MaxStreamReceiveWindow:         8 << 20,
		InitialConnectionReceiveWindow: uint64(chunk) * 4,
		MaxConnectionReceiveWindow:     32 << 20,
	}
}

func clientConfig() *quic.Config {
	return &quic.Config{
		Versions:                       []quic.Version{quic.Version1},
		HandshakeIdleTimeout:           10 * time.Second,
		MaxIdleTimeout:                 60 * time.Second,
		KeepAlivePeriod:                5 * time.Second,
		MaxIncomingStreams:             -1,
		MaxIncomingUniStreams:          64,
		InitialStreamReceiveWindow:     2 << 20,
		MaxStreamReceiveWindow:         8 << 20,
		InitialConnectionReceiveWindow: 4 << 20,
		MaxConnectionReceiveWindow:     32 << 20,
	}
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "server":
		err = server(os.Args[2:])
	case "client":
		err = client(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "quicceil:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: quicceil server [-listen ADDR] [-once] [-store DIR] | quicceil client -addr ADDR [-streams N] [-chunk BYTES] [-mem] [-store] PATH...")
	os.Exit(2)
}

func report(who string, n int64, d time.Duration) {
	s := d.Seconds()
	fmt.Printf("%s: %d bytes %.3f s (%.1f MiB/s, %.1f Mbit/s)\n", who, n, s,
		float64(n)/s/(1<<20), float64(n)*8/s/1e6)
}

// selfSigned makes a throwaway certificate in memory.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "quicceil"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

func server(args []string) error {
	fl := flag.NewFlagSet("server", flag.ExitOnError)
	listen := fl.String("listen", "127.0.0.1:0", "UDP address to listen on")
	once := fl.Bool("once", false, "exit after the first connection")
	chunk := fl.Int("chunk", defaultChunk, "chunk size the receive windows are sized for, as in qbackupd")
	streams := fl.Int("streams", defaultStreams, "unidirectional streams a client may open at once")
	storeDir := fl.String("store", "", "store what arrives in files in this directory, and sync them before confirming (with -once; the client must run with -store too)")
	fl.Parse(args)
	var st *store
	if *storeDir != "" {
		if !*once {
			// Files are named by the client's index: a second client
			// would write over the first one's.
			return errors.New("-store needs -once")
		}
		var err error
		if st, err = openStore(*storeDir, *chunk); err != nil {
			return err
		}
	}

	cert, err := selfSigned()
	if err != nil {
		return err
	}
	tlsConf := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{alpn}, MinVersion: tls.VersionTLS13}
	ln, err := quic.ListenAddr(*listen, tlsConf, serverConfig(*chunk, *streams))
	if err != nil {
		return err
	}
	defer ln.Close()
	fmt.Printf("listening %s\n", ln.Addr())
	for {
		conn, err := ln.Accept(context.Background())
		if err != nil {
			return err
		}
		if *once {
			return receive(conn, st)
		}
		go func() {
			if err := receive(conn, st); err != nil {
				fmt.Fprintln(os.Stderr, "quicceil:", err)
			}
		}()
	}
}

// receive reads every data stream of conn until the total the client
// announced has arrived, confirms it, and waits for the client to close.
// With a store the bytes are written into it and synced before the
// confirmation; without one they are discarded.
func receive(conn *quic.Conn, st *store) error {
	start := time.Now()
	ctx := conn.Context()
	ctrl, err := conn.AcceptStream(ctx)
	if err != nil {
		return err
	}
	var hdr [8]byte
	if _, err := io.ReadFull(ctrl, hdr[:]); err != nil {
		return err
	}
	v := binary.BigEndian.Uint64(hdr[:])
	if framed := v&storeBit != 0; framed != (st != nil) {
		err := fmt.Errorf("the client runs with -store=%v, the server with -store=%v: both or neither", framed, st != nil)
		conn.CloseWithError(1, err.Error())
		return err
	}
	total := int64(v &^ storeBit)
	var got atomic.Int64
	done := make(chan struct{})
	var doneOnce sync.Once
	add := func(n int) {
		if got.Add(int64(n)) >= total {
			doneOnce.Do(func() { close(done) })
		}
	}
	if total == 0 {
		add(0)
	}
	go func() {
		for {
			rs, err := conn.AcceptUniStream(ctx)
			if err != nil {
				return
			}
			if st != nil {
				go func() {
					if err := st.receive(rs, add); err != nil {
						conn.CloseWithError(1, err.Error())
					}
				}()
				continue
			}
			go func() {
				buf := make([]byte, defaultChunk)
				for {
					n, err := rs.Read(buf)
					add(n)
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("connection ended after %d of %d bytes: %w", got.Load(), total, context.Cause(ctx))
	}
	if st != nil {
		if err := st.sync(); err != nil {
			return err
		}
	}
	d := time.Since(start)
	if _, err := ctrl.Write(hdr[:]); err != nil {
		return err
	}
	<-ctx.Done() // the client closes once it has the answer
	report("received", got.Load(), d)
	return nil
}

type piece struct {
	file int // index into files
	off  int64
	n    int
}

type srcFile struct {
	path string
	size int64
	f    *os.File // opened once when it has several pieces
	mem  []byte   // with -mem
}

func client(args []string) error {
	fl := flag.NewFlagSet("client", flag.ExitOnError)
	addr := fl.String("addr", "", "server address HOST:PORT")
	streams := fl.Int("streams", defaultStreams, "unidirectional streams")
	chunk := fl.Int("chunk", defaultChunk, "largest piece written at once, in bytes")
	mem := fl.Bool("mem", false, "read the files into memory before connecting")
	framed := fl.Bool("store", false, "put a header on every piece, for a server that stores (server -store)")
	fl.Parse(args)
	if *addr == "" || fl.NArg() == 0 || *streams < 1 || *chunk < 1 {
		usage()
	}

	var files []srcFile
	var total int64
	for _, root := range fl.Args() {
		err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || !d.Type().IsRegular() {
				return err
			}
			info, err := d.Info()
			if err != nil {
				return err
			}
			files = append(files, srcFile{path: p, size: info.Size()})
			total += info.Size()
			return nil
		})
		if err != nil {
			return err
		}
	}
	var pieces []piece
	for i := range files {
		sf := &files[i]
		if *mem {
			b, err := os.ReadFile(sf.path)
			if err != nil {
				return err
			}
			sf.mem = b
		} else if sf.size > int64(*chunk) {
			f, err := os.Open(sf.path)
			if err != nil {
				return err
			}
			defer f.Close()
			sf.f = f
		}
		for off := int64(0); off < sf.size; off += int64(*chunk) {
			pieces = append(pieces, piece{i, off, int(min(int64(*chunk), sf.size-off))})
		}
		if sf.size == 0 {
			pieces = append(pieces, piece{i, 0, 0}) // so that a storing server creates it
		}
	}

	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 24*time.Hour)
	defer cancel()
	tlsConf := &tls.Config{
		// A throwaway certificate on loopback: nothing to verify against.
		InsecureSkipVerify: true,
		NextProtos:         []string{alpn},
		MinVersion:         tls.VersionTLS13,
	}
	conn, err := quic.DialAddr(ctx, *addr, tlsConf, clientConfig())
	if err != nil {
		return err
	}
	defer conn.CloseWithError(0, "")
	ctrl, err := conn.OpenStreamSync(ctx)
	if err != nil {
		return err
	}
	var hdr [8]byte
	mode := uint64(0)
	if *framed {
		mode = storeBit
	}
	binary.BigEndian.PutUint64(hdr[:], uint64(total)|mode)
	if _, err := ctrl.Write(hdr[:]); err != nil {
		return err
	}

	// Pieces go round robin: stream i sends pieces i, i+streams, ...
	var wg sync.WaitGroup
	errs := make(chan error, *streams)
	for s := range min(*streams, len(pieces)) {
		wg.Go(func() {
			if err := sendPieces(ctx, conn, files, pieces, s, *streams, *chunk, *framed); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil { // the first, if any
		return err
	}
	if _, err := io.ReadFull(ctrl, hdr[:]); err != nil {
		return fmt.Errorf("waiting for the server's confirmation: %w", err)
	}
	if got := int64(binary.BigEndian.Uint64(hdr[:]) &^ storeBit); got != total {
		return fmt.Errorf("server confirmed %d bytes, sent %d", got, total)
	}
	report(fmt.Sprintf("sent %d files", len(files)), total, time.Since(start))
	return nil
}

func sendPieces(ctx context.Context, conn *quic.Conn, files []srcFile, pieces []piece, first, step, chunk int, framed bool) error {
	st, err := conn.OpenUniStreamSync(ctx)
	if err != nil {
		return err
	}
	buf := make([]byte, chunk)
	var hdr [pieceHeaderSize]byte
	for i := first; i < len(pieces); i += step {
		p := pieces[i]
		sf := &files[p.file]
		if framed {
			putPieceHeader(hdr[:], p.file, sf.size, p.off, p.n)
			if _, err := st.Write(hdr[:]); err != nil {
				return err
			}
		}
		var b []byte
		switch {
		case sf.mem != nil:
			b = sf.mem[p.off : p.off+int64(p.n)]
		case sf.f != nil:
			if _, err := sf.f.ReadAt(buf[:p.n], p.off); err != nil {
				return err
			}
			b = buf[:p.n]
		default: // a file of one piece
			f, err := os.Open(sf.path)
			if err != nil {
				return err
			}
			_, err = io.ReadFull(f, buf[:p.n])
			f.Close()
			if err != nil {
				return err
			}
			b = buf[:p.n]
		}
		if _, err := st.Write(b); err != nil {
			return err
		}
	}
	return st.Close()
}
