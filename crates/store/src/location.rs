//! Where the store lives, written as one string: `redb:PATH` or a bare path for a `RedbStore`
//! file, `etcd://HOST:PORT[,HOST:PORT...][/PREFIX]` for an `EtcdStore`; [`open`] opens either.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::{RedbStore, Store, StoreError};

/// The key prefix of an etcd location that names none.
pub const ETCD_PREFIX_DEFAULT: &str = "/tandem";

const USAGE: &str = "expected redb:PATH, a path, or etcd://HOST:PORT[,HOST:PORT...][/PREFIX]";

/// A parsed store location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A redb file.
    Redb(PathBuf),
    /// An etcd cluster: its members' `host:port` and the key prefix (no trailing slash).
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("store location {location:?}: {reason} ({USAGE})")]
    BadLocation { location: String, reason: String },
    #[error("store location {0}: this build of Tandem has no etcd support (feature `etcd`)")]
    EtcdNotBuilt(String),
    // The reason is the source, which error reports print after this.
    #[error("open the store at {location}")]
    Store {
        location: String,
        #[source]
        source: StoreError,
    },
}

impl Location {
    pub fn parse(text: &str) -> Result<Location, OpenError> {
        let bad = |reason: &str| OpenError::BadLocation {
            location: text.to_string(),
            reason: reason.to_string(),
        };
        if text.trim().is_empty() {
            return Err(bad("it is empty"));
        }
        if text.trim() != text {
            return Err(bad("it has spaces around it"));
        }
        if let Some(rest) = text.strip_prefix("etcd://") {
            return parse_etcd(rest, bad);
        }
        if let Some(path) = text.strip_prefix("redb:") {
            if path.is_empty() {
                return Err(bad("redb: names no file"));
            }
            return Ok(Location::Redb(PathBuf::from(path)));
        }
        if text.starts_with("etcd:") {
            return Err(bad("an etcd location starts with etcd://"));
        }
        if let Some((scheme, _)) = text.split_once("://") {
            return Err(bad(&format!("unknown kind of store {scheme:?}")));
        }
        Ok(Location::Redb(PathBuf::from(text)))
    }

    /// Opens the store: a redb file (created if missing), or a connection to etcd checked with
    /// one read.
    pub fn open(&self) -> Result<Arc<dyn Store>, OpenError> {
        let failed = |source| OpenError::Store {
            location: self.to_string(),
            source,
        };
        match self {
            Location::Redb(path) => Ok(Arc::new(RedbStore::open(path).map_err(failed)?)),
            #[cfg(feature = "etcd")]
            Location::Etcd { .. } => self.open_with(None),
            #[cfg(not(feature = "etcd"))]
            Location::Etcd { .. } => Err(OpenError::EtcdNotBuilt(self.to_string())),
        }
    }
}

#[cfg(feature = "etcd")]
impl Location {
    /// [`Location::open`], reaching etcd over TLS with `tls` if given (a redb file ignores it).
    pub fn open_with(&self, tls: Option<&crate::EtcdTls>) -> Result<Arc<dyn Store>, OpenError> {
        let Location::Etcd { endpoints, prefix } = self else {
            return self.open();
        };
        let options = crate::EtcdOptions::new(endpoints.clone(), prefix).with_tls(tls.cloned());
        let store = crate::EtcdStore::open(options).map_err(|source| OpenError::Store {
            location: self.to_string(),
            source,
        })?;
        Ok(Arc::new(store))
    }
}

/// Parses and opens a store location in one step.
pub fn open(location: &str) -> Result<Arc<dyn Store>, OpenError> {
    Location::parse(location)?.open()
}

/// The part after `etcd://`; `bad` makes the error from a reason.
fn parse_etcd(rest: &str, bad: impl Fn(&str) -> OpenError) -> Result<Location, OpenError> {
    let (members, prefix) = match rest.find('/') {
        Some(slash) => (&rest[..slash], rest[slash..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if members.is_empty() {
        return Err(bad("it names no etcd member"));
    }
    let mut endpoints = Vec::new();
    for member in members.split(',') {
        let (host, port) = member
            .rsplit_once(':')
            .ok_or_else(|| bad(&format!("member {member:?} has no port (HOST:PORT)")))?;
        if host.is_empty() {
            return Err(bad(&format!("member {member:?} has no host")));
        }
        if host
            .chars()
            .any(|c| c.is_whitespace() || "/?#@".contains(c))
        {
            return Err(bad(&format!(
                "member {member:?}: {host:?} is not a host name"
            )));
        }
        match port.parse::<u16>() {
            Ok(port) if port > 0 => {}
            _ => return Err(bad(&format!("member {member:?}: {port:?} is not a port"))),
        }
        endpoints.push(member.to_string());
    }
    if prefix.split('/').skip(1).any(str::is_empty) {
        return Err(bad(&format!("the key prefix {prefix:?} has an empty part")));
    }
    let prefix = if prefix.is_empty() {
        ETCD_PREFIX_DEFAULT.to_string()
    } else {
        prefix.to_string()
    };
    Ok(Location::Etcd { endpoints, prefix })
}

impl FromStr for Location {
    type Err = OpenError;

    fn from_str(text: &str) -> Result<Location, OpenError> {
        Location::parse(text)
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Redb(path) => write!(f, "redb:{}", path.display()),
            Location::Etcd { endpoints, prefix } => {
                write!(f, "etcd://{}{prefix}", endpoints.join(","))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(endpoints: &[&str], prefix: &str) -> Location {
        Location::Etcd {
            endpoints: endpoints.iter().map(|e| e.to_string()).collect(),
            prefix: prefix.to_string(),
        }
    }

    #[test]
    fn given_good_locations_when_parsed_then_each_names_its_store() {
        let cases = [
            (
                "redb:/var/lib/tandem/store.redb",
                Location::Redb("/var/lib/tandem/store.redb".into()),
            ),
            ("data/store.redb", Location::Redb("data/store.redb".into())),
            (
                "etcd://127.0.0.1:2379",
                etcd(&["127.0.0.1:2379"], "/tandem"),
            ),
            (
                "etcd://127.0.0.1:2379/",
                etcd(&["127.0.0.1:2379"], "/tandem"),
            ),
            (
                "etcd://a:1,b:2,[::1]:3/clusters/one/",
                etcd(&["a:1", "b:2", "[::1]:3"], "/clusters/one"),
            ),
        ];
        for (text, expected) in cases {
            let parsed = Location::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(parsed, expected, "{text}");
            assert_eq!(
                Location::parse(&parsed.to_string()).unwrap(),
                parsed,
                "round trip"
            );
        }
    }

    #[test]
    fn given_bad_locations_when_parsed_then_the_error_says_what_is_wrong() {
        let cases = [
            ("", "empty"),
            (" store.redb", "spaces"),
            ("redb:", "names no file"),
            ("etcd:127.0.0.1:2379", "etcd://"),
            ("http://127.0.0.1:2379", "unknown kind of store \"http\""),
            ("etcd://", "no etcd member"),
            ("etcd:///tandem", "no etcd member"),
            ("etcd://127.0.0.1", "has no port"),
            ("etcd://127.0.0.1:0", "is not a port"),
            ("etcd://127.0.0.1:http", "is not a port"),
            ("etcd://a:1,,b:2", "has no port"),
            ("etcd://:2379", "has no host"),
            ("etcd://user@h:2379", "not a host name"),
            ("etcd://h:2379/a//b", "empty part"),
        ];
        for (text, expected) in cases {
            let error = Location::parse(text).expect_err(text).to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
            assert!(
                error.contains("etcd://HOST:PORT"),
                "{text:?} shows the forms: {error}"
            );
        }
    }

    #[test]
    fn given_a_redb_location_when_opened_then_it_is_a_working_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        let store = open(&format!("redb:{}", path.display())).unwrap();
        assert_eq!(store.current_version().unwrap(), 0);
        assert!(path.exists());
    }
}
