//! PXE vendor options: the sub-options PXE puts inside option 43 (PXE 2.1 specification,
//! "DHCP options used by PXE"), read and written without allocation.

use core::net::Ipv4Addr;

use super::Result;
use super::options::{OptionWriter, Options};

/// PXE sub-option codes inside option 43.
pub mod sub {
    /// PXE_DISCOVERY_CONTROL: how the client looks for boot servers.
    pub const DISCOVERY_CONTROL: u8 = 6;
    /// PXE_BOOT_SERVERS: boot server types and their addresses.
    pub const BOOT_SERVERS: u8 = 8;
    /// PXE_BOOT_MENU: menu items (type + description).
    pub const BOOT_MENU: u8 = 9;
    /// PXE_MENU_PROMPT: timeout + prompt text.
    pub const MENU_PROMPT: u8 = 10;
    /// PXE_BOOT_ITEM: the boot server type and layer a client asks for (or is given).
    pub const BOOT_ITEM: u8 = 71;
}

/// Bits of PXE_DISCOVERY_CONTROL.
pub mod discovery {
    /// Do not broadcast discovery requests.
    pub const DISABLE_BROADCAST: u8 = 0x01;
    /// Do not multicast discovery requests.
    pub const DISABLE_MULTICAST: u8 = 0x02;
    /// Only use (and accept replies from) servers in PXE_BOOT_SERVERS.
    pub const SERVER_LIST_ONLY: u8 = 0x04;
    /// Boot the file named in the offer without discovery.
    pub const USE_BOOT_FILE: u8 = 0x08;
}

/// A boot server / menu item type in the vendor range (0x8000-0xFFFE). Type 0 is reserved
/// for "local boot" in PXE menus, so a network boot item must not use it.
pub const BOOT_TYPE_IRONBOOT: u16 = 0x8000;

/// PXE_BOOT_ITEM (sub-option 71): boot server type and layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BootItem {
    /// Boot server type.
    pub server_type: u16,
    /// Layer (bit 15: credentials requested).
    pub layer: u16,
}

impl BootItem {
    /// Decode sub-option 71's value (exactly 4 bytes).
    pub fn parse(data: &[u8]) -> Option<Self> {
        let [a, b, c, d] = data.try_into().ok()?;
        Some(BootItem {
            server_type: u16::from_be_bytes([a, b]),
            layer: u16::from_be_bytes([c, d]),
        })
    }

    /// Encode as sub-option 71's value.
    pub fn to_bytes(self) -> [u8; 4] {
        let [a, b] = self.server_type.to_be_bytes();
        let [c, d] = self.layer.to_be_bytes();
        [a, b, c, d]
    }
}

/// The PXE_BOOT_ITEM a client's option 43 carries, if any.
pub fn requested_boot_item(vendor: &Options<'_>) -> Option<BootItem> {
    vendor.find(sub::BOOT_ITEM).and_then(BootItem::parse)
}

/// What a ProxyDHCP offer tells PXE firmware about boot server discovery: one boot server
/// (us) with one menu item, selected at once.
#[derive(Debug, Clone, Copy)]
pub struct DiscoveryMenu<'a> {
    /// The boot server to ask on port 4011.
    pub server: Ipv4Addr,
    /// The menu item's text (at most 253 bytes).
    pub description: &'a [u8],
    /// Tell the client to boot the offer's file without discovery
    /// ([`discovery::USE_BOOT_FILE`]). iPXE needs it: with a menu and no such bit it tries
    /// boot server discovery, which its EFI builds do not implement, and gives up.
    pub use_boot_file: bool,
}

/// Write option 43 for a PXE offer: discovery control (unicast to the listed server
/// only), the boot server list, the menu and a zero-timeout prompt. This is the shape EDK2
/// requires before it proceeds to the 4011 request; iPXE clients additionally get
/// [`discovery::USE_BOOT_FILE`] (see [`DiscoveryMenu::use_boot_file`]).
pub fn write_offer_vendor_options(
    w: &mut OptionWriter<'_>,
    menu: &DiscoveryMenu<'_>,
) -> Result<()> {
    let open = w.begin(super::options::code::VENDOR_SPECIFIC)?;
    let mut control = discovery::DISABLE_BROADCAST | discovery::DISABLE_MULTICAST;
    if menu.use_boot_file {
        control |= discovery::USE_BOOT_FILE;
    }
    w.put(sub::DISCOVERY_CONTROL, &[control])?;
    // Timeout 0: no prompt, the first (only) item is taken immediately.
    w.put(sub::MENU_PROMPT, &[0, b'P', b'X', b'E'])?;
    let [t0, t1] = BOOT_TYPE_IRONBOOT.to_be_bytes();
    let ip = menu.server.octets();
    w.put(sub::BOOT_SERVERS, &[t0, t1, 1, ip[0], ip[1], ip[2], ip[3]])?;
    let desc = menu.description.get(..253).unwrap_or(menu.description);
    w.put_parts(sub::BOOT_MENU, &[&[t0, t1, desc.len() as u8], desc])?;
    w.end()?;
    w.finish(open)
}

/// Write option 43 for a 4011 ACK: the client's PXE_BOOT_ITEM echoed back.
pub fn write_ack_vendor_options(w: &mut OptionWriter<'_>, item: BootItem) -> Result<()> {
    let open = w.begin(super::options::code::VENDOR_SPECIFIC)?;
    w.put(sub::BOOT_ITEM, &item.to_bytes())?;
    w.end()?;
    w.finish(open)
}
