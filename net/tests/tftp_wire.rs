//! The TFTP wire layer: every message kind round-trips through parse and emit, every
//! offset matches RFC 1350's diagrams, and every malformed input is a typed error.

use ironboot_net::wire::tftp::{
    ACK_LEN, DATA_HEADER_LEN, Error, ErrorCode, Field, MAX_BLOCK_SIZE, MAX_FILENAME_LEN,
    MAX_REQUEST_LEN, Mode, Opcode, OptionWriter, Options, Packet, Repr, Request, write_ack,
    write_data_header, write_error,
};

fn round_trip(repr: Repr<'_>, expected: &[u8]) {
    let mut buf = vec![0u8; expected.len()];
    assert_eq!(repr.buffer_len(), expected.len(), "{repr:?}");
    assert_eq!(repr.emit(&mut buf), Ok(expected.len()));
    assert_eq!(buf, expected, "{repr:?}");
    assert_eq!(Repr::parse_bytes(expected), Ok(repr));
    let packet = Packet::new_checked(expected).expect("checked");
    assert_eq!(Repr::parse(&packet), Ok(repr));
    assert_eq!(packet.opcode(), repr.opcode());
    // One byte short is refused, not written partially past the end.
    if !expected.is_empty() {
        let mut short = vec![0u8; expected.len() - 1];
        assert!(matches!(
            repr.emit(&mut short),
            Err(Error::BufferTooSmall { .. })
        ));
    }
}

#[test]
fn every_message_kind_round_trips_with_rfc_offsets() {
    let options = Options::new_checked(b"blksize\x001468\x00tsize\x000\x00").unwrap();
    round_trip(
        Repr::Rrq(Request {
            filename: "snp.efi",
            mode_name: "octet",
            options,
        }),
        b"\x00\x01snp.efi\x00octet\x00blksize\x001468\x00tsize\x000\x00",
    );
    round_trip(
        Repr::Wrq(Request {
            filename: "up",
            mode_name: "netascii",
            options: Options::EMPTY,
        }),
        b"\x00\x02up\x00netascii\x00",
    );
    round_trip(
        Repr::Data {
            block: 0x1234,
            data: b"hello",
        },
        b"\x00\x03\x12\x34hello",
    );
    round_trip(
        Repr::Data {
            block: 7,
            data: b"",
        },
        b"\x00\x03\x00\x07",
    );
    round_trip(Repr::Ack { block: 65535 }, b"\x00\x04\xff\xff");
    round_trip(
        Repr::Error {
            code: ErrorCode::OptionNegotiation,
            message: "User aborted",
        },
        b"\x00\x05\x00\x08User aborted\x00",
    );
    round_trip(
        Repr::Error {
            code: ErrorCode::Unknown(99),
            message: "",
        },
        b"\x00\x05\x00\x63\x00",
    );
    round_trip(
        Repr::Oack {
            options: Options::new_checked(b"tsize\x00123\x00").unwrap(),
        },
        b"\x00\x06tsize\x00123\x00",
    );
    round_trip(
        Repr::Oack {
            options: Options::EMPTY,
        },
        b"\x00\x06",
    );
}

#[test]
fn checked_view_accessors() {
    let p = Packet::new_checked(&b"\x00\x03\x01\x02abc"[..]).unwrap();
    assert_eq!(p.opcode(), Opcode::Data);
    assert_eq!(p.block(), 0x0102);
    assert_eq!(p.payload(), b"abc");
    let p = Packet::new_checked(&b"\x00\x05\x00\x01nope\x00"[..]).unwrap();
    assert_eq!(p.error_code(), ErrorCode::FileNotFound);
    // Unchecked views of short buffers return zeros, never panic.
    let p = Packet::new_unchecked(&b"\x00"[..]);
    assert_eq!(p.opcode(), Opcode::Unknown(0));
    assert_eq!(p.block(), 0);
    assert_eq!(p.payload(), b"");
    assert_eq!(p.into_inner(), b"\x00");
}

#[test]
fn options_are_a_borrowing_iterator_with_case_insensitive_lookup() {
    let raw = b"\x00\x01f\x00OcTeT\x00BLKSIZE\x001432\x00tsize\x000\x00blksize\x00512\x00";
    let Ok(Repr::Rrq(r)) = Repr::parse_bytes(raw) else {
        panic!()
    };
    assert_eq!(r.mode(), Mode::Octet);
    let pairs: Vec<(&str, &str)> = r.options.iter().map(|o| (o.name, o.value)).collect();
    assert_eq!(
        pairs,
        [("BLKSIZE", "1432"), ("tsize", "0"), ("blksize", "512")]
    );
    assert_eq!(r.options.get("blksize"), Some("1432"), "first one wins");
    assert_eq!(r.options.get("TSize"), Some("0"));
    assert_eq!(r.options.get("windowsize"), None);
    // The values borrow from the datagram.
    let v = r.options.get("tsize").unwrap();
    assert!(raw.as_ptr_range().contains(&v.as_ptr()));
}

#[test]
fn modes_parse_case_insensitively() {
    for (s, m) in [
        ("octet", Mode::Octet),
        ("OCTET", Mode::Octet),
        ("netascii", Mode::Netascii),
        ("NetAscii", Mode::Netascii),
        ("mail", Mode::Mail),
        ("binary", Mode::Unknown),
        ("", Mode::Unknown),
        ("octet ", Mode::Unknown),
    ] {
        assert_eq!(Mode::parse(s), m, "{s:?}");
    }
}

#[test]
fn trailing_nul_padding_after_the_mode_is_not_an_option() {
    let Ok(Repr::Rrq(r)) = Repr::parse_bytes(b"\x00\x01f\x00octet\x00\x00\x00\x00") else {
        panic!()
    };
    assert!(r.options.is_empty());
}

#[test]
fn malformed_messages_are_typed_errors() {
    let long_name = format!("\x00\x01{}\x00octet\x00", "a".repeat(MAX_FILENAME_LEN + 1));
    let long_request = {
        let mut v = b"\x00\x01f\x00octet\x00x\x00".to_vec();
        v.extend(std::iter::repeat_n(b'y', MAX_REQUEST_LEN));
        v.push(0);
        v
    };
    let huge_block = {
        let mut v = b"\x00\x03\x00\x01".to_vec();
        v.extend(std::iter::repeat_n(0u8, usize::from(MAX_BLOCK_SIZE) + 1));
        v
    };
    let cases: Vec<(&str, Vec<u8>, Error)> = vec![
        ("empty", vec![], Error::TooShort { len: 0, min: 2 }),
        ("one byte", vec![0], Error::TooShort { len: 1, min: 2 }),
        (
            "opcode 0",
            b"\x00\x00abcd".to_vec(),
            Error::UnknownOpcode(0),
        ),
        ("opcode 7", b"\x00\x07".to_vec(), Error::UnknownOpcode(7)),
        (
            "opcode 0x0100",
            b"\x01\x00".to_vec(),
            Error::UnknownOpcode(256),
        ),
        (
            "bare RRQ opcode",
            b"\x00\x01".to_vec(),
            Error::TooShort { len: 2, min: 4 },
        ),
        (
            "name without NUL",
            b"\x00\x01abc".to_vec(),
            Error::MissingNul {
                field: Field::Filename,
            },
        ),
        (
            "mode missing",
            b"\x00\x01abc\x00".to_vec(),
            Error::MissingNul { field: Field::Mode },
        ),
        (
            "mode without NUL",
            b"\x00\x02abc\x00octet".to_vec(),
            Error::MissingNul { field: Field::Mode },
        ),
        (
            "option name without NUL",
            b"\x00\x01f\x00octet\x00blksize".to_vec(),
            Error::MissingNul {
                field: Field::OptionName,
            },
        ),
        (
            "odd option list",
            b"\x00\x01f\x00octet\x00blksize\x00".to_vec(),
            Error::OddOptions,
        ),
        (
            "option value without NUL",
            b"\x00\x01f\x00octet\x00blksize\x001468".to_vec(),
            Error::MissingNul {
                field: Field::OptionValue,
            },
        ),
        (
            "non-UTF-8 name",
            b"\x00\x01\xc3\x28\x00octet\x00".to_vec(),
            Error::NotUtf8 {
                field: Field::Filename,
            },
        ),
        (
            "non-UTF-8 mode",
            b"\x00\x01f\x00\xff\x00".to_vec(),
            Error::NotUtf8 { field: Field::Mode },
        ),
        (
            "non-UTF-8 option name",
            b"\x00\x01f\x00octet\x00\xfe\x001\x00".to_vec(),
            Error::NotUtf8 {
                field: Field::OptionName,
            },
        ),
        (
            "non-UTF-8 option value",
            b"\x00\x01f\x00octet\x00a\x00\x80\x00".to_vec(),
            Error::NotUtf8 {
                field: Field::OptionValue,
            },
        ),
        (
            "overlong name",
            long_name.into_bytes(),
            Error::FilenameTooLong {
                len: MAX_FILENAME_LEN + 1,
                max: MAX_FILENAME_LEN,
            },
        ),
        (
            "request over 512 bytes",
            long_request.clone(),
            Error::TooLong {
                len: long_request.len(),
                max: MAX_REQUEST_LEN,
            },
        ),
        (
            "truncated DATA",
            b"\x00\x03\x00".to_vec(),
            Error::TooShort { len: 3, min: 4 },
        ),
        (
            "DATA over 65464",
            huge_block.clone(),
            Error::TooLong {
                len: huge_block.len(),
                max: 4 + usize::from(MAX_BLOCK_SIZE),
            },
        ),
        (
            "truncated ACK",
            b"\x00\x04\x01".to_vec(),
            Error::TooShort { len: 3, min: 4 },
        ),
        (
            "ACK with trailing bytes",
            b"\x00\x04\x00\x01\x00".to_vec(),
            Error::TooLong { len: 5, max: 4 },
        ),
        (
            "truncated ERROR",
            b"\x00\x05\x00\x01".to_vec(),
            Error::TooShort { len: 4, min: 5 },
        ),
        (
            "ERROR message without NUL",
            b"\x00\x05\x00\x01oops".to_vec(),
            Error::MissingNul {
                field: Field::ErrorMessage,
            },
        ),
        (
            "ERROR with trailing bytes",
            b"\x00\x05\x00\x01oops\x00xy".to_vec(),
            Error::TrailingData { len: 2 },
        ),
        (
            "non-UTF-8 ERROR message",
            b"\x00\x05\x00\x01\xff\x00".to_vec(),
            Error::NotUtf8 {
                field: Field::ErrorMessage,
            },
        ),
        ("odd OACK", b"\x00\x06tsize\x00".to_vec(), Error::OddOptions),
        (
            "OACK value without NUL",
            b"\x00\x06tsize\x00100".to_vec(),
            Error::MissingNul {
                field: Field::OptionValue,
            },
        ),
    ];
    let mut reasons = std::collections::BTreeSet::new();
    for (what, bytes, expected) in cases {
        assert_eq!(Repr::parse_bytes(&bytes), Err(expected), "{what}");
        assert_eq!(
            Packet::new_checked(&bytes[..]).err(),
            Some(expected),
            "{what}"
        );
        assert!(Error::REASONS.contains(&expected.reason()), "{what}");
        assert!(!expected.to_string().is_empty());
        reasons.insert(expected.reason());
    }
    // Every parse-side reason is covered by a case above.
    for r in Error::REASONS {
        if !["nul_in_string", "buffer_too_small"].contains(&r) {
            assert!(reasons.contains(r), "no case for {r}");
        }
    }
}

#[test]
fn writers_are_allocation_free_and_refuse_bad_input() {
    let mut buf = [0u8; 64];
    assert_eq!(write_data_header(&mut buf, 0xabcd), Ok(DATA_HEADER_LEN));
    assert_eq!(&buf[..4], b"\x00\x03\xab\xcd");
    assert_eq!(write_ack(&mut buf, 258), Ok(ACK_LEN));
    assert_eq!(&buf[..4], b"\x00\x04\x01\x02");
    assert_eq!(write_error(&mut buf, ErrorCode::FileNotFound, "no"), Ok(7));
    assert_eq!(&buf[..7], b"\x00\x05\x00\x01no\x00");
    assert_eq!(
        write_error(&mut buf, ErrorCode::NotDefined, "a\0b"),
        Err(Error::NulInString {
            field: Field::ErrorMessage
        })
    );
    assert!(matches!(
        write_data_header(&mut buf[..3], 1),
        Err(Error::BufferTooSmall {
            needed: 4,
            available: 3
        })
    ));
    assert!(matches!(
        write_ack(&mut [0u8; 2], 1),
        Err(Error::BufferTooSmall { .. })
    ));
    assert!(matches!(
        write_error(&mut [0u8; 6], ErrorCode::NotDefined, "xy"),
        Err(Error::BufferTooSmall { .. })
    ));

    let mut w = OptionWriter::oack(&mut buf).unwrap();
    w.option_u64("tsize", 0).unwrap();
    w.option_u64("blksize", 65464).unwrap();
    w.option_u64("big", u64::MAX).unwrap();
    w.option("x", "").unwrap();
    let n = w.finish();
    assert_eq!(
        &buf[..n],
        b"\x00\x06tsize\x000\x00blksize\x0065464\x00big\x0018446744073709551615\x00x\x00\x00"
    );
    let mut w = OptionWriter::oack(&mut buf).unwrap();
    assert_eq!(
        w.option("a\0", "1"),
        Err(Error::NulInString {
            field: Field::OptionName
        })
    );
    assert_eq!(
        w.option("a", "1\0"),
        Err(Error::NulInString {
            field: Field::OptionValue
        })
    );
    assert_eq!(w.len(), 2, "a refused option writes nothing");
    let mut small = [0u8; 10];
    let mut w = OptionWriter::oack(&mut small).unwrap();
    assert!(matches!(
        w.option("blksize", "1468"),
        Err(Error::BufferTooSmall { .. })
    ));
    assert_eq!(w.len(), 2, "a refused option writes nothing");
    assert!(matches!(
        OptionWriter::request(&mut [0u8; 5], Opcode::Rrq, "file", "octet"),
        Err(Error::BufferTooSmall { .. })
    ));
    assert!(matches!(
        OptionWriter::request(&mut buf, Opcode::Rrq, "a\0b", "octet"),
        Err(Error::NulInString {
            field: Field::Filename
        })
    ));
}

#[test]
fn codes_convert_both_ways() {
    for v in 0..=10u16 {
        assert_eq!(u16::from(ErrorCode::from(v)), v);
        assert_eq!(u16::from(Opcode::from(v)), v);
    }
    assert_eq!(ErrorCode::from(5), ErrorCode::UnknownTransferId);
    assert_eq!(Opcode::from(6), Opcode::Oack);
}
