//! Who is asking: a person, a workload, or an agent acting for a person.
//!
//! [`verify_jwt`] turns an OIDC access or ID token into an [`Identity`]. The
//! signature is checked against a [`Jwks`] given when the engine is built
//! (never fetched here: the core does no I/O), the algorithm is taken from
//! the key the token's `kid` selects, and time comes in as an argument.
//!
//! ```
//! use policy_core::{verify_jwt, IdentityError, IdentityRules, Jwks};
//! let jwks = Jwks::from_json(br#"{"keys": []}"#)?;
//! let err = verify_jwt("not.a.token", &jwks, &IdentityRules::default(), 1_700_000_000).unwrap_err();
//! assert!(matches!(err, IdentityError::Malformed(_)));
//! # Ok::<(), IdentityError>(())
//! ```

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The agent acting for the subject (RFC 8693 `act`, or `azp`/`client_id`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Actor {
    /// The acting agent's subject (the `act` claim's `sub`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The agent's OAuth client id (`azp` / `client_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Earlier actors of a nested `act` chain, nearest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<String>,
}

impl Actor {
    /// An actor known by its subject.
    pub fn new(subject: impl Into<String>) -> Self {
        Actor { subject: Some(subject.into()), client_id: None, chain: Vec::new() }
    }

    /// The name decisions show: the subject, else the client id.
    pub fn name(&self) -> &str {
        self.subject.as_deref().or(self.client_id.as_deref()).unwrap_or("")
    }
}

/// The caller a decision is made for.
///
/// ```
/// use policy_core::{Actor, Identity};
/// let alice = Identity::new("alice@example.com").with_groups(["developers"]);
/// let agent = alice.clone().with_actor(Actor::new("copilot-7"));
/// assert!(alice.actor.is_none());
/// assert_eq!(agent.actor.as_ref().map(Actor::name), Some("copilot-7"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Identity {
    /// The person or workload (the token's subject claim).
    pub subject: String,
    /// Groups the subject belongs to.
    pub groups: Vec<String>,
    /// The agent acting for the subject, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<Actor>,
}

impl Identity {
    /// An identity with no groups and no actor.
    pub fn new(subject: impl Into<String>) -> Self {
        Identity { subject: subject.into(), groups: Vec::new(), actor: None }
    }

    /// Replaces the groups.
    #[must_use]
    pub fn with_groups<I, S>(mut self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.groups = groups.into_iter().map(Into::into).collect();
        self
    }

    /// Sets the acting agent.
    #[must_use]
    pub fn with_actor(mut self, actor: Actor) -> Self {
        self.actor = Some(actor);
        self
    }
}

/// Why a token was refused. Each variant is one check; none carries the
/// token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The token is longer than [`IdentityRules::max_token_bytes`].
    #[error("token is {len} bytes, more than the {max} accepted")]
    Oversized {
        /// Its length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// Not three strict base64url parts holding a JSON header and claims.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// `alg: none`.
    #[error("unsigned token (alg \"none\")")]
    Unsigned,
    /// An algorithm the engine does not accept (HMAC, or unknown).
    #[error("algorithm `{0}` is not accepted")]
    UnsupportedAlgorithm(String),
    /// The header's `alg` is not one the selected key is for.
    #[error("algorithm `{header}` does not match key `{kid}`")]
    AlgorithmMismatch {
        /// The header's algorithm.
        header: String,
        /// The key's id.
        kid: String,
    },
    /// No `kid` while the key set holds several keys.
    #[error("token names no key (kid) and the key set holds several")]
    MissingKeyId,
    /// A `kid` the key set does not hold.
    #[error("unknown key id `{0}`")]
    UnknownKeyId(String),
    /// The key set holds no usable key.
    #[error("the key set holds no usable key")]
    NoKeys,
    /// A `crit` header extension the engine does not implement.
    #[error("critical header extension `{0}` is not supported")]
    CriticalHeader(String),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` absent or not a number.
    #[error("token has no valid expiry (exp)")]
    MissingExpiry,
    /// `exp` is past.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not valid yet (nbf)")]
    NotYetValid,
    /// `iat` is in the future.
    #[error("token issued in the future (iat)")]
    IssuedInFuture,
    /// `iss` absent or not the configured issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` absent or not one of the configured audiences.
    #[error("wrong audience")]
    WrongAudience,
    /// The subject claim is absent, empty or not a string.
    #[error("token has no subject claim `{0}`")]
    MissingSubject(String),
    /// The JWKS document is not a key set.
    #[error("invalid JWKS: {0}")]
    InvalidJwks(String),
}

/// How a token becomes an identity: which claims hold what, what the issuer
/// and audience must be, how much clock skew is tolerated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityRules {
    /// Claim (dotted path) holding the subject.
    pub subject_claim: String,
    /// Claim (dotted path) holding the groups: an array of strings, or a
    /// string separated by spaces or commas.
    pub groups_claim: String,
    /// Claim holding the RFC 8693 actor (`act`), nested chains allowed.
    pub actor_claim: String,
    /// Claims naming the client an agent uses (e.g. `azp`, `client_id`);
    /// empty = none.
    pub client_id_claims: Vec<String>,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// Accepted `aud` values, when set (any one suffices).
    pub audience: Vec<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds (at most 300).
    pub leeway_seconds: u64,
    /// Largest token accepted, in bytes.
    pub max_token_bytes: usize,
}

impl Default for IdentityRules {
    fn default() -> Self {
        IdentityRules {
            subject_claim: "sub".into(),
            groups_claim: "groups".into(),
            actor_claim: "act".into(),
            client_id_claims: Vec::new(),
            issuer: None,
            audience: Vec::new(),
            leeway_seconds: 60,
            max_token_bytes: 16 * 1024,
        }
    }
}

/// Most clock skew [`IdentityRules::leeway_seconds`] may allow.
pub const MAX_LEEWAY_SECONDS: u64 = 300;

struct Key {
    kid: Option<String>,
    /// The algorithms this key verifies: its `alg`, or its type's family.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
}

/// A JSON Web Key Set, parsed once. Keys that cannot be used for verifying
/// signatures are skipped; [`Jwks::diagnostics`] says which and why.
pub struct Jwks {
    keys: Vec<Key>,
    diagnostics: Vec<String>,
}

impl std::fmt::Debug for Jwks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jwks")
            .field("kids", &self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("")).collect::<Vec<_>>())
            .field("diagnostics", &self.diagnostics)
            .finish()
    }
}

fn algorithms_for(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    use jsonwebtoken::jwk::KeyAlgorithm as K;
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => return Err("unsupported elliptic curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => &[Algorithm::EdDSA],
            _ => return Err("unsupported curve".into()),
        },
        AlgorithmParameters::OctetKey(_) => return Err("symmetric (oct) keys are not accepted".into()),
        _ => return Err("unknown key type".into()),
    };
    match jwk.common.key_algorithm {
        None => Ok(family.to_vec()),
        Some(alg) => {
            let named = match alg {
                K::RS256 => Algorithm::RS256,
                K::RS384 => Algorithm::RS384,
                K::RS512 => Algorithm::RS512,
                K::PS256 => Algorithm::PS256,
                K::PS384 => Algorithm::PS384,
                K::PS512 => Algorithm::PS512,
                K::ES256 => Algorithm::ES256,
                K::ES384 => Algorithm::ES384,
                K::EdDSA => Algorithm::EdDSA,
                other => return Err(format!("algorithm {other:?} is not accepted")),
            };
            if family.contains(&named) {
                Ok(vec![named])
            } else {
                Err(format!("algorithm {alg:?} does not fit the key type"))
            }
        }
    }
}

/// Checks the lengths of key material that verifiers slice without checking.
fn key_material_fits(jwk: &Jwk) -> Result<(), String> {
    use base64::Engine as _;
    let decoded = |v: &str| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v)
            .map_err(|_| "key material is not base64url".to_string())
    };
    match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(p) => match decoded(&p.x)?.len() {
            32 => Ok(()),
            n => Err(format!("an Ed25519 public key is 32 bytes, this one {n}")),
        },
        AlgorithmParameters::EllipticCurve(p) => {
            let want = match p.curve {
                EllipticCurve::P256 => 32,
                EllipticCurve::P384 => 48,
                _ => return Err("unsupported elliptic curve".into()),
            };
            if decoded(&p.x)?.len() == want && decoded(&p.y)?.len() == want {
                Ok(())
            } else {
                Err(format!("EC coordinates must be {want} bytes each"))
            }
        }
        AlgorithmParameters::RSA(p) => {
            let n = decoded(&p.n)?;
            let e = decoded(&p.e)?;
            if n.len() < 256 {
                Err(format!("RSA modulus of {} bits; at least 2048 are accepted", n.len() * 8))
            } else if e.is_empty() || e.len() > 8 {
                Err("RSA exponent is unusable".into())
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

impl Jwks {
    /// Parses a JWKS document (`{"keys": [...]}`).
    pub fn from_json(bytes: &[u8]) -> Result<Jwks, IdentityError> {
        let doc: Value = serde_json::from_slice(bytes).map_err(|e| IdentityError::InvalidJwks(e.to_string()))?;
        let Some(Value::Array(raw_keys)) = doc.get("keys") else {
            return Err(IdentityError::InvalidJwks("no `keys` array".into()));
        };
        let mut keys = Vec::new();
        let mut diagnostics = Vec::new();
        for (i, raw) in raw_keys.iter().enumerate() {
            let label = raw.get("kid").and_then(Value::as_str).map_or_else(|| format!("#{i}"), |k| format!("`{k}`"));
            let jwk: Jwk = match serde_json::from_value(raw.clone()) {
                Ok(j) => j,
                Err(e) => {
                    diagnostics.push(format!("key {label} skipped: {e}"));
                    continue;
                }
            };
            if let Some(usage) = &jwk.common.public_key_use {
                if *usage != PublicKeyUse::Signature {
                    diagnostics.push(format!("key {label} skipped: its use is not `sig`"));
                    continue;
                }
            }
            if let Some(ops) = &jwk.common.key_operations {
                if !ops.contains(&KeyOperations::Verify) {
                    diagnostics.push(format!("key {label} skipped: its key_ops lack `verify`"));
                    continue;
                }
            }
            let algorithms = match algorithms_for(&jwk) {
                Ok(a) => a,
                Err(e) => {
                    diagnostics.push(format!("key {label} skipped: {e}"));
                    continue;
                }
            };
            if let Err(e) = key_material_fits(&jwk) {
                diagnostics.push(format!("key {label} skipped: {e}"));
                continue;
            }
            let key = match DecodingKey::from_jwk(&jwk) {
                Ok(k) => k,
                Err(e) => {
                    diagnostics.push(format!("key {label} skipped: {e}"));
                    continue;
                }
            };
            keys.push(Key { kid: jwk.common.key_id.clone(), algorithms, key });
        }
        Ok(Jwks { keys, diagnostics })
    }

    /// Why keys were skipped.
    pub fn diagnostics(&self) -> &[String] {
        &self.diagnostics
    }

    /// How many keys are usable.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is usable.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether the set holds a key with this id (a caller refreshes its
    /// copy of the JWKS when it does not).
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

fn strict_base64url(part: &str) -> Result<Vec<u8>, IdentityError> {
    use base64::Engine as _;
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return Err(IdentityError::Malformed("a part is not base64url"));
    }
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| IdentityError::Malformed("a part is not canonical base64url"))
}

fn claim<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for p in parts {
        value = value.as_object()?.get(p)?;
    }
    Some(value)
}

fn number(v: Option<&Value>) -> Option<Option<f64>> {
    match v {
        None => Some(None),
        Some(v) => v.as_f64().map(Some),
    }
}

fn actor_chain(act: &Value) -> Option<(String, Vec<String>)> {
    let sub = act.get("sub").and_then(Value::as_str).filter(|s| !s.is_empty())?.to_string();
    let mut chain = Vec::new();
    let mut next = act.get("act");
    while let Some(a) = next {
        if chain.len() >= 16 {
            break;
        }
        if let Some(s) = a.get("sub").and_then(Value::as_str) {
            chain.push(s.to_string());
        }
        next = a.get("act");
    }
    Some((sub, chain))
}

/// Header text an error repeats, made safe to log: at most `max`
/// characters, control characters, quotes and backslashes escaped (the
/// header is unauthenticated when the error is raised, so it may hold
/// newlines or NULs meant for a log).
fn shown(text: &str, max: usize) -> String {
    text.chars().take(max).flat_map(char::escape_debug).collect()
}

/// Verifies a JWT and maps its claims to an [`Identity`]; `now` is Unix
/// time in seconds.
///
/// Refused, each with its own [`IdentityError`]: oversized or malformed
/// tokens (anything but three strict base64url parts), `alg: none`, HMAC or
/// unknown algorithms, a header `alg` the selected key is not for (RS/HS
/// confusion), no `kid` when the set holds several keys, an unknown `kid`,
/// `crit` extensions, a bad signature, a missing or past `exp`, a future
/// `nbf` or `iat` (beyond the leeway), a wrong or missing `iss`/`aud` when
/// the rules name them, and a missing subject. `jku`, `x5u`, `jwk` and `x5c`
/// headers are ignored: keys come only from the [`Jwks`].
pub fn verify_jwt(token: &str, jwks: &Jwks, rules: &IdentityRules, now: u64) -> Result<Identity, IdentityError> {
    if token.len() > rules.max_token_bytes {
        return Err(IdentityError::Oversized { len: token.len(), max: rules.max_token_bytes });
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(c64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(IdentityError::Malformed("not three dot-separated parts"));
    };
    let header: Map<String, Value> = serde_json::from_slice(&strict_base64url(h64)?)
        .map_err(|_| IdentityError::Malformed("the header is not a JSON object"))?;
    let alg = header.get("alg").and_then(Value::as_str).ok_or(IdentityError::Malformed("the header has no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(IdentityError::Unsigned);
    }
    let algorithm: Algorithm = alg.parse().map_err(|_| IdentityError::UnsupportedAlgorithm(shown(alg, 32)))?;
    if matches!(algorithm, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        return Err(IdentityError::UnsupportedAlgorithm(shown(alg, 32)));
    }
    if let Some(crit) = header.get("crit") {
        let first = crit.as_array().and_then(|a| a.first()).and_then(Value::as_str).unwrap_or("?");
        return Err(IdentityError::CriticalHeader(shown(first, 64)));
    }
    if jwks.keys.is_empty() {
        return Err(IdentityError::NoKeys);
    }
    let key = match header.get("kid") {
        Some(Value::String(kid)) => jwks
            .keys
            .iter()
            .find(|k| k.kid.as_deref() == Some(kid.as_str()))
            .ok_or_else(|| IdentityError::UnknownKeyId(shown(kid, 64)))?,
        Some(_) => return Err(IdentityError::Malformed("kid is not a string")),
        None => match jwks.keys.as_slice() {
            [only] => only,
            _ => return Err(IdentityError::MissingKeyId),
        },
    };
    if !key.algorithms.contains(&algorithm) {
        return Err(IdentityError::AlgorithmMismatch {
            header: alg.to_string(),
            kid: key.kid.clone().unwrap_or_default(),
        });
    }
    strict_base64url(s64)?;
    let signed = token.get(..h64.len() + 1 + c64.len()).ok_or(IdentityError::Malformed("token boundaries"))?;
    // A panic in a verifier (bad key material a check above missed) is a
    // refusal, not a crash.
    let verified = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        jsonwebtoken::crypto::verify(s64, signed.as_bytes(), &key.key, algorithm)
    }));
    match verified {
        Ok(Ok(true)) => {}
        _ => return Err(IdentityError::BadSignature),
    }

    let claims: Map<String, Value> = serde_json::from_slice(&strict_base64url(c64)?)
        .map_err(|_| IdentityError::Malformed("the claims are not a JSON object"))?;
    let leeway = rules.leeway_seconds.min(MAX_LEEWAY_SECONDS) as f64;
    let now = now as f64;
    let exp = number(claims.get("exp")).flatten().ok_or(IdentityError::MissingExpiry)?;
    if now > exp + leeway {
        return Err(IdentityError::Expired);
    }
    match number(claims.get("nbf")) {
        Some(Some(nbf)) if nbf > now + leeway => return Err(IdentityError::NotYetValid),
        None => return Err(IdentityError::Malformed("nbf is not a number")),
        _ => {}
    }
    match number(claims.get("iat")) {
        Some(Some(iat)) if iat > now + leeway => return Err(IdentityError::IssuedInFuture),
        None => return Err(IdentityError::Malformed("iat is not a number")),
        _ => {}
    }
    if let Some(iss) = &rules.issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(iss.as_str()) {
            return Err(IdentityError::WrongIssuer);
        }
    }
    if !rules.audience.is_empty() {
        let ok = match claims.get("aud") {
            Some(Value::String(a)) => rules.audience.contains(a),
            Some(Value::Array(list)) => {
                list.iter().filter_map(Value::as_str).any(|a| rules.audience.iter().any(|w| w == a))
            }
            _ => false,
        };
        if !ok {
            return Err(IdentityError::WrongAudience);
        }
    }
    let subject = claim(&claims, &rules.subject_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| IdentityError::MissingSubject(rules.subject_claim.clone()))?
        .to_string();
    let groups = match claim(&claims, &rules.groups_claim) {
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) => s.split([' ', ',']).filter(|g| !g.is_empty()).map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let mut actor = claim(&claims, &rules.actor_claim).and_then(actor_chain).map(|(sub, chain)| Actor {
        subject: Some(sub),
        client_id: None,
        chain,
    });
    let client = rules
        .client_id_claims
        .iter()
        .find_map(|c| claim(&claims, c).and_then(Value::as_str))
        .filter(|c| !c.is_empty())
        .map(str::to_string);
    if let Some(client) = client {
        actor.get_or_insert_with(Actor::default).client_id = Some(client);
    }
    Ok(Identity { subject, groups, actor })
}
