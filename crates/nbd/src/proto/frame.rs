//! [`DecodeError`], why a frame cannot be decoded, and reading big-endian fields.

use super::constants::MAX_OPTION_REPLY;

/// A frame that cannot be decoded at all: the connection cannot continue. The first variants
/// are what a server decodes from a client, the others what a client decodes from a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the fixed-size header needs.
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// The magic number is wrong: the stream is out of step or not NBD.
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    /// The option's data is longer than [`MAX_OPTION_LEN`](super::MAX_OPTION_LEN).
    #[error("option length {0} exceeds the limit")]
    OptionTooLong(u32),
    /// The client set flags it must not set.
    #[error("unknown client flags {0:#x}")]
    BadClientFlags(u32),

    // What a client decodes from a server.
    /// The greeting does not start with `NBDMAGIC`.
    #[error("not an NBD server (greeting magic {0:#x})")]
    NotNbd(u64),
    /// The greeting's second magic is not `IHAVEOPT`: an oldstyle server.
    #[error("the server speaks the old-style protocol (magic {0:#x}); only newstyle is supported")]
    OldStyle(u64),
    /// The server does not set `NBD_FLAG_FIXED_NEWSTYLE`.
    #[error("the server does not speak fixed newstyle")]
    NotFixedNewstyle,
    /// An option reply's magic is wrong.
    #[error("bad option reply magic {0:#x}")]
    BadOptionReplyMagic(u64),
    /// An option reply is longer than [`MAX_OPTION_REPLY`].
    #[error("option reply of {0} bytes exceeds {MAX_OPTION_REPLY}")]
    OptionReplyTooLong(u32),
    /// An `NBD_REP_INFO` reply has no room for its type.
    #[error("NBD_REP_INFO shorter than its type")]
    InfoTooShort,
    /// An `NBD_REP_INFO` item this client reads has the wrong length (`length` counts the type).
    #[error("NBD_REP_INFO type {info_type} has {length} bytes")]
    InfoLength { info_type: u16, length: usize },
    /// The reply to `NBD_OPT_EXPORT_NAME` is shorter than its size and flags.
    #[error("export name reply of {0} bytes")]
    ExportNameReplyTooShort(usize),
    /// A structured reply chunk where only simple replies were negotiated.
    #[error("a structured reply chunk, but structured replies were not negotiated")]
    UnexpectedStructuredReply,
    /// A reply's magic is neither the simple nor the structured reply magic.
    #[error("bad reply magic {0:#x}")]
    BadReplyMagic(u32),
    /// A reply chunk announces a payload longer than a client accepts.
    #[error("a reply chunk of {0} bytes exceeds the largest payload")]
    ChunkTooLong(u32),
    /// A reply chunk's payload does not have the layout of its type.
    #[error("malformed reply chunk of type {kind}: {what}")]
    MalformedChunk { kind: u16, what: &'static str },
}

pub(super) fn need(buf: &[u8], n: usize) -> Result<(), DecodeError> {
    if buf.len() < n {
        Err(DecodeError::Truncated {
            need: n,
            have: buf.len(),
        })
    } else {
        Ok(())
    }
}

pub(super) fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

pub(super) fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(super) fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
