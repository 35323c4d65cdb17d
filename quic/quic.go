// Package quic is qbackup's one door to its QUIC implementation. Every
// other package imports this one, never a QUIC module itself, so that
// moving between upstream github.com/quic-go/quic-go and a fork of it is a
// change to this package alone.
//
// Today the module behind it is github.com/apernet/quic-go, a fork of
// quic-go v0.61 that adds what upstream lacks: a way to replace a
// connection's congestion controller (Conn.SetCongestionControl). The
// controller we install is our own (package bbr, through cc.go). We go
// back to upstream once it has such a hook (quic-go issue 4565).
//
// The names here are aliases: a *quic.Conn is the module's *Conn, so code
// written against upstream quic-go reads the same.
package quic

import (
	"context"
	"crypto/tls"
	"net"

	qgo "github.com/apernet/quic-go"
)

// The QUIC types qbackup uses.
type (
	Conn                  = qgo.Conn
	Stream                = qgo.Stream
	SendStream            = qgo.SendStream
	ReceiveStream         = qgo.ReceiveStream
	Config                = qgo.Config
	Transport             = qgo.Transport
	Listener              = qgo.Listener
	Path                  = qgo.Path
	Version               = qgo.Version
	ApplicationErrorCode  = qgo.ApplicationErrorCode
	ApplicationError      = qgo.ApplicationError
	TransportError        = qgo.TransportError
	TransportErrorCode    = qgo.TransportErrorCode
	StreamError           = qgo.StreamError
	IdleTimeoutError      = qgo.IdleTimeoutError
	HandshakeTimeoutError = qgo.HandshakeTimeoutError
	StatelessResetError   = qgo.StatelessResetError
)

// Version1 is QUIC version 1 (RFC 9000), the only one qbackup speaks.
const Version1 = qgo.Version1

// DialAddr opens a connection to addr on a socket of its own.
func DialAddr(ctx context.Context, addr string, tlsConf *tls.Config, conf *Config) (*Conn, error) {
	return qgo.DialAddr(ctx, addr, tlsConf, conf)
}

// ListenAddr listens for connections on the UDP address addr.
func ListenAddr(addr string, tlsConf *tls.Config, conf *Config) (*Listener, error) {
	return qgo.ListenAddr(addr, tlsConf, conf)
}

// Listen listens for connections on conn.
func Listen(conn net.PacketConn, tlsConf *tls.Config, conf *Config) (*Listener, error) {
	return qgo.Listen(conn, tlsConf, conf)
}
