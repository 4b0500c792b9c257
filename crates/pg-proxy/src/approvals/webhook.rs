//! The approvals webhook (`[approvals] webhook_url`): a JSON POST for each
//! request opened and each outcome, with a Slack-compatible `text`.
//!
//! Deliveries go through a bounded queue to a thread of their own, so
//! nothing waits for the receiver: not the session holding the statement,
//! not the approver deciding it. A delivery that fails (no connection, a
//! status that is not 2xx) is tried again after 1, 2, 4 and 8 seconds,
//! then given up with a warning in the log; when the queue is full, new
//! notifications are dropped with a warning.
//!
//! The payload names the statement's text, never its bound parameters
//! (which may hold the very values a policy protects): approvers see them
//! through the admin API.
//!
//! ```json
//! {"text": "Approval needed (request 3f9c...): copilot-7 for alice wants to run `DELETE FROM orders WHERE id = $1` (rule agent-deletes-need-approval) ...",
//!  "event": "requested", "request": {"id": "3f9c...", "...": "..."}}
//! ```

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::time::Duration;

use serde_json::{json, Value};

use super::ledger::{Event, Request};

/// Notifications waiting for delivery, at most.
const QUEUE: usize = 256;

/// Waits between tries of one delivery.
const BACKOFF: [Duration; 4] =
    [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4), Duration::from_secs(8)];

/// Sends notifications to the webhook from a thread of its own.
#[derive(Debug, Clone)]
pub struct Webhook {
    queue: SyncSender<Value>,
    admin_url: Option<String>,
}

impl Webhook {
    /// Starts the delivery thread for `url`; `admin_url` is named in the
    /// messages.
    pub fn start(url: String, admin_url: Option<String>) -> std::io::Result<Webhook> {
        let (queue, deliveries) = sync_channel(QUEUE);
        std::thread::Builder::new().name("approvals-webhook".into()).spawn(move || deliver(&url, &deliveries))?;
        Ok(Webhook { queue, admin_url })
    }

    /// Queues the notification of `event` of `request`, if it is one
    /// people are told of (a request, and its outcome).
    pub fn notify(&self, event: &Event, request: &Request) {
        let Some(payload) = payload(event, request, self.admin_url.as_deref()) else { return };
        match self.queue.try_send(payload) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::warn!(request = %request.id, "approvals webhook: too many notifications waiting; one dropped");
            }
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!(request = %request.id, "approvals webhook: the delivery thread is gone");
            }
        }
    }
}

/// `text` as plain text in a Slack-style message: `&`, `<` and `>` are
/// the three characters its markup takes as control (a `<!channel>`
/// mention, a `<url|label>` link), escaped as its documentation says.
///
/// ```
/// # use pg_proxy::approvals::webhook::mrkdwn;
/// assert_eq!(mrkdwn("<!channel> & <https://x|y>"), "&lt;!channel&gt; &amp; &lt;https://x|y&gt;");
/// ```
pub fn mrkdwn(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The message for `event`, when people are told of it.
fn payload(event: &Event, request: &Request, admin_url: Option<&str>) -> Option<Value> {
    let who = match &request.requester.actor {
        Some(actor) => format!("{actor} for {}", request.requester.subject),
        None => request.requester.subject.clone(),
    };
    let who = mrkdwn(&who);
    let sql: Vec<&str> = request.statements.iter().map(|s| s.sql.as_str()).collect();
    // In a code span: a backtick of its own would end it.
    let statement = mrkdwn(&sql.join("; ")).replace('`', "\u{2cb}");
    let rule = mrkdwn(request.rule.as_deref().unwrap_or("no rule"));
    let id = &request.id;
    let (name, text) = match event {
        Event::Requested { .. } => {
            let mut text = format!(
                "Approval needed (request {id}): {who} wants to run `{statement}` (rule {rule}: {}).",
                mrkdwn(&request.reason)
            );
            if let Some(why) = &request.justification {
                text.push_str(&format!(" Their reason: {}.", mrkdwn(why)));
            }
            text.push_str(&format!(" Approve with `pg-proxy approvals approve {id}`"));
            if let Some(url) = admin_url {
                text.push_str(&format!(" or at {url}"));
            }
            ("requested", text)
        }
        Event::Approved { by, .. } => {
            ("approved", format!("Approved by {} (request {id}): `{statement}` runs for {who}", mrkdwn(&by.join(", "))))
        }
        Event::Denied { by, reason, .. } => {
            let (by, reason) = (mrkdwn(by), mrkdwn(reason));
            ("denied", format!("Denied by {by} (request {id}): `{statement}` for {who}: {reason}"))
        }
        Event::Justified { .. } => (
            "justified",
            format!(
                "Reason given (request {id}) by {}: {}",
                mrkdwn(&request.requester.subject),
                mrkdwn(request.justification.as_deref().unwrap_or(""))
            ),
        ),
        Event::Expired { .. } => ("expired", format!("Expired undecided (request {id}): `{statement}` for {who}")),
        Event::Withdrawn { why, .. } => {
            ("withdrawn", format!("Withdrawn (request {id}): `{statement}` for {who}: {}", mrkdwn(why)))
        }
        Event::Vote { .. }
        | Event::Planned { .. }
        | Event::Granted { .. }
        | Event::Revoked { .. }
        | Event::GrantExpired { .. } => return None,
    };
    let mut shown = serde_json::to_value(request).unwrap_or(Value::Null);
    // Parameters stay out of a message that leaves the gateway: counted,
    // not shown.
    if let Some(statements) = shown.get_mut("statements").and_then(Value::as_array_mut) {
        for s in statements {
            if let Some(obj) = s.as_object_mut() {
                let n = obj.remove("parameters").and_then(|p| p.as_array().map(Vec::len)).unwrap_or(0);
                obj.insert("parameters_bound".into(), json!(n));
            }
        }
    }
    Some(json!({ "text": text, "event": name, "request": shown }))
}

/// The delivery thread: each notification in turn, tried until it is
/// taken or the tries are over.
fn deliver(url: &str, deliveries: &Receiver<Value>) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    while let Ok(payload) = deliveries.recv() {
        let body = payload.to_string();
        let mut waits = BACKOFF.iter();
        loop {
            let outcome = agent.post(url).header("Content-Type", "application/json").send(body.as_str());
            let failure = match outcome {
                Ok(r) if r.status().is_success() => None,
                Ok(r) => Some(format!("answered {}", r.status())),
                Err(e) => Some(e.to_string()),
            };
            let Some(failure) = failure else { break };
            // A webhook URL often carries its secret in its path: never
            // logged.
            let failure = failure.replace(url, "the webhook URL");
            match waits.next() {
                Some(wait) => {
                    tracing::debug!("approvals webhook: {failure}; trying again in {}s", wait.as_secs());
                    std::thread::sleep(*wait);
                }
                None => {
                    tracing::warn!(
                        "approvals webhook: {failure}; a notification given up after {} tries",
                        BACKOFF.len() + 1
                    );
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, reason = "test code")]

    use super::*;
    use crate::approvals::ledger::{HeldText, Requester};
    use policy_core::ApprovalTerms;
    use std::time::SystemTime;

    #[test]
    fn what_clients_and_approvers_wrote_cannot_mention_link_or_leave_the_code_span() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let requester = Requester::new("alice <!here>", Some("copilot"));
        let mut request = Request::new("r1", 1, requester, "f", vec!["dba".into()], ApprovalTerms::DEFAULT, now, now);
        request.statements.push(HeldText {
            sql: "DELETE FROM t WHERE note = '` <!channel> <https://evil.example|click> &'".into(),
            parameters: Vec::new(),
            decision: Value::Null,
        });
        request.justification = Some("<@U123> says so".into());
        let event = Event::Requested { id: "r1".into() };
        let text = payload(&event, &request, None).unwrap()["text"].as_str().unwrap().to_string();
        for raw in ["<!channel>", "<!here>", "<https://", "<@U123>", "= '`"] {
            assert!(!text.contains(raw), "{raw} in {text}");
        }
        assert!(text.contains("&lt;!channel&gt; &lt;https://evil.example|click&gt; &amp;"), "{text}");
        assert_eq!(text.matches('`').count(), 4, "two code spans, whole: {text}");
        assert!(text.contains("note = '\u{2cb} &lt;"), "{text}");
        let denied = Event::Denied { id: "r1".into(), by: "bob".into(), reason: "<!channel> no".into() };
        let text = payload(&denied, &request, None).unwrap()["text"].as_str().unwrap().to_string();
        assert!(text.ends_with("&lt;!channel&gt; no"), "{text}");
    }
}
