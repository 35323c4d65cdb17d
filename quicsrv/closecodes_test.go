package quicsrv_test

import (
	"io"
	"strings"
	"testing"

	"github.com/qbackup/qbackup/proto"
	"github.com/qbackup/qbackup/quicsrv"
	"github.com/qbackup/qbackup/quicsrv/srvtest"
)

// TestCloseCodes: connection closes of PROTOCOL.md §9.1, §9.6, §9.9, §10.3
// and §11 that no other test checks, each with the code the spec gives.
// (The rest are checked where their cause is: TestHandshakeHostile,
// TestHandshakeTimeout, TestHandshakeEOFCode, TestConnectionLimits,
// TestRegistrationModes, TestShutdownDuringHandshake, the hostile chunk
// and control tests, FuzzSession.)
func TestCloseCodes(t *testing.T) {
	key, _ := testKeys(t)
	tests := []struct {
		name string
		code proto.ErrorCode
		msg  string // in the reason
		// run misbehaves and returns the connection the server must close.
		run func(t *testing.T, srv *srvtest.Server) *rawClient
	}{
		{"control stream reset before its first byte", proto.CodeInternal, "internal server error", func(t *testing.T, srv *srvtest.Server) *rawClient {
			c := dialRaw(t, srv)
			c.ctrl.CancelWrite(0x77)
			return c
		}},
		{"control stream reset after Welcome", proto.CodeInternal, "internal server error", func(t *testing.T, srv *srvtest.Server) *rawClient {
			c := registered(t, srv, "closer", key)
			c.ctrl.CancelWrite(0x77)
			return c
		}},
		{"Register while the store fails", proto.CodeInternal, "registration failed on the server", func(t *testing.T, srv *srvtest.Server) *rawClient {
			srv.Store.Close()
			c := dialRaw(t, srv)
			c.send(c.registerMsg("closer", key))
			return c
		}},
		{"Reconnect while the store fails", proto.CodeInternal, "reconnect failed on the server", func(t *testing.T, srv *srvtest.Server) *rawClient {
			id := registered(t, srv, "closer", key).id
			srv.Store.Close()
			c := dialRaw(t, srv)
			c.send(c.reconnectMsg(id, key))
			return c
		}},
		{"client finishes the control stream after Welcome", proto.CodeNoError, "", func(t *testing.T, srv *srvtest.Server) *rawClient {
			c := registered(t, srv, "closer", key)
			c.ctrl.Close()
			return c
		}},
		{"drained session whose client does not close", proto.CodeShutdown, "server shutting down", func(t *testing.T, srv *srvtest.Server) *rawClient {
			c := registered(t, srv, "closer", key)
			quicsrv.DrainSessions(srv.Srv)
			if _, err := c.read(); err != io.EOF {
				t.Fatalf("reading after the drain: %v; want the end of the control stream", err)
			}
			return c // and it does not close
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := srvtest.Start(t, nil)
			c := tt.run(t, srv)
			ae := c.expectClosed(tt.code)
			if !strings.Contains(ae.ErrorMessage, tt.msg) {
				t.Errorf("close reason %q, want it to contain %q", ae.ErrorMessage, tt.msg)
			}
		})
	}
}
