//! The PostgreSQL v3 wire codec of the gateway, without copies.
//!
//! Three decoders cut frames off the front of a [`BytesMut`] read buffer:
//! [`decode_startup`] for the first packet of a connection (no type byte),
//! [`decode_frontend`] for what a client sends afterwards, and
//! [`decode_backend`] for what the server sends. Each returns `Ok(None)`
//! while the frame is incomplete and consumes nothing; on success it
//! consumes exactly one frame. Decoded text and values are [`Bytes`] slices
//! of the frame: nothing is copied, and the frame itself is kept so that a
//! message can be forwarded untouched.
//!
//! The session reads in place instead, with the same checks:
//! [`view_frontend`] and [`view_backend`] read the frame at the front of a
//! byte slice and borrow it ([`FrontendFrame`], [`BackendView`]); the
//! caller moves past it once done. No reference count is touched per frame;
//! what must outlive the buffer is copied
//! ([`BackendFrame::to_owned_frame`]).
//!
//! Everything read from the network is treated as hostile:
//!
//! - the length word is checked as soon as the header is there, before any
//!   body is buffered: below its minimum is [`CodecError::BadLength`], above
//!   the caller's limit is [`CodecError::TooLarge`]; startup packets are also
//!   capped at [`MAX_STARTUP_PACKET_BYTES`], like PostgreSQL does, so bytes
//!   of another protocol (`GET / HTTP/1.1`) fail at once;
//! - an unknown frontend or backend type byte fails at the first byte;
//! - bodies are validated strictly: NUL-terminated strings, counts checked
//!   against the bytes actually present before anything is allocated for
//!   them, no trailing bytes, names and SQL text in UTF-8;
//! - no decoder panics or reserves memory on the strength of a claimed
//!   length.
//!
//! Limits: the `max` of the decoders bounds the length word (which counts
//! itself and the body but not the type byte), as PostgreSQL's own limits
//! do. Counts are read as unsigned 16-bit integers, as PostgreSQL reads
//! them (libpq sends up to 65535 parameters). Errors carry the message type
//! as a `char`; startup packets, which have none, use [`STARTUP_KIND`].
//!
//! Backend frames are only framed by [`decode_backend`] and
//! [`view_backend`]; the `parse_*` functions and [`data_row_values`] read
//! the bodies the gateway looks at. Server text is expected in UTF-8 (the gateway should ask the server for
//! `client_encoding=UTF8`), except in error and notice fields, which are
//! converted lossily (see [`parse_fields`]).
//!
//! Encoders append to a [`BytesMut`]: the backend messages the gateway
//! makes up for its clients, and [`cancel_request`] for a cancel key of any
//! length. Other frontend messages sent upstream are built with
//! [`postgres_protocol::message::frontend`]. Encoders that take text or
//! variable data return a [`CodecError`] rather than write an invalid frame
//! (NUL byte inside a string, count or size that does not fit), and leave
//! the buffer as it was.

pub mod copy;

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;
use std::str::Utf8Error;

use bytes::{BufMut, Bytes, BytesMut};

/// The default limit of [`decode_frontend`] and [`decode_backend`]: 64 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The largest startup packet accepted, whatever the caller's limit
/// (PostgreSQL's `MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET_BYTES: usize = 10_000;

/// The `kind` reported in errors about startup-phase packets, which have no
/// type byte.
pub const STARTUP_KIND: char = '\0';

/// The request code of an SSLRequest.
pub const SSL_REQUEST_CODE: u32 = 80_877_103;

/// The request code of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: u32 = 80_877_104;

/// The request code of a CancelRequest.
pub const CANCEL_REQUEST_CODE: u32 = 80_877_102;

/// Protocol version 3.0, as sent in a StartupMessage (`3 << 16`).
pub const PROTOCOL_3_0: u32 = 3 << 16;

/// The newest minor version of protocol 3 this codec knows (3.2).
pub const NEWEST_MINOR_VERSION: u32 = 2;

/// The longest cancel key (protocol 3.2); protocol 3.0 keys are 4 bytes.
pub const MAX_CANCEL_KEY_BYTES: usize = 256;

/// Why bytes could not be decoded, or a message could not be encoded.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum CodecError {
    /// A message longer than the configured maximum. `len` is the length
    /// word (body plus the 4 bytes of the word itself).
    #[error("{} of {len} bytes exceeds the limit of {max} bytes", kind_name(.kind))]
    TooLarge {
        /// The message type ([`STARTUP_KIND`] for startup packets).
        kind: char,
        /// The length claimed or needed.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// A length word below the minimum (4) or otherwise impossible.
    #[error("{} has an impossible length word ({len})", kind_name(.kind))]
    BadLength {
        /// The message type ([`STARTUP_KIND`] for startup packets).
        kind: char,
        /// The length word as received.
        len: i64,
    },
    /// A body that does not match its message type.
    #[error("malformed {}: {what}", kind_name(.kind))]
    Malformed {
        /// The message type ([`STARTUP_KIND`] for startup packets).
        kind: char,
        /// What is wrong.
        what: &'static str,
    },
    /// Text that must be UTF-8 is not.
    #[error("{}: {field} is not valid UTF-8", kind_name(.kind))]
    InvalidUtf8 {
        /// The message type ([`STARTUP_KIND`] for startup packets).
        kind: char,
        /// The field holding the text.
        field: &'static str,
    },
    /// A startup packet with an unknown request code or protocol version.
    #[error("unsupported protocol version or request code {}.{} ({code})", code >> 16, code & 0xffff)]
    UnsupportedProtocol {
        /// The code as received (`major << 16 | minor`).
        code: u32,
    },
}

/// How errors name a message type.
struct KindName(char);

impl fmt::Display for KindName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            STARTUP_KIND => f.write_str("startup packet"),
            c if c.is_ascii_graphic() => write!(f, "message '{c}'"),
            c => write!(f, "message 0x{:02x}", u32::from(c)),
        }
    }
}

fn kind_name(kind: &char) -> KindName {
    KindName(*kind)
}

type Result<T, E = CodecError> = std::result::Result<T, E>;

fn malformed(kind: char, what: &'static str) -> CodecError {
    CodecError::Malformed { kind, what }
}

// ---------------------------------------------------------------------------
// Str

/// UTF-8 text held in a shared buffer (no copy). Checked once at decode time.
///
/// The workspace forbids `unsafe`, so [`Str::as_str`] (and `Deref`) check
/// the bytes again on each call, in O(n) and without failing (the fallback,
/// `""`, cannot be reached). Callers that look at long text (SQL) take the
/// `&str` once and keep it.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Str(Bytes);

impl Str {
    /// The text, if `bytes` is UTF-8.
    pub fn from_utf8(bytes: Bytes) -> Result<Str, Utf8Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Str(bytes))
    }

    /// The text, with invalid sequences replaced by U+FFFD (a copy is made
    /// only then).
    pub fn from_utf8_lossy(bytes: Bytes) -> Str {
        match String::from_utf8_lossy(&bytes) {
            Cow::Borrowed(_) => Str(bytes),
            Cow::Owned(text) => Str::from(text),
        }
    }

    /// A static string, without allocation.
    pub fn from_static(s: &'static str) -> Str {
        Str(Bytes::from_static(s.as_bytes()))
    }

    /// The text (checked again: see the type's documentation).
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying bytes.
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The underlying bytes, by value.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Str {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Str {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Str {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Str {
    fn from(s: String) -> Str {
        Str(Bytes::from(s.into_bytes()))
    }
}

impl PartialEq<str> for Str {
    fn eq(&self, other: &str) -> bool {
        self.0 == other.as_bytes()
    }
}

impl PartialEq<&str> for Str {
    fn eq(&self, other: &&str) -> bool {
        self.0 == other.as_bytes()
    }
}

// ---------------------------------------------------------------------------
// Body reader

/// A cursor over a body; every read is checked and borrows the body.
/// Parsers that return owned values share them out of the frame's
/// [`Bytes`] with [`shared`] / [`shared_str`] (no copy).
struct Reader<'a> {
    kind: char,
    rest: &'a [u8],
}

/// Reads a NUL-terminated UTF-8 string field, naming it in errors.
macro_rules! cstr {
    ($r:expr, $field:literal) => {
        $r.cstr(concat!("missing NUL terminator in ", $field), $field)
    };
}

impl<'a> Reader<'a> {
    fn new(kind: char, rest: &'a [u8]) -> Reader<'a> {
        Reader { kind, rest }
    }

    fn err(&self, what: &'static str) -> CodecError {
        malformed(self.kind, what)
    }

    fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Fails unless at least `n` bytes remain.
    fn need(&self, n: usize, what: &'static str) -> Result<()> {
        if self.rest.len() < n {
            return Err(self.err(what));
        }
        Ok(())
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let (taken, rest) = self.rest.split_at_checked(n).ok_or_else(|| self.err(what))?;
        self.rest = rest;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let (taken, rest) = self.rest.split_first_chunk::<N>().ok_or_else(|| self.err(what))?;
        self.rest = rest;
        Ok(*taken)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        let [b] = self.array::<1>(what)?;
        Ok(b)
    }

    fn i16(&mut self, what: &'static str) -> Result<i16> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// A NUL-terminated string, without its terminator.
    fn cstr_bytes(&mut self, missing: &'static str) -> Result<&'a [u8]> {
        if let Some((0, rest)) = self.rest.split_first() {
            // The empty string (the unnamed statement or portal): most
            // names the extended protocol sends.
            self.rest = rest;
            return Ok(&[]);
        }
        // The library's NUL search reads a word at a time.
        let text = std::ffi::CStr::from_bytes_until_nul(self.rest).map_err(|_| self.err(missing))?.to_bytes();
        self.rest = self.rest.get(text.len() + 1..).unwrap_or_default();
        Ok(text)
    }

    fn cstr(&mut self, missing: &'static str, field: &'static str) -> Result<&'a str> {
        let text = self.cstr_bytes(missing)?;
        if text.is_empty() {
            return Ok("");
        }
        std::str::from_utf8(text).map_err(|_| CodecError::InvalidUtf8 { kind: self.kind, field })
    }

    /// A 16-bit count of items of at least `item` bytes each, checked
    /// against the bytes present.
    fn count(&mut self, item: usize, what: &'static str) -> Result<usize> {
        let n = usize::from(self.u16(what)?);
        self.need(n.saturating_mul(item), what)?;
        Ok(n)
    }

    fn finish(self) -> Result<()> {
        if !self.rest.is_empty() {
            return Err(self.err("trailing bytes after the last field"));
        }
        Ok(())
    }
}

/// `part` (a slice of `src`) as a shared slice of `src`, without a copy.
fn shared(src: &Bytes, part: &[u8]) -> Bytes {
    src.slice_ref(part)
}

/// `text` (a slice of `src`, already checked UTF-8) as a [`Str`] sharing
/// `src`, without a copy or a second check.
fn shared_str(src: &Bytes, text: &str) -> Str {
    Str(shared(src, text.as_bytes()))
}

fn be_i32(bytes: &[u8]) -> Option<i32> {
    let word: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(i32::from_be_bytes(word))
}

/// Checks a length word against its minimum and the limit.
fn checked_length(kind: char, word: i32, min: usize, max: usize) -> Result<usize> {
    let bad = || CodecError::BadLength { kind, len: i64::from(word) };
    let len = usize::try_from(word).map_err(|_| bad())?;
    if len < min {
        return Err(bad());
    }
    if len > max {
        return Err(CodecError::TooLarge { kind, len, max });
    }
    Ok(len)
}

// ---------------------------------------------------------------------------
// Startup phase

/// A startup-phase packet (the first packet of a connection, no type byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// SSLRequest (80877103).
    SslRequest,
    /// GSSENCRequest (80877104).
    GssEncRequest,
    /// CancelRequest (80877102): backend pid and secret key (4 bytes in
    /// protocol 3.0; up to 256 bytes in 3.2).
    Cancel {
        /// The backend process id.
        pid: i32,
        /// The secret key, 4 to [`MAX_CANCEL_KEY_BYTES`] bytes.
        secret: Bytes,
    },
    /// StartupMessage: protocol version and parameters in order.
    Startup {
        /// `major << 16 | minor`; the major is always 3. The minor is as
        /// requested and may exceed [`NEWEST_MINOR_VERSION`]: the caller
        /// then answers with [`negotiate_protocol_version`].
        version: u32,
        /// The parameters, in order; names are unique.
        params: Vec<(Str, Str)>,
    },
}

/// Decodes one startup-phase packet from the front of `buf`; `Ok(None)`
/// when more bytes are needed. Consumes the packet on success.
///
/// The length word must be at least 8 and at most
/// `min(max, MAX_STARTUP_PACKET_BYTES)`. A StartupMessage must ask for
/// protocol 3 (any minor), and its parameters must be pairs of
/// NUL-terminated UTF-8 strings with unique names, followed by a NUL.
pub fn decode_startup(buf: &mut BytesMut, max: usize) -> Result<Option<Startup>> {
    const K: char = STARTUP_KIND;
    let Some(word) = be_i32(buf) else {
        return Ok(None);
    };
    let len = checked_length(K, word, 8, max.min(MAX_STARTUP_PACKET_BYTES))?;
    if buf.len() < len {
        return Ok(None);
    }
    let src = buf.split_to(len).freeze();
    let mut r = Reader::new(K, &src);
    r.take(4, "truncated length word")?;
    let code = r.u32("truncated request code")?;
    let bad_length = CodecError::BadLength { kind: K, len: i64::from(word) };
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => {
            if len != 8 {
                return Err(bad_length);
            }
            Ok(Some(if code == SSL_REQUEST_CODE { Startup::SslRequest } else { Startup::GssEncRequest }))
        }
        CANCEL_REQUEST_CODE => {
            if !(16..=12 + MAX_CANCEL_KEY_BYTES).contains(&len) {
                return Err(bad_length);
            }
            let pid = r.i32("truncated process id")?;
            Ok(Some(Startup::Cancel { pid, secret: shared(&src, r.rest()) }))
        }
        _ if code >> 16 == 3 => {
            let params = startup_params(&src, &mut r)?;
            r.finish()?;
            Ok(Some(Startup::Startup { version: code, params }))
        }
        _ => Err(CodecError::UnsupportedProtocol { code }),
    }
}

fn startup_params(src: &Bytes, r: &mut Reader) -> Result<Vec<(Str, Str)>> {
    let mut params: Vec<(Str, Str)> = Vec::new();
    loop {
        let name = r.cstr("missing terminator after the startup parameters", "parameter name")?;
        if name.is_empty() {
            return Ok(params);
        }
        if r.remaining() == 0 {
            return Err(r.err("startup parameter without a value"));
        }
        let value = cstr!(r, "parameter value")?;
        if params.iter().any(|(n, _)| *n == name) {
            return Err(r.err("duplicate startup parameter"));
        }
        params.push((shared_str(src, name), shared_str(src, value)));
    }
}

// ---------------------------------------------------------------------------
// Frontend messages

/// A frontend message after startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend {
    /// 'Q': a simple query.
    Query {
        /// The SQL text (possibly several statements).
        sql: Str,
    },
    /// 'P': prepare a statement.
    Parse {
        /// The statement name (empty: the unnamed statement).
        name: Str,
        /// The SQL text.
        sql: Str,
        /// Parameter type OIDs (0: unspecified).
        param_types: Vec<u32>,
    },
    /// 'B': bind parameters to a statement, making a portal.
    Bind {
        /// The portal name (empty: the unnamed portal).
        portal: Str,
        /// The statement name.
        statement: Str,
        /// Parameter format codes (0 text, 1 binary): none, one for all, or
        /// one per parameter.
        param_formats: Vec<i16>,
        /// Parameter values; `None` is NULL.
        params: Vec<Option<Bytes>>,
        /// Result format codes, same shape as `param_formats`.
        result_formats: Vec<i16>,
    },
    /// 'E': run a portal.
    Execute {
        /// The portal name.
        portal: Str,
        /// The most rows to return; 0 (or less) for no limit.
        max_rows: i32,
    },
    /// 'D': describe a statement or portal.
    Describe {
        /// `b'S'` (statement) or `b'P'` (portal).
        kind: u8,
        /// Its name.
        name: Str,
    },
    /// 'C': close a statement or portal.
    Close {
        /// `b'S'` (statement) or `b'P'` (portal).
        kind: u8,
        /// Its name.
        name: Str,
    },
    /// 'S': end of an extended-query batch.
    Sync,
    /// 'H': ask for pending output.
    Flush,
    /// 'X': end of the session.
    Terminate,
    /// 'd': COPY data, raw.
    CopyData(Bytes),
    /// 'c': end of COPY data.
    CopyDone,
    /// 'f': abort COPY.
    CopyFail {
        /// The client's reason.
        message: Str,
    },
    /// 'F' function call: not decoded, always refused by the gateway.
    FunctionCall,
    /// 'p': password / SASL messages; meaning depends on the auth exchange,
    /// so raw body.
    Password(Bytes),
}

/// A decoded frontend message and its frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrontendMessage {
    /// The message.
    pub message: Frontend,
    /// The whole frame, type byte and length included, for forwarding
    /// untouched.
    pub frame: Bytes,
}

impl FrontendMessage {
    /// The type byte.
    pub fn kind(&self) -> u8 {
        self.frame.first().copied().unwrap_or_default()
    }
}

/// A frontend message read in place: its fields borrow the frame (see
/// [`view_frontend`]). [`Frontend`] is the owned form.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontendView<'a> {
    /// 'Q': a simple query.
    Query {
        /// The SQL text (possibly several statements).
        sql: &'a str,
    },
    /// 'P': prepare a statement.
    Parse {
        /// The statement name (empty: the unnamed statement).
        name: &'a str,
        /// The SQL text.
        sql: &'a str,
        /// Parameter type OIDs (0: unspecified), 4 bytes each, big-endian.
        param_types: &'a [u8],
    },
    /// 'B': bind parameters to a statement, making a portal.
    Bind(BindView<'a>),
    /// 'E': run a portal.
    Execute {
        /// The portal name.
        portal: &'a str,
        /// The most rows to return; 0 (or less) for no limit.
        max_rows: i32,
    },
    /// 'D': describe a statement or portal.
    Describe {
        /// `b'S'` (statement) or `b'P'` (portal).
        kind: u8,
        /// Its name.
        name: &'a str,
    },
    /// 'C': close a statement or portal.
    Close {
        /// `b'S'` (statement) or `b'P'` (portal).
        kind: u8,
        /// Its name.
        name: &'a str,
    },
    /// 'S': end of an extended-query batch.
    Sync,
    /// 'H': ask for pending output.
    Flush,
    /// 'X': end of the session.
    Terminate,
    /// 'd': COPY data, raw.
    CopyData(&'a [u8]),
    /// 'c': end of COPY data.
    CopyDone,
    /// 'f': abort COPY.
    CopyFail {
        /// The client's reason.
        message: &'a str,
    },
    /// 'F' function call: not decoded.
    FunctionCall,
    /// 'p': password / SASL messages, raw body.
    Password(&'a [u8]),
}

/// A `Bind` read in place. Every length and format code was checked when
/// it was read, so its accessors cannot fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindView<'a> {
    /// The portal name (empty: the unnamed portal).
    pub portal: &'a str,
    /// The statement name.
    pub statement: &'a str,
    /// Parameter format codes: none, one for all, or one per parameter.
    pub param_formats: FormatCodes<'a>,
    /// Parameter values.
    pub params: ParamValues<'a>,
    /// Result format codes, same shape as `param_formats`.
    pub result_formats: FormatCodes<'a>,
}

/// Format codes read in place (2 bytes each, every one 0 or 1).
///
/// ```
/// use pg_proxy::codec::FormatCodes;
/// let none = FormatCodes::default();
/// assert_eq!(none.at(3), 0); // no code: every value in text
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FormatCodes<'a>(&'a [u8]);

impl<'a> FormatCodes<'a> {
    /// How many codes.
    pub fn len(&self) -> usize {
        self.0.len() / 2
    }

    /// Whether there is none (everything in text).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The codes in order.
    pub fn iter(&self) -> impl Iterator<Item = i16> + 'a {
        self.0.chunks_exact(2).map(|c| c.first_chunk::<2>().map(|w| i16::from_be_bytes(*w)).unwrap_or_default())
    }

    /// The code that applies to value `i` (see [`format_index`]).
    pub fn at(&self, i: usize) -> i16 {
        self.iter().nth(format_index(self.len(), i)).unwrap_or(0)
    }

    /// The codes as a vector.
    pub fn to_vec(&self) -> Vec<i16> {
        self.iter().collect()
    }
}

/// Which of `count` format codes applies to value `i`, as PostgreSQL
/// reads such a list: none means text for every value (no index is in
/// range, and the caller's fallback is text), one applies to all, otherwise
/// one each.
///
/// ```
/// use pg_proxy::codec::format_index;
/// assert_eq!(format_index(1, 5), 0);
/// assert_eq!(format_index(3, 2), 2);
/// ```
pub fn format_index(count: usize, i: usize) -> usize {
    if count == 1 {
        0
    } else {
        i
    }
}

/// Bind parameter values read in place; each length was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParamValues<'a> {
    count: usize,
    raw: &'a [u8],
}

impl<'a> ParamValues<'a> {
    /// How many values.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The values in order; `None` is NULL.
    pub fn iter(&self) -> impl Iterator<Item = Option<&'a [u8]>> + 'a {
        let mut r = Reader::new('B', self.raw);
        (0..self.count).map_while(move |_| nullable(&mut r).ok())
    }
}

/// A frontend message read in place, and its whole frame (type byte and
/// length word included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrontendFrame<'a> {
    /// The message.
    pub message: FrontendView<'a>,
    /// The whole frame, for forwarding untouched.
    pub frame: &'a [u8],
}

/// Reads the frontend message at the front of `buf` in place, without
/// consuming it (the caller advances by `frame.len()`); `Ok(None)` when
/// more bytes are needed. Nothing is copied or allocated.
///
/// An unknown type byte fails at once, a length word above `max` as soon as
/// the 5-byte header is there. Sync, Flush, Terminate and CopyDone must have
/// an empty body.
///
/// ```
/// use pg_proxy::codec::{view_frontend, FrontendView};
/// let sync = [b'S', 0, 0, 0, 4, b'Q'];
/// let read = view_frontend(&sync, 1 << 20).unwrap().unwrap();
/// assert_eq!(read.message, FrontendView::Sync);
/// assert_eq!(read.frame.len(), 5);
/// assert_eq!(view_frontend(&sync[5..], 1 << 20).unwrap(), None); // a header needs 5 bytes
/// ```
#[inline]
pub fn view_frontend(buf: &[u8], max: usize) -> Result<Option<FrontendFrame<'_>>> {
    let Some(total) = frontend_frame_len(buf, max)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    let kind = frame.first().copied().unwrap_or_default();
    let mut r = Reader::new(char::from(kind), frame);
    r.take(5, "truncated header")?;
    let message = frontend_body(kind, &mut r)?;
    r.finish()?;
    Ok(Some(FrontendFrame { message, frame }))
}

/// The length of the frontend frame at the front of `buf` (type byte
/// included), from its header; `Ok(None)` before the 5-byte header is
/// there. The frame itself may not all be there yet.
fn frontend_frame_len(buf: &[u8], max: usize) -> Result<Option<usize>> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let k = char::from(kind);
    let empty_body = match kind {
        b'Q' | b'P' | b'B' | b'E' | b'D' | b'C' | b'd' | b'f' | b'F' | b'p' => false,
        b'S' | b'H' | b'X' | b'c' => true,
        _ => return Err(malformed(k, "unknown message type")),
    };
    let Some(word) = buf.get(1..).and_then(be_i32) else {
        return Ok(None);
    };
    let len = checked_length(k, word, 4, max)?;
    if empty_body && len != 4 {
        return Err(CodecError::BadLength { kind: k, len: i64::from(word) });
    }
    let total = len.checked_add(1).ok_or(CodecError::TooLarge { kind: k, len, max })?;
    Ok(Some(total))
}

/// Decodes one frontend message from the front of `buf` into its owned
/// form (fields share the frame's bytes); `Ok(None)` when more bytes are
/// needed. Consumes the frame on success. Checks as [`view_frontend`].
pub fn decode_frontend(buf: &mut BytesMut, max: usize) -> Result<Option<FrontendMessage>> {
    let Some(total) = frontend_frame_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let frame = buf.split_to(total).freeze();
    let Some(read) = view_frontend(&frame, max)? else {
        return Ok(None);
    };
    Ok(Some(FrontendMessage { message: read.message.into_owned_in(&frame), frame }))
}

impl FrontendView<'_> {
    /// The owned form, its fields sharing `frame` (the bytes this view
    /// reads).
    fn into_owned_in(self, frame: &Bytes) -> Frontend {
        let text = |t: &str| shared_str(frame, t);
        match self {
            FrontendView::Query { sql } => Frontend::Query { sql: text(sql) },
            FrontendView::Parse { name, sql, param_types } => Frontend::Parse {
                name: text(name),
                sql: text(sql),
                param_types: param_types
                    .chunks_exact(4)
                    .map(|c| c.first_chunk::<4>().map(|w| u32::from_be_bytes(*w)).unwrap_or_default())
                    .collect(),
            },
            FrontendView::Bind(b) => Frontend::Bind {
                portal: text(b.portal),
                statement: text(b.statement),
                param_formats: b.param_formats.to_vec(),
                params: b.params.iter().map(|v| v.map(|v| shared(frame, v))).collect(),
                result_formats: b.result_formats.to_vec(),
            },
            FrontendView::Execute { portal, max_rows } => Frontend::Execute { portal: text(portal), max_rows },
            FrontendView::Describe { kind, name } => Frontend::Describe { kind, name: text(name) },
            FrontendView::Close { kind, name } => Frontend::Close { kind, name: text(name) },
            FrontendView::Sync => Frontend::Sync,
            FrontendView::Flush => Frontend::Flush,
            FrontendView::Terminate => Frontend::Terminate,
            FrontendView::CopyData(data) => Frontend::CopyData(shared(frame, data)),
            FrontendView::CopyDone => Frontend::CopyDone,
            FrontendView::CopyFail { message } => Frontend::CopyFail { message: text(message) },
            FrontendView::FunctionCall => Frontend::FunctionCall,
            FrontendView::Password(body) => Frontend::Password(shared(frame, body)),
        }
    }
}

#[inline]
fn frontend_body<'a>(kind: u8, r: &mut Reader<'a>) -> Result<FrontendView<'a>> {
    Ok(match kind {
        b'Q' => FrontendView::Query { sql: cstr!(r, "query string")? },
        b'P' => {
            let name = cstr!(r, "statement name")?;
            let sql = cstr!(r, "query string")?;
            let n = r.count(4, "parameter types exceed the message")?;
            let param_types = r.take(n * 4, "truncated parameter type")?;
            FrontendView::Parse { name, sql, param_types }
        }
        b'B' => FrontendView::Bind(bind_body(r)?),
        b'E' => {
            let portal = cstr!(r, "portal name")?;
            let max_rows = r.i32("truncated row limit")?;
            FrontendView::Execute { portal, max_rows }
        }
        b'D' | b'C' => {
            let target = r.u8("missing target kind")?;
            if target != b'S' && target != b'P' {
                return Err(r.err("target kind is neither 'S' nor 'P'"));
            }
            let name = cstr!(r, "statement or portal name")?;
            if kind == b'D' {
                FrontendView::Describe { kind: target, name }
            } else {
                FrontendView::Close { kind: target, name }
            }
        }
        b'S' => FrontendView::Sync,
        b'H' => FrontendView::Flush,
        b'X' => FrontendView::Terminate,
        b'c' => FrontendView::CopyDone,
        b'd' => FrontendView::CopyData(r.rest()),
        b'f' => FrontendView::CopyFail { message: cstr!(r, "error message")? },
        b'F' => {
            r.rest();
            FrontendView::FunctionCall
        }
        b'p' => FrontendView::Password(r.rest()),
        _ => return Err(r.err("unknown message type")),
    })
}

/// Format codes, each checked to be 0 or 1.
fn format_codes<'a>(r: &mut Reader<'a>) -> Result<FormatCodes<'a>> {
    let n = r.count(2, "format codes exceed the message")?;
    let codes = r.take(n * 2, "truncated format code")?;
    if codes.chunks_exact(2).any(|c| c != [0, 0] && c != [0, 1]) {
        return Err(r.err("unsupported format code"));
    }
    Ok(FormatCodes(codes))
}

fn bind_body<'a>(r: &mut Reader<'a>) -> Result<BindView<'a>> {
    let portal = cstr!(r, "portal name")?;
    let statement = cstr!(r, "statement name")?;
    let param_formats = format_codes(r)?;
    let n = r.count(4, "parameter values exceed the message")?;
    if param_formats.len() > 1 && param_formats.len() != n {
        return Err(r.err("parameter format count does not match the parameter count"));
    }
    let start = r.rest;
    for _ in 0..n {
        nullable(r)?;
    }
    let used = start.len() - r.rest.len();
    let params = ParamValues { count: n, raw: start.get(..used).unwrap_or_default() };
    let result_formats = format_codes(r)?;
    Ok(BindView { portal, statement, param_formats, params, result_formats })
}

/// A length-prefixed value: -1 is NULL.
fn nullable<'a>(r: &mut Reader<'a>) -> Result<Option<&'a [u8]>> {
    let len = r.i32("truncated value length")?;
    if len == -1 {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| r.err("negative value length"))?;
    Ok(Some(r.take(len, "value exceeds the message")?))
}

// ---------------------------------------------------------------------------
// Backend frames

/// One backend frame: its type byte and the whole frame (header included),
/// owned (`Bytes`, the default) or borrowed where it was read
/// ([`BackendView`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackendFrame<B = Bytes> {
    /// The type byte.
    pub kind: u8,
    /// The whole frame, type byte and length word included.
    pub frame: B,
}

/// A backend frame read in place, borrowing the buffer it was read into
/// (see [`view_backend`]): no reference count is touched until
/// [`BackendFrame::to_owned_frame`] is asked for.
pub type BackendView<'a> = BackendFrame<&'a [u8]>;

/// The type of a backend message, from its type byte: what the session
/// matches on instead of raw bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendMessage {
    /// '1'
    ParseComplete,
    /// '2'
    BindComplete,
    /// '3'
    CloseComplete,
    /// 'A'
    NotificationResponse,
    /// 'c'
    CopyDone,
    /// 'C'
    CommandComplete,
    /// 'd'
    CopyData,
    /// 'D'
    DataRow,
    /// 'E'
    ErrorResponse,
    /// 'G'
    CopyInResponse,
    /// 'H'
    CopyOutResponse,
    /// 'I'
    EmptyQueryResponse,
    /// 'K'
    BackendKeyData,
    /// 'n'
    NoData,
    /// 'N'
    NoticeResponse,
    /// 'R'
    Authentication,
    /// 's'
    PortalSuspended,
    /// 'S'
    ParameterStatus,
    /// 't'
    ParameterDescription,
    /// 'T'
    RowDescription,
    /// 'v'
    NegotiateProtocolVersion,
    /// 'V'
    FunctionCallResponse,
    /// 'W'
    CopyBothResponse,
    /// 'Z'
    ReadyForQuery,
}

impl BackendMessage {
    /// The message type of a type byte, `None` for a byte no backend
    /// message has.
    ///
    /// ```
    /// use pg_proxy::codec::BackendMessage;
    /// assert_eq!(BackendMessage::from_byte(b'Z'), Some(BackendMessage::ReadyForQuery));
    /// assert_eq!(BackendMessage::from_byte(b'?'), None);
    /// assert_eq!(BackendMessage::DataRow.byte(), b'D');
    /// ```
    #[inline]
    pub fn from_byte(byte: u8) -> Option<BackendMessage> {
        // One byte per type byte, read with one load: every server frame
        // is looked up, and a table this small stays in one or two cache
        // lines where a `match` jumps through a larger one.
        BACKEND_BY_BYTE.get(usize::from(byte)).copied().flatten()
    }

    /// The type byte.
    pub const fn byte(self) -> u8 {
        use BackendMessage as M;
        match self {
            M::ParseComplete => b'1',
            M::BindComplete => b'2',
            M::CloseComplete => b'3',
            M::NotificationResponse => b'A',
            M::CopyDone => b'c',
            M::CommandComplete => b'C',
            M::CopyData => b'd',
            M::DataRow => b'D',
            M::ErrorResponse => b'E',
            M::CopyInResponse => b'G',
            M::CopyOutResponse => b'H',
            M::EmptyQueryResponse => b'I',
            M::BackendKeyData => b'K',
            M::NoData => b'n',
            M::NoticeResponse => b'N',
            M::Authentication => b'R',
            M::PortalSuspended => b's',
            M::ParameterStatus => b'S',
            M::ParameterDescription => b't',
            M::RowDescription => b'T',
            M::NegotiateProtocolVersion => b'v',
            M::FunctionCallResponse => b'V',
            M::CopyBothResponse => b'W',
            M::ReadyForQuery => b'Z',
        }
    }
}

/// Every backend message type.
const BACKEND_MESSAGES: [BackendMessage; 24] = {
    use BackendMessage as M;
    [
        M::ParseComplete,
        M::BindComplete,
        M::CloseComplete,
        M::NotificationResponse,
        M::CopyDone,
        M::CommandComplete,
        M::CopyData,
        M::DataRow,
        M::ErrorResponse,
        M::CopyInResponse,
        M::CopyOutResponse,
        M::EmptyQueryResponse,
        M::BackendKeyData,
        M::NoData,
        M::NoticeResponse,
        M::Authentication,
        M::PortalSuspended,
        M::ParameterStatus,
        M::ParameterDescription,
        M::RowDescription,
        M::NegotiateProtocolVersion,
        M::FunctionCallResponse,
        M::CopyBothResponse,
        M::ReadyForQuery,
    ]
};

/// The message type of each ASCII type byte (none above 127).
#[allow(clippy::indexing_slicing, reason = "evaluated at compile time: an index out of range fails the build")]
static BACKEND_BY_BYTE: [Option<BackendMessage>; 128] = {
    let mut table = [None; 128];
    let mut i = 0;
    while i < BACKEND_MESSAGES.len() {
        let m = BACKEND_MESSAGES[i];
        table[m.byte() as usize] = Some(m);
        i += 1;
    }
    table
};

impl<B: AsRef<[u8]>> BackendFrame<B> {
    /// The message type: always `Some` for a frame [`decode_backend`] or
    /// [`view_backend`] cut (they accept known type bytes only), `None` for
    /// a frame built by hand with another byte.
    pub fn message(&self) -> Option<BackendMessage> {
        BackendMessage::from_byte(self.kind)
    }

    /// The whole frame's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.frame.as_ref()
    }

    /// The body (the frame after its 5-byte header).
    pub fn body(&self) -> &[u8] {
        self.bytes().get(5..).unwrap_or_default()
    }

    /// This frame, borrowed.
    pub fn view(&self) -> BackendView<'_> {
        BackendFrame { kind: self.kind, frame: self.bytes() }
    }

    /// This frame as an owned one: a copy of a view, to keep past the
    /// buffer it was read from.
    pub fn to_owned_frame(&self) -> BackendFrame {
        BackendFrame { kind: self.kind, frame: Bytes::copy_from_slice(self.bytes()) }
    }

    fn reader(&self, expected: &[u8]) -> Result<Reader<'_>> {
        let kind = char::from(self.kind);
        if !expected.contains(&self.kind) || self.bytes().first() != Some(&self.kind) {
            return Err(malformed(kind, "unexpected message type"));
        }
        Ok(Reader::new(kind, self.body()))
    }
}

impl BackendFrame {
    /// The body as a shared slice of the frame.
    pub fn body_bytes(&self) -> Bytes {
        if self.frame.len() < 5 {
            return Bytes::new();
        }
        self.frame.slice(5..)
    }

    /// `text`, read from this frame, as a [`Str`] sharing it.
    fn share(&self, text: &str) -> Str {
        shared_str(&self.frame, text)
    }
}

/// The type byte and length (type byte included) of the backend frame at
/// the front of `buf`, from its header; `Ok(None)` before the 5-byte
/// header is there. The frame itself may not all be there yet.
fn backend_frame_len(buf: &[u8], max: usize) -> Result<Option<(u8, usize)>> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let k = char::from(kind);
    if BackendMessage::from_byte(kind).is_none() {
        return Err(malformed(k, "unknown message type"));
    }
    let Some(word) = buf.get(1..).and_then(be_i32) else {
        return Ok(None);
    };
    let len = checked_length(k, word, 4, max)?;
    let total = len.checked_add(1).ok_or(CodecError::TooLarge { kind: k, len, max })?;
    Ok(Some((kind, total)))
}

/// Decodes one backend frame from the front of `buf`; `Ok(None)` when more
/// bytes are needed. Consumes the frame on success.
///
/// Only the framing is checked here (known type byte, length word between 4
/// and `max`); bodies are read by the `parse_*` functions. The one-byte
/// answer to an SSLRequest or GSSENCRequest is not a frame: the caller
/// reads it before using this.
pub fn decode_backend(buf: &mut BytesMut, max: usize) -> Result<Option<BackendFrame>> {
    let Some((kind, total)) = backend_frame_len(buf, max)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some(BackendFrame { kind, frame: buf.split_to(total).freeze() }))
}

/// Reads the backend frame at the front of `buf` in place; `Ok(None)`
/// when more bytes are needed. Checks as [`decode_backend`]; the caller
/// moves past `frame.bytes().len()` bytes once done with it.
///
/// ```
/// use pg_proxy::codec::{view_backend, BackendMessage};
///
/// let ready = *b"Z\0\0\0\x05I";
/// let frame = view_backend(&ready, 1 << 20).unwrap().unwrap();
/// assert_eq!(frame.message(), Some(BackendMessage::ReadyForQuery));
/// assert_eq!(frame.bytes().len(), 6);
/// assert_eq!(view_backend(&ready[..5], 1 << 20).unwrap(), None); // the body is not there yet
/// ```
pub fn view_backend(buf: &[u8], max: usize) -> Result<Option<BackendView<'_>>> {
    let Some((kind, total)) = backend_frame_len(buf, max)? else {
        return Ok(None);
    };
    Ok(buf.get(..total).map(|frame| BackendFrame { kind, frame }))
}

/// One column of a RowDescription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDescription {
    /// The column name.
    pub name: Str,
    /// The table's OID, or 0.
    pub table_oid: u32,
    /// The column's attribute number in the table, or 0.
    pub column: i16,
    /// The data type's OID.
    pub type_oid: u32,
    /// The data type's size (`pg_type.typlen`); negative for variable.
    pub type_size: i16,
    /// The type modifier (`pg_attribute.atttypmod`).
    pub type_modifier: i32,
    /// The format code: 0 text, 1 binary.
    pub format: i16,
}

/// Reads a RowDescription ('T').
pub fn parse_row_description(frame: &BackendFrame) -> Result<Vec<FieldDescription>> {
    let mut r = frame.reader(b"T")?;
    // Each field has at least a NUL and 18 bytes.
    let n = r.count(19, "field descriptions exceed the message")?;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        fields.push(FieldDescription {
            name: frame.share(cstr!(r, "field name")?),
            table_oid: r.u32("truncated field description")?,
            column: r.i16("truncated field description")?,
            type_oid: r.u32("truncated field description")?,
            type_size: r.i16("truncated field description")?,
            type_modifier: r.i32("truncated field description")?,
            format: r.i16("truncated field description")?,
        });
    }
    r.finish()?;
    Ok(fields)
}

/// Reads a ParameterDescription ('t'): the parameter type OIDs.
pub fn parse_parameter_description<B: AsRef<[u8]>>(frame: &BackendFrame<B>) -> Result<Vec<u32>> {
    let mut r = frame.reader(b"t")?;
    let n = r.count(4, "parameter types exceed the message")?;
    let mut types = Vec::with_capacity(n);
    for _ in 0..n {
        types.push(r.u32("truncated parameter type")?);
    }
    r.finish()?;
    Ok(types)
}

/// Reads the values of a DataRow ('D'), as slices of the frame; `None` is
/// NULL.
pub fn data_row_values(frame: &BackendFrame) -> Result<Vec<Option<Bytes>>> {
    let mut values: Vec<Option<&[u8]>> = Vec::new();
    data_row_values_into(frame, &mut values)?;
    Ok(values.into_iter().map(|v| v.map(|v| frame.frame.slice_ref(v))).collect())
}

/// Reads the values of a DataRow ('D') into `out` (emptied first), borrowed
/// from the frame: no allocation when `out` has the room, no reference
/// count touched. `None` is NULL.
pub fn data_row_values_into<'a, B: AsRef<[u8]>, T: From<&'a [u8]>>(
    frame: &'a BackendFrame<B>,
    out: &mut Vec<Option<T>>,
) -> Result<()> {
    out.clear();
    if frame.kind != b'D' || frame.bytes().first() != Some(&b'D') {
        return Err(malformed(char::from(frame.kind), "unexpected message type"));
    }
    let body = frame.body();
    let (count, mut rest) = body.split_first_chunk::<2>().ok_or(malformed('D', "truncated column count"))?;
    let n = usize::from(u16::from_be_bytes(*count));
    if rest.len() < n.saturating_mul(4) {
        return Err(malformed('D', "column values exceed the message"));
    }
    out.reserve(n);
    for _ in 0..n {
        let (len, after) = rest.split_first_chunk::<4>().ok_or(malformed('D', "truncated value length"))?;
        let len = i32::from_be_bytes(*len);
        if len == -1 {
            out.push(None);
            rest = after;
            continue;
        }
        let len = usize::try_from(len).map_err(|_| malformed('D', "negative value length"))?;
        let (value, after) = after.split_at_checked(len).ok_or(malformed('D', "value exceeds the message"))?;
        out.push(Some(T::from(value)));
        rest = after;
    }
    if !rest.is_empty() {
        return Err(malformed('D', "trailing bytes after the last field"));
    }
    Ok(())
}

/// Reads the fields of an ErrorResponse ('E') or NoticeResponse ('N'):
/// (field type, value) in order.
///
/// The server writes these in its own encoding when it cannot convert
/// them (for instance early in a session), so values that are not UTF-8
/// are converted lossily into an owned [`Str`] rather than refused; valid
/// values are not copied.
pub fn parse_fields(frame: &BackendFrame) -> Result<Vec<(u8, Str)>> {
    let mut r = frame.reader(b"EN")?;
    let mut fields = Vec::new();
    loop {
        let code = r.u8("missing terminator after the fields")?;
        if code == 0 {
            break;
        }
        let value = r.cstr_bytes("missing NUL terminator in field value")?;
        fields.push((code, Str::from_utf8_lossy(shared(&frame.frame, value))));
    }
    r.finish()?;
    Ok(fields)
}

/// Reads the command tag of a CommandComplete ('C').
pub fn parse_command_complete(frame: &BackendFrame) -> Result<Str> {
    let mut r = frame.reader(b"C")?;
    let tag = cstr!(r, "command tag")?;
    r.finish()?;
    Ok(frame.share(tag))
}

/// Reads the transaction status of a ReadyForQuery ('Z'): `b'I'` idle,
/// `b'T'` in a transaction, `b'E'` in a failed transaction.
pub fn parse_ready_for_query<B: AsRef<[u8]>>(frame: &BackendFrame<B>) -> Result<u8> {
    let mut r = frame.reader(b"Z")?;
    let status = r.u8("missing transaction status")?;
    if !b"ITE".contains(&status) {
        return Err(r.err("unknown transaction status"));
    }
    r.finish()?;
    Ok(status)
}

/// Reads a BackendKeyData ('K'): the backend pid and its secret key (4 to
/// [`MAX_CANCEL_KEY_BYTES`] bytes).
pub fn parse_backend_key_data(frame: &BackendFrame) -> Result<(i32, Bytes)> {
    let mut r = frame.reader(b"K")?;
    let pid = r.i32("truncated process id")?;
    let secret = r.rest();
    if !(4..=MAX_CANCEL_KEY_BYTES).contains(&secret.len()) {
        return Err(malformed('K', "secret key length outside 4..=256 bytes"));
    }
    Ok((pid, shared(&frame.frame, secret)))
}

/// Reads a ParameterStatus ('S'): name and value.
pub fn parse_parameter_status(frame: &BackendFrame) -> Result<(Str, Str)> {
    let mut r = frame.reader(b"S")?;
    let name = cstr!(r, "parameter name")?;
    let value = cstr!(r, "parameter value")?;
    r.finish()?;
    Ok((frame.share(name), frame.share(value)))
}

/// Reads a CopyInResponse ('G'), CopyOutResponse ('H') or CopyBothResponse
/// ('W'): the overall format (0 text, 1 binary) and the column formats.
pub fn parse_copy_response<B: AsRef<[u8]>>(frame: &BackendFrame<B>) -> Result<(u8, Vec<i16>)> {
    let mut r = frame.reader(b"GHW")?;
    let format = r.u8("missing overall format")?;
    if format > 1 {
        return Err(r.err("unsupported format code"));
    }
    let columns = format_codes(&mut r)?.to_vec();
    r.finish()?;
    Ok((format, columns))
}

/// An Authentication ('R') request or result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// AuthenticationOk (0).
    Ok,
    /// AuthenticationCleartextPassword (3).
    CleartextPassword,
    /// AuthenticationMD5Password (5).
    Md5Password {
        /// The salt.
        salt: [u8; 4],
    },
    /// AuthenticationSASL (10): the mechanisms offered, in order.
    Sasl {
        /// Mechanism names, such as `SCRAM-SHA-256`.
        mechanisms: Vec<Str>,
    },
    /// AuthenticationSASLContinue (11): the server's challenge.
    SaslContinue(Bytes),
    /// AuthenticationSASLFinal (12): the server's final message.
    SaslFinal(Bytes),
    /// Any other method (Kerberos, GSS, SSPI…), by code; its body is not
    /// read.
    Other(i32),
}

/// Reads an Authentication message ('R').
pub fn parse_authentication(frame: &BackendFrame) -> Result<Authentication> {
    let mut r = frame.reader(b"R")?;
    let auth = match r.i32("missing authentication code")? {
        0 => Authentication::Ok,
        3 => Authentication::CleartextPassword,
        5 => Authentication::Md5Password { salt: r.array::<4>("truncated salt")? },
        10 => {
            let mut mechanisms = Vec::new();
            loop {
                let name = cstr!(r, "SASL mechanism name")?;
                if name.is_empty() {
                    break;
                }
                mechanisms.push(frame.share(name));
            }
            Authentication::Sasl { mechanisms }
        }
        11 => Authentication::SaslContinue(shared(&frame.frame, r.rest())),
        12 => Authentication::SaslFinal(shared(&frame.frame, r.rest())),
        other => {
            r.rest();
            Authentication::Other(other)
        }
    };
    r.finish()?;
    Ok(auth)
}

/// Reads a NegotiateProtocolVersion ('v'): the newest minor version the
/// server supports and the protocol options (`_pq_.*`) it did not
/// recognise.
pub fn parse_negotiate_protocol_version(frame: &BackendFrame) -> Result<(u32, Vec<Str>)> {
    let mut r = frame.reader(b"v")?;
    let minor = r.i32("truncated minor version")?;
    let minor = u32::try_from(minor).map_err(|_| r.err("negative minor version"))?;
    let n = r.i32("truncated option count")?;
    let n = usize::try_from(n).map_err(|_| r.err("negative option count"))?;
    r.need(n, "options exceed the message")?;
    let mut options = Vec::with_capacity(n);
    for _ in 0..n {
        options.push(frame.share(cstr!(r, "option name")?));
    }
    r.finish()?;
    Ok((minor, options))
}

// ---------------------------------------------------------------------------
// Encoders

/// Appends one frame (`kind` then a length word, if `kind` is not 0, then
/// what `body` writes); on error the buffer is restored.
fn write_frame(buf: &mut BytesMut, kind: u8, body: impl FnOnce(&mut BytesMut) -> Result<()>) -> Result<()> {
    let start = buf.len();
    let word_at = if kind == 0 { start } else { start + 1 };
    if kind != 0 {
        buf.put_u8(kind);
    }
    buf.put_i32(0);
    let written = body(buf).and_then(|()| {
        let len = buf.len() - word_at;
        i32::try_from(len).map_err(|_| CodecError::TooLarge {
            kind: if kind == 0 { STARTUP_KIND } else { char::from(kind) },
            len,
            max: i32::MAX as usize,
        })
    });
    match written {
        Ok(word) => {
            if let Some(slot) = buf.get_mut(word_at..word_at + 4) {
                slot.copy_from_slice(&word.to_be_bytes());
            }
            Ok(())
        }
        Err(e) => {
            buf.truncate(start);
            Err(e)
        }
    }
}

/// Appends a NUL-terminated string; refuses a NUL inside.
fn put_cstr(buf: &mut BytesMut, kind: u8, s: &str) -> Result<()> {
    if s.as_bytes().contains(&0) {
        return Err(malformed(char::from(kind), "NUL byte inside a string field"));
    }
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
    Ok(())
}

/// Appends a 16-bit count.
fn put_count(buf: &mut BytesMut, kind: u8, n: usize) -> Result<()> {
    let n = u16::try_from(n).map_err(|_| malformed(char::from(kind), "more than 65535 items"))?;
    buf.put_u16(n);
    Ok(())
}

fn empty_message(buf: &mut BytesMut, kind: u8) {
    buf.put_u8(kind);
    buf.put_i32(4);
}

/// Appends an ErrorResponse (`kind` `b'E'`) or NoticeResponse (`b'N'`)
/// with these fields, in order, and the terminator. Used to re-encode
/// scrubbed server errors and notices.
pub fn fields_message(buf: &mut BytesMut, kind: u8, fields: &[(u8, &str)]) -> Result<()> {
    if kind != b'E' && kind != b'N' {
        return Err(malformed(char::from(kind), "not an ErrorResponse or NoticeResponse"));
    }
    write_frame(buf, kind, |buf| {
        for &(code, value) in fields {
            if code == 0 {
                return Err(malformed(char::from(kind), "field type 0 is the terminator"));
            }
            buf.put_u8(code);
            put_cstr(buf, kind, value)?;
        }
        buf.put_u8(0);
        Ok(())
    })
}

fn report(buf: &mut BytesMut, kind: u8, severity: &str, code: &str, message: &str, extra: &[(u8, &str)]) -> Result<()> {
    if code.len() != 5 || !code.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
        return Err(malformed(char::from(kind), "SQLSTATE must be five upper-case letters or digits"));
    }
    let mut fields = Vec::with_capacity(4 + extra.len());
    fields.extend_from_slice(&[(b'S', severity), (b'V', severity), (b'C', code), (b'M', message)]);
    fields.extend_from_slice(extra);
    fields_message(buf, kind, &fields)
}

/// Appends an ErrorResponse: fields S and V (both `severity`, such as
/// `ERROR` or `FATAL`), C (`code`, a SQLSTATE), M (`message`), then `extra`
/// (such as `(b'D', detail)` or `(b'H', hint)`).
pub fn error_response(
    buf: &mut BytesMut,
    severity: &str,
    code: &str,
    message: &str,
    extra: &[(u8, &str)],
) -> Result<()> {
    report(buf, b'E', severity, code, message, extra)
}

/// Appends a NoticeResponse, laid out as in [`error_response`] (severity
/// such as `NOTICE` or `WARNING`).
pub fn notice_response(
    buf: &mut BytesMut,
    severity: &str,
    code: &str,
    message: &str,
    extra: &[(u8, &str)],
) -> Result<()> {
    report(buf, b'N', severity, code, message, extra)
}

/// Appends a ReadyForQuery with a transaction status (`b'I'`, `b'T'` or
/// `b'E'`).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    buf.put_u8(b'Z');
    buf.put_i32(5);
    buf.put_u8(status);
}

/// Appends an AuthenticationOk.
pub fn auth_ok(buf: &mut BytesMut) {
    buf.put_u8(b'R');
    buf.put_i32(8);
    buf.put_i32(0);
}

/// Appends an AuthenticationCleartextPassword.
pub fn auth_cleartext_password(buf: &mut BytesMut) {
    buf.put_u8(b'R');
    buf.put_i32(8);
    buf.put_i32(3);
}

/// Appends a ParameterStatus.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) -> Result<()> {
    write_frame(buf, b'S', |buf| {
        put_cstr(buf, b'S', name)?;
        put_cstr(buf, b'S', value)
    })
}

/// Appends a BackendKeyData; the secret is 4 to [`MAX_CANCEL_KEY_BYTES`]
/// bytes (more than 4 only for protocol 3.2 clients).
pub fn backend_key_data(buf: &mut BytesMut, pid: i32, secret: &[u8]) -> Result<()> {
    if !(4..=MAX_CANCEL_KEY_BYTES).contains(&secret.len()) {
        return Err(malformed('K', "secret key length outside 4..=256 bytes"));
    }
    write_frame(buf, b'K', |buf| {
        buf.put_i32(pid);
        buf.put_slice(secret);
        Ok(())
    })
}

/// Appends a CommandComplete with this tag (such as `SELECT 3`).
pub fn command_complete(buf: &mut BytesMut, tag: &str) -> Result<()> {
    write_frame(buf, b'C', |buf| put_cstr(buf, b'C', tag))
}

/// Appends an EmptyQueryResponse.
pub fn empty_query_response(buf: &mut BytesMut) {
    empty_message(buf, b'I');
}

/// Appends a ParseComplete.
pub fn parse_complete(buf: &mut BytesMut) {
    empty_message(buf, b'1');
}

/// Appends a BindComplete.
pub fn bind_complete(buf: &mut BytesMut) {
    empty_message(buf, b'2');
}

/// Appends a CloseComplete.
pub fn close_complete(buf: &mut BytesMut) {
    empty_message(buf, b'3');
}

/// Appends a NoData.
pub fn no_data(buf: &mut BytesMut) {
    empty_message(buf, b'n');
}

/// Appends a RowDescription.
pub fn row_description(buf: &mut BytesMut, fields: &[FieldDescription]) -> Result<()> {
    write_frame(buf, b'T', |buf| {
        put_count(buf, b'T', fields.len())?;
        for field in fields {
            put_cstr(buf, b'T', field.name.as_str())?;
            buf.put_u32(field.table_oid);
            buf.put_i16(field.column);
            buf.put_u32(field.type_oid);
            buf.put_i16(field.type_size);
            buf.put_i32(field.type_modifier);
            buf.put_i16(field.format);
        }
        Ok(())
    })
}

/// Appends a DataRow; `None` is NULL. Takes anything that yields
/// `Option<impl AsRef<[u8]>>`: the `Vec<Option<Bytes>>` of
/// [`data_row_values`], or `slice.iter().copied()` over `&[Option<&[u8]>]`.
pub fn data_row<I, T>(buf: &mut BytesMut, values: I) -> Result<()>
where
    I: IntoIterator<Item = Option<T>>,
    T: AsRef<[u8]>,
{
    write_frame(buf, b'D', |buf| {
        let count_at = buf.len();
        buf.put_u16(0);
        let mut n: usize = 0;
        for value in values {
            n += 1;
            match value {
                None => buf.put_i32(-1),
                Some(value) => {
                    let value = value.as_ref();
                    let len = i32::try_from(value.len()).map_err(|_| CodecError::TooLarge {
                        kind: 'D',
                        len: value.len(),
                        max: i32::MAX as usize,
                    })?;
                    buf.put_i32(len);
                    buf.put_slice(value);
                }
            }
        }
        let n = u16::try_from(n).map_err(|_| malformed('D', "more than 65535 items"))?;
        if let Some(slot) = buf.get_mut(count_at..count_at + 2) {
            slot.copy_from_slice(&n.to_be_bytes());
        }
        Ok(())
    })
}

/// Appends a NegotiateProtocolVersion: the newest minor version the
/// gateway supports (of the major version the client asked for) and the
/// protocol options (`_pq_.*`) of the StartupMessage it does not know.
pub fn negotiate_protocol_version(buf: &mut BytesMut, minor: u32, unrecognised: &[&str]) -> Result<()> {
    write_frame(buf, b'v', |buf| {
        let minor = i32::try_from(minor).map_err(|_| malformed('v', "minor version out of range"))?;
        let n = i32::try_from(unrecognised.len()).map_err(|_| malformed('v', "too many options"))?;
        buf.put_i32(minor);
        buf.put_i32(n);
        for option in unrecognised {
            put_cstr(buf, b'v', option)?;
        }
        Ok(())
    })
}

/// Appends a CancelRequest (a frontend packet, sent on a new connection).
///
/// A 4-byte key (protocol 3.0) is written by
/// `postgres_protocol::message::frontend::cancel_request`; longer keys
/// (protocol 3.2, up to [`MAX_CANCEL_KEY_BYTES`]) are written here, which
/// that crate cannot do.
pub fn cancel_request(buf: &mut BytesMut, pid: i32, secret: &[u8]) -> Result<()> {
    if let Ok(key) = <[u8; 4]>::try_from(secret) {
        postgres_protocol::message::frontend::cancel_request(pid, i32::from_be_bytes(key), buf);
        return Ok(());
    }
    if !(4..=MAX_CANCEL_KEY_BYTES).contains(&secret.len()) {
        return Err(malformed(STARTUP_KIND, "secret key length outside 4..=256 bytes"));
    }
    write_frame(buf, 0, |buf| {
        buf.put_u32(CANCEL_REQUEST_CODE);
        buf.put_i32(pid);
        buf.put_slice(secret);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::message::frontend as fe;
    use postgres_protocol::IsNull;

    const MAX: usize = DEFAULT_MAX_MESSAGE_BYTES;

    /// PostgreSQL's backend type bytes (protocol 3.0), and no other.
    #[test]
    fn every_backend_type_byte_and_no_other_is_known() {
        let known: &[u8] = b"123AcCdDEGHIKnNRsStTvVWZ";
        for byte in 0..=u8::MAX {
            let read = BackendMessage::from_byte(byte);
            assert_eq!(read.is_some(), known.contains(&byte), "type byte {byte:#04x}");
            if let Some(m) = read {
                assert_eq!(m.byte(), byte, "{m:?}");
            }
        }
    }

    fn decode_all_frontend(bytes: &[u8]) -> Vec<FrontendMessage> {
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(m) = decode_frontend(&mut buf, MAX).unwrap() {
            out.push(m);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    fn one_frontend(bytes: &[u8]) -> Frontend {
        let messages = decode_all_frontend(bytes);
        assert_eq!(messages.len(), 1);
        assert_eq!(&messages[0].frame[..], bytes, "the frame is the whole message");
        messages[0].message.clone()
    }

    fn frontend_err(bytes: &[u8]) -> CodecError {
        let mut buf = BytesMut::from(bytes);
        decode_frontend(&mut buf, MAX).unwrap_err()
    }

    /// A frame with this type byte and body, length word computed.
    fn raw(kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![kind];
        v.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    fn startup_raw(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as i32 + 4).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    fn startup_err(bytes: &[u8]) -> CodecError {
        decode_startup(&mut BytesMut::from(bytes), MAX).unwrap_err()
    }

    fn backend(bytes: &[u8]) -> BackendFrame {
        let mut buf = BytesMut::from(bytes);
        let frame = decode_backend(&mut buf, MAX).unwrap().unwrap();
        assert!(buf.is_empty());
        frame
    }

    fn bind_bytes(formats: &[i16], values: &[Option<&[u8]>], results: &[i16]) -> BytesMut {
        let mut buf = BytesMut::new();
        let ok = fe::bind(
            "portal",
            "stmt",
            formats.iter().copied(),
            values.iter().copied(),
            |v, buf| match v {
                None => Ok(IsNull::Yes),
                Some(v) => {
                    buf.put_slice(v);
                    Ok(IsNull::No)
                }
            },
            results.iter().copied(),
            &mut buf,
        );
        assert!(ok.is_ok());
        buf
    }

    /// A stream of every frontend message type.
    fn frontend_stream() -> (BytesMut, Vec<Frontend>) {
        let mut buf = BytesMut::new();
        let mut expected = Vec::new();
        fe::query("SELECT 1; SELECT 'é'", &mut buf).unwrap();
        expected.push(Frontend::Query { sql: Str::from_static("SELECT 1; SELECT 'é'") });
        fe::parse("s1", "SELECT $1::int, $2", [23, 0], &mut buf).unwrap();
        expected.push(Frontend::Parse {
            name: Str::from_static("s1"),
            sql: Str::from_static("SELECT $1::int, $2"),
            param_types: vec![23, 0],
        });
        buf.extend_from_slice(&bind_bytes(&[0, 1], &[Some(b"42"), None], &[1]));
        expected.push(Frontend::Bind {
            portal: Str::from_static("portal"),
            statement: Str::from_static("stmt"),
            param_formats: vec![0, 1],
            params: vec![Some(Bytes::from_static(b"42")), None],
            result_formats: vec![1],
        });
        fe::describe(b'P', "portal", &mut buf).unwrap();
        expected.push(Frontend::Describe { kind: b'P', name: Str::from_static("portal") });
        fe::execute("portal", 10, &mut buf).unwrap();
        expected.push(Frontend::Execute { portal: Str::from_static("portal"), max_rows: 10 });
        fe::close(b'S', "s1", &mut buf).unwrap();
        expected.push(Frontend::Close { kind: b'S', name: Str::from_static("s1") });
        fe::flush(&mut buf);
        expected.push(Frontend::Flush);
        fe::sync(&mut buf);
        expected.push(Frontend::Sync);
        fe::CopyData::new(&b"1\t2\n"[..]).unwrap().write(&mut buf);
        expected.push(Frontend::CopyData(Bytes::from_static(b"1\t2\n")));
        fe::copy_done(&mut buf);
        expected.push(Frontend::CopyDone);
        fe::copy_fail("client gave up", &mut buf).unwrap();
        expected.push(Frontend::CopyFail { message: Str::from_static("client gave up") });
        fe::password_message(b"secret", &mut buf).unwrap();
        expected.push(Frontend::Password(Bytes::from_static(b"secret\0")));
        fe::sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc", &mut buf).unwrap();
        expected.push(Frontend::Password(Bytes::from_static(b"SCRAM-SHA-256\0\0\0\0\x0bn,,n=,r=abc")));
        buf.extend_from_slice(&raw(b'F', &[0, 0, 4, 0, 0, 0, 0, 0, 0, 0]));
        expected.push(Frontend::FunctionCall);
        fe::terminate(&mut buf);
        expected.push(Frontend::Terminate);
        (buf, expected)
    }

    #[test]
    fn every_frontend_type_round_trips() {
        let (buf, expected) = frontend_stream();
        let messages = decode_all_frontend(&buf);
        let got: Vec<Frontend> = messages.iter().map(|m| m.message.clone()).collect();
        assert_eq!(got, expected);
        // The frames concatenated are the stream.
        let frames: Vec<u8> = messages.iter().flat_map(|m| m.frame.iter().copied()).collect();
        assert_eq!(frames, &buf[..]);
        assert_eq!(messages[0].kind(), b'Q');
    }

    #[test]
    fn decoded_text_is_a_slice_of_the_frame() {
        let mut buf = BytesMut::new();
        fe::query("SELECT 1", &mut buf).unwrap();
        let m = decode_frontend(&mut buf, MAX).unwrap().unwrap();
        let Frontend::Query { sql } = &m.message else { panic!() };
        assert_eq!(sql.bytes().as_ptr(), m.frame[5..].as_ptr());
    }

    #[test]
    fn a_bind_is_read_in_place() {
        let bytes = bind_bytes(&[0, 1], &[Some(b"42"), None], &[1]);
        let read = view_frontend(&bytes, MAX).unwrap().unwrap();
        assert_eq!(read.frame, &bytes[..]);
        let FrontendView::Bind(bind) = read.message else { panic!("{read:?}") };
        assert_eq!((bind.portal, bind.statement), ("portal", "stmt"));
        assert_eq!(bind.param_formats.to_vec(), vec![0, 1]);
        assert_eq!((bind.param_formats.at(0), bind.param_formats.at(1)), (0, 1));
        assert_eq!(bind.params.iter().collect::<Vec<_>>(), vec![Some(&b"42"[..]), None]);
        assert_eq!(bind.params.len(), 2);
        // One result code applies to every column; none means text.
        assert_eq!((bind.result_formats.at(0), bind.result_formats.at(7)), (1, 1));
        assert_eq!(FormatCodes::default().at(3), 0);
        // The value borrows the frame.
        let value = bind.params.iter().next().flatten().unwrap();
        assert!(bytes.as_ptr_range().contains(&value.as_ptr()));
    }

    #[test]
    fn views_and_decoded_messages_agree_and_views_consume_nothing() {
        let (stream, expected) = frontend_stream();
        let mut rest = &stream[..];
        let mut owned = stream.clone();
        for message in &expected {
            let read = view_frontend(rest, MAX).unwrap().unwrap();
            let decoded = decode_frontend(&mut owned, MAX).unwrap().unwrap();
            assert_eq!(&decoded.message, message);
            assert_eq!(read.frame, &decoded.frame[..]);
            rest = &rest[read.frame.len()..];
        }
        assert!(rest.is_empty() && owned.is_empty());
        // Half a frame: nothing yet. A bad one: the same error either way.
        assert_eq!(view_frontend(&stream[..3], MAX).unwrap(), None);
        assert_eq!(view_frontend(&stream[..8], MAX).unwrap(), None);
        let bad = [b'S', 0, 0, 0, 5, 0];
        assert_eq!(
            view_frontend(&bad, MAX).unwrap_err(),
            decode_frontend(&mut BytesMut::from(&bad[..]), MAX).unwrap_err()
        );
    }

    #[test]
    fn frontend_partial_buffers_at_every_split_point() {
        let (stream, expected) = frontend_stream();
        // Byte by byte.
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &b in stream.iter() {
            buf.put_u8(b);
            while let Some(m) = decode_frontend(&mut buf, MAX).unwrap() {
                got.push(m.message);
            }
        }
        assert_eq!(got, expected);
        assert!(buf.is_empty());
        // Every prefix: only whole messages come out, the rest stays.
        for cut in 0..=stream.len() {
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut n = 0;
            let mut consumed = 0;
            while let Some(m) = decode_frontend(&mut buf, MAX).unwrap() {
                assert_eq!(m.message, expected[n]);
                consumed += m.frame.len();
                n += 1;
            }
            assert_eq!(consumed + buf.len(), cut);
        }
    }

    #[test]
    fn oversize_length_rejected_at_the_header() {
        let mut buf = BytesMut::from(&b"Q"[..]);
        buf.put_i32(70_000_000);
        let err = decode_frontend(&mut buf, MAX).unwrap_err();
        assert_eq!(err, CodecError::TooLarge { kind: 'Q', len: 70_000_000, max: MAX });
        assert_eq!(err.to_string(), "message 'Q' of 70000000 bytes exceeds the limit of 67108864 bytes");
        // Small limit, same at the backend.
        let mut buf = BytesMut::from(&raw(b'D', &[0; 100])[..]);
        assert_eq!(decode_backend(&mut buf, 50).unwrap_err(), CodecError::TooLarge { kind: 'D', len: 104, max: 50 });
    }

    #[test]
    fn backend_frames_read_in_place() {
        // Two whole frames and the start of a third.
        let mut bytes = raw(b'C', b"SELECT 1\0");
        bytes.extend_from_slice(&raw(b'Z', b"I"));
        bytes.extend_from_slice(&raw(b'D', &[0, 1, 0, 0])[..7]);
        let first = view_backend(&bytes, MAX).unwrap().unwrap();
        assert_eq!(first.message(), Some(BackendMessage::CommandComplete));
        assert_eq!(first.body(), b"SELECT 1\0");
        let rest = &bytes[first.bytes().len()..];
        let second = view_backend(rest, MAX).unwrap().unwrap();
        assert_eq!(parse_ready_for_query(&second).unwrap(), b'I');
        // Kept past the buffer: an owned copy that reads the same.
        let owned = second.to_owned_frame();
        assert_eq!(owned.view(), second);
        assert_eq!(parse_command_complete(&first.to_owned_frame()).unwrap().as_str(), "SELECT 1");
        let rest = &rest[second.bytes().len()..];
        assert_eq!(view_backend(rest, MAX).unwrap(), None);
        assert_eq!(view_backend(&rest[..3], MAX).unwrap(), None);
        // The checks of the decoder: unknown type, bad length, the limit.
        assert_eq!(view_backend(b"?\0\0\0\x04", MAX).unwrap_err(), malformed('?', "unknown message type"));
        assert_eq!(view_backend(b"D\0\0\0\x03", MAX).unwrap_err(), CodecError::BadLength { kind: 'D', len: 3 });
        assert_eq!(
            view_backend(&raw(b'D', &[0; 100]), 50).unwrap_err(),
            CodecError::TooLarge { kind: 'D', len: 104, max: 50 }
        );
    }

    #[test]
    fn bogus_lengths() {
        for len in [0i32, 3, -1, i32::MIN] {
            let mut bytes = vec![b'Q'];
            bytes.extend_from_slice(&len.to_be_bytes());
            assert_eq!(frontend_err(&bytes), CodecError::BadLength { kind: 'Q', len: i64::from(len) });
            bytes[0] = b'D';
            assert_eq!(
                decode_backend(&mut BytesMut::from(&bytes[..]), MAX).unwrap_err(),
                CodecError::BadLength { kind: 'D', len: i64::from(len) }
            );
            let err = startup_err(&len.to_be_bytes());
            assert_eq!(err, CodecError::BadLength { kind: STARTUP_KIND, len: i64::from(len) });
        }
        assert!(matches!(startup_err(&7i32.to_be_bytes()), CodecError::BadLength { len: 7, .. }));
        // Sync with a body, at the header.
        assert_eq!(frontend_err(b"S\0\0\0\x05"), CodecError::BadLength { kind: 'S', len: 5 });
    }

    #[test]
    fn garbage_before_startup() {
        let err = startup_err(b"GET / HTTP/1.1\r\n");
        assert_eq!(err, CodecError::TooLarge { kind: STARTUP_KIND, len: 0x4745_5420, max: MAX_STARTUP_PACKET_BYTES });
        assert!(err.to_string().starts_with("startup packet of 1195725856 bytes"));
        // Only 4 bytes are needed to decide.
        assert!(decode_startup(&mut BytesMut::from(&b"GET "[..]), MAX).is_err());
        // After startup, the first byte decides.
        assert_eq!(frontend_err(b"G"), CodecError::Malformed { kind: 'G', what: "unknown message type" });
        // A large-but-legal claim waits, but above 10000 it fails.
        assert_eq!(decode_startup(&mut BytesMut::from(&9_000i32.to_be_bytes()[..]), MAX), Ok(None));
        assert!(matches!(startup_err(&10_001i32.to_be_bytes()), CodecError::TooLarge { max: 10_000, .. }));
        assert!(matches!(
            decode_startup(&mut BytesMut::from(&100i32.to_be_bytes()[..]), 50),
            Err(CodecError::TooLarge { max: 50, .. })
        ));
    }

    #[test]
    fn startup_packets() {
        let mut buf = BytesMut::new();
        fe::ssl_request(&mut buf);
        assert_eq!(decode_startup(&mut buf, MAX), Ok(Some(Startup::SslRequest)));
        let gss = startup_raw(&GSSENC_REQUEST_CODE.to_be_bytes());
        assert_eq!(decode_startup(&mut BytesMut::from(&gss[..]), MAX), Ok(Some(Startup::GssEncRequest)));
        fe::startup_message([("user", "alice"), ("database", "app"), ("application_name", "ø")], &mut buf).unwrap();
        let Some(Startup::Startup { version, params }) = decode_startup(&mut buf, MAX).unwrap() else { panic!() };
        assert!(buf.is_empty());
        assert_eq!(version, PROTOCOL_3_0);
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(params, [("user", "alice"), ("database", "app"), ("application_name", "ø")]);
        // 3.2 and a future 3.9999 are reported as requested; no parameters.
        for minor in [2u32, 9999] {
            let mut body = (PROTOCOL_3_0 | minor).to_be_bytes().to_vec();
            body.push(0);
            let got = decode_startup(&mut BytesMut::from(&startup_raw(&body)[..]), MAX).unwrap();
            assert_eq!(got, Some(Startup::Startup { version: PROTOCOL_3_0 | minor, params: vec![] }));
        }
        // Cancel: 3.0 key through postgres_protocol, 3.2 key.
        for secret in [&b"\x01\x02\x03\x04"[..], &[7u8; 32][..], &[9u8; 256][..]] {
            let mut buf = BytesMut::new();
            cancel_request(&mut buf, 4242, secret).unwrap();
            let got = decode_startup(&mut buf, MAX).unwrap();
            assert_eq!(got, Some(Startup::Cancel { pid: 4242, secret: Bytes::copy_from_slice(secret) }));
        }
        assert!(cancel_request(&mut BytesMut::new(), 1, &[0; 3]).is_err());
        assert!(cancel_request(&mut BytesMut::new(), 1, &[0; 257]).is_err());
        let mut long = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        long.extend_from_slice(&[0; 4 + 257]);
        assert!(matches!(startup_err(&startup_raw(&long)), CodecError::BadLength { .. }));
        let mut short = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        short.extend_from_slice(&[0; 4]);
        assert!(matches!(startup_err(&startup_raw(&short)), CodecError::BadLength { .. }));
        let mut ssl_body = SSL_REQUEST_CODE.to_be_bytes().to_vec();
        ssl_body.push(0);
        assert!(matches!(startup_err(&startup_raw(&ssl_body)), CodecError::BadLength { len: 9, .. }));
    }

    #[test]
    fn startup_partial_buffers() {
        let mut stream = BytesMut::new();
        fe::startup_message([("user", "bob")], &mut stream).unwrap();
        for cut in 0..stream.len() {
            let mut buf = BytesMut::from(&stream[..cut]);
            assert_eq!(decode_startup(&mut buf, MAX), Ok(None));
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn bad_startup_messages() {
        let v3 = PROTOCOL_3_0.to_be_bytes();
        let with = |tail: &[u8]| {
            let mut body = v3.to_vec();
            body.extend_from_slice(tail);
            startup_err(&startup_raw(&body))
        };
        assert_eq!(
            with(b"user\0alice\0"),
            CodecError::Malformed { kind: STARTUP_KIND, what: "missing terminator after the startup parameters" }
        );
        assert_eq!(with(b""), with(b"user\0alice\0"));
        assert_eq!(
            with(b"user\0alice\0database\0"),
            CodecError::Malformed { kind: STARTUP_KIND, what: "startup parameter without a value" }
        );
        assert_eq!(
            with(b"user\0alice\0user\0root\0\0"),
            CodecError::Malformed { kind: STARTUP_KIND, what: "duplicate startup parameter" }
        );
        assert_eq!(
            with(b"user\0al\xffice\0\0"),
            CodecError::InvalidUtf8 { kind: STARTUP_KIND, field: "parameter value" }
        );
        assert_eq!(
            with(b"user\0alice\0\0x"),
            CodecError::Malformed { kind: STARTUP_KIND, what: "trailing bytes after the last field" }
        );
        for code in [2u32 << 16, 4 << 16, (1234 << 16) | 5677, (1234 << 16) | 5681, 0] {
            let mut body = code.to_be_bytes().to_vec();
            body.push(0);
            assert_eq!(startup_err(&startup_raw(&body)), CodecError::UnsupportedProtocol { code });
        }
        assert_eq!(
            CodecError::UnsupportedProtocol { code: 2 << 16 }.to_string(),
            "unsupported protocol version or request code 2.0 (131072)"
        );
    }

    #[test]
    fn invalid_utf8_sql() {
        assert_eq!(
            frontend_err(&raw(b'Q', b"SELECT '\xc3\x28'\0")),
            CodecError::InvalidUtf8 { kind: 'Q', field: "query string" }
        );
        assert_eq!(
            frontend_err(&raw(b'P', b"\0SELECT \xff\0\0\0")),
            CodecError::InvalidUtf8 { kind: 'P', field: "query string" }
        );
        assert_eq!(
            frontend_err(&raw(b'B', b"p\xfe\0\0\0\0\0\0\0\0")),
            CodecError::InvalidUtf8 { kind: 'B', field: "portal name" }
        );
    }

    #[test]
    fn missing_terminators_and_trailing_bytes() {
        assert_eq!(
            frontend_err(&raw(b'Q', b"SELECT 1")),
            CodecError::Malformed { kind: 'Q', what: "missing NUL terminator in query string" }
        );
        // A NUL inside the SQL ends it; the rest is trailing garbage.
        assert_eq!(
            frontend_err(&raw(b'Q', b"SELECT 1\0; DROP TABLE t\0")),
            CodecError::Malformed { kind: 'Q', what: "trailing bytes after the last field" }
        );
        assert!(matches!(frontend_err(&raw(b'E', b"\0\0\0\0\0\0")), CodecError::Malformed { kind: 'E', .. }));
        assert!(matches!(frontend_err(&raw(b'E', b"\0\0\0")), CodecError::Malformed { kind: 'E', .. }));
        assert!(matches!(frontend_err(&raw(b'P', b"\0x\0\0\x01")), CodecError::Malformed { .. }));
        assert!(matches!(frontend_err(&raw(b'f', b"oops")), CodecError::Malformed { kind: 'f', .. }));
        let mut bind = bind_bytes(&[], &[Some(b"1")], &[]).to_vec();
        bind.push(0);
        let len = (bind.len() - 1) as i32;
        bind[1..5].copy_from_slice(&len.to_be_bytes());
        assert_eq!(
            frontend_err(&bind),
            CodecError::Malformed { kind: 'B', what: "trailing bytes after the last field" }
        );
    }

    #[test]
    fn describe_and_close_kinds() {
        assert_eq!(one_frontend(&raw(b'D', b"S\0")), Frontend::Describe { kind: b'S', name: Str::default() });
        for kind in [b'D', b'C'] {
            assert_eq!(
                frontend_err(&raw(kind, b"X\0")),
                CodecError::Malformed { kind: char::from(kind), what: "target kind is neither 'S' nor 'P'" }
            );
            assert!(matches!(frontend_err(&raw(kind, b"")), CodecError::Malformed { .. }));
        }
    }

    #[test]
    fn bind_hostile_counts_and_lengths() {
        // 30000 parameters claimed, 20-byte body.
        let mut body = b"\0\0\0\0".to_vec();
        body.extend_from_slice(&30_000u16.to_be_bytes());
        body.resize(20, 0);
        assert_eq!(
            frontend_err(&raw(b'B', &body)),
            CodecError::Malformed { kind: 'B', what: "parameter values exceed the message" }
        );
        // 65535 format codes claimed.
        let mut body = b"\0\0".to_vec();
        body.extend_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(
            frontend_err(&raw(b'B', &body)),
            CodecError::Malformed { kind: 'B', what: "format codes exceed the message" }
        );
        // Value length -2, and a length past the end.
        for (len, what) in [(-2i32, "negative value length"), (100, "value exceeds the message")] {
            let mut body = b"\0\0\0\0\0\x01".to_vec();
            body.extend_from_slice(&len.to_be_bytes());
            body.extend_from_slice(b"abcd\0\0");
            assert_eq!(frontend_err(&raw(b'B', &body)), CodecError::Malformed { kind: 'B', what });
        }
        // Format count neither 0, 1 nor the parameter count; bad format code.
        let bytes = bind_bytes(&[0, 0, 0], &[Some(b"1"), Some(b"2")], &[]);
        assert_eq!(
            frontend_err(&bytes),
            CodecError::Malformed { kind: 'B', what: "parameter format count does not match the parameter count" }
        );
        let bytes = bind_bytes(&[2], &[Some(b"1")], &[]);
        assert_eq!(frontend_err(&bytes), CodecError::Malformed { kind: 'B', what: "unsupported format code" });
        let bytes = bind_bytes(&[], &[], &[0, 7]);
        assert_eq!(frontend_err(&bytes), CodecError::Malformed { kind: 'B', what: "unsupported format code" });
        // One format for all, empty value vs NULL.
        let got = one_frontend(&bind_bytes(&[1], &[Some(b""), None, Some(b"x")], &[]));
        let Frontend::Bind { params, param_formats, .. } = got else { panic!() };
        assert_eq!(param_formats, [1]);
        assert_eq!(params, [Some(Bytes::new()), None, Some(Bytes::from_static(b"x"))]);
        // Parse with more types claimed than present.
        let mut body = b"\0SELECT 1\0".to_vec();
        body.extend_from_slice(&40_000u16.to_be_bytes());
        body.extend_from_slice(&[0; 8]);
        assert_eq!(
            frontend_err(&raw(b'P', &body)),
            CodecError::Malformed { kind: 'P', what: "parameter types exceed the message" }
        );
    }

    #[test]
    fn many_parameters_read_as_unsigned_counts() {
        let values: Vec<Option<&[u8]>> = vec![None; 40_000];
        let mut body = b"\0\0\0\0".to_vec();
        body.extend_from_slice(&40_000u16.to_be_bytes());
        for v in &values {
            assert!(v.is_none());
            body.extend_from_slice(&(-1i32).to_be_bytes());
        }
        body.extend_from_slice(&[0, 0]);
        let Frontend::Bind { params, .. } = one_frontend(&raw(b'B', &body)) else { panic!() };
        assert_eq!(params.len(), 40_000);
    }

    #[test]
    fn unknown_type_bytes() {
        for kind in [b'A', b'G', b'z', 0, 0xff, b'T'] {
            assert_eq!(
                frontend_err(&[kind]),
                CodecError::Malformed { kind: char::from(kind), what: "unknown message type" }
            );
        }
        assert_eq!(
            decode_backend(&mut BytesMut::from(&b"Q\0\0\0\x04"[..]), MAX).unwrap_err(),
            CodecError::Malformed { kind: 'Q', what: "unknown message type" }
        );
        assert_eq!(
            CodecError::Malformed { kind: '\u{7}', what: "unknown message type" }.to_string(),
            "malformed message 0x07: unknown message type"
        );
    }

    #[test]
    fn backend_row_description_and_data_rows() {
        let fields = vec![
            FieldDescription {
                name: Str::from_static("id"),
                table_oid: 16384,
                column: 1,
                type_oid: 23,
                type_size: 4,
                type_modifier: -1,
                format: 0,
            },
            FieldDescription {
                name: Str::from(String::from("émail")),
                table_oid: 16384,
                column: 2,
                type_oid: 25,
                type_size: -1,
                type_modifier: -1,
                format: 1,
            },
        ];
        let mut buf = BytesMut::new();
        row_description(&mut buf, &fields).unwrap();
        let values: [Option<&[u8]>; 3] = [Some(b"1"), None, Some(b"")];
        data_row(&mut buf, values.iter().copied()).unwrap();
        data_row(&mut buf, Vec::<Option<Bytes>>::new()).unwrap();
        let big = vec![b'x'; 100_000];
        data_row(&mut buf, [Some(&big[..])]).unwrap();
        command_complete(&mut buf, "SELECT 3").unwrap();
        ready_for_query(&mut buf, b'I');
        let stream = buf.clone().freeze();

        let t = decode_backend(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(parse_row_description(&t).unwrap(), fields);
        let d = decode_backend(&mut buf, MAX).unwrap().unwrap();
        let got = data_row_values(&d).unwrap();
        assert_eq!(got, [Some(Bytes::from_static(b"1")), None, Some(Bytes::new())]);
        let range = d.frame.as_ptr() as usize..d.frame.as_ptr() as usize + d.frame.len();
        for v in got.iter().flatten() {
            assert!(range.contains(&(v.as_ptr() as usize)) || v.is_empty(), "zero-copy slice");
        }
        assert!(range.contains(&(got[0].as_ref().unwrap().as_ptr() as usize)));
        let empty = decode_backend(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(data_row_values(&empty).unwrap(), []);
        let large = decode_backend(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(&large.frame[1..5], &(100_000i32 + 4 + 2 + 4).to_be_bytes());
        assert_eq!(data_row_values(&large).unwrap()[0].as_deref(), Some(&big[..]));
        // Re-encoding decoded values gives the same frame.
        let mut again = BytesMut::new();
        data_row(&mut again, data_row_values(&d).unwrap()).unwrap();
        assert_eq!(&again[..], &d.frame[..]);
        let c = decode_backend(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(parse_command_complete(&c).unwrap(), "SELECT 3");
        let z = decode_backend(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(parse_ready_for_query(&z).unwrap(), b'I');
        assert_eq!(z.body(), b"I");
        assert!(buf.is_empty());
        // Wrong parser for the frame.
        assert_eq!(
            data_row_values(&t).unwrap_err(),
            CodecError::Malformed { kind: 'T', what: "unexpected message type" }
        );

        // Byte by byte, same frames.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for &b in stream.iter() {
            buf.put_u8(b);
            while let Some(f) = decode_backend(&mut buf, MAX).unwrap() {
                frames.push(f);
            }
        }
        assert_eq!(frames, [t, d, empty, large, c, z]);
    }

    #[test]
    fn hostile_data_rows() {
        let mut body = 30_000u16.to_be_bytes().to_vec();
        body.extend_from_slice(&[0xff; 16]);
        let f = backend(&raw(b'D', &body));
        assert_eq!(
            data_row_values(&f).unwrap_err(),
            CodecError::Malformed { kind: 'D', what: "column values exceed the message" }
        );
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(&(-5i32).to_be_bytes());
        assert!(data_row_values(&backend(&raw(b'D', &body))).is_err());
        let mut body = 1u16.to_be_bytes().to_vec();
        body.extend_from_slice(&(-1i32).to_be_bytes());
        body.push(0);
        assert!(data_row_values(&backend(&raw(b'D', &body))).is_err());
        let mut body = 1000u16.to_be_bytes().to_vec();
        body.extend_from_slice(&[0; 64]);
        assert!(parse_row_description(&backend(&raw(b'T', &body))).is_err());
        // A hand-made frame whose kind disagrees with its bytes.
        let forged = BackendFrame { kind: b'D', frame: Bytes::from_static(b"T\0\0\0\x06\0\0") };
        assert!(data_row_values(&forged).is_err());
        let short = BackendFrame { kind: b'D', frame: Bytes::from_static(b"D") };
        assert!(data_row_values(&short).is_err());
        assert_eq!(short.body(), b"");
    }

    #[test]
    fn error_and_notice_fields() {
        let mut buf = BytesMut::new();
        error_response(&mut buf, "ERROR", "42501", "permission denied for table salaries", &[(b'H', "ask an admin")])
            .unwrap();
        notice_response(&mut buf, "WARNING", "01000", "masked", &[]).unwrap();
        let e = decode_backend(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(e.kind, b'E');
        let fields = parse_fields(&e).unwrap();
        let fields: Vec<(u8, &str)> = fields.iter().map(|(c, v)| (*c, v.as_str())).collect();
        assert_eq!(
            fields,
            [
                (b'S', "ERROR"),
                (b'V', "ERROR"),
                (b'C', "42501"),
                (b'M', "permission denied for table salaries"),
                (b'H', "ask an admin")
            ]
        );
        let mut again = BytesMut::new();
        fields_message(&mut again, b'E', &fields).unwrap();
        assert_eq!(&again[..], &e.frame[..]);
        let n = decode_backend(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(n.kind, b'N');
        assert_eq!(parse_fields(&n).unwrap()[3], (b'M', Str::from_static("masked")));
        // Non-UTF-8 server text is converted lossily.
        let f = backend(&raw(b'E', b"Mcaf\xe9\0\0"));
        assert_eq!(parse_fields(&f).unwrap(), [(b'M', Str::from(String::from("caf\u{fffd}")))]);
        assert!(parse_fields(&backend(&raw(b'E', b"Mabc\0"))).is_err());
        assert!(parse_fields(&backend(&raw(b'E', b"Mabc"))).is_err());
        assert!(parse_fields(&backend(&raw(b'E', b"\0\0"))).is_err());
    }

    #[test]
    fn encoders_refuse_invalid_messages_and_leave_the_buffer() {
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert!(error_response(&mut buf, "ERROR", "42501", "nul\0inside", &[]).is_err());
        assert!(error_response(&mut buf, "ERROR", "4250", "short code", &[]).is_err());
        assert!(error_response(&mut buf, "ERROR", "42501", "m", &[(0, "x")]).is_err());
        assert!(fields_message(&mut buf, b'X', &[]).is_err());
        assert!(command_complete(&mut buf, "a\0b").is_err());
        assert!(parameter_status(&mut buf, "a", "b\0").is_err());
        assert!(backend_key_data(&mut buf, 1, &[1, 2]).is_err());
        assert!(negotiate_protocol_version(&mut buf, u32::MAX, &[]).is_err());
        assert!(data_row(&mut buf, vec![None::<&[u8]>; 70_000]).is_err());
        let field = FieldDescription {
            name: Str::from_static("bad\0name"),
            table_oid: 0,
            column: 0,
            type_oid: 0,
            type_size: 0,
            type_modifier: 0,
            format: 0,
        };
        assert!(row_description(&mut buf, &[field]).is_err());
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn other_backend_messages() {
        let mut buf = BytesMut::new();
        auth_ok(&mut buf);
        auth_cleartext_password(&mut buf);
        parameter_status(&mut buf, "server_version", "17.2").unwrap();
        backend_key_data(&mut buf, 77, &[1, 2, 3, 4]).unwrap();
        backend_key_data(&mut buf, 78, &[5; 32]).unwrap();
        negotiate_protocol_version(&mut buf, 2, &["_pq_.foo", "_pq_.bar"]).unwrap();
        empty_query_response(&mut buf);
        parse_complete(&mut buf);
        bind_complete(&mut buf);
        close_complete(&mut buf);
        no_data(&mut buf);
        buf.extend_from_slice(&raw(b'R', b"\0\0\0\x05salt"));
        buf.extend_from_slice(&raw(b'R', b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"));
        buf.extend_from_slice(&raw(b'R', b"\0\0\0\x0br=abc,s=def,i=4096"));
        buf.extend_from_slice(&raw(b'R', b"\0\0\0\x0cv=xyz"));
        buf.extend_from_slice(&raw(b'R', b"\0\0\0\x07gss"));
        buf.extend_from_slice(&raw(b'H', b"\0\0\x02\0\0\0\0"));
        buf.extend_from_slice(&raw(b'G', b"\x01\0\0"));
        buf.extend_from_slice(&raw(b't', b"\0\x02\0\0\0\x17\0\0\0\x19"));
        let mut next = || decode_backend(&mut buf, MAX).unwrap().unwrap();
        assert_eq!(parse_authentication(&next()).unwrap(), Authentication::Ok);
        assert_eq!(parse_authentication(&next()).unwrap(), Authentication::CleartextPassword);
        assert_eq!(
            parse_parameter_status(&next()).unwrap(),
            (Str::from_static("server_version"), Str::from_static("17.2"))
        );
        assert_eq!(parse_backend_key_data(&next()).unwrap(), (77, Bytes::from_static(&[1, 2, 3, 4])));
        assert_eq!(parse_backend_key_data(&next()).unwrap(), (78, Bytes::from(vec![5; 32])));
        assert_eq!(
            parse_negotiate_protocol_version(&next()).unwrap(),
            (2, vec![Str::from_static("_pq_.foo"), Str::from_static("_pq_.bar")])
        );
        for kind in [b'I', b'1', b'2', b'3', b'n'] {
            let f = next();
            assert_eq!((f.kind, f.body()), (kind, &b""[..]));
        }
        assert_eq!(parse_authentication(&next()).unwrap(), Authentication::Md5Password { salt: *b"salt" });
        assert_eq!(
            parse_authentication(&next()).unwrap(),
            Authentication::Sasl {
                mechanisms: vec![Str::from_static("SCRAM-SHA-256-PLUS"), Str::from_static("SCRAM-SHA-256")]
            }
        );
        assert_eq!(
            parse_authentication(&next()).unwrap(),
            Authentication::SaslContinue(Bytes::from_static(b"r=abc,s=def,i=4096"))
        );
        assert_eq!(parse_authentication(&next()).unwrap(), Authentication::SaslFinal(Bytes::from_static(b"v=xyz")));
        assert_eq!(parse_authentication(&next()).unwrap(), Authentication::Other(7));
        assert_eq!(parse_copy_response(&next()).unwrap(), (0, vec![0, 0]));
        assert_eq!(parse_copy_response(&next()).unwrap(), (1, vec![]));
        assert_eq!(parse_parameter_description(&next()).unwrap(), [23, 25]);
        assert!(buf.is_empty());
        // Hostile variants.
        assert!(parse_authentication(&backend(&raw(b'R', b"\0\0\0\x05sa"))).is_err());
        assert!(parse_authentication(&backend(&raw(b'R', b"\0\0\0\0x"))).is_err());
        assert!(parse_authentication(&backend(&raw(b'R', b"\0\0\0\x0aSCRAM"))).is_err());
        assert!(parse_backend_key_data(&backend(&raw(b'K', b"\0\0\0\x01ab"))).is_err());
        assert!(parse_ready_for_query(&backend(&raw(b'Z', b"Q"))).is_err());
        assert!(parse_ready_for_query(&backend(&raw(b'Z', b"II"))).is_err());
        assert!(parse_negotiate_protocol_version(&backend(&raw(b'v', b"\0\0\0\x02\x7f\xff\xff\xff"))).is_err());
        assert!(parse_negotiate_protocol_version(&backend(&raw(b'v', b"\xff\0\0\x02\0\0\0\0"))).is_err());
        assert!(parse_copy_response(&backend(&raw(b'H', b"\x02\0\0"))).is_err());
        assert!(parse_parameter_status(&backend(&raw(b'S', b"a\0b"))).is_err());
        assert!(parse_command_complete(&backend(&raw(b'C', b"SEL\xffECT\0"))).is_err());
    }

    #[test]
    fn str_behaves_like_a_string() {
        let s = Str::from_static("héllo");
        assert_eq!(s.as_str(), "héllo");
        assert_eq!(&*s, "héllo");
        assert_eq!(s.len(), 6);
        assert_eq!(format!("{s} {s:?}"), "héllo \"héllo\"");
        assert_eq!(s, Str::from(String::from("héllo")));
        assert!(Str::from_utf8(Bytes::from_static(b"\xff")).is_err());
        let valid = Bytes::from(b"plain".to_vec());
        assert_eq!(Str::from_utf8_lossy(valid.clone()).bytes().as_ptr(), valid.as_ptr());
        assert_eq!(Str::from_utf8_lossy(Bytes::from_static(b"a\xffb")), "a\u{fffd}b");
        assert_eq!(s.clone().into_bytes(), Bytes::from_static("héllo".as_bytes()));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let kinds = b"QPBEDCSHXdcfFp123AcCdDEGHIKnNRsStTvVWZ";
        for round in 0..30_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Often, a plausible header so bodies get parsed.
            if round % 2 == 0 && len >= 5 {
                bytes[0] = kinds[(next() % kinds.len() as u64) as usize];
                let word = (len - 1) as i32;
                bytes[1..5].copy_from_slice(&word.to_be_bytes());
            }
            if round % 3 == 0 && len >= 8 {
                bytes[..4].copy_from_slice(&(len as i32).to_be_bytes());
                let codes = [PROTOCOL_3_0, PROTOCOL_3_0 | 2, CANCEL_REQUEST_CODE, SSL_REQUEST_CODE];
                bytes[4..8].copy_from_slice(&codes[(next() % 4) as usize].to_be_bytes());
            }
            let max = if round % 5 == 0 { 16 } else { MAX };
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode_frontend(&mut buf, max) {}
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode_startup(&mut buf, max) {}
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(frame)) = decode_backend(&mut buf, max) {
                let _ = parse_row_description(&frame);
                let _ = parse_parameter_description(&frame);
                let _ = data_row_values(&frame);
                let _ = parse_fields(&frame);
                let _ = parse_command_complete(&frame);
                let _ = parse_ready_for_query(&frame);
                let _ = parse_backend_key_data(&frame);
                let _ = parse_parameter_status(&frame);
                let _ = parse_copy_response(&frame);
                let _ = parse_authentication(&frame);
                let _ = parse_negotiate_protocol_version(&frame);
            }
        }
    }
}
