//! The DHCPv4 wire layer against golden packets captured from real firmware, the RFC 2131
//! layout, and every malformed-input case.

use std::net::Ipv4Addr;

use ironboot_net::wire::dhcpv4::{MAX_LEN, MIN_LEN, layout};
use ironboot_net::wire::options::{ClientArch, ClientArchList, UserClass, client_uuid, code};
use ironboot_net::wire::pxe::{self, BootItem};
use ironboot_net::wire::{Error, MessageType, Op, OptionWriter, Options, Packet, Repr};

mod common;
use common::golden;

const ALL_GOLDEN: [&str; 11] = [
    "ipxe-rom-bios-discover",
    "ipxe-rom-bios-request-to-site",
    "ipxe-rom-bios-proxy-request-4011",
    "edk2-x64-discover",
    "edk2-x64-proxy-request-4011",
    "snponly-efi-discover",
    "snponly-efi-proxy-request-4011",
    "site-dhcp-offer",
    "dnsmasq-proxy-offer-to-ipxe-rom",
    "dnsmasq-proxy-ack-to-ipxe-rom",
    "dnsmasq-proxy-ack-to-edk2",
];

#[test]
fn header_layout_matches_rfc2131_figure_1() {
    // op htype hlen hops (4) xid (4) secs flags (4) ciaddr yiaddr siaddr giaddr (16)
    // chaddr 16, sname 64, file 128, then the magic cookie.
    assert_eq!(layout::CHADDR, 28..44);
    assert_eq!(layout::SNAME, 44..108);
    assert_eq!(layout::FILE, 108..236);
    assert_eq!(layout::OPTIONS, 240);
    assert_eq!(MIN_LEN, 240);
}

#[test]
fn ipxe_rom_discover_decodes_as_captured() {
    let bytes = golden("ipxe-rom-bios-discover");
    let packet = Packet::new_checked(&bytes[..]).unwrap();
    let r = Repr::parse(&packet).unwrap();
    assert_eq!(r.op, Op::BootRequest);
    assert_eq!(r.xid, 0x1ff3_8e27);
    assert_eq!(r.secs, 4);
    assert!(!r.broadcast(), "iPXE leaves the broadcast flag clear");
    assert_eq!(r.client_hardware_address, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(r.message_type, Some(MessageType::Discover));
    assert_eq!(r.max_message_size, Some(1472));
    assert_eq!(
        r.vendor_class_id,
        Some(&b"PXEClient:Arch:00000:UNDI:002001"[..])
    );
    let arches: Vec<_> = r.client_arch.unwrap().iter().collect();
    assert_eq!(arches, [ClientArch::X86Bios]);
    assert_eq!(r.client_ndi, Some(&[1, 2, 1][..]));
    let uc = r.user_class.unwrap();
    assert_eq!(
        uc.as_bytes(),
        b"iPXE",
        "iPXE sends the raw string, not RFC 3004 form"
    );
    assert!(uc.contains(b"iPXE"));
    assert!(r.ipxe_encapsulated.is_some());
    assert_eq!(client_uuid(r.client_uuid.unwrap()), Some([0; 16]));
    assert_eq!(
        r.client_identifier,
        Some(&[1, 0x52, 0x54, 0, 0x12, 0x34, 0x56][..])
    );
    assert!(
        r.parameter_request_list
            .unwrap()
            .contains(&code::VENDOR_SPECIFIC)
    );
    assert_eq!(r.giaddr, Ipv4Addr::UNSPECIFIED);
}

#[test]
fn edk2_discover_and_4011_request_decode_as_captured() {
    let d = golden("edk2-x64-discover");
    let p = Packet::new_checked(&d[..]).unwrap();
    let r = Repr::parse(&p).unwrap();
    assert!(r.broadcast(), "EDK2 sets the broadcast flag");
    assert_eq!(
        r.client_arch.unwrap().iter().next(),
        Some(ClientArch::EfiBc)
    );
    assert_eq!(r.client_ndi, Some(&[1, 3, 0][..]));
    assert!(r.user_class.is_none() && r.ipxe_encapsulated.is_none());

    let q = golden("edk2-x64-proxy-request-4011");
    let p = Packet::new_checked(&q[..]).unwrap();
    let r = Repr::parse(&p).unwrap();
    assert_eq!(r.message_type, Some(MessageType::Request));
    assert_eq!(r.ciaddr, Ipv4Addr::new(10, 98, 0, 127));
    assert!(r.vendor_specific.is_none());
}

#[test]
fn ipxe_4011_request_carries_boot_item_71() {
    let q = golden("ipxe-rom-bios-proxy-request-4011");
    let p = Packet::new_checked(&q[..]).unwrap();
    let r = Repr::parse(&p).unwrap();
    assert_eq!(r.xid, 0);
    let item = pxe::requested_boot_item(&r.vendor_specific.unwrap()).unwrap();
    assert_eq!(
        item,
        BootItem {
            server_type: 0x8000,
            layer: 0
        }
    );
}

#[test]
fn reference_proxy_offer_has_the_pxe_menu_shape() {
    let b = golden("dnsmasq-proxy-offer-to-ipxe-rom");
    let p = Packet::new_checked(&b[..]).unwrap();
    let r = Repr::parse(&p).unwrap();
    assert_eq!(r.op, Op::BootReply);
    assert_eq!(r.message_type, Some(MessageType::Offer));
    assert_eq!(r.server_identifier, Some(Ipv4Addr::new(10, 98, 0, 3)));
    let subs: Vec<u8> = r.vendor_specific.unwrap().iter().map(|o| o.code).collect();
    assert_eq!(subs, [6, 10, 8, 9]);
}

#[test]
fn every_golden_packet_round_trips_through_repr() {
    for name in ALL_GOLDEN {
        let bytes = golden(name);
        let p = Packet::new_checked(&bytes[..]).unwrap_or_else(|e| panic!("{name}: {e}"));
        let r = Repr::parse(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mut out = vec![0u8; r.buffer_len()];
        r.emit(&mut Packet::new_unchecked(&mut out[..])).unwrap();
        // Emit keeps everything up to END; the captured bytes may carry trailing padding.
        assert_eq!(out[..], bytes[..out.len()], "{name}");
        assert!(
            bytes[out.len()..].iter().all(|&b| b == 0),
            "{name}: non-pad after END"
        );
        let p2 = Packet::new_checked(&out[..]).unwrap();
        assert_eq!(Repr::parse(&p2).unwrap(), r, "{name}");
    }
}

fn minimal_request() -> Vec<u8> {
    let mut b = vec![0u8; 244];
    b[0] = 1;
    b[1] = 1;
    b[2] = 6;
    b[236..240].copy_from_slice(&[99, 130, 83, 99]);
    b[240..244].copy_from_slice(&[53, 1, 1, 255]);
    b
}

#[test]
fn malformed_messages_are_errors_not_panics() {
    let ok = minimal_request();
    assert!(Packet::new_checked(&ok[..]).is_ok());

    assert_eq!(
        Packet::new_checked(&ok[..239]).unwrap_err(),
        Error::TooShort { len: 239, min: 240 }
    );
    assert!(matches!(
        Packet::new_checked(&[][..]),
        Err(Error::TooShort { .. })
    ));

    let mut long = ok.clone();
    long.resize(MAX_LEN + 1, 0);
    assert_eq!(
        Packet::new_checked(&long[..]).unwrap_err(),
        Error::TooLong {
            len: MAX_LEN + 1,
            max: MAX_LEN
        }
    );
    long.truncate(MAX_LEN);
    assert!(
        Packet::new_checked(&long[..]).is_ok(),
        "MAX_LEN itself is fine"
    );

    let mut no_cookie = ok.clone();
    no_cookie[236] = 0;
    assert_eq!(
        Packet::new_checked(&no_cookie[..]).unwrap_err(),
        Error::BadMagicCookie
    );

    let mut hlen = ok.clone();
    hlen[2] = 17;
    assert_eq!(
        Packet::new_checked(&hlen[..]).unwrap_err(),
        Error::HardwareAddressTooLong { hlen: 17 }
    );
    hlen[2] = 16;
    assert!(Packet::new_checked(&hlen[..]).is_ok());

    // Option 60 claims 9 bytes, 3 remain.
    let mut trunc = ok[..240].to_vec();
    trunc.extend_from_slice(&[53, 1, 1, 60, 9, b'P', b'X', b'E']);
    assert_eq!(
        Packet::new_checked(&trunc[..]).unwrap_err(),
        Error::TruncatedOption {
            code: 60,
            offset: 243
        }
    );
    // A length byte missing altogether.
    let mut nolen = ok[..240].to_vec();
    nolen.extend_from_slice(&[53]);
    assert_eq!(
        Packet::new_checked(&nolen[..]).unwrap_err(),
        Error::TruncatedOption {
            code: 53,
            offset: 240
        }
    );

    let mut op = ok.clone();
    op[0] = 3;
    let p = Packet::new_checked(&op[..]).unwrap();
    assert_eq!(Repr::parse(&p).unwrap_err(), Error::BadOp(3));
}

#[test]
fn typed_options_with_wrong_lengths_are_refused() {
    let cases: &[(&[u8], u8)] = &[
        (&[53, 2, 1, 1], 53),
        (&[54, 3, 10, 0, 0], 54),
        (&[57, 1, 5], 57),
        (&[93, 0], 93),
        (&[93, 3, 0, 7, 0], 93),
        (&[175, 3, 1, 5, 0], 175),
    ];
    for (opt, c) in cases {
        let mut b = minimal_request()[..240].to_vec();
        b.extend_from_slice(opt);
        b.push(255);
        let p = Packet::new_checked(&b[..]).unwrap();
        match Repr::parse(&p) {
            Err(Error::BadOptionLength { code, .. }) => assert_eq!(code, *c),
            other => panic!("option {c}: {other:?}"),
        }
    }
}

#[test]
fn options_without_end_and_with_padding_are_accepted() {
    let mut b = minimal_request()[..240].to_vec();
    b.extend_from_slice(&[0, 0, 53, 1, 1, 0, 60, 3, b'a', b'b', b'c']);
    let p = Packet::new_checked(&b[..]).unwrap();
    let r = Repr::parse(&p).unwrap();
    assert_eq!(r.message_type, Some(MessageType::Discover));
    assert_eq!(r.vendor_class_id, Some(&b"abc"[..]));
    let codes: Vec<u8> = p.options().iter().map(|o| o.code).collect();
    assert_eq!(codes, [53, 60]);
}

#[test]
fn user_class_both_encodings() {
    assert!(UserClass::new(b"iPXE").contains(b"iPXE"));
    // RFC 3004: length-prefixed items.
    let rfc = [4, b'i', b'P', b'X', b'E', 3, b'f', b'o', b'o'];
    let uc = UserClass::new(&rfc);
    assert!(uc.contains(b"iPXE") && uc.contains(b"foo"));
    assert_eq!(uc.rfc3004_items().unwrap().count(), 2);
    assert!(!uc.contains(b"iPX"));
    assert!(UserClass::new(b"iPXE").rfc3004_items().is_none());
    assert!(!UserClass::new(&[]).contains(b"iPXE"));
    assert!(!UserClass::new(&[9, b'i']).contains(b"iPXE"));
}

#[test]
fn client_arch_list_and_uuid() {
    let l = ClientArchList::new_checked(&[0, 7, 0, 11, 0x12, 0x34]).unwrap();
    let v: Vec<_> = l.iter().collect();
    assert_eq!(
        v,
        [
            ClientArch::EfiBc,
            ClientArch::EfiArm64,
            ClientArch::Unknown(0x1234)
        ]
    );
    for n in 0..=30u16 {
        assert_eq!(u16::from(ClientArch::from(n)), n);
    }
    assert!(ClientArchList::new_checked(&[0]).is_err());
    let mut uuid = [0u8; 17];
    uuid[1] = 0xab;
    assert_eq!(client_uuid(&uuid).unwrap()[0], 0xab);
    assert_eq!(client_uuid(&uuid[..16]), None);
    uuid[0] = 1;
    assert_eq!(client_uuid(&uuid), None);
}

#[test]
fn option_writer_reports_overflow_and_nests() {
    let mut buf = [0u8; 16];
    let mut w = OptionWriter::new(&mut buf);
    w.put(53, &[2]).unwrap();
    let open = w.begin(43).unwrap();
    w.put(71, &[0x80, 0, 0, 0]).unwrap();
    w.end().unwrap();
    w.finish(open).unwrap();
    assert_eq!(w.len(), 3 + 2 + 6 + 1);
    assert_eq!(
        w.put(60, b"PXEClient").unwrap_err(),
        Error::BufferTooSmall {
            needed: 12 + 11,
            available: 16
        }
    );
    assert_eq!(&buf[..12], &[53, 1, 2, 43, 7, 71, 4, 0x80, 0, 0, 0, 255]);
    let opts = Options::new_checked(&buf[..12]).unwrap();
    let inner = Options::new_checked(opts.find(43).unwrap()).unwrap();
    assert_eq!(inner.find(71), Some(&[0x80, 0, 0, 0][..]));

    let mut big = [0u8; 600];
    let mut w = OptionWriter::new(&mut big);
    assert_eq!(
        w.put(60, &[0; 256]).unwrap_err(),
        Error::OptionTooLong { code: 60, len: 256 }
    );
    let open = w.begin(43).unwrap();
    w.put_bytes(&[0; 300]).unwrap();
    assert!(matches!(
        w.finish(open),
        Err(Error::OptionTooLong { code: 43, len: 300 })
    ));
}

#[test]
fn accessors_on_unchecked_short_buffers_do_not_panic() {
    for len in [0, 1, 5, 30, 100, 239] {
        let b = vec![0xffu8; len];
        let p = Packet::new_unchecked(&b[..]);
        let _ = (
            p.op_raw(),
            p.xid(),
            p.secs(),
            p.flags(),
            p.ciaddr(),
            p.giaddr(),
        );
        let _ = (p.client_hardware_address(), p.sname_field(), p.file_field());
        assert_eq!(p.options().iter().count(), 0);
    }
}
