//go:build !linux

package store

import (
	"errors"
	"os"
)

const haveSyncFS = false

func syncFS(*os.Root) error { return errors.New("store: syncfs is not available") }
