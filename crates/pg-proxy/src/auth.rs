//! Client login: the password a client sends is an OIDC token, verified
//! with `policy-core`'s [`verify_jwt`] against the identity provider's key
//! set.
//!
//! The key set comes from a file or from a URL (the provider's `jwks_uri`;
//! `https://`, or `http://` to a loopback address only; redirects lead
//! from `https://` to `https://` only, and from `http://` nowhere). It is loaded when
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

/// Key sets travel over TLS, except from the machine itself. The URL is
/// read with the parser the fetch uses, so the host judged is the host
/// connected to (`http://127.0.0.1:80@idp.example/` names `idp.example`).
fn check_url(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("jwks_url {url:?}: {e}"))?;
    let host = uri.host().unwrap_or_default();
    match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
        Some("https") if !host.is_empty() => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(format!("jwks_url {url:?}: plain http is accepted only for a loopback address; use https")),
        _ => Err(format!("jwks_url {url:?}: only https:// (or http:// to a loopback address) is accepted")),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn read(source: &Source) -> Result<Jwks, String> {
    let bytes = match source {
        Source::File(path) => std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?,
        Source::Url(url) => fetch(url)?,
    };
    Jwks::from_json(&bytes).map_err(|e| format!("{source}: {e}"))
}

/// The client for one key set URL. From an `https://` URL, redirects are
/// followed only to `https://` ones; from a loopback `http://` URL, none
/// are (a redirect could lead off the machine in the clear).
fn agent_for(url: &str) -> ureq::Agent {
    let https = url.get(..8).is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"));
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .https_only(https)
        .max_redirects(if https { 3 } else { 0 })
        .build()
        .into()
}

fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let mut response =
        agent_for(url).get(url).header("Accept", "application/json").call().map_err(|e| format!("{url}: {e}"))?;
    if response.status().is_redirection() {
        let to = response.headers().get("location").and_then(|l| l.to_str().ok()).unwrap_or("nowhere");
        return Err(format!(
            "{url}: answered {} with a redirect to {to:?}, which a plain-http key set URL does not follow; \
             name the key set's own URL",
            response.status().as_u16()
        ));
    }
    response.body_mut().with_config().limit(MAX_JWKS_BYTES).read_to_vec().map_err(|e| format!("{url}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::{agent_for, check_url, read, Source};
    use std::io::{Read, Write};

    #[test]
    fn key_sets_travel_over_tls_or_loopback() {
        assert!(check_url("https://idp.example.com/.well-known/jwks.json").is_ok());
        assert!(check_url("HTTPS://idp.example.com/jwks").is_ok());
        assert!(check_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(check_url("http://localhost/jwks").is_ok());
        assert!(check_url("http://[::1]:99/jwks").is_ok());
        assert!(check_url("http://idp.example.com/jwks").is_err());
        assert!(check_url("http://127.0.0.1.evil.example/jwks").is_err());
        assert!(check_url("ftp://x/jwks").is_err());
        assert!(check_url("https:///jwks").is_err());
        assert!(check_url("not a url").is_err());
    }

    /// What comes before an `@` is the user, not the host: the fetch would
    /// connect to the host after it, in the clear.
    #[test]
    fn a_loopback_address_as_the_user_is_not_a_loopback_host() {
        for url in [
            "http://127.0.0.1:80@idp.example/jwks",
            "http://localhost@idp.example/jwks",
            "http://[::1]:1@idp.example/jwks",
            "http://user:127.0.0.1@idp.example:8080/jwks",
        ] {
            let err = check_url(url).unwrap_err();
            assert!(err.contains("plain http is accepted only for a loopback address"), "{url}: {err}");
        }
        assert!(check_url("http://user@127.0.0.1:8080/jwks").is_ok());
    }

    #[test]
    fn redirects_from_https_stay_on_https() {
        let https = agent_for("https://idp.example/jwks");
        assert!(https.config().https_only());
        assert!(https.config().max_redirects() > 0);
        let http = agent_for("http://127.0.0.1:1/jwks");
        assert_eq!(http.config().max_redirects(), 0);
    }

    /// Answers one request on a loopback port with `response`; the URL.
    fn answer_once(response: String) -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/jwks.json", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut sock, _)) = listener.accept() {
                let mut request = [0u8; 4096];
                let _ = sock.read(&mut request);
                let _ = sock.write_all(response.as_bytes());
            }
        });
        url
    }

    /// A loopback key set URL that redirects is refused with the place it
    /// pointed to, even when that place serves a good key set (it could as
    /// well be off the machine, in the clear).
    #[test]
    fn a_plain_http_key_set_url_does_not_follow_redirects() {
        let jwks = r#"{"keys":[]}"#;
        let target = answer_once(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
            jwks.len()
        ));
        let redirect = answer_once(format!(
            "HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ));
        let err = read(&Source::Url(redirect.clone())).unwrap_err();
        assert!(err.contains("answered 302 with a redirect to") && err.contains(&target), "{err}");
        // The same key set, asked for directly, loads.
        assert!(read(&Source::Url(target)).is_ok());
    }
}
