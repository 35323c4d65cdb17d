//go:build !linux

package store

import (
	"errors"
	"os"
)

const (
	haveRenameNoReplace = false
	haveOpenIn          = false
)

var errNoFastDirs = errors.New("store: not available on this system")

func renameNoReplace(*os.File, string, *os.File, string) error { return errNoFastDirs }

func openCreateIn(*os.File, string, string) (*os.File, error) { return nil, errNoFastDirs }
