//! `INGRESS_HOSTS`: which hosts this ingress serves, by name or by wildcard.
//!
//! An entry is a host name (`api.example.com`), an IP address, or a wildcard
//! for one label more, as a Kubernetes Ingress writes it: `*.apps.example.com`
//! serves `a.apps.example.com`, not `apps.example.com` nor
//! `b.a.apps.example.com`. Names are compared without case, port or a
//! trailing dot. Before this module a `*.` entry was taken as a literal name,
//! which no request has: the ingress answered every host 404 without a word.
//! Now an entry that is none of these stops the ingress at start, naming the
//! variable.

use gateway_common::env::ConfigError;

/// The hosts served; empty: any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hosts {
    exact: Vec<String>,
    /// `*.SUFFIX` entries, as `.SUFFIX`.
    wildcards: Vec<String>,
}

impl Hosts {
    /// Reads a comma-separated list (`var` names it in an error).
    pub fn parse(var: &'static str, raw: &str) -> Result<Hosts, ConfigError> {
        let mut hosts = Hosts::default();
        for entry in raw.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let name = entry.trim_end_matches('.').to_ascii_lowercase();
            let name = name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .unwrap_or(&name)
                .to_owned();
            let (wild, rest) = match name.strip_prefix("*.") {
                Some(rest) => (true, rest.to_owned()),
                None => (false, name),
            };
            if !is_host(&rest) {
                return Err(ConfigError::Invalid {
                    var,
                    reason: format!(
                        "{entry:?} is not a host name, an IP address or a wildcard like \
                         *.apps.example.com (one leading label), without a port"
                    ),
                });
            }
            if wild {
                hosts.wildcards.push(format!(".{rest}"));
            } else {
                hosts.exact.push(rest);
            }
        }
        Ok(hosts)
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcards.is_empty()
    }

    /// Whether a request's host, as sent (any case, a port, a trailing dot),
    /// is served. With no list, nothing is looked at (nor allocated).
    pub fn serves(&self, host: &str) -> bool {
        if self.is_empty() {
            return true;
        }
        let host = name_of(host);
        self.exact.contains(&host)
            || self.wildcards.iter().any(|suffix| {
                host.strip_suffix(suffix.as_str())
                    .is_some_and(|label| !label.is_empty() && !label.contains('.'))
            })
    }
}

/// A request's host without port or brackets, lower-case: what the list holds.
/// `www.example.com.` (fully qualified, as some clients send it) is the same
/// host, and maps to the same subject.
fn name_of(host: &str) -> String {
    crate::subject::bare_host(host)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

/// A name of letters, digits, `-` and `_` in labels none empty, or an IP
/// address; not a name with a port (requests are compared without theirs).
fn is_host(name: &str) -> bool {
    if name.contains(':') {
        return name.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        && name.split('.').all(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_one_label_wildcards_are_served() {
        let h = Hosts::parse(
            "INGRESS_HOSTS",
            " Example.com., *.Apps.local ,10.0.0.1,[::1]",
        )
        .unwrap();
        for (host, served) in [
            ("EXAMPLE.com:8443", true),
            ("example.com", true),
            ("www.example.com", false),
            ("a.apps.local", true),
            ("b-2.apps.local", true),
            ("apps.local", false),
            ("b.a.apps.local", false),
            (".apps.local", false),
            ("xapps.local", false),
            ("10.0.0.1", true),
            ("::1", true),
            ("other.com", false),
        ] {
            assert_eq!(h.serves(host), served, "{host}");
        }
        assert!(Hosts::parse("INGRESS_HOSTS", "")
            .unwrap()
            .serves("any.thing"));
    }

    #[test]
    fn host_names_lose_port_and_case() {
        assert_eq!(name_of("WWW.Example.com:443"), "www.example.com");
        assert_eq!(name_of("www.example.com.:443"), "www.example.com");
        assert_eq!(name_of("[::1]:80"), "::1");
        assert_eq!(name_of("::1"), "::1");
    }

    #[test]
    fn entries_that_cannot_be_hosts_are_named() {
        for bad in [
            "*",
            "*.",
            "a.*.b",
            "http://example.com",
            "a..b",
            "ex ample.com",
            "**.a",
        ] {
            let e = Hosts::parse("INGRESS_HOSTS", bad).unwrap_err().to_string();
            assert!(e.contains("INGRESS_HOSTS") && e.contains(bad), "{bad}: {e}");
        }
    }
}
