module github.com/qbackup/qbackup

go 1.26.8

require (
	github.com/alecthomas/kong v1.17.0
	github.com/apernet/quic-go v0.61.1-0.20260806010916-184d081eef3e
	github.com/mattn/go-sqlite3 v1.14.53
	github.com/quic-go/quic-go v0.65.0
	github.com/vbauerster/mpb/v8 v8.16.2
	golang.org/x/sys v0.50.0
	golang.org/x/term v0.48.0
)

require (
	github.com/VividCortex/ewma v1.2.0 // indirect
	github.com/acarl005/stripansi v0.0.0-20180116102854-5a71ef0e047d // indirect
	github.com/andybalholm/brotli v1.0.6 // indirect
	github.com/clipperhouse/uax29/v2 v2.7.0 // indirect
	github.com/klauspost/compress v1.17.4 // indirect
	github.com/mattn/go-runewidth v0.0.30 // indirect
	github.com/refraction-networking/utls v1.8.2 // indirect
	github.com/vbauerster/cupwriter v0.0.5 // indirect
	golang.org/x/crypto v0.54.0 // indirect
	golang.org/x/net v0.56.0 // indirect
)
