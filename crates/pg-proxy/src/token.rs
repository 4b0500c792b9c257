//! `pg-proxy token`: development keys and tokens.
//!
//! For development and tests only: a real deployment verifies tokens from
//! its identity provider. `keygen` writes a private key (PKCS#8 PEM, mode
//! 0600) and the matching JWKS; `mint` signs a token with it. The key id is
//! derived from the public key, so `mint` finds it without another file.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

/// Key types `keygen` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyType {
    /// Ed25519 (EdDSA): small and fast.
    Ed25519,
    /// RSA 2048 (RS256).
    Rsa,
}

enum SigningKey {
    Ed(ed25519_dalek::SigningKey),
    Rsa(rsa::RsaPrivateKey),
}

impl SigningKey {
    fn alg(&self) -> &'static str {
        match self {
            SigningKey::Ed(_) => "EdDSA",
            SigningKey::Rsa(_) => "RS256",
        }
    }

    /// The public JWK, with a key id derived from the public key.
    fn jwk(&self) -> Value {
        let mut jwk = match self {
            SigningKey::Ed(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": B64.encode(k.verifying_key().as_bytes())}),
            SigningKey::Rsa(k) => {
                use rsa::traits::PublicKeyParts;
                let public = k.to_public_key();
                json!({"kty": "RSA", "n": B64.encode(public.n().to_bytes_be()), "e": B64.encode(public.e().to_bytes_be())})
            }
        };
        let material = jwk.to_string();
        let kid: String = Sha256::digest(material.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
        if let Some(o) = jwk.as_object_mut() {
            o.insert("kid".into(), Value::String(kid));
            o.insert("alg".into(), Value::String(self.alg().into()));
            o.insert("use".into(), Value::String("sig".into()));
        }
        jwk
    }

    fn sign(&self, input: &[u8]) -> Vec<u8> {
        match self {
            SigningKey::Ed(k) => {
                use ed25519_dalek::Signer;
                k.sign(input).to_bytes().to_vec()
            }
            SigningKey::Rsa(k) => {
                use rsa::signature::{SignatureEncoding, Signer};
                rsa::pkcs1v15::SigningKey::<Sha256>::new(k.clone()).sign(input).to_vec()
            }
        }
    }

    fn to_pem(&self) -> Result<String, String> {
        match self {
            SigningKey::Ed(k) => {
                use ed25519_dalek::pkcs8::EncodePrivateKey;
                k.to_pkcs8_pem(Default::default()).map(|p| p.to_string()).map_err(|e| e.to_string())
            }
            SigningKey::Rsa(k) => {
                use rsa::pkcs8::EncodePrivateKey;
                k.to_pkcs8_pem(Default::default()).map(|p| p.to_string()).map_err(|e| e.to_string())
            }
        }
    }

    fn from_pem(pem: &str) -> Result<SigningKey, String> {
        if let Ok(k) = <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(pem) {
            return Ok(SigningKey::Ed(k));
        }
        <rsa::RsaPrivateKey as rsa::pkcs8::DecodePrivateKey>::from_pkcs8_pem(pem)
            .map(SigningKey::Rsa)
            .map_err(|_| "not a PKCS#8 Ed25519 or RSA private key in PEM".to_string())
    }
}

/// `token keygen`: writes `signing-key.pem` and `jwks.json` into `dir`.
pub fn keygen(dir: &Path, key_type: KeyType) -> Result<(PathBuf, PathBuf), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    let mut rng = rand::rngs::OsRng;
    let key = match key_type {
        KeyType::Ed25519 => SigningKey::Ed(ed25519_dalek::SigningKey::generate(&mut rng)),
        KeyType::Rsa => SigningKey::Rsa(
            rsa::RsaPrivateKey::new(&mut rng, 2048).map_err(|e| format!("RSA key generation failed: {e}"))?,
        ),
    };
    let key_path = dir.join("signing-key.pem");
    write_private(&key_path, key.to_pem()?.as_bytes())?;
    let jwks_path = dir.join("jwks.json");
    let jwks = json!({ "keys": [key.jwk()] });
    let text = serde_json::to_string_pretty(&jwks).map_err(|e| e.to_string())?;
    std::fs::write(&jwks_path, text + "\n").map_err(|e| format!("cannot write `{}`: {e}", jwks_path.display()))?;
    Ok((key_path, jwks_path))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(|e| format!("cannot write `{}`: {e}", path.display()))?;
    f.write_all(bytes).map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// What `token mint` puts in a token.
pub struct MintRequest<'a> {
    /// The private key file (PEM).
    pub key: &'a Path,
    /// The `sub` claim.
    pub subject: &'a str,
    /// The `groups` claim.
    pub groups: &'a [String],
    /// The agent acting for the subject (`act.sub`).
    pub actor: Option<&'a str>,
    /// Lifetime in seconds.
    pub ttl_seconds: u64,
    /// The `iss` claim.
    pub issuer: Option<&'a str>,
    /// The `aud` claim.
    pub audience: Option<&'a str>,
}

/// `token mint`: a signed JWT.
pub fn mint(req: &MintRequest<'_>) -> Result<String, String> {
    let pem = std::fs::read_to_string(req.key).map_err(|e| format!("cannot read key `{}`: {e}", req.key.display()))?;
    let key = SigningKey::from_pem(&pem).map_err(|e| format!("`{}`: {e}", req.key.display()))?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| e.to_string())?.as_secs();
    let kid = key.jwk().get("kid").cloned().unwrap_or(Value::Null);
    let header = json!({"alg": key.alg(), "typ": "JWT", "kid": kid});
    let mut claims = Map::new();
    claims.insert("sub".into(), json!(req.subject));
    claims.insert("groups".into(), json!(req.groups));
    claims.insert("iat".into(), json!(now));
    claims.insert("exp".into(), json!(now.saturating_add(req.ttl_seconds)));
    if let Some(a) = req.actor {
        claims.insert("act".into(), json!({ "sub": a }));
    }
    if let Some(i) = req.issuer {
        claims.insert("iss".into(), json!(i));
    }
    if let Some(a) = req.audience {
        claims.insert("aud".into(), json!(a));
    }
    let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(Value::Object(claims).to_string()));
    let signature = B64.encode(key.sign(input.as_bytes()));
    Ok(format!("{input}.{signature}"))
}

/// Parses `90s`, `15m`, `1h`, `2d` or plain seconds.
pub fn parse_ttl(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits.parse().map_err(|_| format!("`{text}` is not a duration (try 90s, 15m, 1h, 2d)"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use s, m, h or d)")),
    };
    n.checked_mul(scale).filter(|s| *s > 0).ok_or_else(|| format!("`{text}` is not a usable duration"))
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;

    #[test]
    fn ttl() {
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("15m"), Ok(900));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert_eq!(parse_ttl("2d"), Ok(172_800));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
