//! Where the LB may send requests: the address policy for backends, and loop detection.
//!
//! A backend's resolved address is checked each time it is resolved, on the address that is
//! then connected to (at registration, at start, and at every rebuild that resolves it):
//! link-local and cloud metadata addresses (unless `admin.allow_link_local`), the blocks of
//! `admin.forbidden_addresses`, and the LB's own listeners, in every IPv4 and IPv6 spelling.
//! Every request the LB sends carries `Via: 1.1 <this LB's id>`; a request that arrives with
//! that id came back to the LB that sent it (a loop the address check could not see, such as
//! another interface of this host) and is answered 508 at once.

use std::net::{IpAddr, SocketAddr};

use config::check::{canonical_ip, is_link_local_or_metadata};
use config::AdminConfig;

/// What identifies this LB process.
#[derive(Debug, Clone)]
pub struct SelfIdentity {
    /// The `Via` received-by value of this process: `gpt-oss-lb-` and 16 random hex digits.
    pub via: String,
    /// Our `Via` entry as sent: `1.1 ` and `via`.
    pub via_entry: http::HeaderValue,
    /// The addresses the proxy listens on.
    pub listeners: Vec<SocketAddr>,
}

impl SelfIdentity {
    /// A new identity for a process listening on `listeners`.
    pub fn new(listeners: Vec<SocketAddr>) -> SelfIdentity {
        let via = format!("gpt-oss-lb-{:016x}", rand_u64());
        SelfIdentity {
            // Hex digits and a fixed prefix: always a valid header value.
            via_entry: http::HeaderValue::from_str(&format!("1.1 {via}"))
                .unwrap_or_else(|_| http::HeaderValue::from_static("1.1 gpt-oss-lb")),
            via,
            listeners,
        }
    }

    /// Whether `headers` show that this request already passed through this LB: one of its
    /// `Via` entries is ours (RFC 9110 section 7.6.3).
    pub fn is_loop(&self, headers: &http::HeaderMap) -> bool {
        headers
            .get_all(http::header::VIA)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|entry| entry.split_whitespace().nth(1) == Some(self.via.as_str()))
    }

    /// Whether `addr` reaches one of this process's listeners: the same port on the same
    /// address, or on a loopback or unspecified address when the listener is unspecified
    /// (`0.0.0.0`, `[::]`) or loopback.
    pub fn is_own_listener(&self, addr: &SocketAddr) -> bool {
        let ip = canonical_ip(&addr.ip());
        self.listeners.iter().any(|l| {
            if l.port() != addr.port() {
                return false;
            }
            let lip = canonical_ip(&l.ip());
            lip == ip
                || ((lip.is_unspecified() || lip.is_loopback())
                    && (ip.is_loopback() || ip.is_unspecified()))
        })
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// Check one resolved backend address against the policy. Errors: why it is refused, naming
/// the address and the rule.
pub fn check_backend_addr(
    addr: &SocketAddr,
    admin: &AdminConfig,
    me: &SelfIdentity,
) -> Result<(), String> {
    let ip: IpAddr = addr.ip();
    if me.is_own_listener(addr) {
        return Err(format!(
            "{addr} is this load balancer's own listener: requests would loop"
        ));
    }
    if !admin.allow_link_local && is_link_local_or_metadata(&ip) {
        return Err(format!(
            "{ip}: link-local and metadata addresses are not allowed (admin.allow_link_local)"
        ));
    }
    if let Some(block) = admin.forbidden_addresses.iter().find(|b| b.contains(&ip)) {
        return Err(format!(
            "{ip} is in admin.forbidden_addresses ({}/{})",
            block.addr, block.prefix
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me(port: u16) -> SelfIdentity {
        SelfIdentity::new(vec![SocketAddr::from(([0, 0, 0, 0], port))])
    }

    #[test]
    fn own_listener_in_every_spelling() {
        let m = me(8080);
        for a in [
            "127.0.0.1:8080",
            "127.0.0.2:8080",
            "0.0.0.0:8080",
            "[::1]:8080",
            "[::]:8080",
            "[::ffff:127.0.0.1]:8080",
            "[::ffff:7f00:1]:8080",
            "[64:ff9b::7f00:1]:8080",
        ] {
            let addr: SocketAddr = a.parse().expect(a);
            assert!(m.is_own_listener(&addr), "{a} reaches 0.0.0.0:8080");
        }
        assert!(!m.is_own_listener(&"127.0.0.1:8081".parse().expect("addr")));
        let exact = SelfIdentity::new(vec!["127.0.0.1:9000".parse().expect("addr")]);
        assert!(exact.is_own_listener(&"[::ffff:127.0.0.1]:9000".parse().expect("addr")));
        assert!(exact.is_own_listener(&"0.0.0.0:9000".parse().expect("addr")));
    }

    #[test]
    fn metadata_and_forbidden_blocks_in_every_spelling() {
        let mut admin = AdminConfig::default();
        admin.forbidden_addresses =
            vec![config::check::IpBlock::parse("127.0.0.2/32").expect("block")];
        let m = me(1);
        for a in [
            "169.254.169.254:80",
            "[::ffff:169.254.169.254]:80",
            "[::a9fe:a9fe]:80",
            "[64:ff9b::a9fe:a9fe]:80",
            "[2002:a9fe:a9fe::1]:80",
            "[fd00:ec2::254]:80",
            "[fe80::1]:80",
            "100.100.100.200:80",
            "127.0.0.2:80",
            "[::ffff:127.0.0.2]:80",
        ] {
            let addr: SocketAddr = a.parse().expect(a);
            assert!(
                check_backend_addr(&addr, &admin, &m).is_err(),
                "{a} must be refused"
            );
        }
        assert!(check_backend_addr(&"127.0.0.3:80".parse().expect("addr"), &admin, &m).is_ok());
        admin.allow_link_local = true;
        assert!(
            check_backend_addr(&"169.254.169.254:80".parse().expect("addr"), &admin, &m).is_ok()
        );
        assert!(
            check_backend_addr(&"127.0.0.2:80".parse().expect("addr"), &admin, &m).is_err(),
            "forbidden_addresses hold even with allow_link_local"
        );
    }

    #[test]
    fn via_marks_loops() {
        let m = me(1);
        let mut h = http::HeaderMap::new();
        assert!(!m.is_loop(&h));
        let mut req = pingora::http::RequestHeader::build("POST", b"/v1/chat/completions", None)
            .expect("request");
        req.insert_header(http::header::VIA, "1.1 other-proxy")
            .expect("header");
        crate::headers::append_to_list(&mut req, http::header::VIA, m.via_entry.clone())
            .expect("append");
        assert_eq!(
            req.headers.get(http::header::VIA).map(|v| v.as_bytes()),
            Some(format!("1.1 other-proxy, 1.1 {}", m.via).as_bytes())
        );
        h.insert(http::header::VIA, req.headers[http::header::VIA].clone());
        assert!(m.is_loop(&h));
        let other = me(1);
        assert!(!other.is_loop(&h), "another LB's entry is not a loop");
    }
}
