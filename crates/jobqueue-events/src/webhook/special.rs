//! The IANA IPv4 and IPv6 Special-Purpose Address Registries (RFC 6890) as
//! tables, one row per registry entry with its RFC, and the verdict a per-job
//! webhook gets from them.
//!
//! The rule: the most specific row that contains an address decides. A row
//! whose "Globally Reachable" is False forbids the address; one whose value
//! is True allows it (this is how `192.0.0.9/32` inside the forbidden
//! `192.0.0.0/24` stays reachable); a row that says N/A leaves the decision
//! to the enclosing row (Teredo `2001::/32` inside `2001::/23`).
//!
//! Four IPv6 forms carry an IPv4 address, and a connection to them reaches
//! (or is translated to) that IPv4 address: IPv4-mapped, IPv4-compatible,
//! NAT64 `64:ff9b::/96` and 6to4 `2002::/16`. They are judged by the IPv4
//! address they carry, whatever the registry says of the IPv6 block, so
//! `::ffff:8.8.8.8` is allowed and `64:ff9b::127.0.0.1` is not.
//!
//! A few rows are not in the special-purpose registries but name addresses
//! no webhook receiver has: multicast (both families) and the deprecated
//! IPv6 site-local block. They forbid too.
//!
//! The tables were taken from the registries as updated in 2025; a block
//! the registries add later is allowed until a row is added here.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// What a row says about reaching its addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    /// "Globally Reachable: True": allowed.
    Global,
    /// "Globally Reachable: False", or a block outside the registries that no
    /// receiver can be in: forbidden.
    Local,
    /// "N/A": the enclosing row decides.
    Unstated,
    /// Judged by the IPv4 address in the 32 bits after the first this many.
    Ipv4At(u32),
}

/// One registry entry: a block of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Block {
    /// The block in CIDR notation, as the registry writes it.
    cidr: &'static str,
    /// The registry's name for it.
    name: &'static str,
    /// The RFC that set it aside.
    rfc: &'static str,
    reach: Reach,
}

/// A row of one of the tables: the block's first address as a number (an
/// IPv4 one in the low 32 bits), its prefix length, and the entry.
#[derive(Debug)]
struct Row {
    network: u128,
    len: u32,
    block: Block,
}

impl Row {
    const fn new(
        (network, len): (u128, u32),
        cidr: &'static str,
        name: &'static str,
        rfc: &'static str,
        reach: Reach,
    ) -> Self {
        Self {
            network,
            len,
            block: Block {
                cidr,
                name,
                rfc,
                reach,
            },
        }
    }
}

/// An IPv4 prefix as a row's network and length.
const fn v4(octets: [u8; 4], len: u32) -> (u128, u32) {
    (u32::from_be_bytes(octets) as u128, len)
}

/// An IPv6 prefix as a row's network and length.
const fn v6([a, b, c, d, e, f, g, h]: [u16; 8], len: u32) -> (u128, u32) {
    (Ipv6Addr::new(a, b, c, d, e, f, g, h).to_bits(), len)
}

use Reach::{Global, Ipv4At, Local, Unstated};

/// The IPv4 Special-Purpose Address Registry, and multicast.
#[rustfmt::skip]
const V4: &[Row] = &[
    Row::new(v4([0, 0, 0, 0], 8), "0.0.0.0/8", "This network", "RFC 791, Section 3.2", Local),
    Row::new(v4([0, 0, 0, 0], 32), "0.0.0.0/32", "This host on this network", "RFC 1122, Section 3.2.1.3", Local),
    Row::new(v4([10, 0, 0, 0], 8), "10.0.0.0/8", "Private-Use", "RFC 1918", Local),
    Row::new(v4([100, 64, 0, 0], 10), "100.64.0.0/10", "Shared Address Space", "RFC 6598", Local),
    Row::new(v4([127, 0, 0, 0], 8), "127.0.0.0/8", "Loopback", "RFC 1122, Section 3.2.1.3", Local),
    Row::new(v4([169, 254, 0, 0], 16), "169.254.0.0/16", "Link Local", "RFC 3927", Local),
    Row::new(v4([172, 16, 0, 0], 12), "172.16.0.0/12", "Private-Use", "RFC 1918", Local),
    Row::new(v4([192, 0, 0, 0], 24), "192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890, Section 2.1", Local),
    Row::new(v4([192, 0, 0, 0], 29), "192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", Local),
    Row::new(v4([192, 0, 0, 8], 32), "192.0.0.8/32", "IPv4 dummy address", "RFC 7600", Local),
    Row::new(v4([192, 0, 0, 9], 32), "192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", Global),
    Row::new(v4([192, 0, 0, 10], 32), "192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", Global),
    Row::new(v4([192, 0, 0, 170], 32), "192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 Section 2.2", Local),
    Row::new(v4([192, 0, 0, 171], 32), "192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880, RFC 7050 Section 2.2", Local),
    Row::new(v4([192, 0, 2, 0], 24), "192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737", Local),
    Row::new(v4([192, 31, 196, 0], 24), "192.31.196.0/24", "AS112-v4", "RFC 7535", Global),
    Row::new(v4([192, 52, 193, 0], 24), "192.52.193.0/24", "AMT", "RFC 7450", Global),
    // The registry leaves every column of this deprecated entry blank.
    // RFC 7526 retired the 6to4 relays it served and keeps the block from
    // being reassigned, so no receiver can be there: refused.
    Row::new(v4([192, 88, 99, 0], 24), "192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", Local),
    Row::new(v4([192, 88, 99, 2], 32), "192.88.99.2/32", "6a44-relay anycast address", "RFC 6751", Local),
    Row::new(v4([192, 168, 0, 0], 16), "192.168.0.0/16", "Private-Use", "RFC 1918", Local),
    Row::new(v4([192, 175, 48, 0], 24), "192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", Global),
    Row::new(v4([198, 18, 0, 0], 15), "198.18.0.0/15", "Benchmarking", "RFC 2544", Local),
    Row::new(v4([198, 51, 100, 0], 24), "198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", Local),
    Row::new(v4([203, 0, 113, 0], 24), "203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", Local),
    // Not in the special-purpose registry (it has its own): a webhook is one
    // HTTP connection to one host, which a group address never is.
    Row::new(v4([224, 0, 0, 0], 4), "224.0.0.0/4", "Multicast", "RFC 5771", Local),
    Row::new(v4([240, 0, 0, 0], 4), "240.0.0.0/4", "Reserved", "RFC 1112, Section 4", Local),
    Row::new(v4([255, 255, 255, 255], 32), "255.255.255.255/32", "Limited Broadcast", "RFC 8190, RFC 919 Section 7", Local),
];

/// The IPv6 Special-Purpose Address Registry, the IPv4-compatible and
/// site-local blocks it no longer lists, and multicast.
#[rustfmt::skip]
const V6: &[Row] = &[
    Row::new(v6([0, 0, 0, 0, 0, 0, 0, 1], 128), "::1/128", "Loopback Address", "RFC 4291", Local),
    Row::new(v6([0; 8], 128), "::/128", "Unspecified Address", "RFC 4291", Local),
    // Deprecated by RFC 4291 and never in the registry; a host that still
    // routes these sends them to the IPv4 address inside.
    Row::new(v6([0; 8], 96), "::/96", "IPv4-compatible Address", "RFC 4291, Section 2.5.5.1", Ipv4At(96)),
    // The registry says False; a dual-stack socket connects to the IPv4
    // address inside, so that address decides.
    Row::new(v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96), "::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", Ipv4At(96)),
    // The registry says True; a NAT64 gateway connects to the IPv4 address
    // inside, which may be one of its own private neighbours.
    Row::new(v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96), "64:ff9b::/96", "IPv4-IPv6 Translat.", "RFC 6052", Ipv4At(96)),
    Row::new(v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "64:ff9b:1::/48", "IPv4-IPv6 Translat.", "RFC 8215", Local),
    Row::new(v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "100::/64", "Discard-Only Address Block", "RFC 6666", Local),
    Row::new(v6([0x100, 0, 0, 1, 0, 0, 0, 0], 64), "100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", Local),
    Row::new(v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), "2001::/23", "IETF Protocol Assignments", "RFC 2928", Local),
    Row::new(v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), "2001::/32", "TEREDO", "RFC 4380, RFC 8190", Unstated),
    Row::new(v6([0x2001, 1, 0, 0, 0, 0, 0, 1], 128), "2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", Global),
    Row::new(v6([0x2001, 1, 0, 0, 0, 0, 0, 2], 128), "2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", Global),
    Row::new(v6([0x2001, 1, 0, 0, 0, 0, 0, 3], 128), "2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665", Global),
    Row::new(v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), "2001:2::/48", "Benchmarking", "RFC 5180, RFC Errata 1752", Local),
    Row::new(v6([0x2001, 3, 0, 0, 0, 0, 0, 0], 32), "2001:3::/32", "AMT", "RFC 7450", Global),
    Row::new(v6([0x2001, 4, 0x112, 0, 0, 0, 0, 0], 48), "2001:4:112::/48", "AS112-v6", "RFC 7535", Global),
    Row::new(v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28), "2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", Unstated),
    Row::new(v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28), "2001:20::/28", "ORCHIDv2", "RFC 7343", Global),
    Row::new(v6([0x2001, 0x30, 0, 0, 0, 0, 0, 0], 28), "2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", Global),
    Row::new(v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "2001:db8::/32", "Documentation", "RFC 3849", Local),
    // The registry says N/A; the relay that carries it connects to the IPv4
    // address in bits 16 to 48, so that address decides.
    Row::new(v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), "2002::/16", "6to4", "RFC 3056", Ipv4At(16)),
    Row::new(v6([0x2620, 0x4f, 0x8000, 0, 0, 0, 0, 0], 48), "2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", Global),
    Row::new(v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "3fff::/20", "Documentation", "RFC 9637", Local),
    Row::new(v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), "5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", Local),
    Row::new(v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "fc00::/7", "Unique-Local", "RFC 4193, RFC 8190", Local),
    Row::new(v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "fe80::/10", "Link-Local Unicast", "RFC 4291", Local),
    // Deprecated by RFC 3879 and never in the registry, but still routed
    // inside sites that kept it.
    Row::new(v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "fec0::/10", "Site-Local Unicast (deprecated)", "RFC 3879", Local),
    // Not in the special-purpose registry (it has its own): see 224.0.0.0/4.
    Row::new(v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "ff00::/8", "Multicast", "RFC 4291", Local),
];

/// Why a webhook may not reach an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Forbidden {
    /// The block that forbids it.
    pub(crate) block: &'static Block,
    /// The IPv4 address it was judged by, for an IPv6 form that carries one.
    pub(crate) via: Option<Ipv4Addr>,
}

impl fmt::Display for Forbidden {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(v4) = self.via {
            write!(f, "carrying {v4}, ")?;
        }
        let Block {
            cidr, name, rfc, ..
        } = self.block;
        write!(f, "in {cidr}, {name} ({rfc})")
    }
}

/// The block that forbids a per-job webhook to reach `ip`, or `None` when
/// the registries let it be reached.
pub(crate) fn forbidden(ip: IpAddr) -> Option<Forbidden> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4, None),
        IpAddr::V6(v6) => {
            let block = most_specific(V6, v6.to_bits(), 128)?;
            match block.reach {
                Ipv4At(offset) => {
                    // The 32 bits after the first `offset` ones: `offset` is
                    // at most 96, so the shift stays below 128, and the cast
                    // keeps just the low 32 bits, which are that address.
                    let bits = (v6.to_bits() >> (96 - offset)) as u32;
                    let inner = Ipv4Addr::from(bits);
                    forbidden_v4(inner, Some(inner))
                }
                _ => verdict(block, None),
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr, via: Option<Ipv4Addr>) -> Option<Forbidden> {
    verdict(most_specific(V4, u128::from(ip.to_bits()), 32)?, via)
}

fn verdict(block: &'static Block, via: Option<Ipv4Addr>) -> Option<Forbidden> {
    (block.reach == Local).then_some(Forbidden { block, via })
}

/// The most specific row of `table` that contains `address` (of `width`
/// bits) and states something: rows that say N/A are skipped, so the
/// enclosing row decides.
fn most_specific(table: &'static [Row], address: u128, width: u32) -> Option<&'static Block> {
    table
        .iter()
        .filter(|row| row.block.reach != Unstated)
        // Every row has a prefix of 1 to `width` bits (a test checks), so
        // the shift is below the width of `u128`.
        .filter(|row| address >> (width - row.len) == row.network >> (width - row.len))
        .max_by_key(|row| row.len)
        .map(|row| &row.block)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_table(table: &[Row], width: u32) {
        for row in table {
            let Block { cidr, .. } = row.block;
            assert!((1..=width).contains(&row.len), "{cidr}: prefix length");
            let host_bits = (1u128 << (width - row.len)) - 1;
            assert_eq!(row.network & host_bits, 0, "{cidr}: host bits set");
            let (address, len) = cidr.split_once('/').unwrap();
            let address: IpAddr = address.parse().unwrap();
            let bits = match address {
                IpAddr::V4(v4) => u128::from(v4.to_bits()),
                IpAddr::V6(v6) => v6.to_bits(),
            };
            assert_eq!((bits, len.parse()), (row.network, Ok(row.len)), "{cidr}");
            let twins = table
                .iter()
                .filter(|r| (r.network, r.len) == (row.network, row.len))
                .count();
            assert_eq!(twins, 1, "{cidr} is in the table twice");
        }
    }

    #[test]
    fn rows_match_their_cidr_text() {
        check_table(V4, 32);
        check_table(V6, 128);
        assert!(V4.iter().all(|r| r.network <= u128::from(u32::MAX)));
    }

    #[test]
    fn an_unstated_row_defers_to_its_parent() {
        // Teredo says N/A; 2001::/23 around it says False.
        let teredo: IpAddr = "2001::1".parse().unwrap();
        assert_eq!(forbidden(teredo).unwrap().block.cidr, "2001::/23");
    }

    #[test]
    fn carried_ipv4_addresses_are_named() {
        let nat64: IpAddr = "64:ff9b::c0a8:101".parse().unwrap();
        let why = forbidden(nat64).unwrap();
        assert_eq!(why.via, Some(Ipv4Addr::new(192, 168, 1, 1)));
        assert_eq!(why.block.cidr, "192.168.0.0/16");
        let six_to_four: IpAddr = "2002:7f00:1:2:3:4:5:6".parse().unwrap();
        assert_eq!(
            forbidden(six_to_four).unwrap().via,
            Some(Ipv4Addr::LOCALHOST)
        );
    }
}
