package main

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/insomniacslk/dhcp/iana"
)

// firmware is the provider's boot loader class of a client, from option 93 (and 77).
type firmware int

const (
	fwUnsupported firmware = iota
	fwX86BIOS              // x86 BIOS PXE ROM: TFTP undionly.kpxe
	fwX86UEFI              // x86 UEFI (also IA32 and EFI BC): TFTP snp.efi
	fwARMUEFI              // ARM64 UEFI or U-Boot: TFTP snp-arm64.efi
	fwX86IPXE              // x86 BIOS whose ROM is iPXE (user class "iPXE"): tftp:// URL
	fwX86HTTP              // x86 UEFI HTTP boot: http:// URL
	fwARMHTTP              // ARM64 UEFI / U-Boot HTTP boot: http:// URL
)

// proxyDHCP answers PXE clients as the provider's ProxyDHCP does.
type proxyDHCP struct {
	advertise net.IP
	apiPort   int
	logger    *slog.Logger
}

// handler is the server4 handler of the listener on port: 67 takes only DISCOVERs and
// answers OFFERs, 4011 takes only REQUESTs and answers ACKs; everything else is dropped.
func (p *proxyDHCP) handler(port int) func(net.PacketConn, net.Addr, *dhcpv4.DHCPv4) {
	return func(conn net.PacketConn, peer net.Addr, req *dhcpv4.DHCPv4) {
		want, reply := dhcpv4.MessageTypeDiscover, dhcpv4.MessageTypeOffer
		if port == portPXE {
			want, reply = dhcpv4.MessageTypeRequest, dhcpv4.MessageTypeAck
		}

		// PXE is recognised by the presence of option 93 alone (option 60 is not looked at).
		if req.MessageType() != want || req.Options[dhcpv4.OptionClientSystemArchitectureType.Code()] == nil {
			return
		}

		fw, err := classify(req)
		if err != nil {
			p.logger.Debug("ignoring request", "mac", req.ClientHWAddr.String(), "port", port, "error", err)

			return
		}

		resp, err := p.reply(req, reply, fw)
		if err != nil {
			p.logger.Error("building the ProxyDHCP reply", "mac", req.ClientHWAddr.String(), "port", port, "error", err)

			return
		}

		p.logger.Info("offering boot response", "mac", req.ClientHWAddr.String(), "port", port,
			"boot_filename", resp.BootFileNameOption(), "message_type", resp.MessageType().String())

		if _, err := conn.WriteTo(resp.ToBytes(), peer); err != nil {
			p.logger.Error("sending the ProxyDHCP reply", "peer", peer.String(), "port", port, "error", err)
		}
	}
}

// classify maps option 93 to a firmware class (the last recognised architecture wins), turns
// a BIOS client whose first user class is "iPXE" into the iPXE-ROM class, and rejects a
// malformed client GUID (option 97: absent, or 17 bytes starting with 0).
func classify(req *dhcpv4.DHCPv4) (firmware, error) {
	fw := fwUnsupported

	arches := req.ClientArch()
	for _, arch := range arches {
		switch arch { //nolint:exhaustive
		case iana.INTEL_X86PC:
			fw = fwX86BIOS
		case iana.EFI_IA32, iana.EFI_X86_64, iana.EFI_BC:
			fw = fwX86UEFI
		case iana.EFI_ARM64, iana.UBOOT_ARM64:
			fw = fwARMUEFI
		case iana.EFI_X86_HTTP, iana.EFI_X86_64_HTTP:
			fw = fwX86HTTP
		case iana.EFI_ARM64_HTTP, iana.UBOOT_ARM64_HTTP:
			fw = fwARMHTTP
		}
	}

	if fw == fwUnsupported {
		return fw, fmt.Errorf("unsupported client architectures %v", arches)
	}

	if classes := req.UserClass(); len(classes) > 0 && classes[0] == "iPXE" && fw == fwX86BIOS {
		fw = fwX86IPXE
	}

	switch guid := req.GetOneOption(dhcpv4.OptionClientMachineIdentifier); len(guid) {
	case 0:
	case 17:
		if guid[0] != 0 {
			return fwUnsupported, errors.New("client GUID (option 97) does not start with 0")
		}
	default:
		return fwUnsupported, fmt.Errorf("client GUID (option 97) is %d bytes, not 17", len(guid))
	}

	return fw, nil
}

// reply builds the OFFER or ACK: a BOOTREPLY echoing the request (xid, chaddr, flags,
// giaddr, options 82 and 61), siaddr = the advertised address, options 97 and 60 copied (60
// set to "PXEClient" when absent), and the boot file of the firmware class. No yiaddr, no
// server identifier, no PXE vendor options.
func (p *proxyDHCP) reply(req *dhcpv4.DHCPv4, kind dhcpv4.MessageType, fw firmware) (*dhcpv4.DHCPv4, error) {
	resp, err := dhcpv4.NewReplyFromRequest(req,
		dhcpv4.WithMessageType(kind),
		dhcpv4.WithServerIP(p.advertise),
		dhcpv4.WithOptionCopied(req, dhcpv4.OptionClientMachineIdentifier),
		dhcpv4.WithOptionCopied(req, dhcpv4.OptionClassIdentifier),
	)
	if err != nil {
		return nil, err
	}

	if resp.GetOneOption(dhcpv4.OptionClassIdentifier) == nil {
		resp.UpdateOption(dhcpv4.OptClassIdentifier("PXEClient"))
	}

	server := p.advertise.String()
	api := net.JoinHostPort(server, strconv.Itoa(p.apiPort))

	// TFTP boot files go in option 67 and in the BOOTP file field too (U-Boot reads only
	// the latter), with option 66 naming the server; URLs go in option 67 only.
	tftpFile := func(name string) {
		resp.UpdateOption(dhcpv4.OptTFTPServerName(server))
		resp.BootFileName = name
		resp.UpdateOption(dhcpv4.OptBootFileName(name))
	}

	switch fw {
	case fwX86BIOS:
		tftpFile("undionly.kpxe")
	case fwX86UEFI:
		tftpFile("snp.efi")
	case fwARMUEFI:
		tftpFile("snp-arm64.efi")
	case fwX86IPXE:
		// The advertised address is IPv4 here (--advertise), so it needs no brackets.
		resp.UpdateOption(dhcpv4.OptBootFileName("tftp://" + server + "/undionly.kpxe"))
	case fwX86HTTP:
		resp.UpdateOption(dhcpv4.OptBootFileName("http://" + api + "/tftp/amd64/snp.efi"))
	case fwARMHTTP:
		resp.UpdateOption(dhcpv4.OptBootFileName("http://" + api + "/tftp/arm64/snp.efi"))
	default:
		return nil, fmt.Errorf("unsupported firmware class %d", fw)
	}

	return resp, nil
}
