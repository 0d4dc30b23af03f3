//! Backend hooks: signed HTTP calls to the application, asked when a client connects without a token and, in
//! namespaces that say `hook`, before a subscribe or a publish.
//!
//! Each hook is one JSON POST to the configured URL, signed with HMAC-SHA256 over `"<timestamp>.<body>"` (headers
//! `X-Stickless-Timestamp` and `X-Stickless-Signature`), bounded by the configured timeout. A hook that times out,
//! cannot be reached, answers a non-2xx status or answers something other than the documented JSON is
//! [`HookUnavailable`]: the gateway refuses the request and does nothing. docs/PROTOCOL.md ("Backend hooks") is
//! the contract the application implements.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::model::{now_secs, ChannelName, Grant, Pattern};

/// The header carrying the request's Unix time in seconds, signed with the body so a replay can be refused.
pub const TIMESTAMP_HEADER: &str = "x-stickless-timestamp";
/// The header carrying `sha256=<lowercase hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub const SIGNATURE_HEADER: &str = "x-stickless-signature";

/// The largest answer read from the hook; a connect answer's claims or a publish's replacement fit easily.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Where hooks go and how they are signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookSettings {
    /// The application's endpoint; `None`: no hooks.
    pub url: Option<String>,
    /// The HMAC-SHA256 key requests are signed with.
    pub secret: Option<String>,
    /// How long a hook may take; past it the client gets `hook_unavailable`.
    pub timeout: Duration,
    /// Whether a client without a token is sent to the `connect` hook (else it is anonymous).
    pub connect: bool,
    /// Request headers forwarded to the `connect` hook (lowercase names).
    pub forward_headers: Vec<String>,
}

impl Default for HookSettings {
    fn default() -> Self {
        HookSettings {
            url: None,
            secret: None,
            timeout: Duration::from_secs(2),
            connect: false,
            forward_headers: vec!["cookie".into(), "user-agent".into(), "origin".into()],
        }
    }
}

/// The hook did not answer in time or answered something unusable: the request is refused, nothing done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HookUnavailable(pub String);

/// The client a `connect` hook is asked about.
#[derive(Debug, Clone)]
pub struct ConnectRequest<'a> {
    pub ip: Option<IpAddr>,
    pub transport: &'a str,
    /// The forwarded headers, by lowercase name.
    pub headers: &'a BTreeMap<String, String>,
}

/// A session a `subscribe` or `publish` hook is asked about.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub pid: &'a str,
    /// `None` for an anonymous session.
    pub sub: Option<&'a str>,
}

/// What the application says of a connecting client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connect {
    /// Connect as this user, with these permissions.
    Allow(Grant),
    /// Refuse, with the application's reason.
    Deny(String),
}

/// What the application says of a subscribe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subscribe {
    Allow,
    Deny(String),
}

/// What the application says of a publish.
#[derive(Debug, Clone)]
pub enum Publish {
    Allow,
    /// Store this data instead of the client's.
    Replace(Box<RawValue>),
    Deny(String),
}

/// The hook client: one pooled HTTP client and the signing key, built once.
#[derive(Clone)]
pub struct Hooks {
    url: String,
    /// The HMAC keyed with the secret, cloned per request; `None`: requests go unsigned.
    mac: Option<Hmac<Sha256>>,
    timeout: Duration,
    connect: bool,
    forward_headers: Vec<String>,
    client: reqwest::Client,
}

impl std::fmt::Debug for Hooks {
    /// Everything but the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("url", &self.url)
            .field("signed", &self.mac.is_some())
            .field("timeout", &self.timeout)
            .field("connect", &self.connect)
            .field("forward_headers", &self.forward_headers)
            .finish()
    }
}

impl Hooks {
    /// The hooks for `settings`; `None` when no URL is set.
    pub fn new(settings: &HookSettings) -> Result<Option<Hooks>, String> {
        let Some(url) = settings.url.clone() else {
            return Ok(None);
        };
        match reqwest::Url::parse(&url) {
            Ok(parsed) if parsed.scheme() == "http" => {}
            // This build's HTTP client has no TLS: refuse to start rather than fail every call.
            _ => {
                return Err(format!(
                    "the hook URL `{url}` is not a valid http:// URL (hooks go to the application beside the gateway)"
                ))
            }
        }
        let secret = settings.secret.as_deref().filter(|s| !s.is_empty());
        if secret.is_none() {
            tracing::warn!("hook requests are not signed: set --hook-secret so the application can verify them");
        }
        let mac = secret.map(|s| Hmac::<Sha256>::new_from_slice(s.as_bytes()).expect("HMAC takes a key of any length"));
        let client = reqwest::Client::builder()
            .timeout(settings.timeout)
            // A redirected POST would lose its body and its meaning: a 3xx is a failed hook, like any non-2xx.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("an HTTP client without TLS builds");
        Ok(Some(Hooks {
            url,
            mac,
            timeout: settings.timeout,
            connect: settings.connect,
            forward_headers: settings.forward_headers.iter().map(|h| h.to_ascii_lowercase()).collect(),
            client,
        }))
    }

    /// Whether clients without a token go to the connect hook.
    pub fn asks_on_connect(&self) -> bool {
        self.connect
    }

    /// Asks whether a client without a token may connect, and as whom.
    pub async fn connect(&self, request: ConnectRequest<'_>) -> Result<Connect, HookUnavailable> {
        let headers = request
            .headers
            .iter()
            .filter(|(name, _)| self.forward_headers.iter().any(|f| f.eq_ignore_ascii_case(name)))
            .map(|(name, value)| (name.as_str(), value.as_str()))
            .collect();
        let body =
            HookRequest::Connect { transport: request.transport, client: ClientInfo { ip: request.ip, headers } };
        connect_answer(&self.call(&body).await?, now_secs())
    }

    /// Asks whether the session may subscribe to `channel`.
    pub async fn subscribe(&self, caller: Caller<'_>, channel: &ChannelName) -> Result<Subscribe, HookUnavailable> {
        let body = HookRequest::Subscribe { channel: channel.as_str(), session: caller.into() };
        subscribe_answer(&self.call(&body).await?)
    }

    /// Asks whether the session may publish `data` to `channel`, and what to store.
    pub async fn publish(
        &self,
        caller: Caller<'_>,
        channel: &ChannelName,
        data: &RawValue,
    ) -> Result<Publish, HookUnavailable> {
        let body = HookRequest::Publish { channel: channel.as_str(), data, session: caller.into() };
        publish_answer(&self.call(&body).await?)
    }

    /// POSTs `request`, signed; answers the body of a 2xx answer.
    async fn call(&self, request: &HookRequest<'_>) -> Result<Vec<u8>, HookUnavailable> {
        let body = serde_json::to_vec(request).map_err(|e| HookUnavailable(format!("cannot encode the hook: {e}")))?;
        let mut post = self.client.post(&self.url).header(reqwest::header::CONTENT_TYPE, "application/json");
        if let Some(mac) = &self.mac {
            let timestamp = now_secs();
            post = post.header(TIMESTAMP_HEADER, timestamp).header(SIGNATURE_HEADER, signature(mac, timestamp, &body));
        }
        let mut response = post.body(body).send().await.map_err(|e| self.failed(&e))?;
        let status = response.status();
        if !status.is_success() {
            tracing::debug!(url = self.url, %status, "the hook refused the request");
            return Err(HookUnavailable(format!("the hook answered HTTP {}", status.as_u16())));
        }
        let mut answer = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failed(&e))? {
            if answer.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(HookUnavailable(format!("the hook's answer is over {MAX_ANSWER_BYTES} bytes")));
            }
            answer.extend_from_slice(&chunk);
        }
        Ok(answer)
    }

    /// What the client is told of a failed call; reqwest's own text names the URL, which stays in the log.
    fn failed(&self, err: &reqwest::Error) -> HookUnavailable {
        tracing::debug!(error = %err, "the hook failed");
        let message = if err.is_timeout() {
            format!("the hook did not answer within {} ms", self.timeout.as_millis())
        } else if err.is_builder() {
            "the hook URL is not a valid http:// URL".to_owned()
        } else if err.is_connect() {
            format!("cannot connect to the hook: {}", root_cause(err))
        } else {
            format!("the hook request failed: {}", root_cause(err))
        };
        HookUnavailable(message)
    }
}

/// The innermost cause (`Connection refused`, `connection closed before message completed`, ...).
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = err;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// `sha256=<hex>` of HMAC(secret, "<timestamp>.<body>").
fn signature(mac: &Hmac<Sha256>, timestamp: u64, body: &[u8]) -> String {
    format!("sha256={}", hmac_hex(mac, &[timestamp.to_string().as_bytes(), b".", body]))
}

/// Lowercase hex of the HMAC of the concatenated `parts`.
fn hmac_hex(mac: &Hmac<Sha256>, parts: &[&[u8]]) -> String {
    let mut mac = mac.clone();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A hook request body, tagged by `type`.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum HookRequest<'a> {
    Connect { transport: &'a str, client: ClientInfo<'a> },
    Subscribe { channel: &'a str, session: SessionInfo<'a> },
    // `&RawValue` is written as it came: the application sees the client's bytes.
    Publish { channel: &'a str, data: &'a RawValue, session: SessionInfo<'a> },
}

#[derive(Serialize)]
struct ClientInfo<'a> {
    ip: Option<IpAddr>,
    headers: BTreeMap<&'a str, &'a str>,
}

#[derive(Serialize)]
struct SessionInfo<'a> {
    pid: &'a str,
    sub: Option<&'a str>,
}

impl<'a> From<Caller<'a>> for SessionInfo<'a> {
    fn from(caller: Caller<'a>) -> Self {
        SessionInfo { pid: caller.pid, sub: caller.sub }
    }
}

#[derive(Deserialize)]
struct ConnectAnswer {
    allow: bool,
    reason: Option<String>,
    user: Option<User>,
}

#[derive(Deserialize)]
struct User {
    sub: String,
    exp: u64,
    #[serde(default)]
    stickless: Claims,
}

/// The same `stickless` claims a connection token carries.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Claims {
    subscribe: Vec<Pattern>,
    publish: Vec<Pattern>,
    presence: Vec<Pattern>,
}

#[derive(Deserialize)]
struct SubscribeAnswer {
    allow: bool,
    reason: Option<String>,
}

#[derive(Deserialize)]
struct PublishAnswer {
    allow: bool,
    reason: Option<String>,
    /// Absent or `null`: store the client's data.
    data: Option<Box<RawValue>>,
}

fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, HookUnavailable> {
    serde_json::from_slice(body).map_err(|e| {
        tracing::debug!(error = %e, answer = %String::from_utf8_lossy(&body[..body.len().min(200)]), "bad hook answer");
        HookUnavailable(format!("the hook's answer is not the documented JSON: {e}"))
    })
}

fn refused(reason: Option<String>) -> String {
    reason.filter(|r| !r.is_empty()).unwrap_or_else(|| "refused by the application".to_owned())
}

/// The connect answer, judged at `now` (seconds): a user whose `exp` has passed is refused as `expired`.
fn connect_answer(body: &[u8], now: u64) -> Result<Connect, HookUnavailable> {
    let answer: ConnectAnswer = parse(body)?;
    if !answer.allow {
        return Ok(Connect::Deny(refused(answer.reason)));
    }
    let user =
        answer.user.ok_or_else(|| HookUnavailable("the hook allowed a connect but named no `user`".to_owned()))?;
    if user.exp <= now {
        return Ok(Connect::Deny("expired".to_owned()));
    }
    let Claims { subscribe, publish, presence } = user.stickless;
    Ok(Connect::Allow(Grant { sub: user.sub, exp: user.exp, subscribe, publish, presence }))
}

fn subscribe_answer(body: &[u8]) -> Result<Subscribe, HookUnavailable> {
    let answer: SubscribeAnswer = parse(body)?;
    Ok(if answer.allow { Subscribe::Allow } else { Subscribe::Deny(refused(answer.reason)) })
}

fn publish_answer(body: &[u8]) -> Result<Publish, HookUnavailable> {
    let answer: PublishAnswer = parse(body)?;
    Ok(match (answer.allow, answer.data) {
        (false, _) => Publish::Deny(refused(answer.reason)),
        (true, Some(data)) => Publish::Replace(data),
        (true, None) => Publish::Allow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &str) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap()
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_timestamp_dot_body_in_lowercase_hex() {
        // RFC 4231, test case 2.
        assert_eq!(
            hmac_hex(&key("Jefe"), &[b"what do ya ", b"want for nothing?"]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        let whole = hmac_hex(&key("s3cret"), &[b"1700000000.{\"type\":\"subscribe\"}"]);
        assert_eq!(signature(&key("s3cret"), 1_700_000_000, br#"{"type":"subscribe"}"#), format!("sha256={whole}"));
    }

    #[test]
    fn request_bodies_are_the_documented_json_with_the_clients_data_byte_for_byte() {
        let data = RawValue::from_string(r#"{ "text" : "hi",  "n":1.50 }"#.into()).unwrap();
        let caller = Caller { pid: "p1", sub: None };
        let publish = HookRequest::Publish { channel: "chat:1", data: &data, session: caller.into() };
        assert_eq!(
            serde_json::to_string(&publish).unwrap(),
            r#"{"type":"publish","channel":"chat:1","data":{ "text" : "hi",  "n":1.50 },"session":{"pid":"p1","sub":null}}"#
        );
        let subscribe =
            HookRequest::Subscribe { channel: "chat:1", session: Caller { pid: "p1", sub: Some("u1") }.into() };
        assert_eq!(
            serde_json::to_string(&subscribe).unwrap(),
            r#"{"type":"subscribe","channel":"chat:1","session":{"pid":"p1","sub":"u1"}}"#
        );
        let connect = HookRequest::Connect {
            transport: "sse",
            client: ClientInfo { ip: Some([127, 0, 0, 1].into()), headers: BTreeMap::from([("cookie", "a=b")]) },
        };
        assert_eq!(
            serde_json::to_string(&connect).unwrap(),
            r#"{"type":"connect","transport":"sse","client":{"ip":"127.0.0.1","headers":{"cookie":"a=b"}}}"#
        );
    }

    #[test]
    fn connect_answers_become_grants_or_refusals() {
        let now = 1_000;
        let allow = br#"{"allow":true,"user":{"sub":"u1","exp":2000,
            "stickless":{"subscribe":["chat:*"],"publish":["chat:1"],"presence":[]}}}"#;
        let Ok(Connect::Allow(grant)) = connect_answer(allow, now) else { panic!("allowed") };
        assert_eq!((grant.sub.as_str(), grant.exp), ("u1", 2000));
        assert_eq!(grant.subscribe, vec![Pattern::new("chat:*")]);
        assert_eq!(grant.publish, vec![Pattern::new("chat:1")]);
        let bare = connect_answer(br#"{"allow":true,"user":{"sub":"u1","exp":2000}}"#, now).unwrap();
        assert!(matches!(bare, Connect::Allow(g) if g.subscribe.is_empty() && g.publish.is_empty()));

        let cases: [(&[u8], Result<Connect, ()>); 6] = [
            (br#"{"allow":true,"user":{"sub":"u1","exp":1000}}"#, Ok(Connect::Deny("expired".into()))),
            (br#"{"allow":false,"reason":"who are you?"}"#, Ok(Connect::Deny("who are you?".into()))),
            (br#"{"allow":false}"#, Ok(Connect::Deny("refused by the application".into()))),
            (br#"{"allow":true}"#, Err(())),
            (br#"{"user":{"sub":"u1","exp":2000}}"#, Err(())),
            (b"<html>oops</html>", Err(())),
        ];
        for (body, expected) in cases {
            assert_eq!(connect_answer(body, now).map_err(|_| ()), expected, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn subscribe_and_publish_answers_allow_deny_or_replace() {
        assert_eq!(subscribe_answer(br#"{"allow":true}"#), Ok(Subscribe::Allow));
        assert_eq!(subscribe_answer(br#"{"allow":false,"reason":"no"}"#), Ok(Subscribe::Deny("no".into())));
        assert!(subscribe_answer(br#"{"allowed":true}"#).is_err());
        assert!(subscribe_answer(b"").is_err());

        assert!(matches!(publish_answer(br#"{"allow":true}"#), Ok(Publish::Allow)));
        assert!(matches!(publish_answer(br#"{"allow":true,"data":null}"#), Ok(Publish::Allow)));
        let Ok(Publish::Replace(data)) = publish_answer(br#"{"allow":true,"data":{"replaced":true}}"#) else {
            panic!("replaced")
        };
        assert_eq!(data.get(), r#"{"replaced":true}"#);
        assert!(matches!(publish_answer(br#"{"allow":false,"reason":"spam"}"#), Ok(Publish::Deny(r)) if r == "spam"));
        assert!(publish_answer(br#"{"allow":"yes"}"#).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_hook_is_unavailable_with_a_clear_message_and_an_unusable_url_stops_the_start() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let settings = |url: String| HookSettings { url: Some(url), ..HookSettings::default() };
        let hooks = Hooks::new(&settings(format!("http://127.0.0.1:{closed}/hook"))).unwrap().unwrap();
        let channel = ChannelName::parse("chat:1").unwrap();
        let refused = hooks.subscribe(Caller { pid: "p1", sub: None }, &channel).await.unwrap_err().0;
        assert!(refused.starts_with("cannot connect to the hook: "), "{refused}");
        assert!(!refused.contains("127.0.0.1"), "the client is not told where the hook is: {refused}");
        for unusable in ["not a url".to_owned(), format!("https://127.0.0.1:{closed}/hook")] {
            let err = Hooks::new(&settings(unusable.clone())).unwrap_err();
            assert!(err.contains("not a valid http:// URL"), "{unusable}: {err}");
        }
        assert!(Hooks::new(&HookSettings::default()).unwrap().is_none(), "no URL, no hooks");
    }
}
