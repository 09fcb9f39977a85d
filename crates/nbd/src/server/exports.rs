//! [`Exports`]: the server's registry of exports, by name. Exports are added and removed while
//! the server runs; removing one tells its open connections to finish and close.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use tandem_block::{BlockDevice, InvalidExportInfo};
use tokio::sync::watch;

use crate::proto;

/// Why an export could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServerError {
    /// An export of that name is already served.
    #[error("export {0:?} already exists")]
    ExportExists(String),
    /// The name is not a valid NBD string (at most 4096 bytes of UTF-8 without NUL).
    #[error("invalid export name: {0}")]
    InvalidName(&'static str),
    /// The device's [`tandem_block::ExportInfo`] breaks the protocol's block size rules.
    #[error(transparent)]
    InvalidExport(#[from] InvalidExportInfo),
}

struct Export<D> {
    device: Arc<D>,
    /// Set (then dropped) when the export is removed: its connections finish their in-flight
    /// requests and close.
    closed: watch::Sender<bool>,
    /// Set when the export is aborted: its connections close at once, in-flight requests
    /// unanswered.
    aborted: watch::Sender<bool>,
}

/// What a connection opening an export takes from it.
pub(super) struct Lookup<D> {
    pub device: Arc<D>,
    pub closed: watch::Receiver<bool>,
    pub aborted: watch::Receiver<bool>,
}

/// The exports of a server, each a device and the signal that closes its connections.
pub(super) struct Exports<D> {
    by_name: RwLock<BTreeMap<String, Export<D>>>,
}

impl<D: BlockDevice> Exports<D> {
    pub fn new() -> Self {
        Exports {
            by_name: RwLock::new(BTreeMap::new()),
        }
    }

    /// Adds `device` as export `name`, after checking the name and the device's shape.
    pub fn add(&self, name: String, device: Arc<D>) -> Result<(), ServerError> {
        proto::decode_string(name.as_bytes()).map_err(ServerError::InvalidName)?;
        device.info().validate()?;
        let mut exports = self.by_name.write().unwrap_or_else(PoisonError::into_inner);
        if exports.contains_key(&name) {
            return Err(ServerError::ExportExists(name));
        }
        let (closed, _) = watch::channel(false);
        let (aborted, _) = watch::channel(false);
        tracing::info!(export = %name, "export added");
        exports.insert(
            name,
            Export {
                device,
                closed,
                aborted,
            },
        );
        Ok(())
    }

    /// Removes export `name` and signals its connections to close. Returns the device.
    pub fn remove(&self, name: &str) -> Option<Arc<D>> {
        let removed = self
            .by_name
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        removed.map(|export| {
            tracing::info!(export = %name, "export removed");
            export.closed.send_replace(true);
            export.device
        })
    }

    /// Removes export `name` if `remove` says its device is to go (see [`Exports::remove`]);
    /// with `abort`, its connections close at once without answering what is in flight.
    pub fn remove_if(
        &self,
        name: &str,
        remove: impl FnOnce(&Arc<D>) -> bool,
        abort: bool,
    ) -> Option<Arc<D>> {
        let removed = {
            let mut exports = self.by_name.write().unwrap_or_else(PoisonError::into_inner);
            match exports.get(name) {
                Some(export) if remove(&export.device) => exports.remove(name),
                _ => None,
            }
        };
        removed.map(|export| {
            tracing::info!(export = %name, abort, "export removed");
            if abort {
                export.aborted.send_replace(true);
            }
            export.closed.send_replace(true);
            export.device
        })
    }

    /// The device served as `name`.
    pub fn device(&self, name: &str) -> Option<Arc<D>> {
        let exports = self.by_name.read().unwrap_or_else(PoisonError::into_inner);
        exports.get(name).map(|e| Arc::clone(&e.device))
    }

    /// The names of the exports, sorted.
    pub fn names(&self) -> Vec<String> {
        let exports = self.by_name.read().unwrap_or_else(PoisonError::into_inner);
        exports.keys().cloned().collect()
    }

    /// The device and the close and abort signals of export `name`.
    pub fn lookup(&self, name: &str) -> Option<Lookup<D>> {
        let exports = self.by_name.read().unwrap_or_else(PoisonError::into_inner);
        exports.get(name).map(|e| Lookup {
            device: Arc::clone(&e.device),
            closed: e.closed.subscribe(),
            aborted: e.aborted.subscribe(),
        })
    }

    /// Every export, sorted by name.
    pub fn list(&self) -> Vec<(String, Arc<D>)> {
        let exports = self.by_name.read().unwrap_or_else(PoisonError::into_inner);
        exports
            .iter()
            .map(|(n, e)| (n.clone(), Arc::clone(&e.device)))
            .collect()
    }
}
