//! The pool directory: which pool it belongs to (`pool.json`), how full it is, and when it turns
//! read-only.
//!
//! Layout:
//!
//! ```text
//! <pool_dir>/pool.json                 the CSPI that owns the directory (written once, atomically)
//! <pool_dir>/replicas/<volume>/data    a replica's data (sparse, the volume's size)
//! <pool_dir>/replicas/<volume>/meta    a replica's metadata (see `storage`)
//! <pool_dir>/replicas/.creating-*/     a creation in progress (or interrupted)
//! <pool_dir>/replicas/.deleting-*/     a removal in progress (or interrupted)
//! ```

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::storage::{allocated_bytes, write_file_atomic};

pub const POOL_FILE: &str = "pool.json";
pub const REPLICAS_DIR: &str = "replicas";

/// cStor's operator sets 85 when `roThresholdLimit` is absent.
pub const RO_THRESHOLD_DEFAULT: u32 = 85;

/// What `pool.json` says: the CStorPoolInstance the directory was created for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolRecord {
    /// The CSPI's name.
    pub cspi: String,
    /// The CSPI's uid: the pool's identity (a CSPI deleted and made again is another pool).
    pub uid: String,
    /// The CStorPoolCluster it belongs to.
    #[serde(default)]
    pub cspc: String,
    /// The capacity the agent was given, in bytes.
    pub capacity: u64,
}

/// The outcome of [`claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// The directory was empty of a pool and now belongs to this CSPI.
    Created,
    /// It already belonged to this CSPI; the record was brought up to date (name, capacity).
    Updated,
    /// It already belonged to this CSPI, unchanged.
    Unchanged,
}

/// Why a directory cannot be this CSPI's pool.
#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error(
        "pool directory {dir} already holds pool {other} (uid {other_uid}{cluster}); refusing to \
         mix the replicas of two pools",
        dir = dir.display(),
        other = other.cspi,
        other_uid = other.uid,
        cluster = if other.cspc.is_empty() { String::new() } else { format!(", cluster {}", other.cspc) }
    )]
    OtherPool { dir: PathBuf, other: PoolRecord },
    #[error("pool directory {dir}: {file} is unreadable ({detail}); refusing to take the directory over", dir = dir.display(), file = file.display())]
    Unreadable {
        dir: PathBuf,
        file: PathBuf,
        detail: String,
    },
    #[error("pool directory {dir}: {source}", dir = dir.display())]
    Io { dir: PathBuf, source: io::Error },
}

/// Makes `dir` the pool of `wanted` ("creates the pool"): writes `pool.json` and `replicas/` if
/// the directory has no pool yet, and refuses if it belongs to another CSPI uid or its
/// `pool.json` cannot be read (it is never overwritten then).
pub fn claim(dir: &Path, wanted: &PoolRecord) -> Result<Claim, ClaimError> {
    let io_error = |source| ClaimError::Io {
        dir: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_error)?;
    let file = dir.join(POOL_FILE);
    let claim = match fs::read(&file) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Claim::Created,
        Err(error) => {
            return Err(ClaimError::Unreadable {
                dir: dir.to_path_buf(),
                file,
                detail: error.to_string(),
            })
        }
        Ok(bytes) => {
            let existing: PoolRecord =
                serde_json::from_slice(&bytes).map_err(|error| ClaimError::Unreadable {
                    dir: dir.to_path_buf(),
                    file: file.clone(),
                    detail: error.to_string(),
                })?;
            if existing.uid != wanted.uid {
                return Err(ClaimError::OtherPool {
                    dir: dir.to_path_buf(),
                    other: existing,
                });
            }
            if existing == *wanted {
                Claim::Unchanged
            } else {
                Claim::Updated
            }
        }
    };
    fs::create_dir_all(dir.join(REPLICAS_DIR)).map_err(io_error)?;
    if claim != Claim::Unchanged {
        let mut json =
            serde_json::to_vec_pretty(wanted).map_err(|error| io_error(io::Error::other(error)))?;
        json.push(b'\n');
        write_file_atomic(dir, POOL_FILE, &json).map_err(io_error)?;
    }
    Ok(claim)
}

/// The read-only decision, as cStor's `updateROMode`: the pool is read-only when
/// `used*100/total >= limit` (integer percent), unless the limit is 100 (never). A pool of no
/// capacity counts as full.
pub fn read_only(used: u64, total: u64, limit: u32) -> bool {
    limit != 100 && used_percent(used, total) >= u128::from(limit)
}

/// `used*100/total`, rounded down; 100 when there is no capacity.
pub fn used_percent(used: u64, total: u64) -> u128 {
    if total == 0 {
        return 100;
    }
    u128::from(used) * 100 / u128::from(total)
}

/// The pool's used space: the real allocation of everything under its directory.
pub fn measure(dir: &Path) -> io::Result<u64> {
    allocated_bytes(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str, uid: &str, capacity: u64) -> PoolRecord {
        PoolRecord {
            cspi: name.to_string(),
            uid: uid.to_string(),
            cspc: "cspc-a".to_string(),
            capacity,
        }
    }

    #[test]
    fn read_only_threshold_boundaries() {
        let total = 100 << 30;
        let percent = |p: u64| total / 100 * p;
        assert!(!read_only(percent(84), total, 85));
        assert!(!read_only(percent(85) - 1, total, 85));
        assert!(read_only(percent(85), total, 85));
        assert!(read_only(percent(86), total, 85));
        // 100 means never, even when full or over.
        assert!(!read_only(total, total, 100));
        assert!(!read_only(total * 2, total, 100));
        assert!(read_only(total, total, 99));
        // Other limits, and the integer percent rounding down (84.99% is 84%).
        assert!(!read_only(8499, 10_000, 85));
        assert!(read_only(8500, 10_000, 85));
        assert!(read_only(0, total, 0));
        assert!(!read_only(0, total, 1));
        assert!(read_only(0, 0, 85));
        assert!(read_only(u64::MAX, u64::MAX, 85), "no overflow");
        assert_eq!(used_percent(u64::MAX / 2, u64::MAX), 49);
    }

    #[test]
    fn claim_creates_then_keeps_then_updates() {
        let dir = tempfile::tempdir().unwrap();
        let pool = dir.path().join("pool");
        let mine = record("cspc-a-abcd", "uid-1", 10 << 30);
        assert_eq!(claim(&pool, &mine).unwrap(), Claim::Created);
        assert!(pool.join(REPLICAS_DIR).is_dir());
        let written: PoolRecord =
            serde_json::from_slice(&fs::read(pool.join(POOL_FILE)).unwrap()).unwrap();
        assert_eq!(written, mine);
        assert_eq!(claim(&pool, &mine).unwrap(), Claim::Unchanged);
        let bigger = record("cspc-a-abcd", "uid-1", 20 << 30);
        assert_eq!(claim(&pool, &bigger).unwrap(), Claim::Updated);
        let written: PoolRecord =
            serde_json::from_slice(&fs::read(pool.join(POOL_FILE)).unwrap()).unwrap();
        assert_eq!(written.capacity, 20 << 30);
    }

    #[test]
    fn claim_refuses_another_pools_directory() {
        let dir = tempfile::tempdir().unwrap();
        let theirs = record("cspc-a-abcd", "uid-1", 10 << 30);
        claim(dir.path(), &theirs).unwrap();
        let before = fs::read(dir.path().join(POOL_FILE)).unwrap();
        let mine = record("cspc-b-wxyz", "uid-2", 10 << 30);
        let error = claim(dir.path(), &mine).unwrap_err();
        assert!(matches!(error, ClaimError::OtherPool { .. }));
        assert_eq!(
            error.to_string(),
            format!(
                "pool directory {} already holds pool cspc-a-abcd (uid uid-1, cluster cspc-a); \
                 refusing to mix the replicas of two pools",
                dir.path().display()
            )
        );
        assert_eq!(fs::read(dir.path().join(POOL_FILE)).unwrap(), before);
    }

    #[test]
    fn claim_refuses_an_unreadable_record_and_leaves_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(POOL_FILE), b"{ not json").unwrap();
        let error = claim(dir.path(), &record("p", "uid-1", 1)).unwrap_err();
        assert!(matches!(error, ClaimError::Unreadable { .. }), "{error}");
        assert!(
            error.to_string().contains("pool.json is unreadable"),
            "{error}"
        );
        assert_eq!(fs::read(dir.path().join(POOL_FILE)).unwrap(), b"{ not json");
        assert!(!dir.path().join(REPLICAS_DIR).exists());
    }

    #[test]
    fn measurement_counts_real_allocation() {
        let dir = tempfile::tempdir().unwrap();
        claim(dir.path(), &record("p", "uid-1", 1 << 30)).unwrap();
        let before = measure(dir.path()).unwrap();
        let file = fs::File::create(dir.path().join(REPLICAS_DIR).join("sparse")).unwrap();
        file.set_len(1 << 30).unwrap();
        drop(file);
        let sparse = measure(dir.path()).unwrap();
        assert!(sparse < before + (64 << 10), "{before} -> {sparse}");
        fs::write(
            dir.path().join(REPLICAS_DIR).join("real"),
            vec![7u8; 4 << 20],
        )
        .unwrap();
        let after = measure(dir.path()).unwrap();
        assert!(after >= sparse + (4 << 20), "{sparse} -> {after}");
    }
}
