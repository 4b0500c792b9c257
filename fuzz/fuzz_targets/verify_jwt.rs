//! Fuzz target `verify_jwt`: arbitrary token and JWKS bytes.
//!
//! The input is split at the first NUL byte: before it, the JWKS document;
//! after it, the token. Neither may make `Jwks::from_json` or `verify_jwt`
//! panic, and no error message may quote the token's claims part.

#![no_main]

use libfuzzer_sys::fuzz_target;
use policy_core::{verify_jwt, IdentityRules, Jwks};

fuzz_target!(|data: &[u8]| {
    let (jwks_bytes, token_bytes) = match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let jwks = match Jwks::from_json(jwks_bytes) {
        Ok(j) => j,
        // Still try the token against an empty set.
        Err(_) => match Jwks::from_json(br#"{"keys": []}"#) {
            Ok(j) => j,
            Err(e) => panic!("the empty key set is refused: {e}"),
        },
    };
    let Ok(token) = std::str::from_utf8(token_bytes) else { return };
    let rules = IdentityRules {
        issuer: Some("https://idp.test".into()),
        audience: vec!["portcullis".into()],
        client_id_claims: vec!["azp".into()],
        groups_claim: "realm_access.roles".into(),
        ..IdentityRules::default()
    };
    for now in [0u64, 1_800_000_000, u64::MAX] {
        if let Err(e) = verify_jwt(token, &jwks, &rules, now) {
            let shown = e.to_string();
            if let Some(claims) = token.split('.').nth(1) {
                // A real claims part is base64url; text the fuzzer made up
                // may match words of the message itself.
                let b64url = claims.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
                if b64url && claims.len() > 16 && shown.contains(claims) {
                    panic!("error quotes the token: {shown}");
                }
            }
        }
    }
});
