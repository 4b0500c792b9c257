//! Fuzz target `codec`: arbitrary bytes through the gateway's wire codec
//! (`pg_proxy::codec`) and COPY's text format (`pg_proxy::codec::copy`).
//!
//! The first byte picks the mode (its two low bits) and a chunk size (the
//! six high bits, plus one: 1 to 64 bytes); the rest of the input is the
//! payload. A seed file is therefore one mode byte followed by raw wire
//! bytes, or by a COPY line.
//!
//! - mode 0, frontend: the payload is what a client sends after startup;
//! - mode 1, backend: the payload is what a server sends;
//! - mode 2, startup: the payload is the first packet(s) of a connection;
//! - mode 3, COPY lines: the payload is one COPY line, read in the text
//!   format and in CSV (with PostgreSQL's defaults and with other options),
//!   and binary COPY data after its header, read row by row whole and in
//!   chunks (the same outcome each way; data that reads to its end passes,
//!   and rows rewritten with their own values come out, byte for byte).
//!
//! In modes 0 to 2 the decoder runs in a loop over the whole payload at
//! once, with a large limit and with a small one, and again fed chunk by
//! chunk, as a socket would. Checked (a violation panics, which libFuzzer
//! reports as a crash):
//!
//! 1. no decoder panics, whatever the bytes;
//! 2. `Ok(None)` consumes nothing; `Ok(Some(_))` consumes one frame, whose
//!    bytes (`frame`) are exactly the consumed prefix, whose length word is
//!    its length less the type byte, within the limit;
//! 3. fed in chunks, a decoder cuts the same frames and ends with the same
//!    error or the same leftover bytes as over the whole buffer;
//! 4. with the small limit, the frames are a prefix of the large limit's,
//!    and it stops early only on `TooLarge` for a frame over the limit;
//! 5. backend frames: `message()` is the type byte's, every `parse_*`
//!    function runs on every frame without panicking, refuses frames of
//!    another type, and a frame it reads is re-encoded byte for byte by the
//!    codec's encoder of that message (where there is one);
//!    `data_row_values` and `data_row_values_into` agree;
//! 6. startup packets re-encode byte for byte (StartupMessage by hand,
//!    CancelRequest with `cancel_request`).
//!
//! `PORTCULLIS_FUZZ_DEBUG=1 fuzz/target/*/release/codec FILE` prints what
//! an input decodes to (frames and how the loop ended, or the COPY row).
//!
//! In mode 3 the round trip that truly holds is checked, and no more:
//!
//! - `unescape(escape(v)) == v` for every value `v` (here: the payload's
//!   NUL-separated pieces, `0xff` alone standing for NULL), and a row of
//!   such values written by `copy_data_line`, decoded by `decode_frontend`
//!   and split by `split_line` is the same row (rows of at least one
//!   value: an empty row and a row of one empty value are both an empty
//!   line);
//! - for any line, `split_line` then `copy_data_line` then
//!   `decode_frontend` then `split_line` gives the same row and newline
//!   flag, and writing that row again gives the same bytes (the writer's
//!   output is a fixed point);
//! - the line comes back byte for byte only when it is in the writer's
//!   form: the only escapes `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, `\v` and a
//!   whole-field `\N`, no raw CR, LF, BS, FF or VT before the final LF.
//!   `escape(unescape(f))` is not `f` in general: `\x41` or `\101` come
//!   back as `A`, a raw CR as `\r`, a lone final backslash as `\\`.
//!
//! And in CSV, for both layouts: a row of such values written by
//! `csv_data_line` (nothing quoted before) splits back into the same row
//! with `split_csv_line`; any line `split_csv_line` reads is written
//! back as a line that splits into the same row, and writing that row again
//! gives the same bytes.

#![no_main]

use std::borrow::Cow;
use std::sync::OnceLock;

use bytes::{BufMut, BytesMut};
use libfuzzer_sys::fuzz_target;
use pg_proxy::codec::{self, copy, BackendFrame, BackendMessage, CodecError, Frontend, FrontendMessage, Startup};

/// The small limit (the length word counts itself: 4 is an empty body).
const SMALL_MAX: usize = 64;
const LARGE_MAX: usize = codec::DEFAULT_MAX_MESSAGE_BYTES;

type Decoder<T> = fn(&mut BytesMut, usize) -> Result<Option<T>, CodecError>;

/// How a decoding loop ended: on an error, or with bytes left that make no
/// whole frame.
#[derive(Debug, PartialEq)]
enum End {
    Error(CodecError),
    Leftover(Vec<u8>),
}

/// The frames cut from a buffer (each with the bytes it consumed) and how
/// the loop ended.
#[derive(Debug, PartialEq)]
struct Run<T> {
    frames: Vec<(T, Vec<u8>)>,
    end: End,
}

/// One decode on `buf`, checking what it consumed: `Ok(None)` nothing,
/// `Ok(Some(_))` a non-empty prefix, returned.
fn step<T>(buf: &mut BytesMut, max: usize, decode: Decoder<T>) -> Result<Option<(T, Vec<u8>)>, CodecError> {
    let before = buf.to_vec();
    match decode(buf, max) {
        Ok(None) => {
            if buf[..] != before[..] {
                panic!("Ok(None) changed the buffer: {} bytes before, {} after", before.len(), buf.len());
            }
            Ok(None)
        }
        Ok(Some(frame)) => {
            let consumed = before.len().checked_sub(buf.len()).unwrap_or_else(|| panic!("the buffer grew"));
            if consumed == 0 {
                panic!("a frame was decoded from no bytes");
            }
            if buf[..] != before[consumed..] {
                panic!("the decoder did not consume a prefix");
            }
            Ok(Some((frame, before[..consumed].to_vec())))
        }
        Err(e) => Err(e),
    }
}

/// Decodes all of `data` at once.
fn whole<T>(data: &[u8], max: usize, decode: Decoder<T>) -> Run<T> {
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    loop {
        match step(&mut buf, max, decode) {
            Ok(Some(f)) => frames.push(f),
            Ok(None) => return Run { frames, end: End::Leftover(buf.to_vec()) },
            Err(e) => return Run { frames, end: End::Error(e) },
        }
    }
}

/// Decodes `data` fed `chunk` bytes at a time, decoding all it can after
/// each chunk.
fn chunked<T>(data: &[u8], chunk: usize, max: usize, decode: Decoder<T>) -> Run<T> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match step(&mut buf, max, decode) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return Run { frames, end: End::Error(e) },
            }
        }
    }
    Run { frames, end: End::Leftover(buf.to_vec()) }
}

/// The decoding checks common to the three decoders; returns the run with
/// the large limit. `len_word` reads a frame's length word (what the limit
/// bounds) from its bytes.
fn decode_checks<T: PartialEq + std::fmt::Debug>(
    data: &[u8],
    chunk: usize,
    decode: Decoder<T>,
    len_word: fn(&[u8]) -> usize,
    small_max: usize,
) -> Run<T> {
    let large = whole(data, LARGE_MAX, decode);
    if debug() {
        for (frame, bytes) in &large.frames {
            eprintln!("frame of {} bytes: {frame:?}", bytes.len());
        }
        eprintln!("end: {:?}", large.end);
    }
    let streamed = chunked(data, chunk, LARGE_MAX, decode);
    if streamed != large {
        panic!("fed in chunks of {chunk} bytes, the decoder did otherwise:\n{streamed:?}\nvs at once:\n{large:?}");
    }
    let small = whole(data, small_max, decode);
    for (_, bytes) in &small.frames {
        if len_word(bytes) > small_max {
            panic!("a frame of {} bytes passed the limit of {small_max}", len_word(bytes));
        }
    }
    let k = small.frames.len();
    if large.frames.get(..k) != Some(&small.frames[..]) {
        panic!("with the small limit the frames are not a prefix of the large limit's");
    }
    let too_large = matches!(&small.end, End::Error(CodecError::TooLarge { max, .. }) if *max == small_max);
    if k < large.frames.len() {
        let next = len_word(&large.frames[k].1);
        if !too_large || next <= small_max {
            panic!("the small limit stopped before a frame of {next} bytes with {:?}", small.end);
        }
    } else if small.end != large.end && !too_large {
        panic!("the small limit ended with {:?}, the large one with {:?}", small.end, large.end);
    }
    large
}

fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("PORTCULLIS_FUZZ_DEBUG").is_some())
}

fn word_at(bytes: &[u8], at: usize) -> usize {
    let word: [u8; 4] = bytes[at..at + 4].try_into().unwrap_or_else(|_| panic!("short frame"));
    usize::try_from(u32::from_be_bytes(word)).unwrap_or(usize::MAX)
}

/// A frontend or backend frame: type byte, then a length word that counts
/// the rest.
fn check_typed_frame(frame: &[u8], consumed: &[u8], max: usize) {
    if frame != consumed {
        panic!("the frame is not the consumed bytes");
    }
    if frame.len() < 5 || word_at(frame, 1) != frame.len() - 1 || frame.len() - 1 > max {
        panic!("bad frame of {} bytes", frame.len());
    }
}

// ------------------------------------------------------------------ frontend

/// Runs an in-place reader (what the session uses) and the owned decoder
/// of the same frames side by side over `data`: they cut the same frames
/// (`same` checks a pair and gives the frame's length) and fail, or wait,
/// at the same place with the same error.
fn views_agree<'a, V: std::fmt::Debug, F: std::fmt::Debug>(
    data: &'a [u8],
    max: usize,
    view: fn(&'a [u8], usize) -> Result<Option<V>, CodecError>,
    decode: Decoder<F>,
    same: impl Fn(&V, &F) -> usize,
) {
    let mut owned = BytesMut::from(data);
    let mut rest = data;
    loop {
        match (view(rest, max), decode(&mut owned, max)) {
            (Ok(Some(v)), Ok(Some(f))) => rest = &rest[same(&v, &f)..],
            (Ok(None), Ok(None)) => {
                if owned[..] != *rest {
                    panic!("the view and the decoder wait with different bytes left");
                }
                return;
            }
            (Err(a), Err(b)) if a == b => return,
            (a, b) => panic!("the view and the decoder disagree: {a:?} / {b:?}"),
        }
    }
}

/// `view_frontend` and `decode_frontend` agree.
fn frontend_views_agree(data: &[u8], max: usize) {
    views_agree(data, max, codec::view_frontend, codec::decode_frontend, |v, m| {
        if v.frame != &m.frame[..] {
            panic!("the view and the decoder cut different frames");
        }
        v.frame.len()
    });
}

fn frontend(data: &[u8], chunk: usize) {
    frontend_views_agree(data, SMALL_MAX);
    frontend_views_agree(data, LARGE_MAX);
    let run = decode_checks(data, chunk, codec::decode_frontend, |b| word_at(b, 1), SMALL_MAX);
    for (m, consumed) in &run.frames {
        let FrontendMessage { message, frame } = m;
        check_typed_frame(frame, consumed, LARGE_MAX);
        if m.kind() != frame[0] {
            panic!("kind() is not the type byte");
        }
        let body = &frame[5..];
        match message {
            Frontend::CopyData(b) | Frontend::Password(b) if b[..] != *body => {
                panic!("raw body is not the frame's body")
            }
            Frontend::Query { sql } if [sql.as_bytes(), b"\0"].concat() != body => panic!("query is not the body"),
            Frontend::Bind { param_formats, params, result_formats, .. } => {
                if param_formats.len() > 1 && param_formats.len() != params.len() {
                    panic!("Bind with {} formats for {} parameters", param_formats.len(), params.len());
                }
                if param_formats.iter().chain(result_formats).any(|f| *f != 0 && *f != 1) {
                    panic!("Bind with a format code other than 0 or 1");
                }
            }
            Frontend::Describe { kind, .. } | Frontend::Close { kind, .. } if *kind != b'S' && *kind != b'P' => {
                panic!("Describe/Close target {kind}")
            }
            Frontend::Sync | Frontend::Flush | Frontend::Terminate | Frontend::CopyDone if !body.is_empty() => {
                panic!("a message without a body has one")
            }
            _ => {}
        }
    }
}

// ------------------------------------------------------------------- backend

/// `view_backend` and `decode_backend` agree, and the parsers that read a
/// view read it as they read the owned frame.
fn backend_views_agree(data: &[u8], max: usize) {
    views_agree(data, max, codec::view_backend, codec::decode_backend, |v, f| {
        if v.kind != f.kind || v.bytes() != &f.frame[..] || v.to_owned_frame() != *f {
            panic!("the view and the decoder cut different frames");
        }
        if v.message() != f.message() || v.body() != f.body() || f.view() != *v {
            panic!("the view and the frame read differently");
        }
        if codec::parse_ready_for_query(v) != codec::parse_ready_for_query(f)
            || codec::parse_copy_response(v) != codec::parse_copy_response(f)
            || codec::parse_parameter_description(v) != codec::parse_parameter_description(f)
        {
            panic!("a parser read the view and the frame differently");
        }
        let (mut from_view, mut borrowed): (Vec<Option<&[u8]>>, Vec<Option<&[u8]>>) = (Vec::new(), Vec::new());
        let a = codec::data_row_values_into(v, &mut from_view);
        let b = codec::data_row_values_into(f, &mut borrowed);
        if a != b || (a.is_ok() && from_view != borrowed) {
            panic!("the view's and the frame's row values differ");
        }
        v.bytes().len()
    });
}

/// The backend messages that have a parser here, by type byte.
const PARSED: &[u8] = b"TtDENCZKSGHWRv";

fn backend(data: &[u8], chunk: usize) {
    for byte in 0..=u8::MAX {
        if let Some(m) = BackendMessage::from_byte(byte) {
            if m.byte() != byte {
                panic!("from_byte({byte}).byte() is {}", m.byte());
            }
        }
    }
    backend_views_agree(data, SMALL_MAX);
    backend_views_agree(data, LARGE_MAX);
    let run = decode_checks(data, chunk, codec::decode_backend, |b| word_at(b, 1), SMALL_MAX);
    let mut borrowed: Vec<Option<&[u8]>> = Vec::new();
    let mut owned: Vec<Option<Vec<u8>>> = vec![Some(b"left over".to_vec())];
    for (frame, consumed) in &run.frames {
        check_typed_frame(&frame.frame, consumed, LARGE_MAX);
        if frame.kind != frame.frame[0] || frame.message().map(BackendMessage::byte) != Some(frame.kind) {
            panic!("kind {} of a decoded frame has no message type", frame.kind);
        }
        if frame.body() != &frame.frame[5..] || frame.body_bytes() != frame.body() {
            panic!("body is not the frame after its header");
        }
        parse_all(frame, &mut borrowed, &mut owned);
    }
    // A frame of another type (or built by hand) is refused by every
    // parser, without panicking.
    if let Some((frame, _)) = run.frames.first() {
        for kind in [0, b'?', b'1', b'T', b'D'] {
            let forged = BackendFrame { kind, frame: frame.frame.clone() };
            if forged.frame.first() != Some(&kind) && parse_any_ok(&forged) {
                panic!("a parser read a frame whose kind {kind} is not its type byte");
            }
        }
        let truncated = BackendFrame { kind: frame.kind, frame: frame.frame.slice(..frame.frame.len().min(3)) };
        let _ = parse_any_ok(&truncated);
    }
}

/// Runs every parser; true when one of them read the frame.
fn parse_any_ok(frame: &BackendFrame) -> bool {
    let mut borrowed: Vec<Option<&[u8]>> = Vec::new();
    [
        codec::parse_row_description(frame).is_ok(),
        codec::parse_parameter_description(frame).is_ok(),
        codec::data_row_values(frame).is_ok(),
        codec::data_row_values_into(frame, &mut borrowed).is_ok(),
        codec::parse_fields(frame).is_ok(),
        codec::parse_command_complete(frame).is_ok(),
        codec::parse_ready_for_query(frame).is_ok(),
        codec::parse_backend_key_data(frame).is_ok(),
        codec::parse_parameter_status(frame).is_ok(),
        codec::parse_copy_response(frame).is_ok(),
        codec::parse_authentication(frame).is_ok(),
        codec::parse_negotiate_protocol_version(frame).is_ok(),
    ]
    .contains(&true)
}

/// Every parser on `frame`; those of another type must refuse it, and what
/// one reads must re-encode to the same bytes.
fn parse_all<'a>(frame: &'a BackendFrame, borrowed: &mut Vec<Option<&'a [u8]>>, owned: &mut Vec<Option<Vec<u8>>>) {
    let kind = frame.kind;
    let mut read = Vec::new();
    let mut again = BytesMut::new();
    let same = |what: &str, encoded: Result<(), CodecError>, again: &mut BytesMut| {
        if let Err(e) = encoded {
            panic!("{what}: the encoder refused what the parser read: {e}");
        }
        if again[..] != frame.frame[..] {
            panic!("{what}: re-encoded as {:?}, received {:?}", &again[..], &frame.frame[..]);
        }
        again.clear();
    };

    if let Ok(fields) = codec::parse_row_description(frame) {
        read.push(b'T');
        same("RowDescription", codec::row_description(&mut again, &fields), &mut again);
    }
    if codec::parse_parameter_description(frame).is_ok() {
        read.push(b't');
    }
    let values = codec::data_row_values(frame);
    let into_borrowed = codec::data_row_values_into(frame, borrowed);
    let into_owned = codec::data_row_values_into(frame, owned);
    match (&values, &into_borrowed, &into_owned) {
        (Ok(values), Ok(()), Ok(())) => {
            read.push(b'D');
            let as_slices: Vec<Option<&[u8]>> = values.iter().map(|v| v.as_deref()).collect();
            let owned_slices: Vec<Option<&[u8]>> = owned.iter().map(|v| v.as_deref()).collect();
            if as_slices != *borrowed || as_slices != owned_slices {
                panic!("data_row_values and data_row_values_into disagree");
            }
            same("DataRow", codec::data_row(&mut again, values.iter().cloned()), &mut again);
        }
        (Err(a), Err(b), Err(c)) if a == b && b == c => {}
        _ => panic!("data_row_values and data_row_values_into disagree: {values:?}, {into_borrowed:?}, {into_owned:?}"),
    }
    if let Ok(fields) = codec::parse_fields(frame) {
        read.push(if b"EN".contains(&kind) { kind } else { 0 });
        // A value that is not UTF-8 is read lossily (with U+FFFD), and so
        // re-encodes otherwise.
        if !fields.iter().any(|(_, v)| v.contains('\u{fffd}')) {
            let fields: Vec<(u8, &str)> = fields.iter().map(|(c, v)| (*c, v.as_str())).collect();
            same("ErrorResponse/NoticeResponse", codec::fields_message(&mut again, kind, &fields), &mut again);
        }
    }
    if let Ok(tag) = codec::parse_command_complete(frame) {
        read.push(b'C');
        same("CommandComplete", codec::command_complete(&mut again, &tag), &mut again);
    }
    if let Ok(status) = codec::parse_ready_for_query(frame) {
        read.push(b'Z');
        codec::ready_for_query(&mut again, status);
        same("ReadyForQuery", Ok(()), &mut again);
    }
    if let Ok((pid, secret)) = codec::parse_backend_key_data(frame) {
        read.push(b'K');
        same("BackendKeyData", codec::backend_key_data(&mut again, pid, &secret), &mut again);
    }
    if let Ok((name, value)) = codec::parse_parameter_status(frame) {
        read.push(b'S');
        same("ParameterStatus", codec::parameter_status(&mut again, &name, &value), &mut again);
    }
    if let Ok((format, columns)) = codec::parse_copy_response(frame) {
        read.push(if b"GHW".contains(&kind) { kind } else { 0 });
        if format > 1 || columns.iter().any(|f| *f != 0 && *f != 1) {
            panic!("copy response with format {format} and columns {columns:?}");
        }
    }
    if let Ok(auth) = codec::parse_authentication(frame) {
        read.push(b'R');
        match auth {
            codec::Authentication::Ok => {
                codec::auth_ok(&mut again);
                same("AuthenticationOk", Ok(()), &mut again);
            }
            codec::Authentication::CleartextPassword => {
                codec::auth_cleartext_password(&mut again);
                same("AuthenticationCleartextPassword", Ok(()), &mut again);
            }
            _ => {}
        }
    }
    if let Ok((minor, options)) = codec::parse_negotiate_protocol_version(frame) {
        read.push(b'v');
        let options: Vec<&str> = options.iter().map(|o| o.as_str()).collect();
        same("NegotiateProtocolVersion", codec::negotiate_protocol_version(&mut again, minor, &options), &mut again);
    }
    for r in &read {
        if *r != kind || !PARSED.contains(r) {
            panic!("a parser of {:?} read a frame of type {:?}", char::from(*r), char::from(kind));
        }
    }
}

// ------------------------------------------------------------------- startup

fn startup(data: &[u8], chunk: usize) {
    let len_word = |b: &[u8]| word_at(b, 0);
    let run = decode_checks(data, chunk, codec::decode_startup, len_word, SMALL_MAX);
    for (packet, consumed) in &run.frames {
        let len = word_at(consumed, 0);
        if len != consumed.len() || len < 8 || len > codec::MAX_STARTUP_PACKET_BYTES {
            panic!("a startup packet of {} bytes has the length word {len}", consumed.len());
        }
        let code = u32::try_from(word_at(consumed, 4)).unwrap_or(u32::MAX);
        let mut again = BytesMut::new();
        match packet {
            Startup::SslRequest | Startup::GssEncRequest => {
                let expected =
                    if *packet == Startup::SslRequest { codec::SSL_REQUEST_CODE } else { codec::GSSENC_REQUEST_CODE };
                again.put_i32(8);
                again.put_u32(expected);
            }
            Startup::Cancel { pid, secret } => {
                if let Err(e) = codec::cancel_request(&mut again, *pid, secret) {
                    panic!("cancel_request refused what decode_startup read: {e}");
                }
            }
            Startup::Startup { version, params } => {
                if version >> 16 != 3 || *version != code {
                    panic!("startup version {version:#x}");
                }
                for (i, (name, _)) in params.iter().enumerate() {
                    if name.is_empty() || params[..i].iter().any(|(n, _)| n == name) {
                        panic!("empty or duplicate startup parameter {name:?}");
                    }
                }
                again.put_i32(0);
                again.put_u32(*version);
                for (name, value) in params {
                    again.put_slice(name.as_bytes());
                    again.put_u8(0);
                    again.put_slice(value.as_bytes());
                    again.put_u8(0);
                }
                again.put_u8(0);
                let n = i32::try_from(again.len()).unwrap_or(i32::MAX);
                again[..4].copy_from_slice(&n.to_be_bytes());
            }
        }
        if again[..] != consumed[..] {
            panic!("{packet:?} re-encodes as {:?}, received {consumed:?}", &again[..]);
        }
    }
}

// ---------------------------------------------------------------------- COPY

/// Writes `row` as a CopyData message, decodes it with `decode_frontend`
/// and returns the line it carries.
fn through_the_wire<T: AsRef<[u8]>>(row: &[Option<T>], newline: bool) -> (Vec<u8>, Vec<u8>) {
    let mut out = BytesMut::new();
    if let Err(e) = copy::copy_data_line(&mut out, row, newline) {
        panic!("copy_data_line refused a small row: {e}");
    }
    let written = out.to_vec();
    let message = match codec::decode_frontend(&mut out, LARGE_MAX) {
        Ok(Some(m)) => m,
        other => panic!("copy_data_line wrote {written:?}, which decodes as {other:?}"),
    };
    if !out.is_empty() || message.frame[..] != written[..] {
        panic!("copy_data_line wrote more than one frame: {written:?}");
    }
    match message.message {
        Frontend::CopyData(line) => (line.to_vec(), written),
        other => panic!("copy_data_line wrote {other:?}"),
    }
}

/// Whether `line` is in the form `copy_data_line` writes: fields with no
/// escapes but `\\`, `\n`, `\r`, `\t`, `\b`, `\f`, `\v`, or exactly `\N`;
/// no raw CR, LF, BS, FF or VT but the final LF.
fn writer_form(line: &[u8]) -> bool {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    body.split(|b| *b == b'\t').all(|field| {
        if field == b"\\N" {
            return true;
        }
        let mut bytes = field.iter();
        while let Some(b) = bytes.next() {
            match b {
                b'\r' | b'\n' | 8 | 11 | 12 => return false,
                b'\\' if !matches!(bytes.next(), Some(b'\\' | b'n' | b'r' | b't' | b'b' | b'f' | b'v')) => {
                    return false
                }
                _ => {}
            }
        }
        true
    })
}

fn copy_text(data: &[u8]) {
    // Values: unescape ∘ escape is the identity, and rows go through the
    // wire unchanged.
    let values: Vec<Option<&[u8]>> =
        data.split(|b| *b == 0).map(|v| if v == b"\xff" { None } else { Some(v) }).collect();
    for value in values.iter().flatten() {
        let mut escaped = BytesMut::new();
        copy::escape(value, &mut escaped);
        if escaped.contains(&b'\t') || escaped.contains(&b'\n') || escaped.contains(&b'\r') {
            panic!("escape({value:?}) left a tab, CR or LF: {:?}", &escaped[..]);
        }
        match copy::unescape(&escaped) {
            Some(back) if back[..] == value[..] => {}
            back => panic!("unescape(escape({value:?})) is {back:?}"),
        }
    }
    for newline in [false, true] {
        let (line, _) = through_the_wire(&values, newline);
        let mut row = Vec::new();
        if copy::split_line(&line, &mut row) != newline {
            panic!("the newline flag did not come back from {line:?}");
        }
        let back: Vec<Option<&[u8]>> = row.iter().map(|v| v.as_deref()).collect();
        if back != values {
            panic!("row {values:?} came back as {back:?} through {line:?}");
        }
    }

    // Lines: split, write, decode, split again.
    let line = data;
    let mut row = Vec::new();
    let newline = copy::split_line(line, &mut row);
    if debug() {
        eprintln!("row: {row:?}, newline: {newline}, in the writer's form: {}", writer_form(line));
    }
    if newline != line.ends_with(b"\n") {
        panic!("split_line's newline flag is wrong for {line:?}");
    }
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let fields: Vec<&[u8]> = body.split(|b| *b == b'\t').collect();
    if row.len() != fields.len() {
        panic!("split_line made {} fields of {line:?}", row.len());
    }
    for (value, field) in row.iter().zip(&fields) {
        if !field.contains(&b'\\') && !matches!(value, Some(Cow::Borrowed(v)) if v == field) {
            panic!("field {field:?} without escapes was read as {value:?}");
        }
    }
    let (written_line, written) = through_the_wire(&row, newline);
    let mut again = Vec::new();
    if copy::split_line(&written_line, &mut again) != newline || again != row {
        panic!("{line:?} split as {row:?}, written as {written_line:?}, which splits as {again:?}");
    }
    let (_, rewritten) = through_the_wire(&again, newline);
    if rewritten != written {
        panic!("writing the same row twice gave {written:?} then {rewritten:?}");
    }
    if writer_form(line) && written_line != line {
        panic!("{line:?}, in the writer's form, was written back as {written_line:?}");
    }
}

/// The CSV layouts mode 3 reads lines in: PostgreSQL's defaults, and
/// another delimiter, quote, escape and NULL string.
const CSV_LAYOUTS: [copy::Csv<'static>; 2] = [
    copy::Csv { delimiter: b',', quote: b'"', escape: b'"', null: b"" },
    copy::Csv { delimiter: b';', quote: b'\'', escape: b'\\', null: b"\\N" },
];

/// Writes `row` as a CSV CopyData line and returns the line it carries.
fn csv_through_the_wire<T: AsRef<[u8]>>(row: &[Option<T>], quoted: &[bool], csv: &copy::Csv<'_>) -> Vec<u8> {
    let mut out = BytesMut::new();
    if let Err(e) = copy::csv_data_line(&mut out, row, quoted, csv, true) {
        panic!("csv_data_line refused a small row: {e}");
    }
    match codec::decode_frontend(&mut out, LARGE_MAX) {
        Ok(Some(m)) if out.is_empty() => match m.message {
            Frontend::CopyData(line) => line.to_vec(),
            other => panic!("csv_data_line wrote {other:?}"),
        },
        other => panic!("csv_data_line wrote something that decodes as {other:?}"),
    }
}

fn copy_csv(data: &[u8]) {
    let values: Vec<Option<&[u8]>> =
        data.split(|b| *b == 0).map(|v| if v == b"\xff" { None } else { Some(v) }).collect();
    for csv in &CSV_LAYOUTS {
        let line = csv_through_the_wire(&values, &vec![false; values.len()], csv);
        let (mut row, mut quoted) = (Vec::new(), Vec::new());
        match copy::split_csv_line(&line, csv, &mut row, &mut quoted) {
            Ok(true) => {}
            other => panic!("csv_data_line wrote {line:?} for {values:?}, which splits as {other:?}"),
        }
        let back: Vec<Option<&[u8]>> = row.iter().map(|v| v.as_deref()).collect();
        if back != values {
            panic!("CSV row {values:?} came back as {back:?} through {line:?}");
        }

        // Any line the reader takes: written, read again, written again.
        let (mut row, mut quoted) = (Vec::new(), Vec::new());
        if copy::split_csv_line(data, csv, &mut row, &mut quoted).is_err() {
            continue;
        }
        if debug() {
            eprintln!("CSV row: {row:?}, quoted: {quoted:?}");
        }
        let written = csv_through_the_wire(&row, &quoted, csv);
        let (mut again, mut quoted_again) = (Vec::new(), Vec::new());
        if copy::split_csv_line(&written, csv, &mut again, &mut quoted_again).is_err() || again != row {
            panic!("{data:?} split as {row:?}, written as {written:?}, which splits as {again:?}");
        }
        if csv_through_the_wire(&again, &quoted_again, csv) != written {
            panic!("writing the CSV row {row:?} twice gave different lines");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, payload)) = data.split_first() else { return };
    let chunk = usize::from(first >> 2) + 1;
    match first & 3 {
        0 => frontend(payload, chunk),
        1 => backend(payload, chunk),
        2 => startup(payload, chunk),
        _ => {
            copy_text(payload);
            copy_csv(payload);
            copy_binary(payload, chunk);
        }
    }
});

/// Binary COPY data (the signature and empty flags, then the payload) read
/// by `BinaryCopy` whole and in chunks, passing rows through and rewriting
/// every row with the same values: the same outcome each way, and data
/// that reads to its end comes out byte for byte.
fn copy_binary(payload: &[u8], chunk: usize) {
    let columns = chunk % 4 + 1;
    let mut data = copy::BINARY_SIGNATURE.to_vec();
    data.extend_from_slice(&[0; 8]);
    data.extend_from_slice(payload);
    let whole = binary_through(&data, data.len(), columns, false);
    let pieces = binary_through(&data, chunk, columns, false);
    let rewritten = binary_through(&data, chunk, columns, true);
    match (&whole, &pieces, &rewritten) {
        (Ok(a), Ok(b), Ok(c)) => {
            assert_eq!(a, &data, "read to its end, the data passes byte for byte");
            assert_eq!(b, &data);
            assert_eq!(c, &data, "rows rewritten with their own values are the same bytes");
        }
        (Err(a), Err(b), Err(c)) => {
            assert_eq!(a, b, "the same error whole and in chunks");
            assert_eq!(b, c);
        }
        other => panic!("outcomes differ: {other:?}"),
    }
}

/// The COPY data `BinaryCopy` writes for `data` fed in pieces of `piece`
/// bytes, or the error it stops with.
fn binary_through(data: &[u8], piece: usize, columns: usize, rewrite: bool) -> Result<Vec<u8>, copy::BinaryCopyError> {
    let mut reader = copy::BinaryCopy::new(columns, 1 << 20);
    let mut out = BytesMut::new();
    let mut mask = |row: &mut copy::BinaryRow<'_>| {
        assert_eq!(row.len(), columns);
        if !rewrite {
            return Some(0);
        }
        for value in row.iter_mut() {
            if let Some(v) = value.take() {
                *value = Some(Cow::Owned(v.into_owned()));
            }
        }
        Some(row.len())
    };
    for part in data.chunks(piece.max(1)) {
        reader.feed(part, &mut mask, &mut out)?;
    }
    reader.finish()?;
    let mut joined = Vec::new();
    while let Some(frame) = codec::decode_backend(&mut out, 1 << 24).expect("BinaryCopy writes CopyData messages") {
        assert_eq!(frame.message(), Some(BackendMessage::CopyData));
        joined.extend_from_slice(frame.body());
    }
    Ok(joined)
}
