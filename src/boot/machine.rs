//! Who is asking for a boot script (SMBIOS UUID, MAC, `${buildarch}`, the free-text
//! fields): the validated types live in [`ironboot_net::machine`], beside the other
//! parsers of what machines send, so the `boot_query` fuzz target reaches them.

pub(crate) use ironboot_net::machine::*;
