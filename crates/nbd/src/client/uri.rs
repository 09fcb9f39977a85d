//! [`NbdUri`]: `nbd://host[:port]/export` and `nbds://host[:port]/export[?tls-certificates=DIR]`,
//! parsed and printed.

use std::fmt;
use std::str::FromStr;

use super::error::ClientError;
use crate::proto;

/// The NBD port when a URI names none.
pub const DEFAULT_PORT: u16 = 10809;

/// A parsed `nbd://host[:port]/export` URI (the NBD URI specification's TCP form), or
/// `nbds://` for TLS, with libnbd's `tls-certificates=DIR` query naming the client's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// A host name, an IPv4 address, or an IPv6 address without brackets.
    pub host: String,
    pub port: u16,
    /// The export name, percent-decoded; empty for the server's default export.
    pub export: String,
    /// `nbds://`: TLS is required.
    pub tls: bool,
    /// The directory of the client's credentials (`ca-cert.pem`, `client-cert.pem`,
    /// `client-key.pem`), percent-decoded.
    pub tls_certificates: Option<String>,
}

impl NbdUri {
    /// Parses `nbd://host[:port][/export]`. The export name may be percent-encoded; user
    /// information, queries, fragments and the other schemes (`nbds`, `nbd+unix`, ...) are
    /// refused with a message saying so.
    pub fn parse(uri: &str) -> Result<NbdUri, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidUri {
            uri: uri.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = uri
            .split_once("://")
            .ok_or_else(|| invalid("expected nbd://host[:port]/export"))?;
        let tls = if scheme.eq_ignore_ascii_case("nbd") {
            false
        } else if scheme.eq_ignore_ascii_case("nbds") {
            true
        } else {
            return Err(invalid(&format!(
                "scheme {scheme:?} is not supported (only nbd:// and nbds://, over TCP)"
            )));
        };
        if rest.contains('#') {
            return Err(invalid("fragments are not supported"));
        }
        let (rest, query) = match rest.split_once('?') {
            Some((rest, query)) => (rest, Some(query)),
            None => (rest, None),
        };
        let mut tls_certificates = None;
        for parameter in query.into_iter().flat_map(|query| query.split('&')) {
            match parameter.split_once('=') {
                Some(("tls-certificates", dir)) if tls => {
                    tls_certificates = Some(percent_decode(dir).map_err(invalid)?);
                }
                Some(("tls-certificates", _)) => {
                    return Err(invalid("tls-certificates is for nbds:// URIs"));
                }
                _ => {
                    return Err(invalid(&format!(
                        "query parameter {parameter:?} is not supported (only tls-certificates)"
                    )))
                }
            }
        }
        let (authority, path) = match rest.split_once('/') {
            Some((authority, path)) => (authority, path),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(invalid("user information is not supported"));
        }
        let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| invalid("an IPv6 address is missing its closing ']'"))?;
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| invalid("expected ':port' after the IPv6 address"))?,
                ),
            };
            (host, port)
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(invalid("the host is missing"));
        }
        let port = match port {
            None | Some("") => DEFAULT_PORT,
            Some(port) => match port.parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(invalid(&format!("port {port:?} is not a port number"))),
            },
        };
        let export = percent_decode(path).map_err(invalid)?;
        proto::decode_string(export.as_bytes())
            .map_err(|reason| invalid(&format!("export name: {reason}")))?;
        Ok(NbdUri {
            host: host.to_string(),
            port,
            export,
            tls,
            tls_certificates,
        })
    }

    /// `host:port`, with brackets around an IPv6 address, as `TcpStream::connect` takes it.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl FromStr for NbdUri {
    type Err = ClientError;

    fn from_str(uri: &str) -> Result<Self, Self::Err> {
        NbdUri::parse(uri)
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "nbds" } else { "nbd" };
        write!(f, "{scheme}://{}/", self.address())?;
        let encode = |f: &mut fmt::Formatter<'_>, text: &str, keep: &[u8]| -> fmt::Result {
            for byte in text.bytes() {
                if byte.is_ascii_alphanumeric() || keep.contains(&byte) {
                    write!(f, "{}", byte as char)?;
                } else {
                    write!(f, "%{byte:02X}")?;
                }
            }
            Ok(())
        };
        encode(f, &self.export, b"-._~!$&'()*+,;=:@/")?;
        if let Some(dir) = &self.tls_certificates {
            write!(f, "?tls-certificates=")?;
            encode(f, dir, b"-._~/")?;
        }
        Ok(())
    }
}

fn percent_decode(text: &str) -> Result<String, &'static str> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or("a '%' in the export name is not followed by two hex digits")?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the export name is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_parse() {
        let uri = NbdUri::parse("nbd://127.0.0.1:10900/vol1").unwrap();
        assert_eq!(
            uri,
            NbdUri {
                host: "127.0.0.1".into(),
                port: 10900,
                export: "vol1".into(),
                tls: false,
                tls_certificates: None,
            }
        );
        assert_eq!(uri.address(), "127.0.0.1:10900");
        assert_eq!(uri.to_string(), "nbd://127.0.0.1:10900/vol1");

        let uri = NbdUri::parse("NBD://example.com").unwrap();
        assert_eq!((uri.port, uri.export.as_str()), (DEFAULT_PORT, ""));
        let uri = NbdUri::parse("nbd://[::1]:99/a%20b/c").unwrap();
        assert_eq!(uri.host, "::1");
        assert_eq!(uri.export, "a b/c");
        assert_eq!(uri.address(), "[::1]:99");
        assert_eq!(uri.to_string(), "nbd://[::1]:99/a%20b/c");
        assert_eq!("nbd://h:1/x".parse::<NbdUri>().unwrap().export, "x");
        let uri =
            NbdUri::parse("nbds://127.0.0.1:7/vol?tls-certificates=/tmp/a%20b/c.nbd").unwrap();
        assert!(uri.tls);
        assert_eq!(uri.tls_certificates.as_deref(), Some("/tmp/a b/c.nbd"));
        assert_eq!(
            uri.to_string(),
            "nbds://127.0.0.1:7/vol?tls-certificates=/tmp/a%20b/c.nbd"
        );

        for (bad, says) in [
            ("127.0.0.1:10809/x", "expected nbd://"),
            ("nbd+unix:///x?socket=/s", "scheme"),
            ("nbd://h/x?tls=on", "not supported"),
            ("nbd://h/x?tls-certificates=/d", "for nbds://"),
            ("nbd://h/x#f", "fragments"),
            ("nbd://u@h/x", "user information"),
            ("nbd:///x", "host is missing"),
            ("nbd://h:0/x", "port \"0\""),
            ("nbd://h:99999/x", "port"),
            ("nbd://[::1/x", "closing ']'"),
            ("nbd://h/%zz", "two hex digits"),
            ("nbd://h/%ff", "not UTF-8"),
            ("nbd://h/a%00", "NUL"),
        ] {
            let error = NbdUri::parse(bad).unwrap_err().to_string();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }
}
