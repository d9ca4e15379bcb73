//! Which webhook URLs may be called: `http` or `https` only, and for URLs
//! that API callers supply (a job's `webhook_url`), no loopback, private,
//! link-local or unspecified address unless the operator allows them.
//!
//! The check runs twice: at enqueue ([`check_webhook_url_resolved`]) and when
//! connecting, where [`PublicResolver`] resolves the host and refuses the
//! connection if any address is forbidden. The connection then uses exactly
//! the addresses that were checked, so DNS rebinding between a check and the
//! connect cannot slip through.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::dns::Name;

use super::special;

/// Checks what can be checked without DNS: the URL parses, is `http` or
/// `https` with a host, and, unless `allow_private`, its host is not an IP
/// address of a forbidden kind (see [`is_forbidden_ip`]) nor `localhost`.
/// The `Err` text says what is wrong, for a 422 answer.
pub fn check_webhook_url(url: &str, allow_private: bool) -> Result<(), String> {
    let target = Target::parse(url)?;
    if !allow_private {
        target.check_literal()?;
    }
    Ok(())
}

/// [`check_webhook_url`], then, unless `allow_private`, resolves the host and
/// refuses it if any of its addresses is forbidden (or it resolves to none).
pub async fn check_webhook_url_resolved(url: &str, allow_private: bool) -> Result<(), String> {
    let target = Target::parse(url)?;
    if allow_private {
        return Ok(());
    }
    target.check_literal()?;
    if target.ip.is_some() {
        return Ok(());
    }
    resolve_public(&target.host)
        .await
        .map(drop)
        .map_err(|e| format!("webhook_url {url:?}: {}", io_reason(&e)))
}

/// Whether a per-job webhook may not reach `ip` (unless private targets are
/// allowed): every address the IANA special-purpose address registries mark
/// as not globally reachable (loopback, private, link-local, unspecified,
/// shared, documentation, benchmarking, reserved, discard, ...), broadcast,
/// multicast and the deprecated IPv6 site-local block. IPv6 forms that carry
/// an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64 `64:ff9b::/96`,
/// 6to4 `2002::/16`) are judged by that address.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    special::forbidden(ip).is_some()
}

/// A parsed webhook URL.
pub(crate) struct Target {
    /// The host without IPv6 brackets.
    pub(crate) host: String,
    /// The host, if it is an IP address.
    pub(crate) ip: Option<IpAddr>,
    /// Whether the scheme is `https`.
    pub(crate) https: bool,
}

impl Target {
    pub(crate) fn parse(url: &str) -> Result<Self, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("webhook URL {url:?} is not a valid URL: {e}"))?;
        let https = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("http") => false,
            Some("https") => true,
            _ => {
                return Err(format!(
                    "webhook URL {url:?} must start with http:// or https://"
                ));
            }
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("webhook URL {url:?} has no host"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Self {
            ip: host.parse().ok(),
            host: host.to_owned(),
            https,
        })
    }

    fn check_literal(&self) -> Result<(), String> {
        if let Some(refusal) = self.ip.and_then(|ip| refusal(&self.host, ip)) {
            return Err(refusal);
        }
        let host = self.host.trim_end_matches('.').to_ascii_lowercase();
        if host == "localhost" || host.ends_with(".localhost") {
            return Err(format!(
                "webhook URL host {:?} is loopback, which is not allowed \
                 (allow_private_webhook_urls is off)",
                self.host
            ));
        }
        Ok(())
    }
}

/// Why a per-job webhook to `host` may not connect to `ip`, if it may not.
fn refusal(host: &str, ip: IpAddr) -> Option<String> {
    let why = special::forbidden(ip)?;
    Some(format!(
        "webhook URL host {host:?} resolves to {ip}, {why}, which is not globally \
         reachable and not allowed (allow_private_webhook_urls is off)"
    ))
}

/// The error a [`PublicResolver`] refuses a host with.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ForbiddenAddress(pub(crate) String);

/// The text of an I/O error, with the refusal's own message when it is one.
fn io_reason(e: &io::Error) -> String {
    e.get_ref()
        .map_or_else(|| e.to_string(), |inner| inner.to_string())
}

/// The forbidden-address refusal somewhere in `err`'s chain, if any.
pub(crate) fn find_forbidden(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(f) = e.downcast_ref::<ForbiddenAddress>() {
            return Some(f.0.clone());
        }
        // `io::Error::source` skips the custom error it wraps; look inside.
        if let Some(f) = e
            .downcast_ref::<io::Error>()
            .and_then(io::Error::get_ref)
            .and_then(|inner| inner.downcast_ref::<ForbiddenAddress>())
        {
            return Some(f.0.clone());
        }
        next = e.source();
    }
    None
}

async fn resolve_public(host: &str) -> io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, 0)).await?.collect();
    if addrs.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("host {host:?} resolves to no address"),
        ));
    }
    if let Some(refusal) = addrs.iter().find_map(|a| refusal(host, a.ip())) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            ForbiddenAddress(refusal),
        ));
    }
    Ok(addrs)
}

/// A DNS resolver for hyper's connector that refuses hosts with any
/// forbidden address, so a per-job webhook connects only to addresses that
/// passed the check.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PublicResolver;

impl tower_service::Service<Name> for PublicResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        Box::pin(async move { resolve_public(name.as_str()).await.map(Vec::into_iter) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https() {
        assert!(check_webhook_url("https://example.com/hook", false).is_ok());
        assert!(check_webhook_url("http://example.com:8080/hook", false).is_ok());
        assert!(check_webhook_url("HTTPS://example.com/", false).is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "example.com",
            "",
            "http://",
        ] {
            let err = check_webhook_url(bad, true).unwrap_err();
            assert!(err.contains("webhook URL"), "{bad}: {err}");
        }
    }

    const REFUSED: bool = true;
    const ALLOWED: bool = false;

    /// For each block of the registries (and the few extra rows): its first
    /// and last address, and where it makes sense the addresses just outside.
    #[rustfmt::skip]
    const CASES: &[(&str, bool)] = &[
        // Well-known public resolvers.
        ("8.8.8.8", ALLOWED), ("1.1.1.1", ALLOWED), ("2001:4860:4860::8888", ALLOWED),
        // 0.0.0.0/8 "This network", 0.0.0.0/32 "This host".
        ("0.0.0.0", REFUSED), ("0.255.255.255", REFUSED), ("1.0.0.0", ALLOWED),
        // 10.0.0.0/8 Private-Use.
        ("9.255.255.255", ALLOWED), ("10.0.0.0", REFUSED), ("10.255.255.255", REFUSED), ("11.0.0.0", ALLOWED),
        // 100.64.0.0/10 Shared Address Space.
        ("100.63.255.255", ALLOWED), ("100.64.0.0", REFUSED), ("100.127.255.255", REFUSED), ("100.128.0.0", ALLOWED),
        // 127.0.0.0/8 Loopback.
        ("126.255.255.255", ALLOWED), ("127.0.0.0", REFUSED), ("127.255.255.255", REFUSED), ("128.0.0.0", ALLOWED),
        // 169.254.0.0/16 Link Local.
        ("169.253.255.255", ALLOWED), ("169.254.0.0", REFUSED), ("169.254.255.255", REFUSED), ("169.255.0.0", ALLOWED),
        // 172.16.0.0/12 Private-Use.
        ("172.15.255.255", ALLOWED), ("172.16.0.0", REFUSED), ("172.31.255.255", REFUSED), ("172.32.0.0", ALLOWED),
        // 192.0.0.0/24 IETF Protocol Assignments, with 192.0.0.0/29,
        // 192.0.0.8, 192.0.0.170 and .171 refused and .9 and .10 reachable.
        ("191.255.255.255", ALLOWED), ("192.0.0.0", REFUSED), ("192.0.0.7", REFUSED), ("192.0.0.8", REFUSED),
        ("192.0.0.9", ALLOWED), ("192.0.0.10", ALLOWED), ("192.0.0.11", REFUSED), ("192.0.0.170", REFUSED),
        ("192.0.0.171", REFUSED), ("192.0.0.255", REFUSED), ("192.0.1.0", ALLOWED),
        // 192.0.2.0/24 TEST-NET-1.
        ("192.0.2.0", REFUSED), ("192.0.2.255", REFUSED), ("192.0.3.0", ALLOWED),
        // Globally reachable entries: AS112-v4, AMT, AS112 direct delegation.
        ("192.31.196.0", ALLOWED), ("192.52.193.255", ALLOWED), ("192.175.48.1", ALLOWED),
        // 192.88.99.0/24 deprecated 6to4 relay anycast, 192.88.99.2 6a44.
        ("192.88.98.255", ALLOWED), ("192.88.99.0", REFUSED), ("192.88.99.2", REFUSED),
        ("192.88.99.255", REFUSED), ("192.88.100.0", ALLOWED),
        // 192.168.0.0/16 Private-Use.
        ("192.167.255.255", ALLOWED), ("192.168.0.0", REFUSED), ("192.168.255.255", REFUSED), ("192.169.0.0", ALLOWED),
        // 198.18.0.0/15 Benchmarking.
        ("198.17.255.255", ALLOWED), ("198.18.0.0", REFUSED), ("198.19.255.255", REFUSED), ("198.20.0.0", ALLOWED),
        // 198.51.100.0/24 TEST-NET-2.
        ("198.51.99.255", ALLOWED), ("198.51.100.0", REFUSED), ("198.51.100.255", REFUSED), ("198.51.101.0", ALLOWED),
        // 203.0.113.0/24 TEST-NET-3.
        ("203.0.112.255", ALLOWED), ("203.0.113.0", REFUSED), ("203.0.113.255", REFUSED), ("203.0.114.0", ALLOWED),
        // 224.0.0.0/4 multicast, 240.0.0.0/4 reserved, limited broadcast.
        ("223.255.255.255", ALLOWED), ("224.0.0.0", REFUSED), ("239.255.255.255", REFUSED),
        ("240.0.0.0", REFUSED), ("255.255.255.254", REFUSED), ("255.255.255.255", REFUSED),
        // ::/128, ::1/128.
        ("::", REFUSED), ("::1", REFUSED),
        // ::/96 IPv4-compatible: judged by the IPv4 address.
        ("::2", REFUSED), ("::127.0.0.1", REFUSED), ("::10.0.0.1", REFUSED), ("::8.8.8.8", ALLOWED),
        ("::255.255.255.255", REFUSED),
        // ::ffff:0:0/96 IPv4-mapped: judged by the IPv4 address.
        ("::ffff:0.0.0.0", REFUSED), ("::ffff:127.0.0.1", REFUSED), ("::ffff:192.168.1.1", REFUSED),
        ("::ffff:198.18.0.1", REFUSED), ("::ffff:8.8.8.8", ALLOWED), ("::ffff:192.0.0.9", ALLOWED),
        // 64:ff9b::/96 NAT64: judged by the IPv4 address.
        ("64:ff9b::", REFUSED), ("64:ff9b::127.0.0.1", REFUSED), ("64:ff9b::a00:1", REFUSED),
        ("64:ff9b::169.254.169.254", REFUSED), ("64:ff9b::240.0.0.1", REFUSED),
        ("64:ff9b::8.8.8.8", ALLOWED), ("64:ff9b::ffff:ffff", REFUSED),
        // 64:ff9b:1::/48 local-use NAT64: refused whatever it carries.
        ("64:ff9b:0:ffff:ffff:ffff:ffff:ffff", ALLOWED), ("64:ff9b:1::", REFUSED),
        ("64:ff9b:1::8.8.8.8", REFUSED), ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", REFUSED), ("64:ff9b:2::", ALLOWED),
        // 100::/64 discard-only, 100:0:0:1::/64 dummy prefix.
        ("100::", REFUSED), ("100::ffff:ffff:ffff:ffff", REFUSED), ("100:0:0:1::", REFUSED),
        ("100:0:0:1:ffff:ffff:ffff:ffff", REFUSED), ("100:0:0:2::", ALLOWED),
        // 2001::/23 IETF Protocol Assignments and what is carved out of it.
        ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED), ("2001::", REFUSED),
        ("2001:0:4136:e378:8000:63bf:3fff:fdd2", REFUSED), ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED),
        ("2001:1::", REFUSED), ("2001:1::1", ALLOWED), ("2001:1::2", ALLOWED), ("2001:1::3", ALLOWED),
        ("2001:1::4", REFUSED),
        ("2001:2::", REFUSED), ("2001:2:0:ffff:ffff:ffff:ffff:ffff", REFUSED), ("2001:2:1::", REFUSED),
        ("2001:3::", ALLOWED), ("2001:3:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED), ("2001:4::", REFUSED),
        ("2001:4:111:ffff:ffff:ffff:ffff:ffff", REFUSED), ("2001:4:112::", ALLOWED),
        ("2001:4:112:ffff:ffff:ffff:ffff:ffff", ALLOWED), ("2001:4:113::", REFUSED),
        ("2001:10::", REFUSED), ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED),
        ("2001:20::", ALLOWED), ("2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED),
        ("2001:30::", ALLOWED), ("2001:3f:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED), ("2001:40::", REFUSED),
        ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED), ("2001:200::", ALLOWED),
        // 2001:db8::/32 documentation.
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED), ("2001:db8::", REFUSED),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED), ("2001:db9::", ALLOWED),
        // 2002::/16 6to4: judged by the IPv4 address in bits 16 to 48.
        ("2002::", REFUSED), ("2002:7f00:1::", REFUSED), ("2002:a00:1::1", REFUSED), ("2002:c0a8:101::", REFUSED),
        ("2002:c612:1::", REFUSED), ("2002:808:808::1", ALLOWED), ("2002:c000:9::", ALLOWED), ("2002:c000:209::", REFUSED),
        ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED), ("2003::", ALLOWED),
        // 2620:4f:8000::/48 AS112 direct delegation.
        ("2620:4f:8000::1", ALLOWED),
        // 3fff::/20 documentation.
        ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED), ("3fff::", REFUSED),
        ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED), ("3fff:1000::", ALLOWED),
        // 5f00::/16 SRv6 SIDs.
        ("5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", ALLOWED), ("5f00::", REFUSED),
        ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED), ("5f01::", ALLOWED),
        // fc00::/7 unique local, fe80::/10 link-local, fec0::/10 site-local,
        // ff00::/8 multicast.
        ("fc00::", REFUSED), ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED),
        ("fe80::", REFUSED), ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED),
        ("fec0::", REFUSED), ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED),
        ("ff00::", REFUSED), ("ff0e::1", REFUSED), ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", REFUSED),
    ];

    /// `ip` as the host of a URL, bracketed when it is IPv6.
    fn url_of(ip: IpAddr) -> String {
        match ip {
            IpAddr::V4(v4) => format!("http://{v4}:8080/hook"),
            IpAddr::V6(v6) => format!("http://[{v6}]:8080/hook"),
        }
    }

    #[test]
    fn special_purpose_blocks_are_refused() {
        for &(text, refused) in CASES {
            let ip: IpAddr = text.parse().unwrap();
            assert_eq!(is_forbidden_ip(ip), refused, "is_forbidden_ip({text})");
            let url = url_of(ip);
            match check_webhook_url(&url, false) {
                Ok(()) => assert!(!refused, "{url} passed"),
                Err(e) => {
                    assert!(refused, "{url}: {e}");
                    assert!(e.contains("not allowed"), "{url}: {e}");
                }
            }
            assert_eq!(
                check_webhook_url(&url, true),
                Ok(()),
                "{url} with permission"
            );
        }
    }

    #[test]
    fn private_targets_need_permission() {
        for url in [
            "http://127.0.0.1:9000/",
            "http://localhost/",
            "http://api.localhost./",
            "http://10.1.2.3/",
            "http://169.254.169.254/latest/meta-data",
            "http://[::ffff:127.0.0.1]/",
            "http://[::127.0.0.1]:80/x",
            "http://[64:FF9B::7F00:1]/",
            "http://[64:ff9b::10.0.0.1]:8080/hook?a=b",
            "https://[2002:c0a8:101::1]/",
            "http://[fec0::1]/",
            "http://[2001::1]/",
            "http://[ff02::1]/",
        ] {
            let err = check_webhook_url(url, false).unwrap_err();
            assert!(err.contains("not allowed"), "{url}: {err}");
            assert!(check_webhook_url(url, true).is_ok(), "{url}");
        }
    }

    #[test]
    fn refusals_name_the_block_and_the_carried_address() {
        let err = check_webhook_url("http://[64:ff9b::7f00:1]/", false).unwrap_err();
        assert!(
            err.contains(
                "resolves to 64:ff9b::7f00:1, carrying 127.0.0.1, in 127.0.0.0/8, Loopback \
                 (RFC 1122, Section 3.2.1.3), which is not globally reachable"
            ),
            "{err}"
        );
        let err = check_webhook_url("http://198.18.0.1/", false).unwrap_err();
        assert_eq!(
            err,
            "webhook URL host \"198.18.0.1\" resolves to 198.18.0.1, in 198.18.0.0/15, \
             Benchmarking (RFC 2544), which is not globally reachable and not allowed \
             (allow_private_webhook_urls is off)"
        );
    }

    #[tokio::test]
    async fn resolved_check_refuses_names_of_loopback() {
        // "localhost" is refused by name; an IP literal needs no DNS.
        assert!(
            check_webhook_url_resolved("http://localhost:1/", false)
                .await
                .is_err()
        );
        assert!(
            check_webhook_url_resolved("http://127.0.0.1:1/", true)
                .await
                .is_ok()
        );
        let err = resolve_public("127.0.0.1").await.unwrap_err();
        assert!(io_reason(&err).contains("not allowed"), "{err}");
        assert!(find_forbidden(&err).is_some());
    }
}
