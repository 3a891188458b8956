module ironboot/pxepeer

go 1.26.5

require (
	github.com/insomniacslk/dhcp v0.0.0-20260719225207-c76316d4aa82
	github.com/pin/tftp/v3 v3.2.0
)

require (
	github.com/pierrec/lz4/v4 v4.1.26 // indirect
	github.com/u-root/uio v0.0.0-20240224005618-d2acac8f3701 // indirect
	golang.org/x/net v0.57.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
)
