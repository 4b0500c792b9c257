//! Signed checkpoints in the C2SP formats.
//!
//! A [`Checkpoint`] is the note text of [c2sp.org/tlog-checkpoint]: the
//! log's origin, the tree size in decimal and the root hash in base64, one
//! to a line, then optional extension lines. A signed note
//! ([c2sp.org/signed-note]) is that text, an empty line, and one or more
//! signature lines of the form `— <key name> <base64(key hash ‖ signature)>`.
//! Only Ed25519 keys (signature type `0x01`) are supported: a
//! [`NoteSigner`] signs, a [`NoteVerifier`] checks with [`open`].
//!
//! Reading is strict and bounded: a note over [`MAX_NOTE_SIZE`] bytes or
//! with more than [`MAX_SIGNATURES`] signature lines is refused before any
//! signature is checked, and every error names the line it is about. The
//! text of a note is parsed only after a signature by the trusted key
//! verified over it.
//!
//! ```
//! use portcullis_audit::note::{open, Checkpoint, NoteSigner};
//!
//! # fn main() -> Result<(), portcullis_audit::note::NoteError> {
//! let signer = NoteSigner::generate("audit.example/gateway")?;
//! let checkpoint = Checkpoint {
//!     origin: "audit.example/gateway".to_string(),
//!     size: 3,
//!     root: [7; 32],
//!     extensions: Vec::new(),
//! };
//! let note = signer.sign(&checkpoint);
//! assert!(note.starts_with("audit.example/gateway\n3\n"));
//!
//! let verifier = signer.verifier();
//! assert_eq!(open(&note, &verifier)?, checkpoint);
//!
//! // The verifier key travels as one line of text.
//! let vkey = verifier.to_vkey();
//! let again = portcullis_audit::note::NoteVerifier::from_vkey(&vkey)?;
//! assert_eq!(open(&note, &again)?, checkpoint);
//! # Ok(())
//! # }
//! ```
//!
//! [c2sp.org/tlog-checkpoint]: https://c2sp.org/tlog-checkpoint
//! [c2sp.org/signed-note]: https://c2sp.org/signed-note

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::fmt;

/// The largest note [`open`] and [`signers`] read, in bytes.
pub const MAX_NOTE_SIZE: usize = 64 * 1024;

/// The most signature lines [`open`] and [`signers`] accept in one note.
pub const MAX_SIGNATURES: usize = 100;

/// The signature type byte of Ed25519 in the signed-note format.
const ED25519_TYPE: u8 = 0x01;

/// The start of every signature line: EM DASH (U+2014) and a space.
const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// Why a checkpoint, a note or a key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoteError {
    /// A key name is empty or holds a space, a plus sign or a control character.
    #[error("invalid key name {name:?}: {reason}")]
    InvalidKeyName {
        /// The name as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The note is larger than [`MAX_NOTE_SIZE`].
    #[error("note is {size} bytes, more than the limit of {max}")]
    TooLarge {
        /// The size of the note in bytes.
        size: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The note has more than [`MAX_SIGNATURES`] signature lines.
    #[error("note has more than {max} signature lines")]
    TooManySignatures {
        /// The limit.
        max: usize,
    },
    /// The note is not a well-formed signed note.
    #[error("malformed note, line {line}: {reason}")]
    Malformed {
        /// The line of the note at fault, counting from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The note text is not a well-formed checkpoint.
    #[error("malformed checkpoint, line {line}: {reason}")]
    Checkpoint {
        /// The line of the checkpoint at fault, counting from 1.
        line: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// No signature line has both the verifier's key name and key hash.
    #[error("no signature by {name} (key hash {}); {}", hex4(key_hash), describe_signers(signers))]
    NoSignature {
        /// The verifier's key name.
        name: String,
        /// The verifier's key hash.
        key_hash: [u8; 4],
        /// The key names and key hashes the note is signed with.
        signers: Vec<(String, [u8; 4])>,
    },
    /// A signature line of the verifier's key does not verify.
    #[error("bad signature by {name} (key hash {}), line {line}", hex4(key_hash))]
    BadSignature {
        /// The verifier's key name.
        name: String,
        /// The verifier's key hash.
        key_hash: [u8; 4],
        /// The signature line, counting from 1 at the start of the note.
        line: usize,
    },
    /// A private key could not be read or written as PKCS#8.
    #[error("private key: {0}")]
    PrivateKey(String),
    /// A public key could not be read or written as SPKI, or is not a valid Ed25519 key.
    #[error("public key: {0}")]
    PublicKey(String),
    /// A verifier key string (`<name>+<hash>+<key>`) is malformed.
    #[error("verifier key: {0}")]
    VerifierKey(String),
}

/// Lowercase hex of a key hash, as in verifier keys.
fn hex4(hash: &[u8; 4]) -> String {
    format!("{:08x}", u32::from_be_bytes(*hash))
}

/// A sentence listing who signed a note, for [`NoteError::NoSignature`].
fn describe_signers(signers: &[(String, [u8; 4])]) -> String {
    if signers.is_empty() {
        return "the note has no signatures".to_string();
    }
    let list: Vec<String> = signers.iter().map(|(name, hash)| format!("{name} (key hash {})", hex4(hash))).collect();
    format!("the note is signed by {}", list.join(", "))
}

/// Checks a key name against the signed-note rules: non-empty, no Unicode
/// space, no `+`, and (as the note may hold none) no control character.
fn check_key_name(name: &str) -> Result<(), NoteError> {
    let reason = if name.is_empty() {
        "it is empty"
    } else if name.chars().any(char::is_whitespace) {
        "it contains a space"
    } else if name.contains('+') {
        "it contains a plus sign"
    } else if name.chars().any(char::is_control) {
        "it contains a control character"
    } else {
        return Ok(());
    };
    Err(NoteError::InvalidKeyName { name: name.to_string(), reason })
}

/// The key hash (key ID) of an Ed25519 key:
/// the first four bytes of SHA-256(name ‖ 0x0A ‖ 0x01 ‖ public key).
fn ed25519_key_hash(name: &str, key: &VerifyingKey) -> [u8; 4] {
    let digest = Sha256::new()
        .chain_update(name.as_bytes())
        .chain_update([b'\n', ED25519_TYPE])
        .chain_update(key.as_bytes())
        .finalize();
    let mut hash = [0u8; 4];
    for (out, byte) in hash.iter_mut().zip(digest.iter()) {
        *out = *byte;
    }
    hash
}

/// The number of the last line of `text` (1 for an empty text).
fn last_line(text: &str) -> usize {
    text.split('\n').count()
}

/// Fails with the first line holding an ASCII control character other than newline.
fn check_control(text: &str, error: impl Fn(usize, String) -> NoteError) -> Result<(), NoteError> {
    for (index, line) in text.split('\n').enumerate() {
        if let Some(c) = line.chars().find(|c| *c < ' ') {
            return Err(error(index + 1, format!("control character U+{:04X}", u32::from(c))));
        }
    }
    Ok(())
}

/// A checkpoint: the signed state of a transparency log at one size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's identity, e.g. `audit.example/gateway`. Non-empty, one line.
    pub origin: String,
    /// The number of leaves in the tree.
    pub size: u64,
    /// The RFC 9162 Merkle tree hash of the first `size` leaves.
    pub root: [u8; 32],
    /// Optional extension lines, each non-empty and without a newline.
    pub extensions: Vec<String>,
}

impl Checkpoint {
    /// The note text: origin, size, base64 root and extension lines, each
    /// ending in a newline.
    ///
    /// This does not check the fields; see [`Checkpoint::validate`].
    pub fn body(&self) -> String {
        let mut text = format!("{}\n{}\n{}\n", self.origin, self.size, STANDARD.encode(self.root));
        for extension in &self.extensions {
            text.push_str(extension);
            text.push('\n');
        }
        text
    }

    /// Checks that [`Checkpoint::body`] is a well-formed checkpoint that
    /// parses back to `self`: a non-empty origin and extension lines without
    /// newlines or control characters.
    pub fn validate(&self) -> Result<(), NoteError> {
        let bad = |line: usize, reason: &str| NoteError::Checkpoint { line, reason: reason.to_string() };
        if self.origin.contains('\n') {
            return Err(bad(1, "the origin contains a newline"));
        }
        for (index, extension) in self.extensions.iter().enumerate() {
            if extension.contains('\n') {
                return Err(bad(index + 4, "the extension line contains a newline"));
            }
        }
        let parsed = Self::parse_body(&self.body())?;
        if parsed != *self {
            // Unreachable with the checks above; kept as the definition of validity.
            return Err(bad(1, "the checkpoint does not read back as written"));
        }
        Ok(())
    }

    /// Parses a checkpoint note text, strictly: a non-empty origin line, a
    /// decimal tree size without sign or leading zeros, a standard base64
    /// root hash of 32 bytes, then non-empty extension lines, every line
    /// ending in a newline and none holding a control character.
    pub fn parse_body(text: &str) -> Result<Checkpoint, NoteError> {
        let bad = |line: usize, reason: String| NoteError::Checkpoint { line, reason };
        if text.len() > MAX_NOTE_SIZE {
            return Err(NoteError::TooLarge { size: text.len(), max: MAX_NOTE_SIZE });
        }
        let Some(inner) = text.strip_suffix('\n') else {
            return Err(bad(last_line(text), "the line does not end with a newline".to_string()));
        };
        check_control(inner, bad)?;
        let mut lines = inner.split('\n');

        let origin = lines.next().unwrap_or_default();
        if origin.is_empty() {
            return Err(bad(1, "the origin line is empty".to_string()));
        }

        let size_line = lines.next().ok_or_else(|| bad(2, "the tree size line is missing".to_string()))?;
        let size = parse_size(size_line).map_err(|reason| bad(2, reason))?;

        let root_line = lines.next().ok_or_else(|| bad(3, "the root hash line is missing".to_string()))?;
        let root = parse_root(root_line).map_err(|reason| bad(3, reason))?;

        let mut extensions = Vec::new();
        for (index, line) in lines.enumerate() {
            if line.is_empty() {
                return Err(bad(index + 4, "the extension line is empty".to_string()));
            }
            extensions.push(line.to_string());
        }
        Ok(Checkpoint { origin: origin.to_string(), size, root, extensions })
    }
}

/// Parses a tree size: ASCII digits, no sign, no leading zero but for `0`.
fn parse_size(line: &str) -> Result<u64, String> {
    if line.is_empty() {
        return Err("the tree size line is empty".to_string());
    }
    if !line.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("the tree size {line:?} is not a decimal number"));
    }
    if line.len() > 1 && line.starts_with('0') {
        return Err(format!("the tree size {line:?} has a leading zero"));
    }
    line.parse::<u64>().map_err(|_| format!("the tree size {line} does not fit in 64 bits"))
}

/// Parses a root hash: canonical standard base64 of exactly 32 bytes.
fn parse_root(line: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD.decode(line).map_err(|e| format!("the root hash is not standard base64: {e}"))?;
    let length = bytes.len();
    <[u8; 32]>::try_from(bytes).map_err(|_| format!("the root hash is {length} bytes, not 32"))
}

/// A parsed signature line.
struct SignatureLine<'a> {
    /// The key name.
    name: &'a str,
    /// The first four bytes of the decoded signature.
    key_hash: [u8; 4],
    /// The rest of the decoded signature.
    signature: Vec<u8>,
    /// The line number in the note, counting from 1.
    line: usize,
}

/// Splits a note into its text (with its final newline) and its parsed
/// signature lines, checking the whole note's syntax.
fn split_note(note: &str) -> Result<(&str, Vec<SignatureLine<'_>>), NoteError> {
    let bad = |line: usize, reason: String| NoteError::Malformed { line, reason };
    if note.len() > MAX_NOTE_SIZE {
        return Err(NoteError::TooLarge { size: note.len(), max: MAX_NOTE_SIZE });
    }
    if !note.ends_with('\n') {
        return Err(bad(last_line(note), "the line does not end with a newline".to_string()));
    }
    check_control(note, bad)?;
    // The text is separated from the signatures by the last empty line.
    let separator = note.rfind("\n\n").ok_or_else(|| {
        bad(note.matches('\n').count(), "no empty line separates the text from the signatures".to_string())
    })?;
    let (text, rest) = note
        .split_at_checked(separator + 1)
        .ok_or_else(|| bad(1, "no empty line separates the text from the signatures".to_string()))?;
    let text_lines = text.matches('\n').count();
    let block = rest.strip_prefix('\n').and_then(|block| block.strip_suffix('\n')).unwrap_or_default();
    if block.is_empty() {
        return Err(bad(text_lines + 1, "no signature lines follow the last empty line".to_string()));
    }
    let mut lines = Vec::new();
    for (index, line) in block.split('\n').enumerate() {
        if index >= MAX_SIGNATURES {
            return Err(NoteError::TooManySignatures { max: MAX_SIGNATURES });
        }
        let number = text_lines + 2 + index;
        lines.push(parse_signature_line(line, number).map_err(|reason| bad(number, reason))?);
    }
    Ok((text, lines))
}

/// Parses `— <key name> <base64(key hash ‖ signature)>` (without the newline).
fn parse_signature_line(line: &str, number: usize) -> Result<SignatureLine<'_>, String> {
    let rest = line
        .strip_prefix(SIGNATURE_PREFIX)
        .ok_or_else(|| "a signature line must start with an em dash (U+2014) and a space".to_string())?;
    let (name, encoded) = rest
        .split_once(' ')
        .ok_or_else(|| "a signature line must be \"— <key name> <base64 signature>\"".to_string())?;
    check_key_name(name).map_err(|e| e.to_string())?;
    let decoded = STANDARD.decode(encoded).map_err(|e| format!("the signature is not standard base64: {e}"))?;
    let (hash, signature) = decoded
        .split_at_checked(4)
        .filter(|(_, signature)| !signature.is_empty())
        .ok_or_else(|| format!("the signature is {} bytes, too short for a key hash and a signature", decoded.len()))?;
    let key_hash = <[u8; 4]>::try_from(hash).map_err(|_| "the key hash is not 4 bytes".to_string())?;
    Ok(SignatureLine { name, key_hash, signature: signature.to_vec(), line: number })
}

/// Verifies the note's signature by `verifier` and returns the note text.
fn verify_text<'a>(note: &'a str, verifier: &NoteVerifier) -> Result<&'a str, NoteError> {
    let (text, lines) = split_note(note)?;
    let key_hash = verifier.key_hash();
    let mut verified = false;
    for line in lines.iter().filter(|line| line.name == verifier.name && line.key_hash == key_hash) {
        let bad = || NoteError::BadSignature { name: verifier.name.clone(), key_hash, line: line.line };
        let signature = Signature::from_slice(&line.signature).map_err(|_| bad())?;
        verifier.key.verify_strict(text.as_bytes(), &signature).map_err(|_| bad())?;
        verified = true;
    }
    if !verified {
        return Err(NoteError::NoSignature {
            name: verifier.name.clone(),
            key_hash,
            signers: lines.iter().map(|line| (line.name.to_string(), line.key_hash)).collect(),
        });
    }
    Ok(text)
}

/// Opens a signed checkpoint: checks the note's syntax, verifies every
/// signature line with the verifier's key name and key hash (there must be
/// at least one, and all must verify), ignores the lines of other keys, and
/// only then parses the text as a [`Checkpoint`].
pub fn open(note: &str, verifier: &NoteVerifier) -> Result<Checkpoint, NoteError> {
    let text = verify_text(note, verifier)?;
    Checkpoint::parse_body(text)
}

/// The key names and key hashes of a note's signature lines, in order,
/// without verifying anything; for messages such as "signed by another key".
pub fn signers(note: &str) -> Result<Vec<(String, [u8; 4])>, NoteError> {
    let (_, lines) = split_note(note)?;
    Ok(lines.into_iter().map(|line| (line.name.to_string(), line.key_hash)).collect())
}

/// Signs checkpoints with an Ed25519 key under a key name.
#[derive(Clone)]
pub struct NoteSigner {
    name: String,
    key: SigningKey,
}

impl fmt::Debug for NoteSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoteSigner")
            .field("name", &self.name)
            .field("key_hash", &hex4(&ed25519_key_hash(&self.name, &self.key.verifying_key())))
            .finish_non_exhaustive()
    }
}

impl NoteSigner {
    /// A signer for `key` under `name`; the name must be non-empty and hold
    /// no space, `+` or control character.
    pub fn new(name: impl Into<String>, key: SigningKey) -> Result<Self, NoteError> {
        let name = name.into();
        check_key_name(&name)?;
        Ok(NoteSigner { name, key })
    }

    /// A signer with a fresh key from the operating system's generator.
    pub fn generate(name: impl Into<String>) -> Result<Self, NoteError> {
        Self::new(name, SigningKey::generate(&mut rand::rngs::OsRng))
    }

    /// A signer whose key is read from a PKCS#8 `PRIVATE KEY` PEM document.
    pub fn from_pkcs8_pem(name: impl Into<String>, pem: &str) -> Result<Self, NoteError> {
        let key = SigningKey::from_pkcs8_pem(pem).map_err(|e| NoteError::PrivateKey(e.to_string()))?;
        Self::new(name, key)
    }

    /// The key as a PKCS#8 `PRIVATE KEY` PEM document (with `\n` line
    /// endings). The text is the secret key: keep it as such.
    pub fn to_pkcs8_pem(&self) -> Result<String, NoteError> {
        let pem = self.key.to_pkcs8_pem(LineEnding::LF).map_err(|e| NoteError::PrivateKey(e.to_string()))?;
        Ok(pem.as_str().to_string())
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The verifier of this signer's signatures.
    pub fn verifier(&self) -> NoteVerifier {
        NoteVerifier { name: self.name.clone(), key: self.key.verifying_key() }
    }

    /// The signed note of `checkpoint`: its body, an empty line and one
    /// signature line.
    ///
    /// The checkpoint is not checked: one that fails
    /// [`Checkpoint::validate`] gives a note that [`open`] refuses.
    pub fn sign(&self, checkpoint: &Checkpoint) -> String {
        self.sign_text(&checkpoint.body())
    }

    /// Signs a note text ending in a newline.
    fn sign_text(&self, text: &str) -> String {
        let signature = self.key.sign(text.as_bytes());
        let key_hash = ed25519_key_hash(&self.name, &self.key.verifying_key());
        let mut blob = Vec::with_capacity(4 + Signature::BYTE_SIZE);
        blob.extend_from_slice(&key_hash);
        blob.extend_from_slice(&signature.to_bytes());
        format!("{text}\n{SIGNATURE_PREFIX}{} {}\n", self.name, STANDARD.encode(blob))
    }
}

/// Verifies signatures of one Ed25519 key under a key name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoteVerifier {
    name: String,
    key: VerifyingKey,
}

impl NoteVerifier {
    /// A verifier for `key` under `name`; the name must be non-empty and
    /// hold no space, `+` or control character.
    pub fn new(name: impl Into<String>, key: VerifyingKey) -> Result<Self, NoteError> {
        let name = name.into();
        check_key_name(&name)?;
        Ok(NoteVerifier { name, key })
    }

    /// A verifier whose key is read from an SPKI `PUBLIC KEY` PEM document.
    pub fn from_public_key_pem(name: impl Into<String>, pem: &str) -> Result<Self, NoteError> {
        let key = VerifyingKey::from_public_key_pem(pem).map_err(|e| NoteError::PublicKey(e.to_string()))?;
        Self::new(name, key)
    }

    /// The key as an SPKI `PUBLIC KEY` PEM document (with `\n` line endings).
    pub fn to_public_key_pem(&self) -> Result<String, NoteError> {
        self.key.to_public_key_pem(LineEnding::LF).map_err(|e| NoteError::PublicKey(e.to_string()))
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The Ed25519 public key.
    pub fn key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The key hash that starts this key's signatures: the first four bytes
    /// of SHA-256(key name ‖ `\n` ‖ 0x01 ‖ public key).
    pub fn key_hash(&self) -> [u8; 4] {
        ed25519_key_hash(&self.name, &self.key)
    }

    /// The verifier key string: `<name>+<key hash, 8 hex digits>+<base64(0x01 ‖ public key)>`.
    pub fn to_vkey(&self) -> String {
        let mut typed = Vec::with_capacity(33);
        typed.push(ED25519_TYPE);
        typed.extend_from_slice(self.key.as_bytes());
        format!("{}+{}+{}", self.name, hex4(&self.key_hash()), STANDARD.encode(typed))
    }

    /// Reads a verifier key string (see [`NoteVerifier::to_vkey`]) of an
    /// Ed25519 key, checking that the key hash matches the name and key.
    pub fn from_vkey(vkey: &str) -> Result<Self, NoteError> {
        let bad = |reason: String| NoteError::VerifierKey(reason);
        // Names hold no '+', hashes are hex; the base64 may hold '+'.
        let (name, rest) = vkey.split_once('+').ok_or_else(|| bad("expected <name>+<hash>+<key>".to_string()))?;
        let (hash_hex, encoded) =
            rest.split_once('+').ok_or_else(|| bad("expected <name>+<hash>+<key>".to_string()))?;
        check_key_name(name)?;
        if hash_hex.len() != 8 || !hash_hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(bad(format!("the key hash {hash_hex:?} is not 8 lowercase hex digits")));
        }
        let hash = u32::from_str_radix(hash_hex, 16)
            .map_err(|_| bad(format!("the key hash {hash_hex:?} is not hex")))?
            .to_be_bytes();
        let typed = STANDARD.decode(encoded).map_err(|e| bad(format!("the key is not standard base64: {e}")))?;
        let (kind, key_bytes) = typed.split_first().ok_or_else(|| bad("the key is empty".to_string()))?;
        if *kind != ED25519_TYPE {
            return Err(bad(format!("unsupported signature type 0x{kind:02x}, only Ed25519 (0x01) is")));
        }
        let key_bytes = <[u8; 32]>::try_from(key_bytes)
            .map_err(|_| bad(format!("the Ed25519 key is {} bytes, not 32", key_bytes.len())))?;
        let key = VerifyingKey::from_bytes(&key_bytes).map_err(|e| bad(format!("not an Ed25519 public key: {e}")))?;
        let verifier = Self::new(name, key)?;
        let expected = verifier.key_hash();
        if expected != hash {
            return Err(bad(format!("the key hash {hash_hex} does not match the name and key ({})", hex4(&expected))));
        }
        Ok(verifier)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "audit.example/gateway".to_string(),
            size: 20852163,
            root: [0xab; 32],
            extensions: vec!["ext one".to_string(), "ext two".to_string()],
        }
    }

    fn signer(seed: u8) -> NoteSigner {
        NoteSigner::new("audit.example/gateway", SigningKey::from_bytes(&[seed; 32])).unwrap()
    }

    /// Re-signs an edited body with the signature line of the original note,
    /// as an attacker who changes the text would.
    fn with_body(note: &str, body: &str) -> String {
        let (_, sigs) = note.rsplit_once("\n\n").unwrap();
        format!("{body}\n{sigs}")
    }

    #[test]
    fn sign_then_open_round_trips() {
        let signer = signer(1);
        let cp = checkpoint();
        let note = signer.sign(&cp);
        assert!(note.starts_with(&cp.body()));
        assert!(note.contains("\n\n\u{2014} audit.example/gateway "));
        assert_eq!(open(&note, &signer.verifier()).unwrap(), cp);

        let empty = Checkpoint { origin: "o".to_string(), size: 0, root: [0; 32], extensions: vec![] };
        assert_eq!(open(&signer.sign(&empty), &signer.verifier()).unwrap(), empty);
    }

    #[test]
    fn body_is_the_c2sp_layout() {
        let cp = Checkpoint { origin: "example.com/log".to_string(), size: 7, root: [0; 32], extensions: vec![] };
        assert_eq!(cp.body(), "example.com/log\n7\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n");
        assert_eq!(Checkpoint::parse_body(&cp.body()).unwrap(), cp);
        // The example of c2sp.org/tlog-checkpoint.
        let text = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n";
        let parsed = Checkpoint::parse_body(text).unwrap();
        assert_eq!(parsed.size, 20852163);
        assert_eq!(parsed.body(), text);
    }

    #[test]
    fn parse_body_is_strict() {
        let root = STANDARD.encode([1u8; 32]);
        let line_of = |text: &str| match Checkpoint::parse_body(text) {
            Err(NoteError::Checkpoint { line, .. }) => line,
            other => panic!("{text:?} gave {other:?}"),
        };
        assert_eq!(line_of(&format!("\n1\n{root}\n")), 1);
        assert_eq!(line_of("o\n"), 2);
        assert_eq!(line_of("o\n1\n"), 3);
        for size in ["", "01", "00", "+1", "-1", " 1", "1 ", "0x1", "18446744073709551616", "１"] {
            assert_eq!(line_of(&format!("o\n{size}\n{root}\n")), 2, "size {size:?}");
        }
        let short = STANDARD.encode([1u8; 31]);
        let unpadded = root.trim_end_matches('=');
        let url_safe = base64::engine::general_purpose::URL_SAFE.encode([0xfb; 32]);
        for bad_root in ["", short.as_str(), unpadded, url_safe.as_str(), "not base64!"] {
            assert_eq!(line_of(&format!("o\n1\n{bad_root}\n")), 3, "root {bad_root:?}");
        }
        assert_eq!(line_of(&format!("o\n1\n{root}\next\n\n")), 5);
        assert_eq!(line_of(&format!("o\n1\n{root}")), 3);
        assert_eq!(line_of(&format!("o\n1\n{root}\nlast")), 4);
        assert_eq!(line_of(&format!("o\r\n1\n{root}\n")), 1);
        assert_eq!(line_of(&format!("o\n1\n{root}\na\tb\n")), 4);
        assert_eq!(line_of(""), 1);
        assert!(Checkpoint::parse_body(&format!("o\n18446744073709551615\n{root}\n")).is_ok());
    }

    #[test]
    fn validate_refuses_what_would_not_read_back() {
        assert!(checkpoint().validate().is_ok());
        let mut cp = checkpoint();
        cp.origin = String::new();
        assert!(matches!(cp.validate(), Err(NoteError::Checkpoint { line: 1, .. })));
        let mut cp = checkpoint();
        cp.origin = "a\nb".to_string();
        assert!(matches!(cp.validate(), Err(NoteError::Checkpoint { line: 1, .. })));
        let mut cp = checkpoint();
        cp.extensions.push(String::new());
        assert!(matches!(cp.validate(), Err(NoteError::Checkpoint { line: 6, .. })));
        let mut cp = checkpoint();
        cp.extensions[1] = "x\ny".to_string();
        assert!(matches!(cp.validate(), Err(NoteError::Checkpoint { line: 5, .. })));
    }

    #[test]
    fn private_key_pem_round_trips() {
        let signer = NoteSigner::generate("audit.example/gateway").unwrap();
        let pem = signer.to_pkcs8_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let back = NoteSigner::from_pkcs8_pem("audit.example/gateway", &pem).unwrap();
        assert_eq!(back.verifier(), signer.verifier());
        let note = back.sign(&checkpoint());
        assert_eq!(note, signer.sign(&checkpoint()), "Ed25519 signing is deterministic");
        assert!(matches!(NoteSigner::from_pkcs8_pem("n", "garbage"), Err(NoteError::PrivateKey(_))));
        let public = signer.verifier().to_public_key_pem().unwrap();
        assert!(NoteSigner::from_pkcs8_pem("n", &public).is_err());
    }

    #[test]
    fn public_key_pem_round_trips() {
        let verifier = signer(2).verifier();
        let pem = verifier.to_public_key_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        let back = NoteVerifier::from_public_key_pem("audit.example/gateway", &pem).unwrap();
        assert_eq!(back, verifier);
        assert_eq!(back.key_hash(), verifier.key_hash());
        assert!(matches!(NoteVerifier::from_public_key_pem("n", "garbage"), Err(NoteError::PublicKey(_))));
    }

    #[test]
    fn vkey_round_trips() {
        let verifier = signer(3).verifier();
        let vkey = verifier.to_vkey();
        let (name, rest) = vkey.split_once('+').unwrap();
        assert_eq!(name, "audit.example/gateway");
        assert_eq!(&rest[..8], hex4(&verifier.key_hash()));
        assert_eq!(NoteVerifier::from_vkey(&vkey).unwrap(), verifier);
    }

    #[test]
    fn vkey_from_other_implementations() {
        // golang.org/x/mod/sumdb/note and transparency-dev/formats test keys
        // (the last one's base64 holds a '+').
        for vkey in [
            "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop",
            "TEST+7997405c+AQcC+FTVKf0jlTdHDY3rbevmnKxxPjigCXlVtGe6RIr6",
        ] {
            let verifier = NoteVerifier::from_vkey(vkey).unwrap();
            assert_eq!(verifier.to_vkey(), vkey);
        }
    }

    #[test]
    fn vkey_is_checked() {
        let vkey = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
        for bad in [
            "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumanm+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+C74F20A3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+Apc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "PeterNeumann+c74f20a3+AhpjOGZhZTk1YzMxOWFkNWE4NDhkM2JkMjE5YzI5NzU=",
            "PeterNeumann+c74f20a3",
            "+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
            "",
        ] {
            assert!(NoteVerifier::from_vkey(bad).is_err(), "{bad:?}");
        }
        // Every proper substring fails.
        for start in 0..vkey.len() {
            for end in start + 1..=vkey.len() {
                if start != 0 || end != vkey.len() {
                    assert!(NoteVerifier::from_vkey(&vkey[start..end]).is_err(), "{:?}", &vkey[start..end]);
                }
            }
        }
    }

    #[test]
    fn key_hash_known_answer() {
        let key = SigningKey::from_bytes(&[0x42; 32]).verifying_key();
        let name = "audit.example/gateway";
        let mut input = Vec::new();
        input.extend_from_slice(b"audit.example/gateway");
        input.push(0x0a);
        input.push(0x01);
        input.extend_from_slice(key.as_bytes());
        assert_eq!(input.len(), 21 + 1 + 1 + 32);
        let digest = Sha256::digest(&input);
        let verifier = NoteVerifier::new(name, key).unwrap();
        assert_eq!(verifier.key_hash(), [digest[0], digest[1], digest[2], digest[3]]);
        // And the value golang.org/x/mod/sumdb/note publishes for its test key.
        let peter =
            NoteVerifier::from_vkey("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").unwrap();
        let mut input = b"PeterNeumann\n\x01".to_vec();
        input.extend_from_slice(peter.key().as_bytes());
        assert_eq!(Sha256::digest(&input)[..4], [0xc7, 0x4f, 0x20, 0xa3]);
        assert_eq!(peter.key_hash(), [0xc7, 0x4f, 0x20, 0xa3]);
    }

    #[test]
    fn matches_the_go_reference_note() {
        // golang.org/x/mod/sumdb/note: the example signer (0x01 ‖ seed) and its note.
        let skey = STANDARD.decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz").unwrap();
        let seed: [u8; 32] = skey[1..].try_into().unwrap();
        let signer = NoteSigner::new("PeterNeumann", SigningKey::from_bytes(&seed)).unwrap();
        let text = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n";
        let note = "If you think cryptography is the answer to your problem,\n\
                    then you don't know what your problem is.\n\
                    \n\
                    \u{2014} PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n";
        assert_eq!(signer.sign_text(text), note);
        let verifier =
            NoteVerifier::from_vkey("PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW").unwrap();
        assert_eq!(signer.verifier(), verifier);
        assert_eq!(verify_text(note, &verifier).unwrap(), text);
        // Not a checkpoint, so `open` refuses the text after verifying it.
        assert!(matches!(open(note, &verifier), Err(NoteError::Checkpoint { line: 2, .. })));
        let changed = note.replace("cryptography", "cryptographY");
        assert!(matches!(verify_text(&changed, &verifier), Err(NoteError::BadSignature { line: 4, .. })));
    }

    #[test]
    fn tampered_fields_fail() {
        let signer = signer(4);
        let verifier = signer.verifier();
        let cp = checkpoint();
        let note = signer.sign(&cp);
        let mut edits = Vec::new();
        edits.push(Checkpoint { size: cp.size + 1, ..cp.clone() });
        let mut root = cp.root;
        root[31] ^= 1;
        edits.push(Checkpoint { root, ..cp.clone() });
        edits.push(Checkpoint { origin: "audit.example/other".to_string(), ..cp.clone() });
        edits.push(Checkpoint { extensions: vec!["ext one".to_string(), "ext 2".to_string()], ..cp.clone() });
        edits.push(Checkpoint { extensions: vec!["ext one".to_string()], ..cp.clone() });
        for edit in edits {
            let forged = with_body(&note, &edit.body());
            let err = open(&forged, &verifier).unwrap_err();
            assert!(matches!(err, NoteError::BadSignature { .. }), "{edit:?}: {err}");
            assert!(err.to_string().starts_with("bad signature by audit.example/gateway"), "{err}");
        }
    }

    #[test]
    fn flipped_signature_bytes_fail() {
        let signer = signer(5);
        let note = signer.sign(&checkpoint());
        let (body, line) = note.rsplit_once("\n\n").unwrap();
        let encoded = line.trim_end().rsplit_once(' ').unwrap().1;
        let raw = STANDARD.decode(encoded).unwrap();
        for index in 0..raw.len() {
            let mut flipped = raw.clone();
            flipped[index] ^= 0x01;
            let forged = format!("{body}\n\n\u{2014} audit.example/gateway {}\n", STANDARD.encode(&flipped));
            let err = open(&forged, &signer.verifier()).unwrap_err();
            if index < 4 {
                // The key hash no longer matches: the line is someone else's.
                assert!(matches!(err, NoteError::NoSignature { .. }), "byte {index}: {err}");
            } else {
                assert_eq!(
                    err,
                    NoteError::BadSignature {
                        name: "audit.example/gateway".to_string(),
                        key_hash: signer.verifier().key_hash(),
                        line: 7
                    },
                    "byte {index}"
                );
            }
        }
    }

    #[test]
    fn another_key_with_the_same_name_fails() {
        let ours = signer(6).verifier();
        let theirs = signer(7);
        let note = theirs.sign(&checkpoint());
        let err = open(&note, &ours).unwrap_err();
        let NoteError::NoSignature { name, key_hash, signers: found } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(name, "audit.example/gateway");
        assert_eq!(*key_hash, ours.key_hash());
        assert_eq!(found, &vec![("audit.example/gateway".to_string(), theirs.verifier().key_hash())]);
        let message = err.to_string();
        assert!(message.starts_with("no signature by audit.example/gateway"), "{message}");
        assert!(message.contains(&hex4(&ours.key_hash())), "{message}");
        assert!(message.contains(&hex4(&theirs.verifier().key_hash())), "{message}");
        assert_eq!(signers(&note).unwrap(), found.clone());
    }

    #[test]
    fn a_line_with_our_name_and_hash_but_another_key_is_a_bad_signature() {
        // Key hashes are short: a colliding line must fail, not be skipped.
        let ours = signer(8);
        let theirs = signer(9);
        let note = theirs.sign(&checkpoint());
        let (body, line) = note.rsplit_once("\n\n").unwrap();
        let encoded = line.trim_end().rsplit_once(' ').unwrap().1;
        let mut raw = STANDARD.decode(encoded).unwrap();
        raw[..4].copy_from_slice(&ours.verifier().key_hash());
        let forged = format!("{body}\n\n\u{2014} audit.example/gateway {}\n", STANDARD.encode(&raw));
        assert!(matches!(open(&forged, &ours.verifier()), Err(NoteError::BadSignature { .. })));
    }

    #[test]
    fn extra_signatures_by_unknown_keys_are_ignored() {
        let ours = signer(10);
        let witness = NoteSigner::new("witness.example/w1", SigningKey::from_bytes(&[11; 32])).unwrap();
        let cp = checkpoint();
        let note = ours.sign(&cp);
        let cosigned = witness.sign(&cp);
        let witness_line = cosigned.rsplit_once("\n\n").unwrap().1;
        let before =
            format!("{}\n\n{witness_line}{}", cp.body().trim_end_matches('\n'), note.rsplit_once("\n\n").unwrap().1);
        let after = format!("{note}{witness_line}");
        for both in [before, after] {
            assert_eq!(open(&both, &ours.verifier()).unwrap(), cp, "{both}");
            assert_eq!(open(&both, &witness.verifier()).unwrap(), cp, "{both}");
            assert_eq!(signers(&both).unwrap().len(), 2);
        }
    }

    #[test]
    fn malformed_notes_fail() {
        let signer = signer(12);
        let verifier = signer.verifier();
        let note = signer.sign(&checkpoint());
        let malformed = |text: &str| match open(text, &verifier) {
            Err(NoteError::Malformed { line, .. }) => line,
            other => panic!("{text:?} gave {other:?}"),
        };
        // No empty line before the signature.
        assert_eq!(malformed(&note.replacen("\n\n", "\n", 1)), 6);
        // An ASCII dash, or no space after the em dash.
        assert_eq!(malformed(&note.replace('\u{2014}', "-")), 7);
        assert_eq!(malformed(&note.replace("\u{2014} ", "\u{2014}")), 7);
        assert_eq!(malformed(&note.replace("\u{2014} ", "\u{2015} ")), 7);
        // A trailing empty line, carriage returns, a missing final newline.
        assert_eq!(malformed(&format!("{note}\n")), 8);
        assert_eq!(malformed(&note.replace('\n', "\r\n")), 1);
        assert_eq!(malformed(note.trim_end_matches('\n')), 7);
        // A signature line without a signature, with a bad name, with bad base64.
        let (body, line) = note.rsplit_once("\n\n").unwrap();
        let encoded = line.trim_end().rsplit_once(' ').unwrap().1;
        for bad in [
            "\u{2014} audit.example/gateway\n".to_string(),
            format!("\u{2014}  {encoded}\n"),
            format!("\u{2014} a+b {encoded}\n"),
            format!("\u{2014} audit.example/gateway {encoded} \n"),
            format!("\u{2014} audit.example/gateway  {encoded}\n"),
            format!("\u{2014} audit.example/gateway {}\n", encoded.trim_end_matches('=')),
            format!("\u{2014} audit.example/gateway {}\n", STANDARD.encode([1, 2, 3, 4])),
        ] {
            assert_eq!(malformed(&format!("{body}\n\n{bad}")), 7, "{bad:?}");
        }
        // A malformed line fails the note even when a good line is present.
        assert_eq!(malformed(&format!("{note}- other {encoded}\n")), 8);
    }

    #[test]
    fn truncated_notes_fail() {
        let signer = signer(13);
        let note = signer.sign(&checkpoint());
        for end in (0..note.len()).filter(|end| note.is_char_boundary(*end)) {
            assert!(open(&note[..end], &signer.verifier()).is_err(), "{:?}", &note[..end]);
        }
    }

    #[test]
    fn hostile_sizes_are_refused() {
        let signer = signer(14);
        let note = signer.sign(&checkpoint());
        let big = Checkpoint { extensions: vec!["x".repeat(MAX_NOTE_SIZE)], ..checkpoint() };
        assert!(matches!(open(&signer.sign(&big), &signer.verifier()), Err(NoteError::TooLarge { .. })));
        let line = note.rsplit_once("\n\n").unwrap().1;
        let many = format!("{note}{}", line.repeat(MAX_SIGNATURES));
        assert!(many.len() <= MAX_NOTE_SIZE);
        assert_eq!(open(&many, &signer.verifier()), Err(NoteError::TooManySignatures { max: MAX_SIGNATURES }));
        let enough = format!("{note}{}", line.repeat(MAX_SIGNATURES - 1));
        assert!(open(&enough, &signer.verifier()).is_ok());
    }

    #[test]
    fn key_names_are_checked() {
        let key = SigningKey::from_bytes(&[15; 32]);
        for bad in ["", "a b", "a+b", "a\u{00a0}b", "a\tb", "a\u{7f}b", "a\u{3000}b"] {
            assert!(matches!(NoteSigner::new(bad, key.clone()), Err(NoteError::InvalidKeyName { .. })), "{bad:?}");
            assert!(NoteVerifier::new(bad, key.verifying_key()).is_err(), "{bad:?}");
        }
        assert!(NoteSigner::new("audit.example/gateway-1", key).is_ok());
    }

    #[test]
    fn signers_lists_lines_without_verifying() {
        let a = signer(16);
        let b = NoteSigner::new("b.example", SigningKey::from_bytes(&[17; 32])).unwrap();
        let note = a.sign(&checkpoint());
        let note = format!("{note}{}", b.sign(&checkpoint()).rsplit_once("\n\n").unwrap().1);
        assert_eq!(
            signers(&note).unwrap(),
            vec![
                ("audit.example/gateway".to_string(), a.verifier().key_hash()),
                ("b.example".to_string(), b.verifier().key_hash())
            ]
        );
        assert!(signers("no signatures\n").is_err());
    }

    #[test]
    fn signer_debug_hides_the_key() {
        let signer = signer(18);
        let debug = format!("{signer:?}");
        assert!(debug.contains("audit.example/gateway"), "{debug}");
        assert!(!debug.contains("18, 18"), "{debug}");
    }
}
