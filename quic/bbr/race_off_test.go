//go:build !race

package bbr

const raceBuild = false
