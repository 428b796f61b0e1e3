//! The console's pages. Every figure comes from the same calls the
//! protocol's answers do (topics, groups, the cluster state), so the
//! console and `spool ... describe` agree.

use std::collections::HashMap;

use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::{by_topic, encode as enc, Console, PAGE_BYTES, PAGE_RECORDS};
use crate::broker::{GroupInfo, GroupMode, TopicInfo};
use crate::cluster::state::LeaseHolder;
use crate::server::display::{bytes, duration};
use crate::{Offset, PartitionId};

const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1d2733;background:#f6f7f9}\
nav{background:#1d2733;padding:.6em 1.2em}nav a{color:#e8edf3;margin-right:1.4em;text-decoration:none;font-weight:600}\
main{padding:1em 1.6em}h1{font-size:1.4em}table{border-collapse:collapse;background:#fff;margin:.6em 0 1.4em}\
th,td{border:1px solid #d5dbe3;padding:.3em .7em;text-align:left;vertical-align:top}th{background:#eef1f5}\
td.n{text-align:right;font-variant-numeric:tabular-nums}.bad{color:#b3261e;font-weight:600}.ok{color:#1e7d32}\
.cards{display:flex;gap:1em;flex-wrap:wrap}.card{background:#fff;border:1px solid #d5dbe3;padding:.7em 1em;min-width:9em}\
.card b{display:block;font-size:1.4em}pre{margin:0;white-space:pre-wrap;word-break:break-all;max-width:60em}\
form{background:#fff;border:1px solid #d5dbe3;padding:.7em 1em;display:inline-block}";

/// Draws messages in/out per second from `/api/rates`, polled every 2 s,
/// as SVG lines. Without JavaScript the overview still shows the totals.
const CHART_JS: &str = r#"(function(){
var svg=document.getElementById('rates');if(!svg)return;var pts={in:[],out:[]},last=null;
function draw(){var w=600,h=160,all=pts.in.concat(pts.out),max=Math.max(1,Math.max.apply(null,all));
['in','out'].forEach(function(k){var p=pts[k].map(function(v,i){return (i*w/59).toFixed(1)+','+(h-v*h/max).toFixed(1)}).join(' ');
document.getElementById('line-'+k).setAttribute('points',p);});
document.getElementById('rate-max').textContent=Math.round(max)+' msg/s';
document.getElementById('rate-now').textContent='in '+Math.round(pts.in[pts.in.length-1]||0)+' msg/s, out '+Math.round(pts.out[pts.out.length-1]||0)+' msg/s';}
function poll(){fetch('/api/rates').then(function(r){return r.json()}).then(function(c){
if(last){var s=Math.max(0.001,(c.at_ms-last.at_ms)/1000);pts.in.push((c.messages_in-last.messages_in)/s);pts.out.push((c.messages_out-last.messages_out)/s);
if(pts.in.length>60){pts.in.shift();pts.out.shift();}draw();}last=c;}).catch(function(){});}
poll();setInterval(poll,2000);})();"#;

/// Fills the topics table's rate columns from `/api/rates` every 2 s
/// (without JavaScript they show `-` and the totals stay).
const TOPIC_RATES_JS: &str = r#"(function(){var last=null;
function poll(){fetch('/api/rates').then(function(r){return r.json()}).then(function(c){
if(last){var s=Math.max(0.001,(c.at_ms-last.at_ms)/1000);
document.querySelectorAll('tr[data-topic]').forEach(function(row){var t=row.getAttribute('data-topic'),a=c.topics[t]||{in:0,out:0},b=last.topics[t]||{in:0,out:0};
row.querySelector('.rate-in').textContent=Math.round((a.in-b.in)/s);row.querySelector('.rate-out').textContent=Math.round((a.out-b.out)/s);});}
last=c;}).catch(function(){});}
poll();setInterval(poll,2000);})();"#;

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Spool" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav {
                    a href="/" { "Overview" }
                    a href="/topics" { "Topics" }
                    a href="/groups" { "Groups" }
                    a href="/cluster" { "Cluster" }
                    a href="/locks" { "Locks" }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

fn messages_of(topic: &TopicInfo) -> u64 {
    topic.partitions.iter().map(|p| p.end.0 - p.start.0).sum()
}

pub(super) fn not_found(what: &str) -> Markup {
    layout(
        "Not found",
        html! { p { "No " (what) " on this broker." } p { a href="/" { "Back to the overview" } } },
    )
}

pub(super) fn message(text: &str) -> Markup {
    layout(
        "Console",
        html! { p { (text) } p { a href="/" { "Back to the overview" } } },
    )
}

pub(super) fn refused(principal: &str, operation: &str, kind: &str, name: &str) -> Markup {
    layout(
        "Not allowed",
        html! { p.bad { (principal) " may not " (operation) " " (kind) " " (format!("{name:?}")) "." } },
    )
}

pub(super) fn overview(c: &Console) -> Markup {
    let topics = c.broker.list_topics();
    let groups = c.broker.list_groups();
    let partitions: usize = topics.iter().map(|t| t.partitions.len()).sum();
    let stats = c.broker.storage_stats();
    let disk = crate::server::handlers::status::disk_space(c.broker.dir());
    let role = match &c.cluster {
        Some(node) => format!("broker {} of a cluster", node.id().0),
        None => "a single broker".to_string(),
    };
    let brokers = c.cluster.as_ref().map_or(1, |n| n.state().members.len());
    let up = duration(c.started.elapsed().as_secs());
    let sum = |counter: &prometheus::IntCounterVec| -> u64 { by_topic(counter).values().sum() };
    let body = html! {
        p { "This is " (role) ", up " (up) "." }
        div.cards {
            div.card id="card-brokers" { "Brokers" b { (brokers) } }
            div.card id="card-topics" { "Topics" b { (topics.len()) } }
            div.card id="card-partitions" { "Partitions" b { (partitions) } }
            div.card id="card-groups" { "Consumer groups" b { (groups.len()) } }
            div.card id="card-messages-in" { "Messages in (since start)" b { (sum(&crate::metrics::MESSAGES_IN)) } }
            div.card id="card-messages-out" { "Messages out (since start)" b { (sum(&crate::metrics::MESSAGES_OUT)) } }
            div.card id="card-stored" { "Stored" b { (bytes(stats.size_bytes)) } (stats.segments) " segments" }
            @if let Some((free, total)) = disk {
                div.card id="card-disk" {
                    "Data disk used"
                    b { (format!("{:.0} %", 100.0 * (1.0 - free as f64 / total.max(1) as f64))) }
                    (bytes(free)) " free of " (bytes(total))
                }
            }
        }
        h2 { "Messages per second" }
        p id="rate-now" { "Live rates need JavaScript; the totals above do not." }
        svg id="rates" width="600" height="160" viewBox="0 0 600 160" style="background:#fff;border:1px solid #d5dbe3" {
            polyline id="line-in" fill="none" stroke="#1565c0" stroke-width="2" points="" {}
            polyline id="line-out" fill="none" stroke="#e65100" stroke-width="2" points="" {}
        }
        p { span style="color:#1565c0" { "■ in" } " " span style="color:#e65100" { "■ out" } " · scale: " span id="rate-max" { "-" } }
        script { (PreEscaped(CHART_JS)) }
    };
    layout("Overview", body)
}

pub(super) fn topics(c: &Console) -> Markup {
    let topics = c.broker.list_topics();
    let (into, out) = (
        by_topic(&crate::metrics::MESSAGES_IN),
        by_topic(&crate::metrics::MESSAGES_OUT),
    );
    let count =
        |m: &std::collections::BTreeMap<String, u64>, t: &str| m.get(t).copied().unwrap_or(0);
    layout(
        "Topics",
        html! {
            table id="topics" {
                tr {
                    th { "Topic" } th { "Partitions" } th { "Messages" } th { "Sync" } th { "Retention" }
                    th { "In since start" } th { "Out since start" } th { "In msg/s" } th { "Out msg/s" }
                }
                @for t in &topics {
                    tr data-topic=(t.name) {
                        td { a href=(format!("/topics/{}", enc(&t.name))) { (t.name) } }
                        td.n { (t.partitions.len()) }
                        td.n { (messages_of(t)) }
                        td { (t.config.log.sync.to_string()) }
                        td { (retention(t)) }
                        td.n { (count(&into, &t.name)) }
                        td.n { (count(&out, &t.name)) }
                        td.n.rate-in { "-" }
                        td.n.rate-out { "-" }
                    }
                }
            }
            script { (PreEscaped(TOPIC_RATES_JS)) }
            @if topics.is_empty() { p { "No topics yet." } }
            @if c.admin.is_some() {
                h2 { "Create a topic" }
                form id="create-topic" method="post" action="/topics" {
                    label { "Name " input type="text" name="name" required; }
                    " "
                    label { "partitions " input type="number" name="partitions" min="1" value="1" size="4"; }
                    " "
                    label { "replication " input type="number" name="replication" min="1" size="3" placeholder="default"; }
                    " "
                    button type="submit" { "Create" }
                }
            }
        },
    )
}

fn retention(t: &TopicInfo) -> String {
    let time = t
        .config
        .log
        .retention_ms
        .map(|ms| format!("{} s", ms / 1000));
    let size = t.config.log.retention_bytes.map(bytes);
    match (time, size) {
        (None, None) => "forever".into(),
        (Some(t), None) => t,
        (None, Some(s)) => s,
        (Some(t), Some(s)) => format!("{t} or {s}"),
    }
}

pub(super) fn topic(c: &Console, t: &TopicInfo) -> Markup {
    let state = c.cluster.as_ref().map(|n| n.state());
    let assignments = state.as_ref().and_then(|s| s.assignments.get(&t.name));
    layout(
        &format!("Topic {}", t.name),
        html! {
            p { (t.partitions.len()) " partitions, " (messages_of(t)) " messages, sync " (t.config.log.sync.to_string()) ", retention " (retention(t)) "." }
            table id="partitions" {
                tr {
                    th { "Partition" } th { "Start offset" } th { "End offset" } th { "Messages" }
                    @if assignments.is_some() { th { "Leader" } th { "Epoch" } th { "Replicas" } th { "In sync" } }
                    th { "Browse" }
                }
                @for p in &t.partitions {
                    tr {
                        td.n { (p.partition.0) }
                        td.n { (p.start.0) }
                        td.n { (p.end.0) }
                        td.n { (p.end.0 - p.start.0) }
                        @if let Some(a) = assignments {
                            @if let Some(a) = a.get(p.partition.0 as usize) {
                                @let leader = state.as_ref().and_then(|s| s.leader(&t.name, p.partition));
                                td { @match leader { Some(l) => (l.0), None => span.bad { "none" } } }
                                td.n { (a.leader_epoch) }
                                td { (ids(&a.replicas)) }
                                td { (ids(&a.in_sync)) }
                            } @else { td {} td {} td {} td {} }
                        }
                        td { a href=(format!("/topics/{}/messages?partition={}&offset={}", enc(&t.name), p.partition.0, p.start.0)) { "from the start" } }
                    }
                }
            }
            h2 { "Browse messages" }
            form method="get" action=(format!("/topics/{}/messages", enc(&t.name))) {
                label { "Partition " select name="partition" { @for p in &t.partitions { option value=(p.partition.0) { (p.partition.0) } } } }
                " "
                label { "from offset " input type="number" name="offset" min="0" size="10"; }
                " or "
                label { "from time (ms since 1970) " input type="number" name="time" size="14"; }
                " "
                label { "as " select name="format" { option value="text" { "text" } option value="hex" { "hex" } } }
                " "
                button type="submit" { "Show" }
            }
            @if c.admin.is_some() {
                h2 { "Delete this topic" }
                form id="delete-topic" method="post" action=(format!("/topics/{}/delete", enc(&t.name))) {
                    label { "Type its name to confirm " input type="text" name="confirm" required; }
                    " "
                    button type="submit" { "Delete " (t.name) " and all its messages" }
                }
            }
        },
    )
}

fn ids(ids: &[crate::cluster::NodeId]) -> String {
    ids.iter()
        .map(|i| i.0.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn show(bytes: &[u8], hex: bool) -> String {
    match (hex, std::str::from_utf8(bytes)) {
        (false, Ok(text)) => text.to_string(),
        _ => bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

pub(super) fn messages(c: &Console, t: &TopicInfo, q: &HashMap<String, String>) -> Markup {
    let partition: u32 = q.get("partition").and_then(|p| p.parse().ok()).unwrap_or(0);
    let hex = q.get("format").is_some_and(|f| f == "hex");
    let Some(offsets) = t.partitions.iter().find(|p| p.partition.0 == partition) else {
        return not_found(&format!("partition {partition} of topic {}", t.name));
    };
    let by_time = q
        .get("time")
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse::<i64>().ok());
    let from = match by_time {
        Some(ms) => c
            .broker
            .offset_for_timestamp(&t.name, PartitionId(partition), ms)
            .map(|o| o.0)
            .unwrap_or(offsets.end.0),
        None => q
            .get("offset")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(offsets.start.0),
    }
    .clamp(offsets.start.0, offsets.end.0);
    let mut rows = Vec::new();
    let mut error = None;
    if from < offsets.end.0 {
        match c.broker.read(
            &t.name,
            PartitionId(partition),
            Offset(from),
            u64::from(PAGE_BYTES),
        ) {
            Ok(fetched) => {
                let mut rest: &[u8] = &fetched.batches;
                'batches: while !rest.is_empty() {
                    let batch = match spool_protocol::Batch::validate(rest) {
                        Ok(b) => b,
                        Err(e) => {
                            error = Some(format!("damaged batch: {e}"));
                            break;
                        }
                    };
                    for r in batch.records() {
                        if r.offset.0 < from {
                            continue;
                        }
                        if rows.len() >= PAGE_RECORDS {
                            break 'batches;
                        }
                        let headers: Vec<(String, String)> = r
                            .headers()
                            .map(|(k, v)| (String::from_utf8_lossy(k).into_owned(), show(v, hex)))
                            .collect();
                        rows.push((
                            r.offset.0,
                            r.timestamp_ms,
                            r.key.map(|k| show(k, hex)),
                            headers,
                            show(r.value, hex),
                        ));
                    }
                    rest = &rest[batch.bytes().len()..];
                }
            }
            Err(e) => error = Some(e.to_string()),
        }
    }
    let next = rows.last().map(|r| r.0 + 1);
    let format = if hex { "hex" } else { "text" };
    layout(
        &format!("{} / partition {partition}", t.name),
        html! {
            p {
                "Offsets " (offsets.start.0) " to " (offsets.end.0) "; showing from " (from) ". "
                a href=(format!("/topics/{}", enc(&t.name))) { "Back to the topic" }
            }
            @if let Some(e) = &error { p.bad { (e) } }
            table id="messages" {
                tr { th { "Offset" } th { "Time (ms)" } th { "Key" } th { "Headers" } th { "Value" } }
                @for (offset, ts, key, headers, value) in &rows {
                    tr {
                        td.n { (offset) }
                        td.n { (ts) }
                        td { @if let Some(k) = key { pre { (k) } } }
                        td { @for (k, v) in headers { pre { (k) ": " (v) } } }
                        td { pre { (value) } }
                    }
                }
            }
            @if rows.is_empty() { p { "No messages from offset " (from) "." } }
            @if let Some(n) = next.filter(|n| *n < offsets.end.0) {
                p { a id="next-page" href=(format!("/topics/{}/messages?partition={partition}&offset={n}&format={format}", enc(&t.name))) { "Next page" } }
            }
        },
    )
}

fn mode(g: &GroupInfo) -> &'static str {
    match g.mode {
        GroupMode::Stream => "stream",
        GroupMode::Queue => "queue",
    }
}

pub(super) fn groups(c: &Console) -> Markup {
    let groups = c.broker.list_groups();
    layout(
        "Consumer groups",
        html! {
            table id="groups" {
                tr { th { "Group" } th { "Topic" } th { "Mode" } th { "Members" } th { "Lag" } th { "In flight" } th { "Dead letters" } }
                @for g in &groups {
                    tr {
                        td { a href=(format!("/groups/{}", enc(&g.name))) { (g.name) } }
                        td { (g.topic) }
                        td { (mode(g)) }
                        td.n { (g.members) }
                        td.n { (g.partitions.iter().map(|p| p.lag).sum::<u64>()) }
                        td.n { (g.partitions.iter().map(|p| p.in_flight).sum::<usize>()) }
                        td.n { (g.partitions.iter().map(|p| p.dead_letters).sum::<u64>()) }
                    }
                }
            }
            @if groups.is_empty() { p { "No consumer groups on this broker." } }
        },
    )
}

pub(super) fn group(c: &Console, g: &GroupInfo, replayed: Option<u64>) -> Markup {
    let dead: u64 = g.partitions.iter().map(|p| p.dead_letters).sum();
    let dlq = format!("{}.dlq", g.name);
    let has_dlq = c.broker.describe_topic(&dlq).is_ok();
    layout(
        &format!("Group {}", g.name),
        html! {
            @if let Some(n) = replayed { p.ok id="replayed" { "Replayed " (n) " dead letters." } }
            p {
                (mode(g)) " group on topic " a href=(format!("/topics/{}", enc(&g.topic))) { (g.topic) } ", "
                (g.members) " members, " (g.redeliveries) " redeliveries since start, " (dead) " dead letters."
            }
            table id="group-partitions" {
                tr { th { "Partition" } th { "Position" } th { "End" } th { "Lag" } th { "In flight" } th { "Pending redelivery" } th { "Dead letters" } }
                @for p in &g.partitions {
                    tr {
                        td.n { (p.partition.0) }
                        td.n { (p.position.0) }
                        td.n { (p.end.0) }
                        td.n { (p.lag) }
                        td.n { (p.in_flight) }
                        td.n { (p.pending) }
                        td.n { (p.dead_letters) }
                    }
                }
            }
            @if has_dlq {
                p {
                    "Dead letters are in " a href=(format!("/topics/{}", enc(&dlq))) { (dlq) }
                    ". Replay them with " code { "spool dlq replay " (g.name) } "."
                }
            }
            @if c.admin.is_some() && has_dlq {
                h2 { "Replay dead letters" }
                form id="replay" method="post" action=(format!("/groups/{}/replay", enc(&g.name))) {
                    label { "at most " input type="number" name="count" min="1" size="6" placeholder="all"; }
                    " "
                    label { "to topic " input type="text" name="to" placeholder=(g.topic); }
                    " "
                    button type="submit" { "Replay" }
                }
            }
            @if c.admin.is_some() {
                h2 { "Reset the group" }
                form id="reset-group" method="post" action=(format!("/groups/{}/reset", enc(&g.name))) {
                    label { "to " select name="to" { option value="earliest" { "the earliest offset" } option value="latest" { "the end" } } }
                    " "
                    button type="submit" { "Reset (members must have left)" }
                }
            }
        },
    )
}

pub(super) fn cluster(c: &Console) -> Markup {
    let Some(node) = &c.cluster else {
        return layout(
            "Cluster",
            html! { p id="single" { "This is a single broker, not a cluster." } },
        );
    };
    let state = node.state();
    let (ages, term) = node.lease_view();
    let voters = node.voters();
    let leader = node.controller();
    let under: Vec<(String, usize, String, String)> = state
        .assignments
        .iter()
        .flat_map(|(topic, parts)| {
            parts
                .iter()
                .enumerate()
                .filter(|(_, a)| a.in_sync.len() < a.replicas.len())
                .map(move |(p, a)| (topic.clone(), p, ids(&a.replicas), ids(&a.in_sync)))
        })
        .collect();
    layout(
        "Cluster",
        html! {
            p {
                "Raft leader (controller): "
                @match leader { Some(l) => b id="raft-leader" { (l.0) }, None => span.bad { "none" } }
                ", term " b id="raft-term" { (term) } ", placement epoch " (state.placement_epoch)
                ", partitions without leader: " b id="without-leader" { (state.partitions_without_leader()) } "."
            }
            table id="members" {
                tr { th { "Broker" } th { "Client address" } th { "Peer address" } th { "Voter" } th { "Lease" } th { "Last heard" } }
                @for (id, m) in &state.members {
                    @let lease = state.leases.get(&LeaseHolder::Broker(*id));
                    tr {
                        td.n { (id.0) }
                        td { (m.client_addr) }
                        td { (m.peer_addr) }
                        td { @if voters.contains(id) { "yes" } @else { "no" } }
                        td { @match lease { Some(l) if l.alive => span.ok { "alive" }, Some(_) => span.bad { "expired" }, None => "-" } }
                        td { @match ages.get(id) { Some(a) => (format!("{} ms ago", a.as_millis())), None => "(known to the controller)" } }
                    }
                }
            }
            h2 { "Under-replicated partitions" }
            @if under.is_empty() { p id="under-replicated" { "None." } } @else {
                table id="under-replicated" {
                    tr { th { "Topic" } th { "Partition" } th { "Replicas" } th { "In sync" } }
                    @for (t, p, r, s) in &under { tr { td { (t) } td.n { (p) } td { (r) } td { (s) } } }
                }
            }
        },
    )
}

pub(super) fn locks(c: &Console) -> Markup {
    let listed = match &c.cluster {
        Some(node) => Ok(node.list_locks("")),
        None => c.broker.locks().map(|l| l.list("")),
    };
    let body = match listed {
        Err(e) => html! { p.bad { "Locks unavailable: " (e) } },
        Ok((locks, last_token)) => html! {
            p { "Largest fencing token granted: " b id="last-token" { (last_token) } "." }
            table id="locks" {
                tr { th { "Lock" } th { "Holder session" } th { "Token" } th { "Waiters" } th { "Holder expires in" } }
                @for l in &locks {
                    tr {
                        td { (l.info.name) }
                        @match l.info.holder {
                            Some((session, token)) => { td.n { (session) } td.n { (token) } },
                            None => { td { "free" } td {} },
                        }
                        td { (l.info.waiters.iter().map(|w| w.to_string()).collect::<Vec<_>>().join(", ")) }
                        td { @if let Some(e) = l.expires_in { (format!("{} ms", e.as_millis())) } }
                    }
                }
            }
            @if locks.is_empty() { p { "No locks." } }
        },
    };
    layout("Locks", body)
}
