//! The NBD wire protocol: constants, and pure encoders and decoders over byte slices, for both
//! sides: what the server decodes and encodes sits next to what the client encodes and decodes.
//!
//! Nothing here does I/O, so every function can be unit tested and fuzzed. The layouts follow
//! the NetworkBlockDevice `doc/proto.md`; all integers are big-endian.
//!
//! ```text
//! server greeting   NBDMAGIC u64 | IHAVEOPT u64 | handshake flags u16
//! client flags      u32
//! option            IHAVEOPT u64 | option u32 | length u32 | data[length]
//! option reply      REPLY_MAGIC u64 | option u32 | reply type u32 | length u32 | data[length]
//! request (28 B)    REQUEST_MAGIC u32 | flags u16 | type u16 | handle u64 | offset u64 | length u32
//!                   (+ length bytes of data for NBD_CMD_WRITE)
//! simple reply      SIMPLE_REPLY_MAGIC u32 | error u32 | handle u64 (+ data for a good READ)
//! reply chunk       STRUCTURED_REPLY_MAGIC u32 | flags u16 | type u16 | handle u64 | length u32
//!                   | payload[length]
//! ```
//!
//! Everything is re-exported here (`proto::decode_option`, `proto::CMD_READ`...); the modules
//! only order the code, each using those listed before it:
//!
//! - `constants`: every number of the specification this crate uses, and its limits;
//! - `frame`: [`DecodeError`] and reading big-endian fields;
//! - `values`: the protocol's values for `tandem-block`'s types (error values, extent status
//!   flags, the advertised maximum block size) and the names of error values;
//! - `handshake`: the greeting, client flags, options and option replies;
//! - `transmission`: request headers and their validation, simple replies and reply chunks;
//! - `reply`: what a client decodes of replies once structured replies were negotiated.

mod constants;
mod frame;
mod handshake;
mod reply;
mod transmission;
mod values;

pub use constants::*;
pub use frame::DecodeError;
pub use handshake::{
    decode_client_flags, decode_export_name_reply, decode_greeting, decode_info, decode_option,
    decode_option_header, decode_option_reply_header, decode_string, encode_export_name_reply,
    encode_greeting, encode_option_reply, encode_rep_info, encode_rep_meta_context,
    encode_rep_server, BlockSizes, ClientFlags, ClientOption, Info, InfoItem, InfoRequest,
    MetaContextRequest, OptionError, OptionHeader, OptionReplyHeader,
};
pub use reply::{
    decode_chunk, decode_chunk_length, decode_reply_header, Chunk, ReplyHeader, MAX_CHUNK_PAYLOAD,
};
pub use transmission::{
    block_status_descriptors, decode_request_header, decode_simple_reply, encode_block_status,
    encode_chunk_header, encode_error_chunk, encode_none_chunk, encode_offset_data_header,
    encode_offset_hole, encode_simple_reply, validate_request, Command, Rejection, RequestHeader,
    SimpleReply, TransmissionParams,
};
pub use values::{
    effective_max_block, errno_name, error_value, extent_status, io_error, rep_error_name,
};
