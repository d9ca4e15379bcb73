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
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::client::legacy::connect::dns::Name;

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
/// allowed): loopback, private (RFC 1918, IPv6 unique-local), link-local,
/// unspecified, shared address space (100.64/10), the "this network" block
/// (0/8), broadcast and multicast; IPv4-mapped IPv6 addresses are judged by
/// their IPv4 address.
pub fn is_forbidden_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => forbidden_v4(v4),
            None => forbidden_v6(v6),
        },
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b))
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (first & 0xffc0) == 0xfe80 // link-local fe80::/10
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
        if let Some(ip) = self.ip.filter(|ip| is_forbidden_ip(*ip)) {
            return Err(forbidden_message(&self.host, ip));
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

fn forbidden_message(host: &str, ip: IpAddr) -> String {
    format!(
        "webhook URL host {host:?} resolves to {ip}, a loopback, private, link-local or \
         unspecified address, which is not allowed (allow_private_webhook_urls is off)"
    )
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
    if let Some(bad) = addrs.iter().find(|a| is_forbidden_ip(a.ip())) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            ForbiddenAddress(forbidden_message(host, bad.ip())),
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

    #[test]
    fn private_targets_need_permission() {
        for url in [
            "http://127.0.0.1:9000/",
            "http://localhost/",
            "http://api.localhost./",
            "http://10.1.2.3/",
            "http://172.16.0.1/",
            "http://192.168.1.1/",
            "http://169.254.169.254/latest/meta-data",
            "http://0.0.0.0/",
            "http://100.64.0.1/",
            "http://[::1]/",
            "http://[::]/",
            "http://[fd00::1]/",
            "http://[fe80::1]/",
            "http://[::ffff:127.0.0.1]/",
        ] {
            let err = check_webhook_url(url, false).unwrap_err();
            assert!(err.contains("not allowed"), "{url}: {err}");
            assert!(check_webhook_url(url, true).is_ok(), "{url}");
        }
        for url in [
            "http://8.8.8.8/",
            "http://[2001:4860:4860::8888]/",
            "http://172.32.0.1/",
        ] {
            assert!(check_webhook_url(url, false).is_ok(), "{url}");
        }
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
