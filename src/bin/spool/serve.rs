//! `spool serve`: the standalone broker.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use spool::cluster::node::{ClusterConfig, ClusterNode};
use spool::cluster::peer_tls::PeerTls;
use spool::cluster::raft::{Network, PeerRoutes, RaftTimings};
use spool::cluster::replication::ReplicationSettings;
use spool::cluster::state::Member;
use spool::cluster::NodeId;
use spool::server::{http, Server, ServerConfig};
use spool::{Broker, BrokerConfig, SyncPolicy, TopicConfig};
use tokio_util::sync::CancellationToken;

use crate::Failure;

/// Arguments of `spool serve`. Flags override the config file, which
/// overrides the defaults. The config file's keys are these flags' long
/// names with `_` for `-` (see `spool.example.toml`): one name per
/// setting, so the same struct reads both.
#[derive(clap::Args, Deserialize, Default)]
#[serde(deny_unknown_fields)]
#[command(after_help = "Examples:
  spool serve                                    # 127.0.0.1:7070, data in ./spool-data
  spool serve --config spool.toml --listen 0.0.0.0:7070
  spool serve --default-sync always --default-partitions 6")]
pub struct ServeArgs {
    /// TOML config file: keys are the long flags with `_` for `-` (see
    /// spool.example.toml).
    #[arg(long)]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Address for clients [default: 127.0.0.1:7070].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory [default: ./spool-data].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Address for GET /metrics and /health [default: 127.0.0.1:9090].
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Most client connections at once [default: 1024].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Most client connections at once from one IP address [default: half
    /// of --max-connections], so one process cannot take every slot.
    #[arg(long)]
    max_connections_per_ip: Option<usize>,
    /// Close connections idle this long [default: 600].
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// Memory in MiB that request frames of all connections together may
    /// hold while being received; connections wait for it [default: 256].
    #[arg(long)]
    frame_memory_mib: Option<usize>,
    /// A frame that has started must arrive within this many seconds, or
    /// its connection is closed [default: 30].
    #[arg(long)]
    frame_deadline_secs: Option<u64>,
    /// Default sync policy of new topics: always, interval, interval:MS or never [default: interval:100].
    #[arg(long)]
    #[serde(default, deserialize_with = "from_text")]
    default_sync: Option<SyncPolicy>,
    /// Default partition count of new topics [default: 1].
    #[arg(long)]
    default_partitions: Option<u32>,
    /// Default segment size of new topics [default: 268435456].
    #[arg(long)]
    default_segment_bytes: Option<u64>,
    /// Default retention by age of new topics in ms, 0 = forever [default:
    /// 604800000, 7 days].
    #[arg(long)]
    default_retention_ms: Option<u64>,
    /// Default retention by size of new topics' partitions in bytes, 0 =
    /// unlimited [default: 0].
    #[arg(long)]
    default_retention_bytes: Option<u64>,
    /// Cluster: this broker's id (1 or more). With --peer-listen and
    /// --peers it joins a cluster; without them Spool is a single node.
    #[arg(long, requires_all = ["peer_listen", "peers"])]
    node_id: Option<u64>,
    /// Cluster: address for the other brokers (Raft, heartbeats).
    #[arg(long, requires = "node_id")]
    peer_listen: Option<SocketAddr>,
    /// Cluster: the voting brokers, as ID=PEER_ADDR,... (3 or 5 of them,
    /// the same list on every voter).
    #[arg(long, requires = "node_id")]
    peers: Option<String>,
    /// Cluster: the address clients are sent to for this broker
    /// [default: the --listen address].
    #[arg(long)]
    advertise: Option<String>,
    /// Cluster: broker lease time to live in milliseconds [default: 1500].
    #[arg(long)]
    lease_ttl_ms: Option<u64>,
    /// Cluster: where this broker dials some peers instead of their --peers
    /// address, as ID=ADDR,... (a peer behind NAT or a proxy).
    #[arg(long, requires = "node_id")]
    peer_route: Option<String>,
    /// Cluster: a produce with acks=all needs at least this many in-sync
    /// replicas (capped at the topic's replication) [default: 2].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    min_in_sync: Option<u64>,
    /// Cluster: a follower that has not caught up with its leader for
    /// this long leaves the in-sync set [default: 3000].
    #[arg(long)]
    replica_lag_ms: Option<u64>,
    /// TLS on the client port: the broker's certificate chain (PEM).
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS: the certificate's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// TLS: clients must present a certificate signed by this CA (PEM):
    /// mutual TLS.
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Cluster: mutual TLS between brokers. This broker's certificate
    /// chain (PEM), signed by --peer-tls-ca; it must name the address
    /// peers dial (an IP address SAN) unless --peer-tls-server-name is
    /// given.
    #[arg(long)]
    peer_tls_cert: Option<PathBuf>,
    /// Cluster TLS: the key of --peer-tls-cert (PEM).
    #[arg(long)]
    peer_tls_key: Option<PathBuf>,
    /// Cluster TLS: the CA that signs every broker's certificate (PEM);
    /// only brokers with such a certificate may join.
    #[arg(long)]
    peer_tls_ca: Option<PathBuf>,
    /// Cluster TLS: the DNS name every broker's certificate carries
    /// [default: each peer's IP address].
    #[arg(long)]
    peer_tls_server_name: Option<String>,
    /// Require every client to authenticate (users: `spool users`) and
    /// check every request against the access rules (`spool acl`); deny by
    /// default, the user `admin` may do everything.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    auth: Option<bool>,
    /// Let the web console (on the --metrics port) create and delete
    /// topics and reset groups; with --auth, as the logged-in user and as
    /// far as the access rules allow. Off: the console is read-only.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    console_admin: Option<bool>,
}

/// Parses `1=127.0.0.1:7170,2=...`.
fn parse_peers(
    flag: &str,
    text: &str,
) -> Result<std::collections::BTreeMap<NodeId, String>, Failure> {
    let mut peers = std::collections::BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (id, addr) = item
            .split_once('=')
            .ok_or_else(|| Failure::usage(format!("{flag}: {item:?} is not ID=ADDRESS")))?;
        let id: u64 = id
            .parse()
            .map_err(|_| Failure::usage(format!("{flag}: {id:?} is not a node id")))?;
        if id == 0 {
            return Err(Failure::usage(format!("{flag}: node ids start at 1")));
        }
        addr.parse::<SocketAddr>()
            .map_err(|_| Failure::usage(format!("{flag}: {addr:?} is not an address")))?;
        if peers.insert(NodeId(id), addr.to_string()).is_some() {
            return Err(Failure::usage(format!("{flag}: node {id} is named twice")));
        }
    }
    Ok(peers)
}

/// Reads a setting given as text in the config file (`"always"`) as its
/// flag would be parsed.
fn from_text<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let text: Option<String> = Option::deserialize(d)?;
    text.map(|t| t.parse().map_err(serde::de::Error::custom))
        .transpose()
}

impl ServeArgs {
    /// Each setting from `self` (the flags), else from `file`.
    fn or(self, file: ServeArgs) -> ServeArgs {
        macro_rules! merged {
            ($($field:ident),*) => {
                ServeArgs { config: self.config, $($field: self.$field.or(file.$field)),* }
            };
        }
        merged!(
            listen,
            data,
            metrics,
            max_connections,
            max_connections_per_ip,
            idle_timeout_secs,
            frame_memory_mib,
            frame_deadline_secs,
            default_sync,
            default_partitions,
            default_segment_bytes,
            default_retention_ms,
            default_retention_bytes,
            node_id,
            peer_listen,
            peers,
            advertise,
            lease_ttl_ms,
            peer_route,
            min_in_sync,
            replica_lag_ms,
            tls_cert,
            tls_key,
            tls_client_ca,
            peer_tls_cert,
            peer_tls_key,
            peer_tls_ca,
            peer_tls_server_name,
            auth,
            console_admin
        )
    }
}

pub async fn run(args: ServeArgs) -> Result<(), Failure> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::io(&format!("reading {}", path.display()), e))?;
            toml::from_str::<ServeArgs>(&text)
                .map_err(|e| Failure::usage(format!("{}: {e}", path.display())))?
        }
        None => ServeArgs::default(),
    };
    let args = args.or(file);
    let listen = args.listen.unwrap_or(([127, 0, 0, 1], 7070).into());
    let metrics_addr = args.metrics.unwrap_or(([127, 0, 0, 1], 9090).into());
    let data = args
        .data
        .clone()
        .unwrap_or_else(|| PathBuf::from("./spool-data"));

    let mut config = ServerConfig::default();
    config.max_connections = args.max_connections.unwrap_or(config.max_connections);
    config.max_connections_per_ip = args
        .max_connections_per_ip
        .unwrap_or((config.max_connections / 2).max(1));
    if let Some(secs) = args.idle_timeout_secs {
        config.limits.idle_timeout = Duration::from_secs(secs);
    }
    if let Some(mib) = args.frame_memory_mib {
        config.frame_memory = mib.saturating_mul(1024 * 1024).max(1);
    }
    if let Some(secs) = args.frame_deadline_secs {
        config.limits.frame_deadline = Duration::from_secs(secs.max(1));
    }
    let partitions = args.default_partitions.unwrap_or(1);
    if partitions == 0 {
        return Err(Failure::usage("--default-partitions must be at least 1"));
    }
    let mut topic = TopicConfig::new(partitions);
    if let Some(sync) = args.default_sync {
        topic.log.sync = sync;
    }
    if let Some(bytes) = args.default_segment_bytes {
        topic.log.segment_size_bytes = bytes;
    }
    if let Some(ms) = args.default_retention_ms {
        topic.log.retention_ms = (ms != 0).then_some(ms);
    }
    if let Some(bytes) = args.default_retention_bytes {
        topic.log.retention_bytes = (bytes != 0).then_some(bytes);
    }
    topic
        .log
        .validate()
        .map_err(|e| Failure::usage(e.to_string()))?;
    config.topic_defaults = topic;
    let clustered = args.node_id.is_some();
    let peer_tls = match (&args.peer_tls_cert, &args.peer_tls_key, &args.peer_tls_ca) {
        (Some(cert), Some(key), Some(ca)) if clustered => Some(
            PeerTls::load(cert, key, ca, args.peer_tls_server_name.as_deref())
                .map_err(Failure::usage)?,
        ),
        (None, None, None) if args.peer_tls_server_name.is_none() => None,
        _ => {
            return Err(Failure::usage(
                "cluster TLS needs --node-id and all of --peer-tls-cert, --peer-tls-key and --peer-tls-ca",
            ))
        }
    };
    if let (Some(clients), Some(brokers)) = (&args.tls_client_ca, &args.peer_tls_ca) {
        let same = |a: &PathBuf, b: &PathBuf| match (std::fs::read(a), std::fs::read(b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if same(clients, brokers) {
            return Err(Failure::usage(
                "--tls-client-ca and --peer-tls-ca must be different CAs: a certificate the cluster CA signs is a broker's, with every right",
            ));
        }
    }
    config.peer_tls = peer_tls.clone();
    config.tls = match (&args.tls_cert, &args.tls_key) {
        (Some(_), Some(_)) if clustered && peer_tls.is_none() => {
            return Err(Failure::usage(
                "TLS on the client port of a clustered broker needs cluster TLS too (--peer-tls-cert, --peer-tls-key, --peer-tls-ca): brokers replicate through each other's client port",
            ))
        }
        (Some(cert), Some(key)) => Some(
            spool::server::tls::ServerTls::load(
                cert,
                key,
                args.tls_client_ca.as_deref(),
                args.peer_tls_ca.as_deref(),
            )
            .map_err(Failure::usage)?,
        ),
        (None, None) if args.tls_client_ca.is_none() => None,
        _ => {
            return Err(Failure::usage(
                "TLS needs both --tls-cert and --tls-key (and --tls-client-ca only with them)",
            ))
        }
    };
    if args.auth == Some(true) {
        if clustered && (peer_tls.is_none() || config.tls.is_none()) {
            return Err(Failure::usage(
                "--auth in a cluster needs TLS on both ports (--tls-cert, --tls-key and --peer-tls-cert, --peer-tls-key, --peer-tls-ca): brokers prove to each other who they are with the cluster's certificates",
            ));
        }
        let auth = spool::auth::Auth::open(&data).map_err(|e| Failure::refused(e.to_string()))?;
        if auth.user_names().is_empty() {
            tracing::warn!("authentication is on but there are no users: create one with `spool users add admin --data DIR` while the broker is stopped");
        }
        config.auth = Some(std::sync::Arc::new(auth));
    }
    if config.tls.is_none() && !listen.ip().is_loopback() {
        tracing::warn!(%listen, "listening in clear text on a non-loopback address: anyone on the network can read and change the traffic (use --tls-cert and --tls-key)");
    }

    // Bind before touching the data directory: a second server on a busy
    // port fails without creating or opening anything.
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure::io(&format!("binding {listen}"), e))?;
    let metrics_listener = http::bind(metrics_addr)
        .await
        .map_err(|e| Failure::io(&format!("binding {metrics_addr}"), e))?;
    let broker = Broker::open(&data, BrokerConfig::default())?;
    let cluster = match (args.node_id, args.peer_listen, &args.peers) {
        (Some(id), Some(peer_listen), Some(peers)) => {
            if id == 0 {
                return Err(Failure::usage("--node-id starts at 1"));
            }
            let voters = parse_peers("--peers", peers)?;
            // A broker not named in --peers joins as a non-voting member:
            // it follows the Raft group as a learner.
            let me = Member {
                id: NodeId(id),
                client_addr: args.advertise.clone().unwrap_or_else(|| listen.to_string()),
                peer_addr: voters
                    .get(&NodeId(id))
                    .cloned()
                    .unwrap_or_else(|| peer_listen.to_string()),
            };
            let defaults = ReplicationSettings::default();
            let transport = spool::client::transport::Transport::tcp();
            let cluster_config = ClusterConfig {
                me,
                dir: data.join("cluster"),
                peer_listen,
                voters,
                lease_ttl_ms: args.lease_ttl_ms.unwrap_or(1500),
                timings: RaftTimings::default(),
                network: Network {
                    routes: PeerRoutes(std::sync::Arc::new(
                        match &args.peer_route {
                            Some(text) => parse_peers("--peer-route", text)?,
                            None => Default::default(),
                        }
                        .into_iter()
                        .map(|(id, addr)| (id.0, addr))
                        .collect(),
                    )),
                    tls: peer_tls.clone(),
                    transport: transport.clone(),
                },
                replication: ReplicationSettings {
                    min_in_sync: args
                        .min_in_sync
                        .map_or(defaults.min_in_sync, |n| n as usize),
                    max_lag: args
                        .replica_lag_ms
                        .map_or(defaults.max_lag, Duration::from_millis),
                    ..defaults
                },
                // Brokers reach each other's client port (replication,
                // forwarded requests) as brokers: with the cluster's
                // certificate, which also names them when --auth is on.
                to_brokers: spool::client::ConnectOptions {
                    tls: config
                        .tls
                        .as_ref()
                        .and(peer_tls.as_ref())
                        .map(|t| t.client.clone()),
                    transport,
                    ..Default::default()
                },
            };
            let node = ClusterNode::start(cluster_config, broker.clone())
                .await
                .map_err(|e| Failure::refused(format!("cluster: {e}")))?;
            tracing::info!(node = id, peers = %peers, "joining the cluster");
            Some(node)
        }
        (None, None, None) => None,
        _ => {
            return Err(Failure::usage(
                "a cluster needs --node-id, --peer-listen and --peers together",
            ))
        }
    };
    config.cluster = cluster.clone();
    let auth_for_console = config.auth.clone();
    let server = Server::with_listener(listener.into(), broker.clone(), config)
        .map_err(|e| Failure::io(&format!("listening on {listen}"), e))?;
    let bound = server
        .local_addr()
        .map_err(|e| Failure::io("listener", e))?;
    let metrics_bound = metrics_listener
        .local_addr()
        .map_err(|e| Failure::io("listener", e))?;
    tracing::info!(listen = %bound, metrics = %metrics_bound, data = %data.display(), "spool is serving");
    // One machine-readable line on stdout, for scripts and tests that ask
    // for port 0.
    println!("listening on {bound} metrics on {metrics_bound}");

    let shutdown = CancellationToken::new();
    if args.console_admin == Some(true) && auth_for_console.is_none() {
        tracing::warn!(metrics = %metrics_bound, "--console-admin without --auth: anyone who reaches the metrics port may create and delete topics");
    }
    let console = spool::server::console::Console {
        broker: broker.clone(),
        cluster: cluster.clone(),
        started: std::time::Instant::now(),
        auth: auth_for_console,
        admin: (args.console_admin == Some(true)).then(|| server.context()),
    };
    tokio::spawn(http::serve(metrics_listener, console, shutdown.clone()));
    {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received, shutting down");
            shutdown.cancel();
        });
    }
    server.run(shutdown).await?;
    if let Some(node) = cluster {
        node.shutdown().await;
    }
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(err) => {
            tracing::warn!(error = %err, "cannot watch SIGTERM; only SIGINT stops the server");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
