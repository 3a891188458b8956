//! The ProxyDHCP decision: golden requests from real firmware, every architecture mapping,
//! every reason to stay silent, and a parse of every reply we write.

use std::net::{Ipv4Addr, SocketAddrV4};

use ironboot_net::proxy::{BootPolicy, Decision, Firmware, Ignored, ProxyCounters, Reply, decide};
use ironboot_net::service::RecvMeta;
use ironboot_net::wire::options::code;
use ironboot_net::wire::pxe::{self, BootItem, sub};
use ironboot_net::wire::{MessageType, Op, OptionWriter, Options, Packet, Repr};

mod common;
use common::golden;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 98, 0, 3);
const IFINDEX: u32 = 7;
const SCRIPT_URL: &str = "http://10.98.0.3:50042/ipxe/init.ipxe";

fn policy() -> BootPolicy {
    BootPolicy::new(SERVER, 50042)
}

fn on_port(port: u16, src: SocketAddrV4) -> RecvMeta {
    RecvMeta {
        src,
        local_addr: SERVER,
        local_port: port,
        ifindex: IFINDEX,
    }
}

fn broadcast_meta() -> RecvMeta {
    on_port(67, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68))
}

/// Decide on raw bytes; returns the decision and the reply bytes.
fn run(bytes: &[u8], meta: &RecvMeta, policy: &BootPolicy) -> (Decision, Vec<u8>) {
    let packet = Packet::new_checked(bytes).expect("request must be well-formed");
    let request = Repr::parse(&packet).expect("request must parse");
    let mut out = [0u8; 1500];
    let d = decide(&request, meta, policy, &mut out).expect("out is large enough");
    let len = match d {
        Decision::Reply(r) => r.len,
        Decision::Ignore(_) => 0,
    };
    (d, out[..len].to_vec())
}

fn reply(bytes: &[u8], meta: &RecvMeta, policy: &BootPolicy) -> (Reply, Vec<u8>) {
    match run(bytes, meta, policy) {
        (Decision::Reply(r), out) => (r, out),
        (Decision::Ignore(why), _) => panic!("expected a reply, got silence: {why:?}"),
    }
}

fn ignored(bytes: &[u8], meta: &RecvMeta, policy: &BootPolicy) -> Ignored {
    match run(bytes, meta, policy).0 {
        Decision::Ignore(why) => why,
        Decision::Reply(r) => panic!("expected silence, got {r:?}"),
    }
}

/// The parts of a reply a firmware looks at, decoded by our own parser (round trip).
#[derive(Debug)]
struct Seen {
    message_type: MessageType,
    server_id: Ipv4Addr,
    vendor_class: Vec<u8>,
    siaddr: Ipv4Addr,
    file_field: Vec<u8>,
    option67: Vec<u8>,
    option66: Vec<u8>,
    pxe_subs: Vec<u8>,
    uuid: Option<Vec<u8>>,
    relay_info: Option<Vec<u8>>,
    codes: Vec<u8>,
    len: usize,
}

fn seen(bytes: &[u8]) -> Seen {
    let p = Packet::new_checked(bytes).expect("our reply must pass our own checks");
    let r = Repr::parse(&p).expect("our reply must parse");
    assert_eq!(r.op, Op::BootReply);
    assert_eq!(
        r.yiaddr,
        Ipv4Addr::UNSPECIFIED,
        "a proxy never assigns addresses"
    );
    let pxe_subs = r
        .vendor_specific
        .map(|v| v.iter().map(|o| o.code).collect())
        .unwrap_or_default();
    Seen {
        message_type: r.message_type.unwrap(),
        server_id: r.server_identifier.expect("option 54 is always present"),
        vendor_class: r.vendor_class_id.unwrap().to_vec(),
        siaddr: r.siaddr,
        file_field: r.boot_file.to_vec(),
        option67: r.options.find(code::BOOT_FILE_NAME).unwrap().to_vec(),
        option66: r.options.find(code::TFTP_SERVER_NAME).unwrap().to_vec(),
        pxe_subs,
        uuid: r.client_uuid.map(<[u8]>::to_vec),
        relay_info: r.relay_agent_information.map(<[u8]>::to_vec),
        codes: r.options.iter().map(|o| o.code).collect(),
        len: bytes.len(),
    }
}

#[test]
fn ipxe_rom_discover_gets_a_broadcast_offer_pointing_at_the_script() {
    let req = golden("ipxe-rom-bios-discover");
    let (r, out) = reply(&req, &broadcast_meta(), &policy());
    assert_eq!(r.message_type, MessageType::Offer);
    assert_eq!(r.client.firmware, Firmware::X86Bios);
    assert!(r.client.ipxe);
    assert_eq!(r.send.dst, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
    assert_eq!(
        r.send.ifindex,
        Some(IFINDEX),
        "broadcast leaves by the arrival interface"
    );
    assert_eq!(r.send.local_port, 67);
    let s = seen(&out);
    assert_eq!(s.message_type, MessageType::Offer);
    assert_eq!(s.server_id, SERVER);
    assert_eq!(s.vendor_class, b"PXEClient");
    assert_eq!(s.siaddr, SERVER);
    assert_eq!(s.file_field, SCRIPT_URL.as_bytes());
    assert_eq!(s.option67, SCRIPT_URL.as_bytes());
    assert_eq!(s.option66, b"10.98.0.3");
    assert_eq!(
        s.pxe_subs,
        [
            sub::DISCOVERY_CONTROL,
            sub::MENU_PROMPT,
            sub::BOOT_SERVERS,
            sub::BOOT_MENU
        ]
    );
    assert_eq!(s.uuid, Some(vec![0; 17]), "option 97 is copied");
    assert_eq!(s.codes.first(), Some(&code::MESSAGE_TYPE), "53 comes first");
    assert!((300..=576).contains(&s.len), "{} bytes", s.len);

    let p = Packet::new_checked(&out[..]).unwrap();
    let v = Repr::parse(&p).unwrap().vendor_specific.unwrap();
    assert_eq!(
        v.find(sub::DISCOVERY_CONTROL),
        Some(&[0x0b][..]),
        "iPXE is told to boot the offered file (bit 3): EFI iPXE cannot do boot server discovery"
    );
    assert_eq!(p.xid(), 0x1ff3_8e27);
    assert_eq!(
        p.client_hardware_address(),
        [0x52, 0x54, 0, 0x12, 0x34, 0x56]
    );
    assert_eq!(p.hops(), 0);
    assert_eq!(p.flags(), 0, "flags copied (broadcast bit only)");
}

#[test]
fn offer_vendor_options_have_the_shape_edk2_accepts() {
    let req = golden("edk2-x64-discover");
    let (r, out) = reply(&req, &broadcast_meta(), &policy());
    assert_eq!(r.client.firmware, Firmware::EfiX64);
    assert!(!r.client.ipxe);
    let p = Packet::new_checked(&out[..]).unwrap();
    let repr = Repr::parse(&p).unwrap();
    assert!(repr.broadcast(), "EDK2's broadcast flag is kept");
    let v = repr.vendor_specific.unwrap();
    assert_eq!(
        v.find(sub::DISCOVERY_CONTROL),
        Some(&[0x03][..]),
        "EDK2 is sent to the listed boot server on 4011, not told to skip discovery"
    );
    assert_eq!(v.find(sub::MENU_PROMPT), Some(&b"\0PXE"[..]));
    assert_eq!(
        v.find(sub::BOOT_SERVERS),
        Some(&[0x80, 0, 1, 10, 98, 0, 3][..])
    );
    let menu = v.find(sub::BOOT_MENU).unwrap();
    assert_eq!(&menu[..3], &[0x80, 0, 8]);
    assert_eq!(&menu[3..], b"ironboot");
    let s = seen(&out);
    assert_eq!(s.file_field, b"snp.efi");
    assert_eq!(s.option67, b"snp.efi");
}

#[test]
fn edk2_4011_request_gets_an_ack_to_its_source_port() {
    let req = golden("edk2-x64-proxy-request-4011");
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 127), 4011);
    let (r, out) = reply(&req, &on_port(4011, src), &policy());
    assert_eq!(r.message_type, MessageType::Ack);
    assert_eq!(r.send.dst, src);
    assert_eq!(r.send.ifindex, None);
    assert_eq!(r.send.local_port, 4011);
    let s = seen(&out);
    assert_eq!(s.message_type, MessageType::Ack);
    assert_eq!(s.file_field, b"snp.efi");
    assert!(
        s.pxe_subs.is_empty(),
        "EDK2 sent no boot item, so none is echoed"
    );
    let p = Packet::new_checked(&out[..]).unwrap();
    assert_eq!(p.ciaddr(), Ipv4Addr::new(10, 98, 0, 127));
    assert_eq!(p.xid(), 0x7648_6e71);
}

#[test]
fn ipxe_4011_request_gets_its_boot_item_echoed() {
    let req = golden("ipxe-rom-bios-proxy-request-4011");
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 111), 68);
    let (r, out) = reply(&req, &on_port(4011, src), &policy());
    assert_eq!(
        r.send.dst, src,
        "iPXE asks from port 68 and is answered there"
    );
    let p = Packet::new_checked(&out[..]).unwrap();
    let repr = Repr::parse(&p).unwrap();
    assert_eq!(
        pxe::requested_boot_item(&repr.vendor_specific.unwrap()),
        Some(BootItem {
            server_type: 0x8000,
            layer: 0
        })
    );
    assert_eq!(repr.boot_file, SCRIPT_URL.as_bytes());
}

#[test]
fn snponly_4011_request_naming_us_is_answered_and_naming_another_server_is_not() {
    let req = golden("snponly-efi-proxy-request-4011");
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 127), 68);
    let (r, out) = reply(&req, &on_port(4011, src), &policy());
    assert!(r.client.ipxe);
    assert_eq!(seen(&out).file_field, SCRIPT_URL.as_bytes());

    let elsewhere = BootPolicy::new(Ipv4Addr::new(10, 98, 0, 50), 50042);
    let mut meta = on_port(4011, src);
    meta.local_addr = Ipv4Addr::new(10, 98, 0, 50);
    assert_eq!(ignored(&req, &meta, &elsewhere), Ignored::OtherServer);
}

#[test]
fn snponly_discover_is_sent_to_the_script_not_into_a_tftp_loop() {
    let req = golden("snponly-efi-discover");
    let (r, out) = reply(&req, &broadcast_meta(), &policy());
    assert_eq!(r.client.firmware, Firmware::EfiX64);
    assert!(r.client.ipxe);
    assert_eq!(seen(&out).option67, SCRIPT_URL.as_bytes());
}

#[test]
fn traffic_that_is_not_ours_gets_silence() {
    let meta = broadcast_meta();
    assert_eq!(
        ignored(&golden("site-dhcp-offer"), &meta, &policy()),
        Ignored::NotBootRequest
    );
    assert_eq!(
        ignored(&golden("ipxe-rom-bios-request-to-site"), &meta, &policy()),
        Ignored::UnexpectedMessageType,
        "a REQUEST on 67 is for the site's DHCP server"
    );
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 9), 68);
    assert_eq!(
        ignored(&golden("edk2-x64-discover"), &on_port(4011, src), &policy()),
        Ignored::UnexpectedMessageType
    );
    assert_eq!(
        ignored(&golden("edk2-x64-discover"), &on_port(6767, src), &policy()),
        Ignored::UnexpectedPort
    );
}

/// A synthetic request: header plus the given options.
struct Req {
    op: u8,
    giaddr: Ipv4Addr,
    options: Vec<(u8, Vec<u8>)>,
}

impl Req {
    fn discover() -> Self {
        Req {
            op: 1,
            giaddr: Ipv4Addr::UNSPECIFIED,
            options: vec![(53, vec![1])],
        }
    }
    fn opt(mut self, code: u8, data: &[u8]) -> Self {
        self.options.push((code, data.to_vec()));
        self
    }
    fn arch(self, arches: &[u16]) -> Self {
        let data: Vec<u8> = arches.iter().flat_map(|a| a.to_be_bytes()).collect();
        self.opt(93, &data)
    }
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; 240];
        b[0] = self.op;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0xdead_beef_u32.to_be_bytes());
        b[24..28].copy_from_slice(&self.giaddr.octets());
        b[28..34].copy_from_slice(&[0x52, 0x54, 0, 0xaa, 0, 1]);
        b[236..240].copy_from_slice(&[99, 130, 83, 99]);
        let mut opts = [0u8; 1200];
        let mut w = OptionWriter::new(&mut opts);
        for (c, d) in &self.options {
            w.put(*c, d).unwrap();
        }
        w.end().unwrap();
        let n = w.len();
        b.extend_from_slice(&opts[..n]);
        b
    }
}

#[test]
fn every_architecture_maps_to_its_boot_file() {
    let tftp = |file: &str| (Some(file.to_owned()), "PXEClient");
    let http = |url: &str| (Some(url.to_owned()), "HTTPClient");
    let none = (None, "");
    let cases: Vec<(u16, (Option<String>, &str))> = vec![
        (0, tftp("undionly.kpxe")),
        (6, none.clone()), // EFI IA32: never the x86-64 binary
        (7, tftp("snp.efi")),
        (9, tftp("snp.efi")),
        (11, tftp("snp-arm64.efi")),
        (22, tftp("snp-arm64.efi")), // U-Boot arm64
        (15, none.clone()),          // IA32 HTTP boot
        (16, http("http://10.98.0.3:50042/tftp/amd64/snp.efi")),
        (19, http("http://10.98.0.3:50042/tftp/arm64/snp.efi")),
        (24, http("http://10.98.0.3:50042/tftp/arm64/snp.efi")),
        (2, none.clone()),  // Itanium
        (10, none.clone()), // ARM 32 EFI
        (21, none.clone()), // ARM 32 U-Boot
        (25, none.clone()), // RISC-V
    ];
    for (arch, (file, vendor)) in cases {
        let req = Req::discover().arch(&[arch]).bytes();
        match (run(&req, &broadcast_meta(), &policy()), file) {
            ((Decision::Reply(_), out), Some(file)) => {
                let s = seen(&out);
                assert_eq!(s.option67, file.as_bytes(), "arch {arch}");
                assert_eq!(s.file_field, file.as_bytes(), "arch {arch}: BOOTP file too");
                assert_eq!(s.vendor_class, vendor.as_bytes(), "arch {arch}");
                assert_eq!(s.siaddr, SERVER, "arch {arch}: U-Boot reads siaddr");
                let http = vendor == "HTTPClient";
                assert_eq!(
                    s.pxe_subs.is_empty(),
                    http,
                    "arch {arch}: PXE menu only for PXE"
                );
            }
            ((Decision::Ignore(why), _), None) => {
                let expected = if matches!(arch, 6 | 15) {
                    Ignored::NoIa32BootFile
                } else {
                    Ignored::UnsupportedArch
                };
                assert_eq!(why, expected, "arch {arch}");
            }
            ((d, _), f) => panic!("arch {arch}: got {d:?}, expected {f:?}"),
        }
    }
}

#[test]
fn ia32_gets_its_own_file_when_configured() {
    let p = policy().with_efi_ia32_file(Some("ipxe-ia32.efi".into()));
    let (_, out) = reply(&Req::discover().arch(&[6]).bytes(), &broadcast_meta(), &p);
    assert_eq!(seen(&out).option67, b"ipxe-ia32.efi");
    let (_, out) = reply(&Req::discover().arch(&[15]).bytes(), &broadcast_meta(), &p);
    assert_eq!(
        seen(&out).option67,
        b"http://10.98.0.3:50042/tftp/ipxe-ia32.efi"
    );
}

#[test]
fn the_first_supported_architecture_in_the_list_wins() {
    let req = Req::discover().arch(&[0x1234, 11, 7]).bytes();
    let (r, _) = reply(&req, &broadcast_meta(), &policy());
    assert_eq!(r.client.firmware, Firmware::EfiArm64);
}

#[test]
fn without_option_93_the_vendor_class_tells_the_architecture() {
    let req = Req::discover()
        .opt(60, b"PXEClient:Arch:00009:UNDI:003016")
        .bytes();
    assert_eq!(
        reply(&req, &broadcast_meta(), &policy()).0.client.firmware,
        Firmware::EfiX64
    );
    let req = Req::discover().opt(60, b"PXEClient").bytes();
    assert_eq!(
        reply(&req, &broadcast_meta(), &policy()).0.client.firmware,
        Firmware::X86Bios
    );
    let req = Req::discover().opt(60, b"HTTPClient:Arch:00016").bytes();
    let (r, out) = reply(&req, &broadcast_meta(), &policy());
    assert_eq!(r.client.firmware, Firmware::HttpX64);
    assert_eq!(seen(&out).vendor_class, b"HTTPClient");
}

#[test]
fn ipxe_is_recognised_by_either_user_class_form_or_option_175() {
    let raw = Req::discover().arch(&[7]).opt(77, b"iPXE").bytes();
    let rfc3004 = Req::discover().arch(&[7]).opt(77, b"\x04iPXE").bytes();
    let encap = Req::discover().arch(&[7]).opt(175, &[0x13, 1, 1]).bytes();
    for req in [raw, rfc3004, encap] {
        let (r, out) = reply(&req, &broadcast_meta(), &policy());
        assert!(r.client.ipxe);
        assert_eq!(seen(&out).option67, SCRIPT_URL.as_bytes());
    }
    let other = Req::discover().arch(&[7]).opt(77, b"\x04gPXE").bytes();
    assert!(!reply(&other, &broadcast_meta(), &policy()).0.client.ipxe);
}

#[test]
fn non_pxe_and_odd_requests_get_silence() {
    let meta = broadcast_meta();
    let p = policy();
    assert_eq!(
        ignored(&Req::discover().bytes(), &meta, &p),
        Ignored::NotPxeClient
    );
    assert_eq!(
        ignored(&Req::discover().opt(60, b"MSFT 5.0").bytes(), &meta, &p),
        Ignored::NotPxeClient
    );
    let mut bootp = Req::discover().arch(&[0]);
    bootp.options.remove(0);
    assert_eq!(ignored(&bootp.bytes(), &meta, &p), Ignored::NoMessageType);
    let mut reply_op = Req::discover().arch(&[0]);
    reply_op.op = 2;
    assert_eq!(
        ignored(&reply_op.bytes(), &meta, &p),
        Ignored::NotBootRequest
    );
    for t in [2u8, 3, 4, 5, 6, 7, 8, 42] {
        let mut r = Req::discover().arch(&[0]);
        r.options[0] = (53, vec![t]);
        assert_eq!(
            ignored(&r.bytes(), &meta, &p),
            Ignored::UnexpectedMessageType,
            "type {t} on 67"
        );
    }
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 9), 68);
    for t in [1u8, 2, 4, 5, 7] {
        let mut r = Req::discover().arch(&[0]);
        r.options[0] = (53, vec![t]);
        assert_eq!(
            ignored(&r.bytes(), &on_port(4011, src), &p),
            Ignored::UnexpectedMessageType,
            "type {t} on 4011"
        );
    }
}

#[test]
fn inform_on_4011_is_acked() {
    let mut r = Req::discover().arch(&[7]);
    r.options[0] = (53, vec![8]);
    let src = SocketAddrV4::new(Ipv4Addr::new(10, 98, 0, 9), 4011);
    let (rep, _) = reply(&r.bytes(), &on_port(4011, src), &policy());
    assert_eq!(rep.message_type, MessageType::Ack);
}

#[test]
fn relayed_discover_is_answered_to_the_relay_with_option_82_echoed_last() {
    let relay = Ipv4Addr::new(10, 20, 0, 1);
    let info = [1u8, 4, b'p', b'o', b'r', b't', 2, 2, 0xab, 0xcd];
    let mut req = Req::discover().arch(&[0]).opt(82, &info);
    req.giaddr = relay;
    let meta = on_port(67, SocketAddrV4::new(relay, 67));
    let (r, out) = reply(&req.bytes(), &meta, &policy());
    assert_eq!(r.send.dst, SocketAddrV4::new(relay, 67));
    assert_eq!(r.send.ifindex, None);
    let s = seen(&out);
    assert_eq!(s.relay_info.as_deref(), Some(&info[..]));
    assert_eq!(
        s.codes.last(),
        Some(&code::RELAY_AGENT_INFORMATION),
        "82 last (RFC 3046 2.1)"
    );
    assert_eq!(Packet::new_checked(&out[..]).unwrap().giaddr(), relay);
}

#[test]
fn a_too_small_output_buffer_is_an_error_not_a_panic() {
    let req = golden("edk2-x64-discover");
    let packet = Packet::new_checked(&req[..]).unwrap();
    let request = Repr::parse(&packet).unwrap();
    let mut small = [0u8; 300];
    assert!(decide(&request, &broadcast_meta(), &policy(), &mut small).is_err());
    // A reply that would pass 576 bytes (a relay's long option 82 is the only echo that
    // can make it so) is an error, however large the buffer: never a longer reply.
    let mut uuid = [0u8; 17];
    uuid[1] = 0x57;
    let mut big = Req::discover()
        .arch(&[0])
        .opt(61, &[1; 255])
        .opt(97, &uuid)
        .opt(82, &[1; 255]);
    big.giaddr = Ipv4Addr::new(10, 20, 0, 1);
    let b = big.bytes();
    let packet = Packet::new_checked(&b[..]).unwrap();
    let request = Repr::parse(&packet).unwrap();
    let mut out = [0u8; 1500];
    assert!(decide(&request, &broadcast_meta(), &policy(), &mut out).is_err());
}

#[test]
fn the_service_path_counts_every_outcome() {
    use ironboot_net::proxy::handle_datagram;
    let counters = ProxyCounters::default();
    let p = policy();
    let mut out = [0u8; 2048];
    let meta = broadcast_meta();
    assert!(
        handle_datagram(
            &golden("ipxe-rom-bios-discover"),
            &meta,
            &p,
            &counters,
            &mut out
        )
        .is_some()
    );
    assert!(handle_datagram(&golden("site-dhcp-offer"), &meta, &p, &counters, &mut out).is_none());
    assert!(handle_datagram(b"garbage", &meta, &p, &counters, &mut out).is_none());
    assert_eq!(counters.replies(MessageType::Offer), 1);
    assert_eq!(counters.ignored_count(Ignored::NotBootRequest), 1);
    assert_eq!(counters.malformed_total(), 1);
    assert_eq!(counters.dropped_total(), 2);
    let snap = counters.snapshot();
    let count = |rows: &[(&str, u64)], name: &str| {
        let found = rows.iter().find(|(n, _)| *n == name);
        found.unwrap_or_else(|| panic!("{name} in {rows:?}")).1
    };
    assert_eq!(count(&snap.replies, "offer"), 1);
    assert_eq!(count(&snap.replies, "ack"), 0);
    assert_eq!(count(&snap.dropped, "too_short"), 1);
    assert_eq!(count(&snap.dropped, "not_boot_request"), 1);
    assert_eq!(snap.dropped.iter().map(|(_, n)| n).sum::<u64>(), 2);
    assert_eq!(count(&snap.requests, "discover"), 1);
    let bios = snap
        .boot_clients
        .iter()
        .find(|c| c.firmware.label() == "x86_bios");
    let bios = bios.expect("x86_bios is counted");
    assert_eq!((bios.other, bios.ipxe), (0, 1));
    // Every counter is named once.
    let mut names: Vec<&str> = snap.dropped.iter().map(|(n, _)| *n).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), snap.dropped.len(), "{:?}", snap.dropped);
}

#[test]
fn options_region_of_reply_is_well_formed_after_padding() {
    let (_, out) = reply(
        &golden("ipxe-rom-bios-discover"),
        &broadcast_meta(),
        &policy(),
    );
    let opts = Options::new_checked(&out[240..]).unwrap();
    assert_eq!(opts.as_bytes().last(), Some(&255));
}
