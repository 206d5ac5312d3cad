//! One guest request: who it is for (SNI = Host, no IP literals, no CONNECT), what the policy
//! says, and — when allowed — the upstream round trip with both bodies streamed.
//!
//! Every request ends in exactly one [`RequestRecord`]: refusals are recorded when answered,
//! forwarded requests when their response body ends (or is abandoned), with the byte counts.

use std::convert::Infallible;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::uri::Authority;
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;

use super::ProxyConfig;
use super::body::{Counted, Finish, ProxyBody};
use super::tunnel;
use super::upstream::{self, Pool, PoolKey, Sender, UpBody};
use crate::egress::{ConnKind, RequestRecord};

/// The rule recorded when `Host`/`:authority` names another host than the TLS SNI.
pub const SNI_HOST_MISMATCH: &str = "SNI/Host mismatch";
/// The rule recorded when the policy could not be evaluated.
pub const POLICY_FAILED: &str = "policy could not be evaluated (fail closed)";

/// What one guest connection shares between its requests.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) cfg: Arc<ProxyConfig>,
    pub(crate) kind: ConnKind,
    pub(crate) orig_port: u16,
    /// The TLS SNI (lowercase, no trailing dot); `None` for plain HTTP.
    pub(crate) sni: Option<String>,
    pub(crate) pool: Pool,
}

/// A request refused by the proxy itself.
struct Refusal {
    status: StatusCode,
    /// `true` only for an upstream failure after the policy allowed the request.
    allowed: bool,
    rule: String,
    /// The text sent to the guest (defaults to the rule).
    message: Option<String>,
}

impl Refusal {
    fn new(status: StatusCode, rule: impl Into<String>) -> Self {
        Refusal { status, allowed: false, rule: rule.into(), message: None }
    }
}

/// The hyper service: never fails (every problem is an HTTP answer).
pub(crate) async fn handle(
    ctx: Arc<ConnCtx>,
    req: Request<Incoming>,
) -> Result<hyper::Response<ProxyBody>, Infallible> {
    let mut record = RequestRecord {
        time: SystemTime::now(),
        method: req.method().as_str().to_owned(),
        host: ctx.sni.clone().unwrap_or_default(),
        path: req.uri().path().to_owned(),
        allowed: false,
        rule: String::new(),
        status: 0,
        bytes_in: 0,
        bytes_out: 0,
    };
    let host = match check(&ctx, &req) {
        Ok(host) => host,
        Err(refusal) => return Ok(refuse(&ctx, record, refusal)),
    };
    record.host = host.clone();
    let websocket = is_websocket_upgrade(&req);
    let (mut allowed, mut rule) = decide(&ctx.cfg, &record.method, &host, &record.path);
    if allowed && websocket {
        // A WebSocket carries data both ways: the host must also take writes.
        let (writes, write_rule) = decide(&ctx.cfg, "POST", &host, &record.path);
        (allowed, rule) = if writes {
            (true, format!("{write_rule} (websocket)"))
        } else {
            (false, format!("websocket needs writes allowed: {write_rule}"))
        };
    }
    if !allowed {
        let message = format!("blocked by policy: {rule}");
        return Ok(refuse(
            &ctx,
            record,
            Refusal { message: Some(message), ..Refusal::new(StatusCode::FORBIDDEN, rule) },
        ));
    }
    record.allowed = true;
    record.rule = rule;
    if websocket {
        return Ok(forward_websocket(&ctx, record, host, req).await);
    }
    Ok(forward(&ctx, record, host, req).await)
}

/// An HTTP/1.1 `GET` asking to switch to WebSocket (RFC 6455 §4.1): `Upgrade` lists
/// `websocket` and `Connection` lists `upgrade`.
fn is_websocket_upgrade<B>(req: &Request<B>) -> bool {
    let lists = |name: HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    req.version() == Version::HTTP_11
        && req.method() == Method::GET
        && lists(header::UPGRADE, "websocket")
        && lists(header::CONNECTION, "upgrade")
}

/// The policy's decision, denying when it cannot be evaluated (a panic is caught).
fn decide(cfg: &ProxyConfig, method: &str, host: &str, path: &str) -> (bool, String) {
    fail_closed(|| cfg.policy.decide(method, host, path))
}

/// Runs an evaluation; one that panics is a denial under [`POLICY_FAILED`].
fn fail_closed(evaluate: impl FnOnce() -> crate::egress::policy::Decision) -> (bool, String) {
    match catch_unwind(AssertUnwindSafe(evaluate)) {
        Ok(decision) => (decision.allowed, decision.rule),
        Err(_) => (false, POLICY_FAILED.to_owned()),
    }
}

/// The plain-HTTP ports of the policy, or none when it cannot be evaluated.
fn http_port_allowed(cfg: &ProxyConfig, port: u16) -> bool {
    catch_unwind(AssertUnwindSafe(|| cfg.policy.http_ports().contains(&port))).unwrap_or(false)
}

/// Everything checked before the policy: method, target host, port. Returns the host
/// (lowercase, no trailing dot, no port).
fn check(ctx: &ConnCtx, req: &Request<Incoming>) -> Result<String, Refusal> {
    if req.method() == Method::CONNECT {
        return Err(Refusal::new(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not allowed"));
    }
    let host = target_host(ctx, req)?;
    if upstream::ip_literal(&host).is_some() && !upstream::has_override(&ctx.cfg.upstream, &host) {
        return Err(Refusal::new(StatusCode::FORBIDDEN, format!("IP-literal host {host} is not allowed")));
    }
    match ctx.kind {
        ConnKind::Tls if ctx.orig_port != 443 => {
            Err(Refusal::new(StatusCode::FORBIDDEN, format!("TLS to port {} is not allowed (only 443)", ctx.orig_port)))
        }
        ConnKind::Http if !http_port_allowed(&ctx.cfg, ctx.orig_port) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("port {} is not a plain-HTTP port of the policy", ctx.orig_port),
        )),
        _ => Ok(host),
    }
}

/// The host a request is for. TLS: every name the request gives (`:authority`/absolute URI,
/// `Host`) must be the SNI. Plain HTTP: the absolute URI's host or `Host`, equal when both.
fn target_host(ctx: &ConnCtx, req: &Request<Incoming>) -> Result<String, Refusal> {
    let bad = |why: String| Refusal::new(StatusCode::BAD_REQUEST, why);
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("more than one Host header".to_owned()));
    }
    let from_header = match host_header {
        Some(value) => {
            let value = value.to_str().map_err(|_| bad("Host header is not ASCII".to_owned()))?;
            let authority = value.parse::<Authority>().map_err(|_| bad(format!("invalid Host header {value:?}")))?;
            Some(authority_host(&authority).ok_or_else(|| bad(format!("invalid Host header {value:?}")))?)
        }
        None => None,
    };
    let from_uri = match req.uri().authority() {
        Some(authority) => {
            let scheme_ok = match (ctx.kind, req.uri().scheme_str()) {
                (ConnKind::Tls, Some(s)) => s.eq_ignore_ascii_case("https"),
                (ConnKind::Http, Some(s)) => s.eq_ignore_ascii_case("http"),
                (_, None) => true,
            };
            if !scheme_ok {
                return Err(bad(format!("scheme of {} does not match the connection", req.uri())));
            }
            Some(authority_host(authority).ok_or_else(|| bad(format!("invalid authority {authority}")))?)
        }
        None => None,
    };
    match (&ctx.sni, from_uri, from_header) {
        (Some(sni), uri, header) => {
            for name in [uri, header].into_iter().flatten() {
                if &name != sni {
                    let message = format!("{SNI_HOST_MISMATCH}: TLS name {sni}, request for {name}");
                    return Err(Refusal {
                        message: Some(message),
                        ..Refusal::new(StatusCode::MISDIRECTED_REQUEST, SNI_HOST_MISMATCH)
                    });
                }
            }
            Ok(sni.clone())
        }
        (None, Some(uri), Some(header)) if uri != header => {
            Err(bad(format!("request URI names {uri} but Host names {header}")))
        }
        (None, Some(name), _) | (None, None, Some(name)) => Ok(name),
        (None, None, None) => Err(bad("no Host header".to_owned())),
    }
}

/// The host of an authority: no userinfo, lowercase, one trailing dot dropped, port ignored.
fn authority_host(authority: &Authority) -> Option<String> {
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host().to_ascii_lowercase();
    let host = host.strip_suffix('.').map(str::to_owned).unwrap_or(host);
    (!host.is_empty()).then_some(host)
}

/// Normalizes an SNI the way [`authority_host`] normalizes a host.
pub(crate) fn normalize_sni(sni: &str) -> String {
    let host = sni.to_ascii_lowercase();
    host.strip_suffix('.').map(str::to_owned).unwrap_or(host)
}

/// Answers a refusal with a short text body, and records it.
fn refuse(ctx: &ConnCtx, mut record: RequestRecord, refusal: Refusal) -> Response<ProxyBody> {
    let text = format!("capsem egress: {}\n", refusal.message.as_deref().unwrap_or(&refusal.rule));
    record.allowed = refusal.allowed;
    record.rule = refusal.rule;
    record.status = refusal.status.as_u16();
    record.bytes_out = text.len() as u64;
    ctx.cfg.sink.request(record);
    let mut response = Response::new(ProxyBody::text(text));
    *response.status_mut() = refusal.status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) and the proxy ones; removed both ways, with every
/// header the `Connection` header names.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// The request as it goes upstream: origin-form target, HTTP/1.1, hop-by-hop headers dropped,
/// `Host` naming the checked host; the body counts its bytes into the returned counter.
fn upstream_request(key: &PoolKey, req: Request<Incoming>) -> Result<(Request<UpBody>, Arc<AtomicU64>), Refusal> {
    let (parts, body) = req.into_parts();
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let default_port = if key.tls { 443 } else { 80 };
    let host_value = if key.port == default_port { key.host.clone() } else { format!("{}:{}", key.host, key.port) };
    let host = HeaderValue::from_str(&host_value).map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "invalid host"))?;
    headers.insert(header::HOST, host);
    let uri = parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let bytes_in = Arc::new(AtomicU64::new(0));
    let mut upstream_req = Request::new(Counted::new(body, bytes_in.clone()));
    *upstream_req.method_mut() = parts.method;
    *upstream_req.version_mut() = Version::HTTP_11;
    *upstream_req.headers_mut() = headers;
    *upstream_req.uri_mut() =
        uri.parse().map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "invalid request target"))?;
    Ok((upstream_req, bytes_in))
}

/// Answers 502 for an allowed request whose upstream failed.
fn upstream_failed(ctx: &ConnCtx, record: RequestRecord, reason: String) -> Response<ProxyBody> {
    let rule = format!("{}; upstream failed: {reason}", record.rule);
    let refusal = Refusal { allowed: true, message: Some(reason), ..Refusal::new(StatusCode::BAD_GATEWAY, rule) };
    refuse(ctx, record, refusal)
}

/// Answers a failed upstream connect: 502, as a refusal when the destination was refused.
fn connect_failed(ctx: &ConnCtx, record: RequestRecord, e: upstream::UpstreamError) -> Response<ProxyBody> {
    if e.refused {
        refuse(ctx, record, Refusal::new(StatusCode::BAD_GATEWAY, e.reason))
    } else {
        upstream_failed(ctx, record, e.reason)
    }
}

/// Sends an allowed request upstream and streams the answer back.
async fn forward(ctx: &ConnCtx, record: RequestRecord, host: String, req: Request<Incoming>) -> Response<ProxyBody> {
    let tls = ctx.kind == ConnKind::Tls;
    let key = PoolKey { tls, host, port: ctx.orig_port };
    let (mut upstream_req, bytes_in) = match upstream_request(&key, req) {
        Ok(r) => r,
        Err(refusal) => return refuse(ctx, record, refusal),
    };
    let upstream_failed = |record, reason| upstream_failed(ctx, record, reason);
    // A pooled connection first; a request it did not take (closed meanwhile) goes on a fresh one.
    let mut sender: Option<Sender> = ctx.pool.take(&key);
    let mut fresh = sender.is_none();
    let result = loop {
        let mut current = match sender.take() {
            Some(s) => s,
            None => match upstream::connect(&ctx.cfg.upstream, tls, &key.host, key.port).await {
                Ok(s) => s,
                Err(e) => return connect_failed(ctx, record, e),
            },
        };
        if current.ready().await.is_err() && !fresh {
            fresh = true;
            continue;
        }
        match current.try_send_request(upstream_req).await {
            Ok(response) => break Ok((response, current)),
            Err(mut e) if !fresh => match e.take_message() {
                Some(req) => {
                    upstream_req = req;
                    fresh = true;
                }
                None => break Err(e.into_error()),
            },
            Err(e) => break Err(e.into_error()),
        }
    };
    let (response, sender) = match result {
        Ok(ok) => ok,
        Err(e) => return upstream_failed(record, format!("upstream request to {}: {e}", key.host)),
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let mut record = record;
    record.status = parts.status.as_u16();
    let finish = Finish { record, sink: ctx.cfg.sink.clone(), bytes_in, reuse: Some((ctx.pool.clone(), key, sender)) };
    let mut response = Response::new(ProxyBody::upstream(body, finish));
    *response.status_mut() = parts.status;
    *response.headers_mut() = parts.headers;
    response
}

/// Sends an allowed WebSocket handshake upstream on a fresh connection (never pooled: it is not
/// coming back). Upstream's `101` goes to the guest and the two upgraded streams are joined in a
/// task of their own until either side closes; the request is recorded then, with the bytes each
/// way. Any other answer is passed through like a normal response.
async fn forward_websocket(
    ctx: &ConnCtx,
    mut record: RequestRecord,
    host: String,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let guest_upgrade = hyper::upgrade::on(&mut req);
    let key = PoolKey { tls: ctx.kind == ConnKind::Tls, host, port: ctx.orig_port };
    let (mut upstream_req, bytes_in) = match upstream_request(&key, req) {
        Ok(r) => r,
        Err(refusal) => return refuse(ctx, record, refusal),
    };
    let headers = upstream_req.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let mut sender = match upstream::connect(&ctx.cfg.upstream, key.tls, &key.host, key.port).await {
        Ok(s) => s,
        Err(e) => return connect_failed(ctx, record, e),
    };
    let sent = match sender.ready().await {
        Ok(()) => sender.send_request(upstream_req).await,
        Err(e) => Err(e),
    };
    let mut response = match sent {
        Ok(response) => response,
        Err(e) => return upstream_failed(ctx, record, format!("upstream request to {}: {e}", key.host)),
    };
    record.status = response.status().as_u16();
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let finish = Finish { record, sink: ctx.cfg.sink.clone(), bytes_in, reuse: None };
        let mut response = Response::new(ProxyBody::upstream(body, finish));
        *response.status_mut() = parts.status;
        *response.headers_mut() = parts.headers;
        return response;
    }
    let upstream_upgrade = hyper::upgrade::on(&mut response);
    let mut headers = std::mem::take(response.headers_mut());
    strip_hop_by_hop(&mut headers);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let sink = ctx.cfg.sink.clone();
    tokio::spawn(async move {
        match tokio::try_join!(guest_upgrade, upstream_upgrade) {
            Ok((guest, upstream)) => {
                drop(sender);
                let (carried, error) = tunnel::join(TokioIo::new(guest), TokioIo::new(upstream)).await;
                if let Some(e) = error {
                    record.rule = format!("{}; websocket ended: {e}", record.rule);
                }
                (record.bytes_in, record.bytes_out) = (carried.to_upstream, carried.to_guest);
            }
            Err(e) => record.rule = format!("{}; websocket upgrade failed: {e}", record.rule),
        }
        sink.request(record);
    });
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    *response.headers_mut() = headers;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::egress::policy::{Decision, MethodClass};

    #[test]
    fn a_policy_that_cannot_be_evaluated_denies() {
        let allow = || Decision { allowed: true, rule: "custom_allow x.test".into(), class: MethodClass::Read };
        assert_eq!(fail_closed(allow), (true, "custom_allow x.test".to_owned()));
        let broken = || -> Decision { panic!("policy evaluation failed") };
        assert_eq!(fail_closed(broken), (false, POLICY_FAILED.to_owned()));
    }
}
