//! `verify_jwt`: every refusal of docs/policy.md §2, and the claim mapping.
#![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use policy_core::{verify_jwt, Actor, IdentityError, IdentityRules, Jwks};
use serde_json::{json, Value};

const NOW: u64 = 1_800_000_000;

fn b64(v: &[u8]) -> String {
    B64.encode(v)
}

struct Keys {
    ed: ed25519_dalek::SigningKey,
    ec: p256::ecdsa::SigningKey,
    rsa: rsa::RsaPrivateKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let mut rng = rand::rngs::OsRng;
        Keys {
            ed: ed25519_dalek::SigningKey::generate(&mut rng),
            ec: p256::ecdsa::SigningKey::random(&mut rng),
            rsa: rsa::RsaPrivateKey::new(&mut rng, 2048).unwrap(),
        }
    })
}

fn ed_jwk(kid: &str) -> Value {
    json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "x": b64(keys().ed.verifying_key().as_bytes())})
}

fn ec_jwk(kid: &str) -> Value {
    let point = keys().ec.verifying_key().to_encoded_point(false);
    json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256",
           "x": b64(point.x().unwrap()), "y": b64(point.y().unwrap())})
}

fn rsa_jwk(kid: &str) -> Value {
    use rsa::traits::PublicKeyParts;
    let public = keys().rsa.to_public_key();
    json!({"kty": "RSA", "kid": kid, "alg": "RS256",
           "n": b64(&public.n().to_bytes_be()), "e": b64(&public.e().to_bytes_be())})
}

fn jwks(keys: &[Value]) -> Jwks {
    Jwks::from_json(json!({ "keys": keys }).to_string().as_bytes()).unwrap()
}

fn all_keys() -> Jwks {
    jwks(&[ed_jwk("ed"), ec_jwk("ec"), rsa_jwk("rsa")])
}

/// Signs `header.claims` with the algorithm the header names.
fn sign(header: &Value, claims: &Value) -> String {
    let input = format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()));
    let sig = match header["alg"].as_str().unwrap() {
        "EdDSA" => {
            use ed25519_dalek::Signer;
            keys().ed.sign(input.as_bytes()).to_bytes().to_vec()
        }
        "ES256" => {
            use p256::ecdsa::signature::Signer;
            let s: p256::ecdsa::Signature = keys().ec.sign(input.as_bytes());
            s.to_bytes().to_vec()
        }
        "RS256" => {
            use rsa::signature::{SignatureEncoding, Signer};
            let k = rsa::pkcs1v15::SigningKey::<rsa::sha2::Sha256>::new(keys().rsa.clone());
            k.sign(input.as_bytes()).to_vec()
        }
        other => panic!("no signer for {other}"),
    };
    format!("{input}.{}", b64(&sig))
}

fn claims() -> Value {
    json!({"sub": "alice@example.com", "groups": ["developers", "ai-agents"], "exp": NOW + 600, "iat": NOW - 10})
}

fn token(alg: &str, kid: &str, claims: &Value) -> String {
    sign(&json!({"alg": alg, "kid": kid, "typ": "JWT"}), claims)
}

fn verify(token: &str) -> Result<policy_core::Identity, IdentityError> {
    verify_jwt(token, &all_keys(), &IdentityRules::default(), NOW)
}

#[test]
fn each_algorithm_verifies_with_its_key() {
    for (alg, kid) in [("EdDSA", "ed"), ("ES256", "ec"), ("RS256", "rsa")] {
        let id = verify(&token(alg, kid, &claims())).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(id.subject, "alice@example.com");
        assert_eq!(id.groups, ["developers", "ai-agents"]);
        assert!(id.actor.is_none());
    }
}

#[test]
fn the_algorithm_comes_from_the_key() {
    // alg: none, with or without a signature.
    let none = format!("{}.{}.", b64(br#"{"alg":"none"}"#), b64(claims().to_string().as_bytes()));
    assert_eq!(verify(&none), Err(IdentityError::Unsigned));
    let none_kid = format!("{}.{}.", b64(br#"{"alg":"none","kid":"rsa"}"#), b64(claims().to_string().as_bytes()));
    assert_eq!(verify(&none_kid), Err(IdentityError::Unsigned));

    // HS256 keyed with the RSA public key (algorithm confusion).
    use hmac::Mac;
    use rsa::pkcs1::EncodeRsaPublicKey;
    let public_der = keys().rsa.to_public_key().to_pkcs1_der().unwrap();
    let input = format!("{}.{}", b64(br#"{"alg":"HS256","kid":"rsa"}"#), b64(claims().to_string().as_bytes()));
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(public_der.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    let forged = format!("{input}.{}", b64(&mac.finalize().into_bytes()));
    assert!(matches!(verify(&forged), Err(IdentityError::UnsupportedAlgorithm(a)) if a == "HS256"));

    // A real signature under a key the header's algorithm is not for.
    let rs_on_ed = sign(&json!({"alg": "EdDSA", "kid": "rsa"}), &claims());
    assert!(matches!(verify(&rs_on_ed), Err(IdentityError::AlgorithmMismatch { .. })));
    let ps = sign(&json!({"alg": "RS256", "kid": "rsa"}), &claims()).replacen(
        &b64(br#"{"alg":"RS256","kid":"rsa"}"#),
        &b64(br#"{"alg":"PS256","kid":"rsa"}"#),
        1,
    );
    assert!(matches!(verify(&ps), Err(IdentityError::AlgorithmMismatch { .. })), "the JWK says RS256");
    let weird = sign(&json!({"alg": "EdDSA", "kid": "ed"}), &claims()).replacen(
        &b64(br#"{"alg":"EdDSA","kid":"ed"}"#),
        &b64(br#"{"alg":"XY999","kid":"ed"}"#),
        1,
    );
    assert!(matches!(verify(&weird), Err(IdentityError::UnsupportedAlgorithm(_))));
}

#[test]
fn keys_are_chosen_by_kid() {
    assert_eq!(verify(&token("EdDSA", "nope", &claims())), Err(IdentityError::UnknownKeyId("nope".into())));
    let no_kid = sign(&json!({"alg": "EdDSA"}), &claims());
    assert_eq!(verify(&no_kid), Err(IdentityError::MissingKeyId));
    // One key in the set: no kid needed.
    let single = jwks(&[ed_jwk("ed")]);
    assert!(verify_jwt(&no_kid, &single, &IdentityRules::default(), NOW).is_ok());
    let empty = jwks(&[]);
    assert_eq!(verify_jwt(&no_kid, &empty, &IdentityRules::default(), NOW), Err(IdentityError::NoKeys));
    // Keys named in headers are never used.
    let jku =
        sign(&json!({"alg": "EdDSA", "kid": "ed", "jku": "https://evil.invalid/jwks", "jwk": ed_jwk("x")}), &claims());
    assert!(verify(&jku).is_ok(), "ignored, and the configured key still verifies");
}

#[test]
fn tampering_breaks_the_signature() {
    let t = token("ES256", "ec", &claims());
    let mut parts: Vec<String> = t.split('.').map(str::to_string).collect();
    let mut c = claims();
    c["groups"] = json!(["dba"]);
    parts[1] = b64(c.to_string().as_bytes());
    assert_eq!(verify(&parts.join(".")), Err(IdentityError::BadSignature));
    let other = token("EdDSA", "ed", &claims());
    let swapped = format!("{}.{}.{}", parts[0], t.split('.').nth(1).unwrap(), other.split('.').nth(2).unwrap());
    assert_eq!(verify(&swapped), Err(IdentityError::BadSignature));
}

#[test]
fn time_claims_are_checked_against_now_with_leeway() {
    let with = |k: &str, v: Value| {
        let mut c = claims();
        c[k] = v;
        verify(&token("EdDSA", "ed", &c))
    };
    assert_eq!(with("exp", json!(NOW - 61)), Err(IdentityError::Expired));
    assert!(with("exp", json!(NOW - 30)).is_ok(), "within the 60 s leeway");
    assert_eq!(with("exp", json!("tomorrow")), Err(IdentityError::MissingExpiry));
    let mut c = claims();
    c.as_object_mut().unwrap().remove("exp");
    assert_eq!(verify(&token("EdDSA", "ed", &c)), Err(IdentityError::MissingExpiry));
    assert_eq!(with("nbf", json!(NOW + 120)), Err(IdentityError::NotYetValid));
    assert!(with("nbf", json!(NOW + 30)).is_ok());
    assert_eq!(with("iat", json!(NOW + 3600)), Err(IdentityError::IssuedInFuture));
    // The leeway is capped.
    let generous = IdentityRules { leeway_seconds: 86_400, ..IdentityRules::default() };
    let mut c = claims();
    c["exp"] = json!(NOW - 3600);
    assert_eq!(verify_jwt(&token("EdDSA", "ed", &c), &all_keys(), &generous, NOW), Err(IdentityError::Expired));
}

#[test]
fn issuer_and_audience_when_named() {
    let rules = IdentityRules {
        issuer: Some("https://idp.example.com".into()),
        audience: vec!["portcullis".into()],
        ..IdentityRules::default()
    };
    let check = |c: &Value| verify_jwt(&token("EdDSA", "ed", c), &all_keys(), &rules, NOW);
    let mut good = claims();
    good["iss"] = json!("https://idp.example.com");
    good["aud"] = json!(["other", "portcullis"]);
    assert!(check(&good).is_ok());
    let mut c = good.clone();
    c["iss"] = json!("https://evil.example.com");
    assert_eq!(check(&c), Err(IdentityError::WrongIssuer));
    c = good.clone();
    c.as_object_mut().unwrap().remove("iss");
    assert_eq!(check(&c), Err(IdentityError::WrongIssuer));
    c = good.clone();
    c["aud"] = json!("other");
    assert_eq!(check(&c), Err(IdentityError::WrongAudience));
    c.as_object_mut().unwrap().remove("aud");
    assert_eq!(check(&c), Err(IdentityError::WrongAudience));
}

#[test]
fn subjects_groups_and_actors_map_from_claims() {
    for bad in [json!(null), json!(""), json!(42)] {
        let mut c = claims();
        c["sub"] = bad;
        assert_eq!(verify(&token("EdDSA", "ed", &c)), Err(IdentityError::MissingSubject("sub".into())));
    }
    let rules = IdentityRules {
        subject_claim: "email".into(),
        groups_claim: "realm_access.roles".into(),
        client_id_claims: vec!["azp".into(), "client_id".into()],
        ..IdentityRules::default()
    };
    let c = json!({
        "sub": "u-123", "email": "alice@example.com", "exp": NOW + 60, "azp": "copilot-cli",
        "realm_access": {"roles": ["dba", "developers"]},
        "act": {"sub": "copilot-7", "act": {"sub": "orchestrator"}}
    });
    let id = verify_jwt(&token("EdDSA", "ed", &c), &all_keys(), &rules, NOW).unwrap();
    assert_eq!(id.subject, "alice@example.com");
    assert_eq!(id.groups, ["dba", "developers"]);
    assert_eq!(
        id.actor,
        Some(Actor {
            subject: Some("copilot-7".into()),
            client_id: Some("copilot-cli".into()),
            chain: vec!["orchestrator".into()]
        })
    );
    let c = json!({"sub": "bob", "exp": NOW + 60, "groups": "ai-agents developers,dba"});
    let id = verify(&token("EdDSA", "ed", &c)).unwrap();
    assert_eq!(id.groups, ["ai-agents", "developers", "dba"]);
}

#[test]
fn malformed_and_oversized_tokens_are_refused() {
    let good = token("EdDSA", "ed", &claims());
    let (h, rest) = good.split_once('.').unwrap();
    for bad in [
        String::new(),
        "abc".into(),
        "a.b".into(),
        format!("{good}.extra"),
        format!("{h}=.{rest}"),
        format!("{h}.{}", rest.replacen('.', ".+", 1)),
        format!("{}.{rest}", b64(b"not json")),
        format!("{}.{rest}", b64(b"[1,2]")),
        format!(" {good}"),
    ] {
        assert!(matches!(verify(&bad), Err(IdentityError::Malformed(_))), "{bad:?} -> {:?}", verify(&bad));
    }
    let huge = "a".repeat(20_000);
    assert!(matches!(verify(&huge), Err(IdentityError::Oversized { .. })));
    let crit = sign(&json!({"alg": "EdDSA", "kid": "ed", "crit": ["exp"], "exp": 1}), &claims());
    assert_eq!(verify(&crit), Err(IdentityError::CriticalHeader("exp".into())));
}

#[test]
fn unusable_keys_are_skipped_with_a_diagnostic() {
    let set = Jwks::from_json(
        json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "XYZ", "kid": "strange"},
            {"kty": "OKP", "crv": "Ed25519", "kid": "enc", "use": "enc", "x": ed_jwk("e")["x"]},
            {"kty": "OKP", "crv": "Ed25519", "kid": "ops", "key_ops": ["sign"], "x": ed_jwk("e")["x"]},
            {"kty": "RSA", "kid": "mismatch", "alg": "ES256", "n": rsa_jwk("r")["n"], "e": rsa_jwk("r")["e"]},
            "garbage",
            ed_jwk("ed"),
        ]})
        .to_string()
        .as_bytes(),
    )
    .unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!(set.diagnostics().len(), 6, "{:?}", set.diagnostics());

    // Found by fuzzing: a short Ed25519 key made the verifier slice past its
    // end. It is skipped at load time now.
    let short =
        Jwks::from_json(br#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"k","x":"11qYAYKxCrfVS_7TywaIaPcHURo"}]}"#)
            .unwrap();
    assert!(short.is_empty(), "{:?}", short.diagnostics());
    assert!(short.diagnostics()[0].contains("32 bytes"), "{:?}", short.diagnostics());
    let t = "eyJhbGciOiJFZERTQSIsImtpZCI6ImsifQ.eyJzdWIiOiJhIiwiZXhwIjMDAwfQ.c2ln";
    assert_eq!(verify_jwt(t, &short, &IdentityRules::default(), NOW), Err(IdentityError::NoKeys));
    let small_rsa = Jwks::from_json(br#"{"keys":[{"kty":"RSA","kid":"r","n":"AQAB","e":"AQAB"}]}"#).unwrap();
    assert!(small_rsa.is_empty(), "{:?}", small_rsa.diagnostics());
    assert!(set.has_kid("ed") && !set.has_kid("hmac"));
    assert!(verify_jwt(&token("EdDSA", "ed", &claims()), &set, &IdentityRules::default(), NOW).is_ok());
    for bad in [&b"not json"[..], br#"{"nokeys": []}"#, br#"{"keys": {}}"#] {
        assert!(matches!(Jwks::from_json(bad), Err(IdentityError::InvalidJwks(_))));
    }
}

#[test]
fn errors_never_quote_the_token() {
    let t = token("EdDSA", "ed", &claims());
    let mut c = claims();
    c["exp"] = json!(1);
    let expired = token("EdDSA", "ed", &c);
    for e in [verify(&t.replace('e', "f")), verify(&expired), verify(&format!("{t}x"))] {
        if let Err(e) = e {
            let msg = e.to_string();
            assert!(!msg.contains(t.split('.').nth(1).unwrap()), "{msg}");
        }
    }
}

#[test]
fn header_text_an_error_repeats_is_escaped_for_logs() {
    let forged =
        sign(&json!({"alg": "EdDSA", "kid": "x\n2026-01-01 INFO admin logged in\u{0}", "typ": "JWT"}), &claims());
    let e = verify(&forged).unwrap_err();
    assert_eq!(e, IdentityError::UnknownKeyId("x\\n2026-01-01 INFO admin logged in\\0".into()));
    let crit = sign(&json!({"alg": "EdDSA", "kid": "ed", "crit": ["a\r\u{1b}[2J\"b"]}), &claims());
    let msg = verify(&crit).unwrap_err().to_string();
    assert!(!msg.chars().any(char::is_control), "{msg:?}");
    let input = format!("{}.{}", b64(br#"{"alg":"EdDSA\nx","kid":"ed"}"#), b64(claims().to_string().as_bytes()));
    let alg = format!("{input}.{}", b64(b"signature"));
    assert_eq!(verify(&alg).unwrap_err(), IdentityError::UnsupportedAlgorithm("EdDSA\\nx".into()));
}
