//! The web console, on the HTTP port beside `/metrics`: what this broker
//! holds and how the cluster stands, as server-rendered HTML (maud) that
//! works with JavaScript off. Only the overview's live rate chart uses a
//! little JavaScript (it polls `/api/rates`). Read-only unless admin
//! actions are turned on.
//!
//! Pages: `/` (overview), `/topics`, `/topics/NAME` (partitions and the
//! message browser form), `/topics/NAME/messages?partition=P&offset=O`
//! (or `&time=MS`; `&format=hex`), `/groups`, `/groups/NAME`, `/cluster`,
//! `/locks`. In a cluster each broker shows the cluster's state and the
//! partitions and groups it holds itself.
//!
//! With `--console-admin`, forms POST admin actions: `/topics` (create),
//! `/topics/NAME/delete`, `/groups/NAME/reset`. Each is the protocol
//! request a client would send, refused unless the access rules allow it
//! (with `--auth`), and dispatched as a connection's request would be.

mod pages;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use crate::broker::Broker;
use crate::cluster::node::ClusterNode;

/// Most records one message-browser page shows.
pub const PAGE_RECORDS: usize = 50;
/// Bytes read for one message-browser page.
const PAGE_BYTES: u32 = 1 << 20;

/// What the console reads from.
#[derive(Clone)]
pub struct Console {
    /// The broker.
    pub broker: Broker,
    /// Its cluster, if any.
    pub cluster: Option<Arc<ClusterNode>>,
    /// When the server started.
    pub started: Instant,
    /// Users and rules (with `--auth`): every page then needs a user's
    /// HTTP Basic credentials and the rights to see what it shows.
    pub auth: Option<Arc<crate::auth::Auth>>,
    /// The server, when admin actions are on (`spool serve
    /// --console-admin`): they are protocol requests, checked by the
    /// access rules and dispatched as a connection's would be.
    pub admin: Option<Arc<crate::server::ServerContext>>,
}

/// A page: status, content type and body.
pub struct Page {
    /// HTTP status.
    pub status: u16,
    /// Content type.
    pub content_type: &'static str,
    /// Body.
    pub body: Vec<u8>,
}

impl Page {
    fn html(markup: maud::Markup) -> Page {
        Page {
            status: 200,
            content_type: "text/html; charset=utf-8",
            body: markup.into_string().into_bytes(),
        }
    }

    fn message(status: u16, text: &str) -> Page {
        Page {
            status,
            content_type: "text/html; charset=utf-8",
            body: pages::message(text).into_string().into_bytes(),
        }
    }

    fn not_found(what: &str) -> Page {
        Page {
            status: 404,
            content_type: "text/html; charset=utf-8",
            body: pages::not_found(what).into_string().into_bytes(),
        }
    }
}

/// The query string's parameters.
fn query(q: Option<&str>) -> HashMap<String, String> {
    form_urlencoded::parse(q.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A path segment, percent-decoded.
fn segment(s: &str) -> String {
    form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl Console {
    /// Who is asking: `Ok(None)` without `--auth`, the principal with it,
    /// or why not (no or wrong credentials).
    pub fn authenticate(
        &self,
        credentials: Option<(String, String)>,
        from: std::net::IpAddr,
    ) -> Result<Option<String>, String> {
        let Some(auth) = &self.auth else {
            return Ok(None);
        };
        let Some((user, password)) = credentials else {
            return Err("this broker requires a user and password (HTTP Basic)\n".into());
        };
        match auth.authenticate(Some(from), &user, &password) {
            Ok(principal) => Ok(Some(principal)),
            Err(e) => {
                crate::metrics::AUTHENTICATION_FAILURES.inc();
                tracing::warn!(user = %user, peer = %from, error = %e, "console authentication failed");
                Err(format!("{e}\n"))
            }
        }
    }

    /// What `principal` needs to see the page at `parts`, checked: `None`
    /// if allowed (or without `--auth`), else the refusal.
    fn refused(&self, principal: Option<&str>, parts: &[&str]) -> Option<Page> {
        use crate::auth::{Operation, ResourceKind};
        let need = match parts {
            ["topics", name] => (Operation::Describe, ResourceKind::Topic, segment(name)),
            ["topics", name, "messages"] => {
                (Operation::Consume, ResourceKind::Topic, segment(name))
            }
            ["groups", name] => (Operation::Describe, ResourceKind::Group, segment(name)),
            _ => (Operation::Describe, ResourceKind::Cluster, "*".to_string()),
        };
        self.forbidden(principal, vec![need])
    }

    /// `None` if `principal` may do every one of `needs` (or without
    /// `--auth`), else the refusal, naming the first it may not.
    fn forbidden(
        &self,
        principal: Option<&str>,
        needs: Vec<(crate::auth::Operation, crate::auth::ResourceKind, String)>,
    ) -> Option<Page> {
        let (auth, principal) = (self.auth.as_ref()?, principal?);
        let (operation, kind, name) = needs
            .into_iter()
            .find(|(operation, kind, name)| !auth.allowed(principal, *operation, *kind, name))?;
        crate::metrics::AUTHORIZATION_REFUSALS.inc();
        tracing::warn!(principal, operation = operation.name(), resource = kind.name(), %name, "console request refused by the access rules");
        Some(Page {
            status: 403,
            content_type: "text/html; charset=utf-8",
            body: pages::refused(principal, operation.name(), kind.name(), &name)
                .into_string()
                .into_bytes(),
        })
    }

    /// The page at `path` for `principal` (`None`: not a console path).
    pub fn page(
        &self,
        path: &str,
        query_string: Option<&str>,
        principal: Option<&str>,
    ) -> Option<Page> {
        let q = query(query_string);
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        if let Some(refusal) = self.refused(principal, &parts) {
            return Some(refusal);
        }
        Some(match parts.as_slice() {
            [""] => Page::html(pages::overview(self)),
            ["topics"] => Page::html(pages::topics(self)),
            ["topics", name] => match self.broker.describe_topic(&segment(name)) {
                Ok(topic) => Page::html(pages::topic(self, &topic)),
                Err(_) => Page::not_found(&format!("topic {}", segment(name))),
            },
            ["topics", name, "messages"] => {
                let name = segment(name);
                match self.broker.describe_topic(&name) {
                    Ok(topic) => Page::html(pages::messages(self, &topic, &q)),
                    Err(_) => Page::not_found(&format!("topic {name}")),
                }
            }
            ["groups"] => Page::html(pages::groups(self)),
            ["groups", name] => match self.broker.describe_group(&segment(name)) {
                Ok(group) => Page::html(pages::group(
                    self,
                    &group,
                    q.get("replayed").and_then(|n| n.parse().ok()),
                )),
                Err(_) => Page::not_found(&format!("group {}", segment(name))),
            },
            ["cluster"] => Page::html(pages::cluster(self)),
            ["locks"] => Page::html(pages::locks(self)),
            ["api", "rates"] => Page {
                status: 200,
                content_type: "application/json",
                body: rates().to_string().into_bytes(),
            },
            _ => return None,
        })
    }
}

/// The counters the live chart turns into rates.
fn rates() -> serde_json::Value {
    use crate::metrics::{BYTES_IN, BYTES_OUT, MESSAGES_IN, MESSAGES_OUT};
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let (into, out) = (by_topic(&MESSAGES_IN), by_topic(&MESSAGES_OUT));
    let topics: serde_json::Map<String, serde_json::Value> = into
        .keys()
        .chain(out.keys())
        .map(|t| {
            let count =
                |m: &std::collections::BTreeMap<String, u64>| m.get(t).copied().unwrap_or(0);
            (
                t.clone(),
                serde_json::json!({ "in": count(&into), "out": count(&out) }),
            )
        })
        .collect();
    serde_json::json!({
        "at_ms": now_ms,
        "messages_in": into.values().sum::<u64>(),
        "messages_out": out.values().sum::<u64>(),
        "bytes_in": by_topic(&BYTES_IN).values().sum::<u64>(),
        "bytes_out": by_topic(&BYTES_OUT).values().sum::<u64>(),
        "topics": topics,
    })
}

/// A per-topic counter's values since start, by topic.
pub(super) fn by_topic(c: &prometheus::IntCounterVec) -> std::collections::BTreeMap<String, u64> {
    use prometheus::core::Collector;
    let mut out = std::collections::BTreeMap::new();
    for family in c.collect() {
        for m in family.get_metric() {
            let topic = m
                .get_label()
                .iter()
                .find(|l| l.name() == "topic")
                .map(|l| l.value().to_string())
                .unwrap_or_default();
            *out.entry(topic).or_default() += m.get_counter().get_value() as u64;
        }
    }
    out
}

impl Console {
    /// Runs the admin action POSTed to `path` with form `body`, for
    /// `principal` (who gave `credentials`).
    pub fn action(
        &self,
        path: &str,
        body: &[u8],
        principal: Option<&str>,
        credentials: Option<(String, String)>,
    ) -> Page {
        use spool_protocol::requests::{
            CreateTopicRequest, DeleteTopicRequest, ResetGroupRequest, TopicSettings,
            WireResetTarget,
        };
        use spool_protocol::Request;
        let Some(ctx) = &self.admin else {
            return Page::message(
                403,
                "Admin actions are off (start the broker with --console-admin).",
            );
        };
        let form: HashMap<String, String> = form_urlencoded::parse(body).into_owned().collect();
        let field = |name: &str| form.get(name).cloned().unwrap_or_default();
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (request, done) = match parts.as_slice() {
            ["topics"] => {
                let name = field("name");
                let Ok(partitions) = field("partitions").parse::<u32>() else {
                    return Page::message(400, "partitions: a number of at least 1");
                };
                let settings = TopicSettings {
                    replication: field("replication").parse().ok(),
                    ..TopicSettings::default()
                };
                let request = Request::CreateTopic(CreateTopicRequest {
                    name: name.clone(),
                    partitions,
                    settings,
                });
                (request, format!("/topics/{}", encode(&name)))
            }
            ["topics", name, "delete"] => {
                let name = segment(name);
                if field("confirm") != name {
                    return Page::message(400, "type the topic's name to confirm its deletion");
                }
                (
                    Request::DeleteTopic(DeleteTopicRequest { name }),
                    "/topics".to_string(),
                )
            }
            ["groups", name, "reset"] => {
                let name = segment(name);
                let to = match field("to").as_str() {
                    "earliest" => WireResetTarget::Earliest,
                    "latest" => WireResetTarget::Latest,
                    offset => match offset.parse() {
                        Ok(o) => WireResetTarget::Offset(o),
                        Err(_) => return Page::message(400, "to: earliest, latest or an offset"),
                    },
                };
                let request = Request::ResetGroup(ResetGroupRequest {
                    group: name.clone(),
                    to,
                    partition: None,
                });
                (request, format!("/groups/{}", encode(&name)))
            }
            ["groups", name, "replay"] => {
                let count = field("count").parse().ok();
                let to = Some(field("to")).filter(|t| !t.is_empty());
                return self.replay(ctx, &segment(name), count, to, principal, credentials);
            }
            _ => return Page::message(404, "no such action"),
        };
        if let crate::auth::required::Needs::All(needs) = crate::auth::required::needs(&request) {
            if let Some(refusal) = self.forbidden(principal, needs) {
                return refusal;
            }
        }
        tracing::info!(
            principal = principal.unwrap_or("-"),
            ?request,
            "console admin action"
        );
        match tokio::runtime::Handle::current()
            .block_on(crate::server::connection::dispatch(ctx, request))
        {
            Ok(_) => Page {
                status: 303,
                content_type: "text/plain",
                body: done.into_bytes(),
            },
            Err(e) => Page::message(409, &e.message),
        }
    }
}

impl Console {
    /// Replays `group`'s dead letters the way `spool dlq replay` does: as a
    /// client of this broker's own client port, acting as the console's
    /// user (the access rules are checked first, and again by the broker).
    fn replay(
        &self,
        ctx: &crate::server::ServerContext,
        group: &str,
        count: Option<u64>,
        to: Option<String>,
        principal: Option<&str>,
        credentials: Option<(String, String)>,
    ) -> Page {
        use crate::auth::{Operation, ResourceKind};
        let target = match &to {
            Some(t) => t.clone(),
            None => match self.broker.describe_group(group) {
                Ok(g) => g.topic,
                Err(_) => String::new(),
            },
        };
        let needs = vec![
            (Operation::Consume, ResourceKind::Group, group.to_string()),
            (
                Operation::Consume,
                ResourceKind::Topic,
                spool_client::dead_letters::dead_letter_topic(group),
            ),
            (Operation::Produce, ResourceKind::Topic, target.clone()),
        ];
        if let Some(refusal) = self.forbidden(principal, needs) {
            return refusal;
        }
        let tls = match (ctx.tls_on, &ctx.peer_tls) {
            (false, _) => None,
            (true, Some(peer)) => Some(peer.client.clone()),
            (true, None) => {
                return Page::message(
                    409,
                    &format!("The console cannot reach this broker's TLS port as a client; replay with: spool dlq replay {group}"),
                )
            }
        };
        let Ok(addr) = ctx.advertised.parse::<std::net::SocketAddr>() else {
            return Page::message(409, "this broker's client address is not an address");
        };
        let options = spool_client::ConnectOptions {
            tls,
            credentials: credentials
                .map(|(user, password)| spool_client::Credentials { user, password }),
            ..Default::default()
        };
        let options_for_replay = spool_client::ReplayOptions { count, to };
        let replayed = tokio::runtime::Handle::current().block_on(async move {
            let client = spool_client::Client::connect_with(addr, options).await?;
            client.replay_dead_letters(group, options_for_replay).await
        });
        match replayed {
            Ok(report) => {
                tracing::info!(
                    principal = principal.unwrap_or("-"),
                    group,
                    replayed = report.replayed,
                    "console replayed dead letters"
                );
                Page {
                    status: 303,
                    content_type: "text/plain",
                    body: format!("/groups/{}?replayed={}", encode(group), report.replayed)
                        .into_bytes(),
                }
            }
            Err(e) => Page::message(409, &format!("replay failed: {e}")),
        }
    }
}

/// A path segment, percent-encoded (the inverse of [`segment`]).
pub(super) fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
