//! Client login: the password a client sends is an OIDC token, verified
//! with `policy-core`'s [`verify_jwt`] against the identity provider's key
//! set.
//!
//! The key set comes from a file or from a URL (the provider's `jwks_uri`;
//! `https://`, or `http://` to a loopback address only). It is loaded when
//! the gateway starts — a gateway that cannot load it does not start — and
//! loaded again:
//!
//! - when a token names a key id the set does not hold (the provider
//!   rotated its keys), at most once per `min_refresh` (default 30 s), so a
//!   flood of tokens with made-up key ids costs one fetch per interval, not
//!   one per login, and tokens from a rotated key that arrive together are
//!   all verified with the set the first of them fetched;
//! - when the copy is older than `max_age` (default 1 h), at the next login.
//!
//! A failed reload keeps the keys already loaded and is logged. A reload
//! runs to its end (a fetch gives up after 10 s) even when the login that
//! started it stops waiting at its `login_timeout`: what it loads is kept,
//! and the next login finds it.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use policy_core::{verify_jwt, Identity, IdentityError, IdentityRules, Jwks};

/// Largest key set document accepted.
pub const MAX_JWKS_BYTES: u64 = 1 << 20;

/// Where the key set comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file.
    File(PathBuf),
    /// A URL.
    Url(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Url(u) => f.write_str(u),
        }
    }
}

/// When the key set is loaded again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refresh {
    /// Shortest time between two loads.
    pub min_interval: Duration,
    /// Oldest copy used without loading again.
    pub max_age: Duration,
}

impl Default for Refresh {
    fn default() -> Self {
        Refresh { min_interval: Duration::from_secs(30), max_age: Duration::from_secs(3600) }
    }
}

/// The identity provider's key set, as the gateway holds it.
#[derive(Debug)]
pub struct KeySet {
    source: Source,
    refresh: Refresh,
    /// Shared with a load in progress, which stores what it loaded.
    state: Arc<RwLock<State>>,
    /// Serialises loads; held by a load in progress until it ends.
    loading: Arc<tokio::sync::Mutex<()>>,
}

#[derive(Debug)]
struct State {
    jwks: Arc<Jwks>,
    /// The last load, whether it worked or not.
    loaded: Instant,
    /// The last load that worked: the keys' age.
    fetched: Instant,
}

impl KeySet {
    /// Loads the key set. Keys that cannot be used are skipped; their
    /// diagnostics are returned for the log.
    pub fn load(source: Source, refresh: Refresh) -> Result<(KeySet, Vec<String>), String> {
        if let Source::Url(url) = &source {
            check_url(url)?;
        }
        let jwks = read(&source)?;
        let diagnostics = jwks.diagnostics().to_vec();
        let now = Instant::now();
        let state = State { jwks: Arc::new(jwks), loaded: now, fetched: now };
        let (state, loading) = (Arc::new(RwLock::new(state)), Arc::new(tokio::sync::Mutex::new(())));
        Ok((KeySet { source, refresh, state, loading }, diagnostics))
    }

    fn current(&self) -> (Arc<Jwks>, Instant) {
        match self.state.read() {
            Ok(s) => (Arc::clone(&s.jwks), s.loaded),
            Err(poisoned) => {
                let s = poisoned.into_inner();
                (Arc::clone(&s.jwks), s.loaded)
            }
        }
    }

    /// Loads the key set again unless a load happened less than the
    /// minimum interval ago (while another load runs, waits for it: that
    /// one then counts).
    async fn reload(&self) {
        let one_at_a_time = Arc::clone(&self.loading).lock_owned().await;
        if self.current().1.elapsed() < self.refresh.min_interval {
            return;
        }
        let _ = self.load_again(one_at_a_time).await;
    }

    /// Loads the key set again now (an operator's reload); a set that does
    /// not load is refused, and the keys already loaded are kept.
    pub async fn reload_now(&self) -> Result<(), String> {
        let one_at_a_time = Arc::clone(&self.loading).lock_owned().await;
        self.load_again(one_at_a_time).await
    }

    /// How long ago the keys in use were loaded.
    pub fn age(&self) -> Duration {
        match self.state.read() {
            Ok(s) => s.fetched.elapsed(),
            Err(poisoned) => poisoned.into_inner().fetched.elapsed(),
        }
    }

    /// Whether the keys are fresh enough to trust: loaded within the
    /// maximum age, after trying to load them again when they are older
    /// (at most once per minimum interval). The error says how old they
    /// are.
    pub async fn check_fresh(&self) -> Result<(), String> {
        if self.age() > self.refresh.max_age {
            self.reload().await;
        }
        let age = self.age();
        if age > self.refresh.max_age {
            return Err(format!(
                "the key set from {} was last loaded {}s ago (more than jwks_max_age) and cannot be loaded again",
                self.source,
                age.as_secs()
            ));
        }
        Ok(())
    }

    /// Loads the key set on a blocking thread, which stores it and then
    /// lets the next load begin (`one_at_a_time`). A caller that stops
    /// waiting (a login at its deadline) leaves the load to finish: what it
    /// loads is kept, and the logins after it find the keys rather than
    /// start another fetch.
    async fn load_again(&self, one_at_a_time: tokio::sync::OwnedMutexGuard<()>) -> Result<(), String> {
        let (source, state) = (self.source.clone(), Arc::clone(&self.state));
        tokio::task::spawn_blocking(move || {
            let loaded = read(&source);
            let stored = store(&state, &source, loaded);
            drop(one_at_a_time);
            stored
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// Verifies `token` now.
    pub async fn verify(&self, token: &str, rules: &IdentityRules) -> Result<Identity, IdentityError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        // Keys older than the maximum age are loaded again first (at most
        // once per minimum interval while loading fails).
        if self.age() > self.refresh.max_age {
            self.reload().await;
        }
        let (jwks, _) = self.current();
        match verify_jwt(token, &jwks, rules, now) {
            Err(IdentityError::UnknownKeyId(kid)) => {
                // Loaded again by this login, or by the one whose load it
                // waited for: a burst of tokens from a rotated key is
                // verified with the keys the first of them fetched.
                self.reload().await;
                let (current, _) = self.current();
                if Arc::ptr_eq(&current, &jwks) {
                    Err(IdentityError::UnknownKeyId(kid))
                } else {
                    verify_jwt(token, &current, rules, now)
                }
            }
            other => other,
        }
    }
}

/// Keeps a load's outcome: the keys it loaded, or the keys already
/// loaded when it failed; either way, when it happened.
fn store(state: &RwLock<State>, source: &Source, loaded: Result<Jwks, String>) -> Result<(), String> {
    let mut state = match state.write() {
        Ok(s) => s,
        Err(poisoned) => poisoned.into_inner(),
    };
    state.loaded = Instant::now();
    match loaded {
        Ok(jwks) => {
            for d in jwks.diagnostics() {
                tracing::warn!(source = %source, "{d}");
            }
            tracing::info!(source = %source, "key set reloaded");
            state.jwks = Arc::new(jwks);
            state.fetched = state.loaded;
            Ok(())
        }
        Err(e) => {
            tracing::warn!("reloading the key set: {e}; keeping the keys already loaded");
            Err(e)
        }
    }
}

/// Key sets travel over TLS, except from the machine itself.
fn check_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(format!("jwks_url {url:?}: only https:// (or http:// to a loopback address) is accepted"));
    };
    let host = rest.split(['/', '?']).next().unwrap_or_default();
    let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
    let loopback = host == "localhost"
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
        || host.trim_matches(['[', ']']).parse::<std::net::Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!("jwks_url {url:?}: plain http is accepted only for a loopback address; use https"))
    }
}

fn read(source: &Source) -> Result<Jwks, String> {
    let bytes = match source {
        Source::File(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
        Source::Url(url) => fetch(url)?,
    };
    Jwks::from_json(&bytes).map_err(|e| format!("{source}: {e}"))
}

fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let agent: ureq::Agent =
        ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).max_redirects(3).build().into();
    let mut response = agent.get(url).header("Accept", "application/json").call().map_err(|e| format!("{url}: {e}"))?;
    response.body_mut().with_config().limit(MAX_JWKS_BYTES).read_to_vec().map_err(|e| format!("{url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::check_url;

    #[test]
    fn key_sets_travel_over_tls_or_loopback() {
        assert!(check_url("https://idp.example.com/.well-known/jwks.json").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://[::1]:99/jwks").is_ok());
        assert!(check_url("http://idp.example.com/jwks").is_err());
        assert!(check_url("http://127.0.0.1.evil.example/jwks").is_err());
        assert!(check_url("ftp://x/jwks").is_err());
    }
}
