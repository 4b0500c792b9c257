//! Client login: the password a client sends is an OIDC token, verified
//! with `policy-core`'s [`verify_jwt`] against the identity provider's key
//! set.
//!
//! The key set is read from a file when the gateway starts. A token naming
//! a key id the set does not hold makes the gateway read the file again
//! (the provider rotated its keys), at most once every
//! [`REFRESH_INTERVAL`], so a flood of tokens with made-up key ids costs
//! one file read per interval, not one per login.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use policy_core::{verify_jwt, Identity, IdentityError, IdentityRules, Jwks};

/// Shortest time between two reloads of the key set.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// The identity provider's key set, as the gateway holds it.
#[derive(Debug)]
pub struct KeySet {
    path: PathBuf,
    state: RwLock<State>,
}

#[derive(Debug)]
struct State {
    jwks: Arc<Jwks>,
    loaded: Instant,
}

impl KeySet {
    /// Reads the key set file. Keys that cannot be used are skipped; their
    /// diagnostics are returned for the log.
    pub fn load(path: &Path) -> Result<(KeySet, Vec<String>), String> {
        let jwks = read(path)?;
        let diagnostics = jwks.diagnostics().to_vec();
        let state = State { jwks: Arc::new(jwks), loaded: Instant::now() };
        Ok((KeySet { path: path.to_path_buf(), state: RwLock::new(state) }, diagnostics))
    }

    fn current(&self) -> Arc<Jwks> {
        match self.state.read() {
            Ok(s) => Arc::clone(&s.jwks),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().jwks),
        }
    }

    /// Reloads the file if the last load is older than
    /// [`REFRESH_INTERVAL`]; returns whether it did.
    fn refresh(&self) -> bool {
        let mut state = match self.state.write() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        };
        if state.loaded.elapsed() < REFRESH_INTERVAL {
            return false;
        }
        state.loaded = Instant::now();
        match read(&self.path) {
            Ok(jwks) => {
                for d in jwks.diagnostics() {
                    tracing::warn!(path = %self.path.display(), "{d}");
                }
                state.jwks = Arc::new(jwks);
                true
            }
            Err(e) => {
                tracing::warn!("reloading the key set: {e}; keeping the keys already loaded");
                false
            }
        }
    }

    /// Verifies `token` now.
    pub fn verify(&self, token: &str, rules: &IdentityRules) -> Result<Identity, IdentityError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        match verify_jwt(token, &self.current(), rules, now) {
            Err(IdentityError::UnknownKeyId(kid)) => {
                if self.refresh() {
                    verify_jwt(token, &self.current(), rules, now)
                } else {
                    Err(IdentityError::UnknownKeyId(kid))
                }
            }
            other => other,
        }
    }
}

fn read(path: &Path) -> Result<Jwks, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Jwks::from_json(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}
