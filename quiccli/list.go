package quiccli

import (
	"context"

	"github.com/qbackup/qbackup/proto"
)

// List returns the stored files whose names equal prefix or lie below it
// ("" for all): the latest version of each, or every version.
func (s *Session) List(ctx context.Context, prefix string, allVersions bool) ([]proto.ListEntry, error) {
	c := s.newCall()
	defer s.endCall(c)
	var flags uint8
	if allVersions {
		flags |= proto.ListAllVersions
	}
	if err := s.send(&proto.ListRequest{Req: c.req, Prefix: prefix, Flags: flags}); err != nil {
		return nil, err
	}
	var out []proto.ListEntry
	for {
		m, err := s.wait(ctx, c)
		if err != nil {
			return nil, err
		}
		switch m := m.(type) {
		case *proto.ListEntry:
			out = append(out, *m)
		case *proto.ListEnd:
			if int(m.Count) != len(out) {
				return nil, proto.Errorf(proto.CodeProtocol, "server listed %d entries but counted %d", len(out), m.Count)
			}
			return out, nil
		default:
			return nil, proto.Errorf(proto.CodeProtocol, "server answered a listing with %v", m.Type())
		}
	}
}
