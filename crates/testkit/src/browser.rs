//! A real browser for the tests of the gateway's web pages: headless
//! Chromium (Debian's `chromium`) driven over WebDriver by its own
//! `chromedriver`, one throwaway profile per browser.
//!
//! ```no_run
//! use portcullis_testkit::browser::Browser;
//! let browser = Browser::start();
//! browser.goto("http://127.0.0.1:9187/");
//! browser.type_into_field("#token", "eyJ...");
//! browser.click_on("#sign-in");
//! assert!(browser.text_of("#status").contains("signed in"));
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C WebDriver key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long a wait lasts before the test fails.
const WAIT: Duration = Duration::from_secs(20);

/// A headless Chromium, closed (and its driver stopped, its profile
/// removed) when dropped.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: ureq::Agent,
    profile: PathBuf,
}

/// An element of the page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element(String);

/// Where a program is: `PORTCULLIS_<NAME>` when set, else the Debian path.
fn program(env: &str, default: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| default.to_string())
}

impl Browser {
    /// Starts `chromedriver` on a free port and a headless Chromium
    /// session through it. Panics, saying what is missing, when either
    /// cannot start (`scripts/install-deps` installs both).
    pub fn start() -> Browser {
        let chromium = program("PORTCULLIS_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = program("PORTCULLIS_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("a free port for chromedriver: {e}"));
        let driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {chromedriver} (scripts/install-deps installs chromium-driver): {e}"));
        let profile = std::env::temp_dir().join(format!("portcullis-chromium-{}-{port}", std::process::id()));
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while http.get(format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not answer on port {port}");
            std::thread::sleep(Duration::from_millis(100));
        }
        // The flags a sandboxed, offline machine needs: no sandbox (tests
        // may run as root), and none of Chromium's own background traffic.
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1000",
            &format!("--user-data-dir={}", profile.display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium, "args": args}
        }}});
        let mut browser = Browser { driver, base, session: String::new(), http, profile };
        let answer = browser.call("POST", "/session", Some(capabilities));
        browser.session = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session (is {chromium} installed?): {answer}"))
            .to_string();
        browser
    }

    /// One WebDriver command; its `value`. Panics on a WebDriver error.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.try_call(method, path, body).unwrap_or_else(|e| panic!("{e}"))
    }

    /// One WebDriver command; its `value`, or the WebDriver error.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = if path == "/session" {
            format!("{}{path}", self.base)
        } else {
            format!("{}/session/{}{path}", self.base, self.session)
        };
        let response = match (method, body) {
            ("GET", _) => self.http.get(&url).call(),
            ("DELETE", _) => self.http.delete(&url).call(),
            (_, body) => self
                .http
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.unwrap_or_else(|| json!({})).to_string()),
        };
        let mut response = response.map_err(|e| format!("WebDriver {method} {path}: {e}"))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status >= 400 {
            return Err(format!("WebDriver {method} {path}: {status} {text}"));
        }
        Ok(value.get("value").cloned().unwrap_or(Value::Null))
    }

    /// Runs `action` on the element matching `css`, found afresh until the
    /// action succeeds: a page that redraws itself replaces its elements,
    /// and a reference to a replaced one is stale.
    fn on_fresh<T>(&self, css: &str, what: &str, action: impl Fn(&Element) -> Result<T, String>) -> T {
        let mut last = String::new();
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(element) = self.find(css) {
                match action(&element) {
                    Ok(done) => return done,
                    Err(e) => last = e,
                }
            }
            assert!(Instant::now() < deadline, "waited 20 s to {what} `{css}`: {last}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element matching `css` (waiting for it).
    pub fn click_on(&self, css: &str) {
        self.on_fresh(css, "click", |e| self.try_call("POST", &format!("/element/{}/click", e.0), None));
    }

    /// Types `text` into the element matching `css` (waiting for it).
    pub fn type_into_field(&self, css: &str, text: &str) {
        self.on_fresh(css, "type into", |e| {
            self.try_call("POST", &format!("/element/{}/value", e.0), Some(json!({ "text": text })))
        });
    }

    /// The visible text of the element matching `css` (waiting for it).
    pub fn text_of(&self, css: &str) -> String {
        self.on_fresh(css, "read", |e| {
            self.try_call("GET", &format!("/element/{}/text", e.0), None)
                .map(|v| v.as_str().unwrap_or_default().to_string())
        })
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url })));
    }

    /// The first element matching `css`, if any.
    pub fn find(&self, css: &str) -> Option<Element> {
        let found = self.try_call("POST", "/elements", Some(json!({"using": "css selector", "value": css}))).ok()?;
        found.as_array()?.first()?.get(ELEMENT)?.as_str().map(|id| Element(id.to_string()))
    }

    /// The first element matching `css`, once there is one (panics after
    /// 20 s).
    pub fn wait_for(&self, css: &str) -> Element {
        self.wait_until(&format!("an element matching `{css}`"), || self.find(css))
    }

    /// Waits until no element matches `css` (panics after 20 s).
    pub fn wait_gone(&self, css: &str) {
        self.wait_until(&format!("no element matching `{css}`"), || self.find(css).is_none().then_some(()));
    }

    /// `f`'s answer, once it has one (panics after 20 s, naming `what`).
    pub fn wait_until<T>(&self, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(found) = f() {
                return found;
            }
            assert!(Instant::now() < deadline, "waited 20 s for {what}; the page: {}", self.page_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The whole page's visible text (empty when it cannot be read).
    pub fn page_text(&self) -> String {
        let Some(body) = self.find("body") else { return String::new() };
        self.try_call("GET", &format!("/element/{}/text", body.0), None)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default()
    }

    /// Runs `script` in the page (`arguments` are its arguments); what it
    /// returns.
    pub fn execute(&self, script: &str, arguments: Value) -> Value {
        self.call("POST", "/execute/sync", Some(json!({"script": script, "args": arguments})))
    }

    /// Sets the window's size, in CSS pixels.
    pub fn resize(&self, width: u32, height: u32) {
        self.call("POST", "/window/rect", Some(json!({"width": width, "height": height})));
    }

    /// Saves a PNG of the window at `path`.
    pub fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let encoded = self.call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap_or_default())
            .unwrap_or_else(|e| panic!("a screenshot in base64: {e}"));
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.http.delete(format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
