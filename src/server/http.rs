//! The operator endpoint: `GET /metrics` (Prometheus text format),
//! `GET /health`, and the web console (`super::console`) at `/`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus::{Encoder, IntGaugeVec, Opts, TextEncoder};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::console::Console;
use crate::broker::Broker;
use crate::metrics::REGISTRY;

/// Most HTTP connections served at once. A scraper needs one; the bound
/// keeps a flood of idle connections from holding memory and tasks.
pub const MAX_HTTP_CONNECTIONS: usize = 64;

/// Longest one HTTP connection is kept open.
const HTTP_CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves the endpoint on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, console: Console, shutdown: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics accept failed");
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::warn!(
                limit = MAX_HTTP_CONNECTIONS,
                "metrics endpoint at its connection limit; closing a new connection"
            );
            drop(stream);
            continue;
        };
        let (stream, peer) = stream;
        let console = console.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let console = console.clone();
                async move {
                    let (parts, body) = req.into_parts();
                    // A form is small: more is refused unread.
                    let body = if parts.method == hyper::Method::POST {
                        use http_body_util::BodyExt;
                        match http_body_util::Limited::new(body, MAX_FORM_BYTES)
                            .collect()
                            .await
                        {
                            Ok(collected) => collected.to_bytes(),
                            Err(_) => {
                                return Ok(reply(
                                    StatusCode::PAYLOAD_TOO_LARGE,
                                    "text/plain",
                                    b"form too large\n".to_vec(),
                                ))
                            }
                        }
                    } else {
                        Bytes::new()
                    };
                    let req = Request::from_parts(parts, body);
                    // Pages read files and walk every partition, and a
                    // password check is slow on purpose: not on an async
                    // worker.
                    let response =
                        crate::simulation::spawn_blocking(move || route(&req, &console, peer.ip()))
                            .await
                            .unwrap_or_else(|e| {
                                reply(
                                    StatusCode::INTERNAL_SERVER_ERROR,
                                    "text/plain",
                                    format!("console task failed: {e}\n").into_bytes(),
                                )
                            });
                    Ok::<_, Infallible>(response)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            // A connection may not keep its slot for ever (idle keep-alive).
            match tokio::time::timeout(HTTP_CONNECTION_LIFETIME, conn).await {
                Ok(Err(err)) => tracing::debug!(error = %err, "metrics connection ended"),
                Ok(Ok(())) => {}
                Err(_) => tracing::debug!("metrics connection closed after its lifetime"),
            }
        });
    }
}

/// Binds the endpoint's listener.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

fn route(req: &Request<Bytes>, console: &Console, from: std::net::IpAddr) -> Response<Full<Bytes>> {
    let broker = &console.broker;
    match (req.method().as_str(), req.uri().path()) {
        ("GET", "/metrics") => match render(broker) {
            Ok(body) => reply(StatusCode::OK, "text/plain; version=0.0.4", body),
            Err(err) => reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                err.into_bytes(),
            ),
        },
        ("GET", "/health") => reply(StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        ("GET" | "POST", path) => {
            if req.method() == hyper::Method::POST && cross_site(req) {
                return reply(
                    StatusCode::FORBIDDEN,
                    "text/plain",
                    b"a form from another site may not act on this console\n".to_vec(),
                );
            }
            let principal = match console.authenticate(basic_credentials(req), from) {
                Ok(principal) => principal,
                Err(refusal) => {
                    let mut response =
                        reply(StatusCode::UNAUTHORIZED, "text/plain", refusal.into_bytes());
                    response.headers_mut().insert(
                        hyper::header::WWW_AUTHENTICATE,
                        hyper::header::HeaderValue::from_static(
                            "Basic realm=\"Spool console\", charset=\"UTF-8\"",
                        ),
                    );
                    return response;
                }
            };
            if req.method() == hyper::Method::POST {
                let page = console.action(
                    path,
                    req.body(),
                    principal.as_deref(),
                    basic_credentials(req),
                );
                let mut response = reply(
                    StatusCode::from_u16(page.status).unwrap_or(StatusCode::OK),
                    page.content_type,
                    page.body.clone(),
                );
                if page.status == 303 {
                    if let Ok(to) = hyper::header::HeaderValue::from_bytes(&page.body) {
                        response.headers_mut().insert(hyper::header::LOCATION, to);
                    }
                }
                return response;
            }
            match console.page(path, req.uri().query(), principal.as_deref()) {
                Some(page) => reply(
                    StatusCode::from_u16(page.status).unwrap_or(StatusCode::OK),
                    page.content_type,
                    page.body,
                ),
                None => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    }
}

/// Largest admin form accepted.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// True if a POST comes from a page of another site (its `Origin` names
/// another host than the one it was sent to): a cross-site form must not
/// act with the credentials the browser holds for the console.
fn cross_site(req: &Request<Bytes>) -> bool {
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|h| h.to_str().ok());
    match req
        .headers()
        .get(hyper::header::ORIGIN)
        .and_then(|o| o.to_str().ok())
    {
        None => false,
        Some(origin) => {
            let origin_host = origin.split("://").nth(1).unwrap_or(origin);
            Some(origin_host) != host
        }
    }
}

/// The user and password of an `Authorization: Basic` header.
fn basic_credentials(req: &Request<Bytes>) -> Option<(String, String)> {
    use base64::Engine;
    let value = req
        .headers()
        .get(hyper::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

fn reply(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}

/// The registry's metrics plus per-partition offsets, read from the broker
/// at scrape time so appends pay nothing for them.
fn render(broker: &Broker) -> Result<Vec<u8>, String> {
    // A single node's lock service counts its own session expiries (a
    // cluster's Raft leader counts them as it commits them).
    if let Some(locks) = broker.opened_locks() {
        let expired = locks
            .counts
            .expiries
            .load(std::sync::atomic::Ordering::Relaxed);
        let counted = crate::metrics::LOCK_SESSION_EXPIRIES.get();
        if expired > counted {
            crate::metrics::LOCK_SESSION_EXPIRIES.inc_by(expired - counted);
        }
    }
    let mut families = REGISTRY.gather();
    let start = IntGaugeVec::new(
        Opts::new("spool_partition_start_offset", "First offset stored"),
        &["topic", "partition"],
    )
    .map_err(|e| e.to_string())?;
    let end = IntGaugeVec::new(
        Opts::new("spool_partition_end_offset", "Next offset to be written"),
        &["topic", "partition"],
    )
    .map_err(|e| e.to_string())?;
    for topic in broker.list_topics() {
        for p in &topic.partitions {
            let labels = [topic.name.as_str(), &p.partition.0.to_string()];
            start.with_label_values(&labels).set(p.start.0 as i64);
            end.with_label_values(&labels).set(p.end.0 as i64);
        }
    }
    let stats = broker.storage_stats();
    let storage = IntGaugeVec::new(Opts::new("spool_storage", "Storage counts"), &["what"])
        .map_err(|e| e.to_string())?;
    for (what, value) in [
        ("segments", stats.segments as i64),
        ("mapped_segments", stats.mapped_segments as i64),
        ("bytes", stats.size_bytes as i64),
        ("flushes", stats.flushes as i64),
        (
            "partitions_out_of_space",
            stats.partitions_out_of_space as i64,
        ),
        ("flush_waits", stats.flush_waits as i64),
        ("recycled_files", stats.recycled_files as i64),
        ("segments_recycled", stats.segments_recycled as i64),
        ("written_behind_bytes", stats.written_behind_bytes as i64),
    ] {
        storage.with_label_values(&[what]).set(value);
    }
    // The file system of the data directory: what an operator alerts on
    // before a partition runs out of space.
    let disk = IntGaugeVec::new(
        Opts::new(
            "spool_disk_bytes",
            "The data directory's file system: total and available bytes",
        ),
        &["what"],
    )
    .map_err(|e| e.to_string())?;
    if let Some((available, total)) = super::handlers::status::disk_space(broker.dir()) {
        disk.with_label_values(&["total"]).set(total as i64);
        disk.with_label_values(&["available"]).set(available as i64);
    }
    let group_gauge =
        |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["group", "partition"]);
    let lag = group_gauge(
        "spool_group_lag",
        "Messages not yet settled (queue) or committed (stream)",
    )
    .map_err(|e| e.to_string())?;
    let in_flight = group_gauge("spool_group_in_flight", "Delivered and not yet settled")
        .map_err(|e| e.to_string())?;
    let counters = prometheus::IntCounterVec::new(
        Opts::new(
            "spool_group_events_total",
            "Queue-mode events since start: deliveries, redeliveries, acks, dead_letters",
        ),
        &["group", "event"],
    )
    .map_err(|e| e.to_string())?;
    for g in broker.list_groups() {
        for p in &g.partitions {
            let labels = [g.name.as_str(), &p.partition.0.to_string()];
            lag.with_label_values(&labels).set(p.lag as i64);
            in_flight.with_label_values(&labels).set(p.in_flight as i64);
        }
        if let Ok(values) = broker.group_counters(&g.name) {
            for (event, value) in ["deliveries", "redeliveries", "acks", "dead_letters"]
                .iter()
                .zip(values)
            {
                counters
                    .with_label_values(&[g.name.as_str(), event])
                    .inc_by(value);
            }
        }
    }
    use prometheus::core::Collector;
    families.extend(lag.collect());
    families.extend(in_flight.collect());
    families.extend(counters.collect());
    families.extend(start.collect());
    families.extend(end.collect());
    families.extend(storage.collect());
    families.extend(disk.collect());
    // The encoder refuses a family without samples (no topics or groups yet).
    families.retain(|f| !f.get_metric().is_empty());
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}
