//! The shared decision corpus, `testdata/decisions/*.toml`.
//!
//! Every file but `policy.toml` is a list of [`Case`]s against the policy it
//! names (`testdata/decisions/README.md` describes the fields). The engine's
//! test, the C ABI's test and the gateway's test all read it through
//! [`files`] or [`cases`], each taking the fields it needs:
//!
//! ```
//! use portcullis_testkit::corpus;
//!
//! let mut engines = std::collections::BTreeMap::new();
//! for entry in corpus::cases().iter().take(3) {
//!     let engine = engines.entry(entry.policy.clone()).or_insert_with(|| corpus::engine(&entry.policy, Default::default()));
//!     let decision = engine.decide(&entry.case.identity(), &entry.case.session(engine), &entry.case.sql);
//!     assert_eq!(decision.verdict, entry.case.expect, "{entry}");
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use policy_core::{Actor, Engine, EngineOptions, Identity, Policy, Prepared, Session, Verdict};
use serde::Deserialize;

/// The subject of a case that names none.
pub const DEFAULT_SUBJECT: &str = "corpus-user";

/// One case: an identity, a session, one SQL string and the decision the
/// engine must reach. Unknown fields are an error, so that a misspelt field
/// is not silently a default.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Unique within its file.
    pub name: String,
    /// The SQL string, decided as one.
    pub sql: String,
    /// The caller's groups (default none).
    #[serde(default)]
    pub groups: Vec<String>,
    /// The caller (default [`DEFAULT_SUBJECT`]); see [`Case::subject`].
    pub subject: Option<String>,
    /// The agent acting for the subject, if any.
    pub actor: Option<String>,
    /// The startup `search_path` (a login parameter), which `RESET` also
    /// returns to; `None`: the policy's `settings.search_path`.
    pub search_path: Option<Vec<String>>,
    /// The session's `standard_conforming_strings` (`None`: on).
    pub standard_conforming_strings: Option<bool>,
    /// SQL-level prepared statements the session recorded: name to the
    /// text recorded at `PREPARE` time.
    #[serde(default)]
    pub prepared: BTreeMap<String, String>,
    /// The verdict the engine must reach.
    pub expect: Verdict,
    /// The deciding rule: `Some("")` when no rule may match, `None` when
    /// the rule is not checked.
    pub rule: Option<String>,
    /// Whether the case is a bypass attempt (counted, not interpreted).
    #[serde(default)]
    pub bypass: bool,
}

impl Case {
    /// The caller: the case's `subject`, else [`DEFAULT_SUBJECT`].
    pub fn subject(&self) -> &str {
        self.subject.as_deref().unwrap_or(DEFAULT_SUBJECT)
    }

    /// The identity the case is decided for: subject, groups and actor.
    pub fn identity(&self) -> Identity {
        let mut identity = Identity::new(self.subject().to_string()).with_groups(self.groups.clone());
        if let Some(actor) = &self.actor {
            identity = identity.with_actor(Actor::new(actor.clone()));
        }
        identity
    }

    /// The session the case is decided in: a new session of `engine` with
    /// the case's startup `search_path`, `standard_conforming_strings` and
    /// prepared statements.
    pub fn session(&self, engine: &Engine) -> Session {
        let mut session = engine.new_session();
        if let Some(path) = &self.search_path {
            // The startup search_path: what RESET returns to as well.
            session = session.with_startup_search_path(path.clone());
        }
        if let Some(scs) = self.standard_conforming_strings {
            session.standard_conforming_strings = scs;
        }
        for (name, sql) in &self.prepared {
            let prepared = Prepared {
                sql: Arc::from(sql.as_str()),
                standard_conforming_strings: session.standard_conforming_strings,
            };
            session.prepared.insert(name.clone(), prepared);
        }
        session
    }

    /// The case's `search_path` as the server shows the setting (every name
    /// quoted, `"` doubled): the value of a `search_path` startup parameter.
    pub fn search_path_setting(&self) -> Option<String> {
        self.search_path
            .as_ref()
            .map(|path| path.iter().map(|s| format!("\"{}\"", s.replace('"', "\"\""))).collect::<Vec<_>>().join(", "))
    }
}

/// One corpus file: its cases and the policy they are decided against.
#[derive(Debug, Clone)]
pub struct File {
    /// The file's path.
    pub path: PathBuf,
    /// Its name, such as `basics.toml`.
    pub name: String,
    /// The policy file it names, as a path.
    pub policy: PathBuf,
    /// Its cases, in order.
    pub cases: Vec<Case>,
}

/// One case with where it comes from.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The name of the file that holds it, such as `basics.toml`.
    pub file: String,
    /// Its position in that file (from 0).
    pub index: usize,
    /// The policy file it is decided against.
    pub policy: PathBuf,
    /// The case.
    pub case: Case,
}

/// `file / name`, as failures name a case.
impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} / {}", self.file, self.case.name)
    }
}

/// How a corpus file is written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    policy: String,
    #[serde(default)]
    case: Vec<Case>,
}

/// The corpus directory, `testdata/decisions`.
pub fn dir() -> PathBuf {
    crate::repo("testdata/decisions")
}

/// Every corpus file, in the order of their names. Fails the test when
/// there is none or one cannot be read.
pub fn files() -> Vec<File> {
    let dir = dir();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.file_name().is_some_and(|n| n != "policy.toml"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "no corpus files in {}", dir.display());
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let raw: Raw = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let policy = path.parent().unwrap_or(&dir).join(&raw.policy);
            File { path, name, policy, cases: raw.case }
        })
        .collect()
}

/// Every case of every corpus file, in file order, with its file and index.
pub fn cases() -> Vec<Entry> {
    files()
        .into_iter()
        .flat_map(|file| {
            let (name, policy) = (file.name, file.policy);
            file.cases.into_iter().enumerate().map(move |(index, case)| Entry {
                file: name.clone(),
                index,
                policy: policy.clone(),
                case,
            })
        })
        .collect()
}

/// An engine for the policy file at `path`, with no keys. Fails the test
/// when the policy does not load.
pub fn engine(path: &Path, options: EngineOptions) -> Engine {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let policy = Policy::from_toml_str(&text, &path.display().to_string()).unwrap_or_else(|e| panic!("{e}"));
    Engine::with_options(policy, Default::default(), options).unwrap_or_else(|e| panic!("{e}"))
}
