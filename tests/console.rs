//! The web console in real headless Chromium (Debian's `chromium`; the
//! test installs it with apt-get when it can, and prints `SKIPPED` and
//! passes where it cannot): every page of a live broker with topics, a
//! queue group with dead letters and a lock, and the cluster page of three
//! brokers, with the figures shown checked against the protocol's answers,
//! a message browsed by offset, and pages with JavaScript off. Screenshots
//! go to `$SPOOL_SCREENSHOTS` if set (README's come from there).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::cluster::Cluster;
use common::server::SpoolServer;
use spool::client::{Client, Producer, ProducerConfig, QueueConsumer, QueueOptions, TopicOptions};
use spool::protocol::requests::{DescribeGroupRequest, ListLocksRequest};

/// The Chromium binary, installing it if need be and possible.
fn chromium() -> Option<PathBuf> {
    let find = || {
        ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .find_map(|name| {
                let out = Command::new("sh")
                    .args(["-c", &format!("command -v {name}")])
                    .output()
                    .ok()?;
                let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
                (!path.is_empty()).then(|| PathBuf::from(path))
            })
    };
    if let Some(found) = find() {
        return Some(found);
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
    if root {
        let _ = Command::new("apt-get").args(["update", "-qq"]).status();
        let _ = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "chromium",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    find()
}

struct Browser {
    exe: PathBuf,
    shots: Option<PathBuf>,
}

impl Browser {
    fn run(&self, extra: &[&str], url: &str) -> String {
        let out = Command::new(&self.exe)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
            ])
            .args(extra)
            .arg(url)
            .output()
            .expect("run chromium");
        assert!(
            out.status.success(),
            "chromium failed on {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The page's DOM after its scripts ran (for 5 s of virtual time).
    fn dom(&self, url: &str) -> String {
        self.run(&["--dump-dom", "--virtual-time-budget=5000"], url)
    }

    fn screenshot(&self, url: &str, name: &str) {
        let dir = match &self.shots {
            Some(d) => d.clone(),
            None => std::env::temp_dir().join(format!("spool-console-{}", std::process::id())),
        };
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let file = dir.join(format!("{name}.png"));
        let arg = format!("--screenshot={}", file.display());
        self.run(
            &[&arg, "--window-size=1200,760", "--virtual-time-budget=7000"],
            url,
        );
        let png = std::fs::read(&file).expect("screenshot written");
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 5_000,
            "{name}: an empty screenshot"
        );
    }
}

/// The page as the server sends it, before any script: what a browser
/// with JavaScript off shows.
fn html(url: &str) -> String {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let response = common::server::http_get(host, if path.is_empty() { "/" } else { path });
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{url}: {}",
        response.lines().next().unwrap_or("")
    );
    response
}

/// A page in Chromium (scripts run) and as sent (what a browser with
/// JavaScript off shows): the figures must be the same in both.
fn view(browser: &Browser, url: &str) -> (String, String) {
    (browser.dom(url), html(url))
}

/// [`cell`] of both views of a page, which must agree.
fn both(page: &(String, String), table: &str, key: &str, n: usize) -> Option<String> {
    let (dom, raw) = (cell(&page.0, table, key, n), cell(&page.1, table, key, n));
    assert_eq!(
        dom, raw,
        "{table}/{key}/{n}: the browser and the HTML differ"
    );
    dom
}

/// The text of the table cell `n` (0-based) of each row of the table with
/// id `table` whose first cell is `key`.
fn cell(dom: &str, table: &str, key: &str, n: usize) -> Option<String> {
    let start = dom.find(&format!("<table id=\"{table}\""))?;
    let end = start + dom[start..].find("</table>")?;
    for row in dom[start..end].split("<tr").skip(1) {
        let cells: Vec<String> = row
            .split("<td")
            .skip(1)
            .map(|c| {
                let inner = &c[c.find('>').map_or(0, |i| i + 1)..];
                let inner = inner.split("</td>").next().unwrap_or("");
                strip_tags(inner)
            })
            .collect();
        if cells.first().map(String::as_str) == Some(key) {
            return cells.get(n).cloned();
        }
    }
    None
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut tag = false;
    for c in html.chars() {
        match c {
            '<' => tag = true,
            '>' => tag = false,
            c if !tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
        .replace("&quot;", "\"")
        .trim()
        .to_string()
}

async fn populate(client: &Client) {
    client
        .create_topic("orders", 3, TopicOptions::default())
        .await
        .expect("topic");
    client
        .create_topic("audit.log", 1, TopicOptions::default())
        .await
        .expect("a second topic");
    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut acks = Vec::new();
    for i in 0..60 {
        let key = format!("customer-{}", i % 7);
        let value = format!("order {i} <total>{}</total>", i * 10);
        acks.push(
            producer
                .send("orders", Some(key.as_bytes()), value.as_bytes())
                .await
                .expect("send"),
        );
    }
    acks.push(
        producer
            .send("audit.log", None, b"\x00\x01binary\xff".as_slice())
            .await
            .expect("send"),
    );
    for a in acks {
        a.await.expect("stored");
    }
    // A queue group that gives up on a few messages: dead letters.
    let options = QueueOptions {
        ack_wait: Duration::from_millis(300),
        max_deliveries: 1,
        max_wait: Duration::from_millis(100),
        ..QueueOptions::default()
    };
    let mut consumer = QueueConsumer::join(client.clone(), "billing", "orders", options)
        .await
        .expect("join");
    let mut got = Vec::new();
    while got.len() < 20 {
        if let Some(m) = consumer
            .receive_timeout(Duration::from_millis(300))
            .await
            .expect("receive")
        {
            got.push(m);
        }
    }
    for m in &got[..15] {
        consumer.ack(m).await.expect("ack");
    }
    // The other five pass their deadline: dead letters once the group
    // next delivers (the rest are acked as they come).
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while client.describe_topic("billing.dlq").await.is_err() {
        assert!(std::time::Instant::now() < deadline, "no dead letters");
        if let Some(m) = consumer
            .receive_timeout(Duration::from_millis(200))
            .await
            .expect("receive")
        {
            consumer.ack(&m).await.expect("ack");
        }
    }
    drop(consumer);
    let session = client
        .open_session(Duration::from_secs(30))
        .await
        .expect("session");
    session.acquire("jobs/nightly", None).await.expect("lock");
    std::mem::forget(session);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_console_page_shows_what_the_api_says_in_a_real_browser() {
    let Some(exe) = chromium() else {
        eprintln!("SKIPPED: no Chromium, and it could not be installed (apt-get install chromium)");
        return;
    };
    let browser = Browser {
        exe,
        shots: std::env::var_os("SPOOL_SCREENSHOTS").map(PathBuf::from),
    };
    let server = SpoolServer::temporary();
    let client = Client::connect(server.addr).await.expect("connect");
    populate(&client).await;
    let base = format!("http://{}", server.metrics);

    // Overview: the counts, and the live chart drawn by its script.
    let all = client.list_topics().await.expect("topics");
    let partitions: usize = all.iter().map(|t| t.partitions.len()).sum();
    let overview = browser.dom(&format!("{base}/"));
    assert!(
        strip_tags(&overview).contains(&format!("Topics{}", all.len())),
        "{overview}"
    );
    assert!(
        overview.contains("id=\"rate-now\">in "),
        "the live chart's script did not run: {overview}"
    );
    let no_js = html(&format!("{base}/"));
    assert!(no_js.contains("Live rates need JavaScript"));
    assert!(
        strip_tags(&no_js).contains(&format!("Partitions{partitions}")),
        "{no_js}"
    );

    // Topics: partitions and message counts as DescribeTopic has them.
    let topics = view(&browser, &format!("{base}/topics"));
    // The rate columns are filled by the page's script in the browser,
    // and left as "-" in the HTML as sent.
    let filled = |dom: &str| {
        dom.split("rate-in\">")
            .skip(1)
            .all(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
    };
    assert!(filled(&topics.0), "rates not filled in: {}", topics.0);
    assert!(topics.1.contains("rate-in\">-"), "{}", topics.1);
    let into = cell(&topics.1, "topics", "orders", 5);
    assert_eq!(into.as_deref(), Some("60"), "messages in since start");
    for name in ["orders", "audit.log", "billing.dlq"] {
        let described = client.describe_topic(name).await.expect("describe");
        let messages: u64 = described.partitions.iter().map(|p| p.end - p.start).sum();
        assert_eq!(
            both(&topics, "topics", name, 1),
            Some(described.partitions.len().to_string()),
            "{name}"
        );
        assert_eq!(
            both(&topics, "topics", name, 2),
            Some(messages.to_string()),
            "{name}"
        );
    }

    // A topic: each partition's offsets.
    let orders = client.describe_topic("orders").await.expect("describe");
    let page = view(&browser, &format!("{base}/topics/orders"));
    for p in &orders.partitions {
        let key = p.partition.to_string();
        assert_eq!(
            both(&page, "partitions", &key, 1),
            Some(p.start.to_string())
        );
        assert_eq!(both(&page, "partitions", &key, 2), Some(p.end.to_string()));
    }
    let escaped = html(&format!("{base}/topics/audit.log"));
    assert!(escaped.contains("Topic audit.log"));

    // The message browser, by offset: the record there, as a fetch reads it.
    let p = orders
        .partitions
        .iter()
        .find(|p| p.end - p.start >= 5)
        .expect("a partition with 5 messages");
    let mut reader = spool::client::Consumer::from_positions(
        client.clone(),
        "orders",
        vec![(p.partition, p.start + 3)],
        Default::default(),
    );
    let batch = reader
        .next_within(Duration::from_secs(5))
        .await
        .expect("a record")
        .expect("fetch");
    let url = format!(
        "{base}/topics/orders/messages?partition={}&offset={}",
        p.partition,
        p.start + 3
    );
    let browsed = view(&browser, &url);
    let offset = (p.start + 3).to_string();
    assert_eq!(
        both(&browsed, "messages", &offset, 4).as_deref(),
        std::str::from_utf8(&batch.value).ok(),
        "value at {offset}"
    );
    assert_eq!(
        both(&browsed, "messages", &offset, 2).as_deref(),
        batch
            .key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    );
    let hex = html(&format!(
        "{base}/topics/audit.log/messages?partition=0&offset=0&format=hex"
    ));
    assert_eq!(
        cell(&hex, "messages", "0", 4).as_deref(),
        Some("00 01 62 69 6e 61 72 79 ff")
    );

    // Groups: lag, in flight and dead letters as DescribeGroup says.
    let described = client
        .call_group(
            "billing",
            &DescribeGroupRequest {
                group: "billing".into(),
            },
        )
        .await
        .expect("describe group");
    let lag_of = |p: &spool::protocol::requests::WireGroupPartition| p.end - p.position;
    let groups = view(&browser, &format!("{base}/groups"));
    let lag: u64 = described.partitions.iter().map(lag_of).sum();
    let dead: u64 = described.partitions.iter().map(|p| p.dead_letters).sum();
    assert!(dead > 0, "no dead letters made");
    assert_eq!(both(&groups, "groups", "billing", 4), Some(lag.to_string()));
    assert_eq!(
        both(&groups, "groups", "billing", 6),
        Some(dead.to_string())
    );
    let group = view(&browser, &format!("{base}/groups/billing"));
    for p in &described.partitions {
        let key = p.partition.to_string();
        assert_eq!(
            both(&group, "group-partitions", &key, 3),
            Some(lag_of(p).to_string())
        );
        assert_eq!(
            both(&group, "group-partitions", &key, 6),
            Some(p.dead_letters.to_string())
        );
    }
    assert!(group.1.contains("spool dlq replay billing"));

    // Locks and the single broker's cluster page.
    let listed = client
        .call(&ListLocksRequest {
            prefix: String::new(),
        })
        .await
        .expect("list locks");
    let locks = view(&browser, &format!("{base}/locks"));
    let held = listed
        .locks
        .iter()
        .find(|l| l.name == "jobs/nightly")
        .expect("lock");
    assert_eq!(
        both(&locks, "locks", "jobs/nightly", 2),
        Some(held.token.to_string())
    );
    assert!(html(&format!("{base}/cluster")).contains("single broker"));

    for (page, name) in [
        ("/", "overview"),
        ("/topics/orders", "topic"),
        (&url.replace(&base, "")[..], "messages"),
        ("/groups/billing", "group"),
        ("/locks", "locks"),
    ] {
        browser.screenshot(&format!("{base}{page}"), name);
    }

    // Three brokers: the cluster page names them, alive, and the leader.
    let cluster = Cluster::start(3);
    let any = cluster.client(0).await;
    cluster.ready(&any, 3).await;
    let metadata = common::cluster::metadata(&any).await.expect("metadata");
    let page = view(
        &browser,
        &format!("http://{}/cluster", cluster.brokers[0].metrics),
    );
    for b in &metadata.brokers {
        assert_eq!(
            both(&page, "members", &b.id.to_string(), 1),
            Some(b.addr.clone())
        );
        assert_eq!(
            both(&page, "members", &b.id.to_string(), 4).as_deref(),
            Some("alive")
        );
    }
    assert!(
        page.0.contains("id=\"raft-leader\""),
        "no Raft leader shown"
    );
    browser.screenshot(
        &format!("http://{}/cluster", cluster.brokers[0].metrics),
        "cluster",
    );
}

const ADMIN: (&str, &str) = ("admin", "admin-password-1");
const ALICE: (&str, &str) = ("alice", "alice-password-1");

/// A data directory with the users admin and alice, alice allowed
/// `operations` on the topics `orders.*`, made offline.
fn users_and_rules(operations: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().display().to_string();
    for (user, password) in [ADMIN, ALICE] {
        let out = common::cli::spool(
            &["users", "add", user, "--data", &data],
            Some(&format!("{password}\n")),
        );
        assert!(out.status.success(), "{}", common::cli::stderr(&out));
    }
    let out = common::cli::spool(
        &[
            "acl", "add", "alice", "--allow", operations, "--topic", "orders.*", "--data", &data,
        ],
        None,
    );
    assert!(out.status.success(), "{}", common::cli::stderr(&out));
    dir
}

/// The `Authorization` header of HTTP Basic `credentials`.
fn basic((user, password): (&str, &str)) -> String {
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Authorization: Basic {token}")
}

/// `GET path` from `host` with HTTP Basic credentials; the whole response.
fn get_as(host: &str, path: &str, credentials: Option<(&str, &str)>) -> String {
    let headers: Vec<String> = credentials.map(basic).into_iter().collect();
    common::server::http(host, "GET", path, &headers, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_the_console_asks_who_you_are_and_shows_only_what_you_may_see() {
    let dir = users_and_rules("consume,describe");
    let server = SpoolServer::start_with(dir.path(), &["--auth"]);
    let admin = Client::connect_with(server.addr, common::server::as_user(ADMIN.0, ADMIN.1))
        .await
        .expect("admin");
    for topic in ["orders.eu", "payments"] {
        admin
            .create_topic(topic, 1, TopicOptions::default())
            .await
            .expect("topic");
        admin
            .produce_batch(topic, 0, common::cluster::batch("secret"))
            .await
            .expect("produce");
    }
    let host = server.metrics.to_string();
    let status = |r: &str| r.lines().next().unwrap_or("").to_string();

    // No credentials, or wrong ones: asked for them, shown nothing.
    let anonymous = get_as(&host, "/topics/payments/messages", None);
    assert!(status(&anonymous).contains("401"), "{anonymous}");
    assert!(
        anonymous.contains("WWW-Authenticate: Basic")
            || anonymous.contains("www-authenticate: Basic")
    );
    assert!(!anonymous.contains("secret"));
    let wrong = get_as(&host, "/", Some(("alice", "not-her-password")));
    assert!(status(&wrong).contains("401"), "{wrong}");
    // Scrapers need no password.
    assert!(status(&get_as(&host, "/metrics", None)).contains("200"));

    // Alice reads her topic's messages and nothing else.
    let hers = get_as(&host, "/topics/orders.eu/messages?partition=0", Some(ALICE));
    assert!(status(&hers).contains("200"), "{hers}");
    assert!(hers.contains("secret"));
    let theirs = get_as(&host, "/topics/payments/messages?partition=0", Some(ALICE));
    assert!(status(&theirs).contains("403"), "{theirs}");
    assert!(theirs.contains("alice may not consume topic"), "{theirs}");
    assert!(!theirs.contains("secret"));
    assert!(status(&get_as(&host, "/", Some(ALICE))).contains("403"));

    // The admin sees everything.
    for path in [
        "/",
        "/topics",
        "/topics/payments/messages?partition=0",
        "/cluster",
        "/locks",
    ] {
        let page = get_as(&host, path, Some(ADMIN));
        assert!(status(&page).contains("200"), "{path}: {page}");
    }
}

/// `POST path` with form `body`, as `credentials`, from `origin` if given.
fn post_as(
    host: &str,
    path: &str,
    body: &str,
    credentials: (&str, &str),
    origin: Option<&str>,
) -> String {
    let mut headers = vec![
        basic(credentials),
        "Content-Type: application/x-www-form-urlencoded".to_string(),
    ];
    headers.extend(origin.map(|o| format!("Origin: {o}")));
    common::server::http(host, "POST", path, &headers, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_admin_actions_are_off_by_default_and_follow_the_access_rules() {
    let dir = users_and_rules("create,describe");
    let status = |r: &str| r.lines().next().unwrap_or("").to_string();

    // Read-only unless asked.
    let plain = SpoolServer::start_with(dir.path(), &["--auth"]);
    let host = plain.metrics.to_string();
    let off = post_as(&host, "/topics", "name=orders.x&partitions=1", ADMIN, None);
    assert!(
        status(&off).contains("403") && off.contains("--console-admin"),
        "{off}"
    );
    drop(plain);

    let server = SpoolServer::start_with(dir.path(), &["--auth", "--console-admin"]);
    let host = server.metrics.to_string();
    let admin = Client::connect_with(server.addr, common::server::as_user(ADMIN.0, ADMIN.1))
        .await
        .expect("admin client");

    // Alice creates what her rule allows, and nothing else.
    let created = post_as(&host, "/topics", "name=orders.eu&partitions=2", ALICE, None);
    assert!(status(&created).contains("303"), "{created}");
    assert!(created.contains("/topics/orders.eu"), "{created}");
    let described = admin.describe_topic("orders.eu").await.expect("created");
    assert_eq!(described.partitions.len(), 2);
    let refused = post_as(&host, "/topics", "name=payments&partitions=1", ALICE, None);
    assert!(status(&refused).contains("403"), "{refused}");
    assert!(refused.contains("alice may not create topic"), "{refused}");
    assert!(admin.describe_topic("payments").await.is_err());
    // A form from another site does nothing, whoever's credentials ride
    // along.
    let forged = post_as(
        &host,
        "/topics/orders.eu/delete",
        "confirm=orders.eu",
        ADMIN,
        Some("http://evil.example"),
    );
    assert!(status(&forged).contains("403"), "{forged}");
    assert!(admin.describe_topic("orders.eu").await.is_ok());

    // Reset a group back to the start.
    let producer = spool::client::Producer::new(admin.clone(), ProducerConfig::default());
    let mut acks = Vec::new();
    for i in 0..5 {
        acks.push(
            producer
                .send_to("orders.eu", 0, None, format!("m{i}"))
                .await
                .expect("send"),
        );
    }
    for a in acks {
        a.await.expect("stored");
    }
    let options = QueueOptions {
        max_wait: Duration::from_millis(100),
        ..QueueOptions::default()
    };
    let mut consumer = QueueConsumer::join(admin.clone(), "billing", "orders.eu", options)
        .await
        .expect("join");
    let mut got = 0;
    while got < 5 {
        if let Some(m) = consumer
            .receive_timeout(Duration::from_millis(300))
            .await
            .expect("receive")
        {
            consumer.ack(&m).await.expect("ack");
            got += 1;
        }
    }
    drop(consumer);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reset = post_as(&host, "/groups/billing/reset", "to=earliest", ADMIN, None);
    assert!(status(&reset).contains("303"), "{reset}");
    let group = admin
        .call_group(
            "billing",
            &DescribeGroupRequest {
                group: "billing".into(),
            },
        )
        .await
        .expect("describe");
    assert!(
        group.partitions.iter().all(|p| p.position == 0),
        "{group:?}"
    );

    // Dead letters replayed from the console come back and can be acked.
    let options = QueueOptions {
        ack_wait: Duration::from_millis(300),
        max_deliveries: 1,
        max_wait: Duration::from_millis(100),
        ..QueueOptions::default()
    };
    let mut audit = QueueConsumer::join(admin.clone(), "audit", "orders.eu", options)
        .await
        .expect("join");
    let mut first = 0;
    while first < 5 {
        if audit
            .receive_timeout(Duration::from_millis(300))
            .await
            .expect("receive")
            .is_some()
        {
            first += 1;
        }
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while admin.describe_topic("audit.dlq").await.is_err()
        || admin
            .describe_topic("audit.dlq")
            .await
            .expect("dlq")
            .partitions[0]
            .end
            < 5
    {
        assert!(std::time::Instant::now() < deadline, "no dead letters");
        let _ = audit.receive_timeout(Duration::from_millis(200)).await;
    }
    let refused = post_as(&host, "/groups/audit/replay", "count=", ALICE, None);
    assert!(status(&refused).contains("403"), "{refused}");
    let replayed = post_as(&host, "/groups/audit/replay", "count=", ADMIN, None);
    assert!(status(&replayed).contains("303"), "{replayed}");
    assert!(replayed.contains("replayed=5"), "{replayed}");
    let mut again = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while again < 5 && std::time::Instant::now() < deadline {
        if let Some(m) = audit
            .receive_timeout(Duration::from_millis(300))
            .await
            .expect("receive")
        {
            let replays = m
                .headers
                .iter()
                .find(|(k, _)| k.as_ref() == b"spool.dlq.replays")
                .map(|(_, v)| v.clone());
            assert_eq!(replays.as_deref(), Some(&b"1"[..]));
            audit.ack(&m).await.expect("ack");
            again += 1;
        }
    }
    assert_eq!(again, 5, "replayed dead letters delivered again");
    drop(audit);

    // Deleting needs the name typed again.
    let unconfirmed = post_as(&host, "/topics/orders.eu/delete", "confirm=", ADMIN, None);
    assert!(status(&unconfirmed).contains("400"), "{unconfirmed}");
    let deleted = post_as(
        &host,
        "/topics/orders.eu/delete",
        "confirm=orders.eu",
        ADMIN,
        None,
    );
    assert!(status(&deleted).contains("303"), "{deleted}");
    assert!(admin.describe_topic("orders.eu").await.is_err());
}
