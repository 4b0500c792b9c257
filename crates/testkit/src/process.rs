//! Running a program under a deadline, a test under a deadline
//! ([`Watchdog`]), and reading what a test client printed as JSON.
//!
//! ```
//! use std::process::Command;
//! use std::time::Duration;
//!
//! let out = portcullis_testkit::process::output_within(Command::new("true").arg("x"), Duration::from_secs(10));
//! assert!(out.is_ok_and(|o| o.status.success()));
//! ```

use std::process::{Command, Output};
use std::sync::Mutex;
use std::time::Duration;

use crate::text;

/// Processes a [`Watchdog`] kills before it ends the test binary (see
/// [`track`]).
static TRACKED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Notes a child process that must not outlive the test binary should a
/// [`Watchdog`] end it: a gateway started with the test's standard error
/// holds that pipe open, and whoever reads the test's output to its end
/// (CI, through `tee`) would wait for it as long as it runs. Undone by
/// [`untrack`] when the child is reaped.
pub fn track(pid: u32) {
    if let Ok(mut tracked) = TRACKED.lock() {
        tracked.push(pid);
    }
}

/// Forgets a child noted by [`track`].
pub fn untrack(pid: u32) {
    if let Ok(mut tracked) = TRACKED.lock() {
        tracked.retain(|&p| p != pid);
    }
}

/// A test under a deadline: when the test that armed it is still running
/// after the limit, it says which test hangs (the harness names each
/// test's thread after the test), runs the test's last words (a stack
/// stops its cluster), kills the processes [`track`]ed, and ends the test
/// binary with status 101, as a failed test does. Without it a test that
/// hangs (a barrier one party never reaches, a read nobody answers) holds
/// up the whole suite until the CI's own time runs out, with nothing said
/// of which test it was. Dropping it disarms it.
///
/// ```
/// use std::time::Duration;
///
/// let watchdog = portcullis_testkit::process::Watchdog::arm(Duration::from_secs(600), || {});
/// // ... the test ...
/// drop(watchdog);
/// ```
#[must_use = "the watchdog is disarmed when dropped"]
pub struct Watchdog {
    // Dropped with the watchdog: its thread sees the channel close.
    _disarm: std::sync::mpsc::Sender<()>,
}

impl Watchdog {
    /// Arms a watchdog for the calling test, going off after `limit`.
    pub fn arm(limit: Duration, last_words: impl FnOnce() + Send + 'static) -> Watchdog {
        use std::io::Write;
        let (disarm, disarmed) = std::sync::mpsc::channel::<()>();
        let test = std::thread::current().name().unwrap_or("a test").to_string();
        let name = format!("watchdog of {test}");
        std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if disarmed.recv_timeout(limit) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                    let pids = TRACKED.lock().map(|t| t.clone()).unwrap_or_default();
                    // Straight to the file descriptor: what `eprintln!`
                    // prints here is the harness's to capture, and would
                    // go with the process.
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n{test} is still running after {limit:?}: it hangs. Ending the test binary; \
                         its processes {pids:?} are killed first."
                    );
                    last_words();
                    for pid in pids {
                        let _ = Command::new("kill").args(["-s", "KILL", &pid.to_string()]).status();
                    }
                    std::process::exit(101);
                }
            })
            .unwrap_or_else(|e| panic!("starting the {name}: {e}"));
        Watchdog { _disarm: disarm }
    }
}

/// Runs `command` (stdin closed, stdout and stderr captured) and returns
/// its output, or kills it and returns `Err` with what it had printed to
/// stderr when it is still running after `deadline`: a client that hangs
/// fails its test instead of holding up the suite.
pub fn output_within(command: &mut Command, deadline: std::time::Duration) -> Result<Output, String> {
    use std::io::Read;
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {command:?}: {e}"))?;
    // Both pipes are drained on threads, so a chatty child cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() < deadline => std::thread::sleep(std::time::Duration::from_millis(50)),
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                // A grandchild may still hold the pipe: wait for the rest of stderr briefly only.
                let killed = std::time::Instant::now();
                while !stderr.is_finished() && killed.elapsed() < std::time::Duration::from_secs(2) {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let stderr = if stderr.is_finished() { stderr.join().unwrap_or_default() } else { Vec::new() };
                return Err(format!(
                    "{:?} did not finish in {deadline:?} (killed); stderr:\n{}",
                    command.get_program(),
                    text(&stderr)
                ));
            }
        }
    };
    Ok(Output { status, stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() })
}

/// What a test client (a Python, node or Java program that prints what it
/// saw as JSON) printed, as JSON. `name` names the client in failures.
/// Fails the test when the client failed or printed something that is not
/// JSON, with its stdout and stderr; a client that succeeded with something
/// on stderr has it echoed.
pub fn json_output(name: &str, out: &Output) -> serde_json::Value {
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{name} exited with {}\nstderr:\n{stderr}\nstdout:\n{stdout}", out.status);
    let value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("{name} printed no JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    if !stderr.trim().is_empty() {
        eprintln!("{name} stderr:\n{stderr}");
    }
    value
}

/// Sends the process `pid` the signal `name` (`HUP`, `TERM`...), with
/// `kill -s`; panics when it cannot be sent.
pub fn signal(pid: u32, name: &str) {
    let sent = Command::new("kill").args(["-s", name, &pid.to_string()]).status();
    assert!(sent.is_ok_and(|s| s.success()), "kill -s {name} {pid}");
}

/// Runs `command` with its standard output closed before it writes (a
/// reader that went away: `| head -0`), stderr captured; returns its exit
/// code and what it printed to stderr. For checking that a tool neither
/// panics nor changes its exit code when nobody reads it.
///
/// ```
/// let (code, stderr) = portcullis_testkit::process::reader_gone(std::process::Command::new("true").arg("x"));
/// assert_eq!((code, stderr.as_str()), (Some(0), ""));
/// ```
pub fn reader_gone(command: &mut Command) -> (Option<i32>, String) {
    use std::process::Stdio;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("waiting for {command:?}: {e}"));
    (out.status.code(), text(&out.stderr))
}
