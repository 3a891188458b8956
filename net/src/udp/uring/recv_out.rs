//! The layout a multishot `recvmsg` writes into each provided buffer, parsed from bytes.
//!
//! ```text
//! struct io_uring_recvmsg_out { u32 namelen; u32 controllen; u32 payloadlen; u32 flags; }
//! then the name field   (msg_namelen bytes of the submitted msghdr, always reserved),
//! then the control field (msg_controllen bytes, always reserved),
//! then the payload       (whatever room is left in the buffer).
//! ```
//! The header holds the lengths the kernel actually produced; `payloadlen` may exceed the
//! room left (the datagram was cut), and `flags` carries `MSG_TRUNC`.
#![forbid(unsafe_code)]

/// Size of `struct io_uring_recvmsg_out`.
pub(super) const HEADER_LEN: usize = 16;

/// One received datagram, as laid out in its buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct RecvOut<'a> {
    /// The source `sockaddr` (as many bytes as the kernel wrote, at most the field).
    pub(super) name: &'a [u8],
    /// The control messages (as many bytes as the kernel wrote).
    pub(super) control: &'a [u8],
    /// The payload bytes present in the buffer.
    pub(super) payload: &'a [u8],
    /// The datagram did not fit: the payload is cut and must not be used.
    pub(super) truncated: bool,
}

/// Parse `buf` (a whole provided buffer) for a request submitted with `name_field` and
/// `control_field` as its `msg_namelen` and `msg_controllen`. `None` if the buffer cannot
/// even hold the header and the reserved fields.
pub(super) fn parse(buf: &[u8], name_field: usize, control_field: usize) -> Option<RecvOut<'_>> {
    let word = |i: usize| -> Option<usize> {
        let bytes = buf.get(i * 4..i * 4 + 4)?;
        usize::try_from(u32::from_ne_bytes(bytes.try_into().ok()?)).ok()
    };
    let (namelen, controllen, payloadlen) = (word(0)?, word(1)?, word(2)?);
    let flags = u32::try_from(word(3)?).ok()?;

    let name_at = HEADER_LEN;
    let control_at = name_at.checked_add(name_field)?;
    let payload_at = control_at.checked_add(control_field)?;
    let payload_room = buf.len().checked_sub(payload_at)?;

    // A cut control field only matters if it lost the packet info, which the caller sees.
    let truncated = payloadlen > payload_room || flags & (libc::MSG_TRUNC as u32) != 0;
    Some(RecvOut {
        name: &buf[name_at..name_at + namelen.min(name_field)],
        control: &buf[control_at..control_at + controllen.min(control_field)],
        payload: &buf[payload_at..payload_at + payloadlen.min(payload_room)],
        truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(lens: [u32; 4], name: &[u8], control: &[u8], payload: &[u8], room: usize) -> Vec<u8> {
        let mut buf: Vec<u8> = lens.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut field = |bytes: &[u8], size: usize| {
            let mut f = bytes.to_vec();
            f.resize(size, 0);
            buf.extend_from_slice(&f);
        };
        field(name, 16);
        field(control, 32);
        field(payload, room);
        buf
    }

    #[test]
    fn splits_fields_by_reserved_sizes() {
        let buf = buffer([16, 28, 5, 0], &[1; 16], &[2; 28], b"hello", 64);
        let out = parse(&buf, 16, 32).unwrap();
        assert_eq!(out.name, &[1; 16]);
        assert_eq!(out.control, &[2; 28]);
        assert_eq!(out.payload, b"hello");
        assert!(!out.truncated);
    }

    #[test]
    fn exact_fit_is_not_truncated_one_more_is() {
        let buf = buffer([16, 28, 64, 0], &[], &[], &[7; 64], 64);
        assert!(!parse(&buf, 16, 32).unwrap().truncated);
        let buf = buffer([16, 28, 65, 0], &[], &[], &[7; 64], 64);
        let out = parse(&buf, 16, 32).unwrap();
        assert!(out.truncated);
        assert_eq!(out.payload.len(), 64);
        let buf = buffer([16, 28, 10, libc::MSG_TRUNC as u32], &[], &[], &[7; 10], 64);
        assert!(parse(&buf, 16, 32).unwrap().truncated);
    }

    #[test]
    fn short_buffers_are_rejected() {
        assert_eq!(parse(&[0; 8], 16, 32), None);
        assert_eq!(parse(&[0; 40], 16, 32), None);
        assert!(parse(&[0; 64], 16, 32).is_some());
    }
}
