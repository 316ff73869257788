//! Which IP addresses an outbound request (a webhook, a Web Push) may reach: the SSRF guard's
//! rule, in a file of its own with no dependencies beyond std (the push fuzz target includes
//! it as it is).

use std::net::IpAddr;

/// Addresses a webhook may reach when `webhook.allow_private_networks` is off (SSRF guard).
///
/// Refused IPv4: this network `0/8`, private `10/8`, `172.16/12`, `192.168/16` (RFC 1918),
/// shared CGNAT `100.64/10` (RFC 6598), loopback `127/8`, link-local `169.254/16`, IETF
/// protocol assignments `192.0.0/24`, documentation `192.0.2/24`, `198.51.100/24`,
/// `203.0.113/24` (RFC 5737), benchmarking `198.18/15` (RFC 2544), multicast `224/4`, reserved
/// `240/4` and broadcast. Refused IPv6: unspecified, loopback, IPv4-compatible `::/96` and
/// IPv4-mapped `::ffff:0:0/96` unless the IPv4 inside is public, NAT64 `64:ff9b::/96` (RFC
/// 6052) and `64:ff9b:1::/48` (RFC 8215), discard `100::/64`, Teredo `2001::/32`,
/// documentation `2001:db8::/32`, 6to4 `2002::/16` (all of these reach IPv4 hosts through a
/// translator or tunnel, or nowhere), unique-local `fc00::/7`, link-local `fe80::/10`,
/// site-local `fec0::/10` and multicast `ff00::/8`.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(o[0] == 0
                || o[0] == 10
                || o[0] == 127
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
                || (o[0] == 169 && o[1] == 254)
                || (o[0] == 172 && (o[1] & 0xf0) == 16)
                || (o[0] == 192 && o[1] == 0 && (o[2] == 0 || o[2] == 2))
                || (o[0] == 192 && o[1] == 168)
                || (o[0] == 198 && (o[1] & 0xfe) == 18)
                || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                || (o[0] == 203 && o[1] == 0 && o[2] == 113)
                || o[0] >= 224)
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            // IPv4-compatible (deprecated, RFC 4291 2.5.5.1): `::a.b.c.d`; `::` and `::1`
            // are the unspecified and loopback addresses.
            if seg[..6] == [0; 6] {
                let v4 = std::net::Ipv4Addr::new(
                    (seg[6] >> 8) as u8,
                    seg[6] as u8,
                    (seg[7] >> 8) as u8,
                    seg[7] as u8,
                );
                return !v6.is_unspecified() && !v6.is_loopback() && is_public(IpAddr::V4(v4));
            }
            !((seg[0] == 0x64 && seg[1] == 0xff9b && (seg[2..6] == [0; 4] || seg[2] == 1))
                || (seg[0] == 0x100 && seg[1..4] == [0; 3])
                || (seg[0] == 0x2001 && (seg[1] == 0 || seg[1] == 0xdb8))
                || seg[0] == 0x2002
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || (seg[0] & 0xffc0) == 0xfec0
                || (seg[0] & 0xff00) == 0xff00)
        }
    }
}
