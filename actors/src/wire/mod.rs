//! The MySQL client/server protocol, as far as a router and its health check speak it: packet
//! framing, the login exchange, the OK/ERR/EOF packets and the protocol's named numbers.
//!
//! One implementation for the health probe (which reads a greeting and signs off with a login)
//! and for the service's MySQL proxy (which relays, tracks and rewrites packets), so the two
//! cannot drift apart. Hand-rolled rather than `mysql_common`: a proxy forwards packets byte for
//! byte and reads only a handful of fixed-position fields, often from one physical packet of a
//! longer logical one; whole-packet client-side parsing (and its dependency tree) would cost
//! copies on the relay path for nothing.

mod constants;
mod fields;
mod frame;
pub mod handshake;
mod packets;
mod pool;
mod track;

pub use constants::{caps, charset, cmd, code, marker, sqlstate, status, track as track_kind};
pub use fields::{
    get_arr, get_cstr, get_cstr_strict, get_lenenc, get_lenenc_str, get_u16, get_u32, put_lenenc,
    put_lenenc_str, LENENC_NULL,
};
pub use frame::{flush, put_packet, Frame, PacketError, PacketReader, HEADER, MAX_PAYLOAD};
pub use handshake::{
    is_ssl_request, parse_auth_switch, parse_password_hash, server_version, ssl_request, Greeting,
    HandshakeError, NativeSecret, Response, NATIVE_PASSWORD, SCRAMBLE_LEN,
};
pub use packets::{
    eof_payload, err_payload, is_terminator, more_results, ok_payload, parse_err, parse_ok,
    terminator_status, ErrInfo, OkInfo,
};
pub use pool::{buffers_held, OutBuf};
pub use track::{
    clear_eof_state_flag, eof_status, has_session_state, session_state, state_changes,
    strip_session_state, StateChange, StateChanges,
};
