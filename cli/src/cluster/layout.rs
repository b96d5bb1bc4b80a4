//! Where a local cluster's pieces live: which port each process listens on, which directory
//! holds each node's data, where the logs and the state file go, and the exact command line
//! each child is started with (the same on a restart, so a node comes back as itself).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use raftkv::tls::dev_certs;

use super::children::{LaunchPlan, Role};
use super::membership_record::{record_file_in, MembershipRecord};

/// The most nodes `cluster up` starts (a local cluster is for trying things out).
pub const MAX_NODES: u16 = 9;
/// Name of the node binary.
pub const NODE_BINARY: &str = "raftkv-node";
/// Name of the router binary.
pub const ROUTER_BINARY: &str = "raftkv-router";
/// The host every local process listens on.
const LISTEN_HOST: &str = "127.0.0.1";
/// A process's metrics endpoint listens this far above its gRPC port (router 7100, node 1
/// 7101, … for the default base port), leaving room for node ids up to 99.
pub const METRICS_PORT_OFFSET: u16 = 100;
/// Worker threads of each local process: they share one machine, where one thread each costs
/// less in hand-offs than the one-per-core default a node or router alone gets.
pub const LOCAL_WORKER_THREADS: u16 = 1;
/// Where in the data directory a TLS cluster keeps its certificates.
pub const CERTS_DIR: &str = "certs";

/// The most node ids a local cluster uses, added nodes included: their metrics ports must stay
/// below the next process's ([`METRICS_PORT_OFFSET`]).
pub const MAX_NODE_ID: u64 = 99;

/// The shape of a local cluster: node i (1-based) on port base+i with data in DIR/node-i,
/// the router on port base; each one's metrics [`METRICS_PORT_OFFSET`] above its port.
/// The console's `add` and `remove` change which nodes it has: added nodes (ids after the
/// initial ones) start with `--join`; the initial cluster stays what it was. DIR/membership.json
/// keeps those changes for the next `cluster up` ([`ClusterLayout::with_membership`]).
#[derive(Clone, Debug)]
pub struct ClusterLayout {
    data_dir: PathBuf,
    base_port: u16,
    node_count: u16,
    /// Nodes added with the console's `add`, started with `--join`.
    joined: Vec<u64>,
    /// Nodes removed with the console's `remove`.
    removed: Vec<u64>,
    node_program: PathBuf,
    router_program: PathBuf,
    /// The directory of the certificates every process serves and connects with, when the
    /// cluster runs TLS.
    tls_dir: Option<PathBuf>,
}

impl ClusterLayout {
    /// Checks that every port fits in 1..=65535.
    pub fn new(data_dir: PathBuf, base_port: u16, node_count: u16) -> Result<ClusterLayout, String> {
        if node_count == 0 || node_count > MAX_NODES {
            return Err(format!("--nodes must be between 1 and {MAX_NODES}, not {node_count}"));
        }
        if base_port == 0 {
            return Err("--base-port must be more than 0".to_string());
        }
        if u32::from(base_port) + u32::from(METRICS_PORT_OFFSET) + u32::from(node_count) > u32::from(u16::MAX) {
            return Err(format!(
                "--base-port {base_port} leaves no room for {node_count} node ports and their metrics ports \
                 (up to {METRICS_PORT_OFFSET} above them) below 65536"
            ));
        }
        Ok(ClusterLayout {
            data_dir,
            base_port,
            node_count,
            joined: Vec::new(),
            removed: Vec::new(),
            node_program: PathBuf::from(NODE_BINARY),
            router_program: PathBuf::from(ROUTER_BINARY),
            tls_dir: None,
        })
    }

    /// Takes in the membership changes a former `cluster up` made in this DIR: its added nodes
    /// start again, its removed ones do not. Refused when the record is of a cluster made with
    /// another node count (the added nodes' ids and ports follow it).
    pub fn with_membership(mut self, record: MembershipRecord) -> Result<ClusterLayout, String> {
        if record.initial_nodes != self.node_count {
            return Err(format!(
                "{} has a cluster made with --nodes {} and changed since (nodes {} added, {} removed); \
                 start it with --nodes {}",
                self.data_dir.display(),
                record.initial_nodes,
                ids_text(&record.joined),
                ids_text(&record.removed),
                record.initial_nodes
            ));
        }
        if let Some(id) = record.joined.iter().find(|id| !self.has_port_for(**id)) {
            return Err(format!(
                "node {id}, added to the cluster in {}, has no port above --base-port {}",
                self.data_dir.display(),
                self.base_port
            ));
        }
        self.joined = record.joined;
        self.removed = record.removed;
        Ok(self)
    }

    /// What DIR/membership.json records: the nodes added and removed so far.
    pub fn membership_record(&self) -> MembershipRecord {
        MembershipRecord {
            initial_nodes: self.node_count,
            joined: self.joined.clone(),
            removed: self.removed.clone(),
        }
    }

    /// DIR/membership.json.
    pub fn membership_file(&self) -> PathBuf {
        record_file_in(&self.data_dir)
    }

    /// Runs every process with TLS, with the certificates in DIR/certs.
    pub fn with_tls(mut self) -> ClusterLayout {
        self.tls_dir = Some(self.data_dir.join(CERTS_DIR));
        self
    }

    /// The certificates' directory, when the cluster runs TLS.
    pub fn tls_dir(&self) -> Option<&Path> {
        self.tls_dir.as_deref()
    }

    /// Uses these programs for the node and the router.
    pub fn with_programs(mut self, node_program: PathBuf, router_program: PathBuf) -> ClusterLayout {
        self.node_program = node_program;
        self.router_program = router_program;
        self
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn base_port(&self) -> u16 {
        self.base_port
    }

    /// The ids of the nodes the cluster has now: 1..=N and the nodes added since, less the
    /// removed ones.
    pub fn node_ids(&self) -> impl Iterator<Item = u64> + '_ {
        (1..=u64::from(self.node_count))
            .chain(self.joined.iter().copied())
            .filter(|id| !self.removed.contains(id))
    }

    pub fn has_node(&self, id: u64) -> bool {
        self.node_ids().any(|node| node == id)
    }

    /// Takes the next node id for a node that joins, or says why there is none.
    pub fn add_joined_node(&mut self) -> Result<u64, String> {
        let id = self.joined.last().copied().unwrap_or(u64::from(self.node_count)) + 1;
        if !self.has_port_for(id) {
            return Err(format!("no port left for node {id}"));
        }
        self.joined.push(id);
        Ok(id)
    }

    /// Whether node `id` has a gRPC port and a metrics port below 65536.
    fn has_port_for(&self, id: u64) -> bool {
        id <= MAX_NODE_ID && u64::from(self.base_port) + u64::from(METRICS_PORT_OFFSET) + id <= u64::from(u16::MAX)
    }

    /// Leaves node `id` out from now on (its data directory stays).
    pub fn remove_node(&mut self, id: u64) {
        self.removed.push(id);
    }

    pub fn node_address(&self, id: u64) -> String {
        format!("{LISTEN_HOST}:{}", u64::from(self.base_port) + id)
    }

    pub fn router_address(&self) -> String {
        format!("{LISTEN_HOST}:{}", self.base_port)
    }

    /// Every port the cluster listens on (its added nodes' too), the router's first, then the
    /// metrics ports.
    pub fn ports(&self) -> Vec<u16> {
        // Every id here has a port (`has_port_for`), so the offsets fit.
        let offsets: Vec<u16> = std::iter::once(0)
            .chain(self.node_ids())
            .map(|id| u16::try_from(id).expect("a node id below 100"))
            .collect();
        let grpc = offsets.iter().map(|offset| self.base_port + offset);
        let metrics = grpc.clone().map(|port| port + METRICS_PORT_OFFSET);
        grpc.chain(metrics).collect()
    }

    /// Where `role` serves `/metrics` and `/health`.
    pub fn metrics_address_of(&self, role: Role) -> String {
        let offset = match role {
            Role::Router => 0,
            Role::Node(id) => id,
        };
        format!(
            "{LISTEN_HOST}:{}",
            u64::from(self.base_port) + u64::from(METRICS_PORT_OFFSET) + offset
        )
    }

    /// The address of `role`'s process.
    pub fn address_of(&self, role: Role) -> String {
        match role {
            Role::Router => self.router_address(),
            Role::Node(id) => self.node_address(id),
        }
    }

    pub fn node_data_dir(&self, id: u64) -> PathBuf {
        self.data_dir.join(format!("node-{id}"))
    }

    pub fn log_file(&self, role: Role) -> PathBuf {
        match role {
            Role::Router => self.data_dir.join("router.log"),
            Role::Node(id) => self.data_dir.join(format!("node-{id}.log")),
        }
    }

    /// DIR/cluster.json.
    pub fn state_file(&self) -> PathBuf {
        state_file_in(&self.data_dir)
    }

    /// `1=127.0.0.1:7001,2=127.0.0.1:7002,...`
    pub fn initial_cluster(&self) -> String {
        (1..=u64::from(self.node_count))
            .map(|id| format!("{id}={}", self.node_address(id)))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// How to start `role`: the same flags every time.
    pub fn launch_plan(&self, role: Role) -> LaunchPlan {
        let mut args: Vec<OsString> = match role {
            Role::Node(id) => vec![
                "--id".into(),
                id.to_string().into(),
                "--listen".into(),
                self.node_address(id).into(),
                "--data-dir".into(),
                self.node_data_dir(id).into(),
            ]
            .into_iter()
            .chain(match self.joined.contains(&id) {
                true => vec!["--join".into()],
                false => vec!["--initial-cluster".into(), self.initial_cluster().into()],
            })
            .chain([
                "--worker-threads".into(),
                LOCAL_WORKER_THREADS.to_string().into(),
                "--metrics-listen".into(),
                self.metrics_address_of(role).into(),
            ])
            .collect(),
            Role::Router => vec![
                "--listen".into(),
                self.router_address().into(),
                "--nodes".into(),
                self.node_ids()
                    .map(|id| self.node_address(id))
                    .collect::<Vec<_>>()
                    .join(",")
                    .into(),
                "--worker-threads".into(),
                LOCAL_WORKER_THREADS.to_string().into(),
                "--metrics-listen".into(),
                self.metrics_address_of(role).into(),
            ],
        };
        if let Some(dir) = &self.tls_dir {
            // Nodes and router share the node certificate: the router is part of the cluster.
            for (flag, file) in [
                ("--cert", dev_certs::NODE_CERT_FILE),
                ("--key", dev_certs::NODE_KEY_FILE),
                ("--ca", dev_certs::CA_FILE),
            ] {
                args.push(flag.into());
                args.push(dir.join(file).into());
            }
        }
        let program = match role {
            Role::Node(_) => self.node_program.clone(),
            Role::Router => self.router_program.clone(),
        };
        LaunchPlan {
            role,
            program,
            args,
            log: self.log_file(role),
        }
    }
}

/// `4, 5`, or `none`.
fn ids_text(ids: &[u64]) -> String {
    if ids.is_empty() {
        return "none".to_string();
    }
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// The state file of a cluster whose data is in `data_dir`.
pub fn state_file_in(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster.json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_listen_above_the_router_and_keep_their_own_data() {
        let layout = ClusterLayout::new(PathBuf::from("/data"), 7000, 3).unwrap();
        assert_eq!(layout.router_address(), "127.0.0.1:7000");
        assert_eq!(layout.node_address(3), "127.0.0.1:7003");
        assert_eq!(layout.ports(), [7000, 7001, 7002, 7003, 7100, 7101, 7102, 7103]);
        assert_eq!(
            layout.initial_cluster(),
            "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
        );
        let plan = layout.launch_plan(Role::Node(2));
        let args: Vec<String> = plan.args.iter().map(|arg| arg.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--id",
                "2",
                "--listen",
                "127.0.0.1:7002",
                "--data-dir",
                "/data/node-2",
                "--initial-cluster",
                "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003",
                "--worker-threads",
                "1",
                "--metrics-listen",
                "127.0.0.1:7102"
            ]
        );
        assert_eq!(plan.log, PathBuf::from("/data/node-2.log"));
        let router: Vec<String> = layout
            .launch_plan(Role::Router)
            .args
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            router,
            [
                "--listen",
                "127.0.0.1:7000",
                "--nodes",
                "127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003",
                "--worker-threads",
                "1",
                "--metrics-listen",
                "127.0.0.1:7100"
            ]
        );
    }

    #[test]
    fn a_recorded_membership_brings_added_nodes_back_and_leaves_removed_ones_out() {
        let mut layout = ClusterLayout::new(PathBuf::from("/data"), 7000, 3).unwrap();
        assert_eq!(layout.add_joined_node(), Ok(4));
        layout.remove_node(1);
        let record = layout.membership_record();
        assert_eq!(
            record,
            MembershipRecord {
                initial_nodes: 3,
                joined: vec![4],
                removed: vec![1]
            }
        );

        let mut again = ClusterLayout::new(PathBuf::from("/data"), 7000, 3)
            .unwrap()
            .with_membership(record.clone())
            .unwrap();
        assert_eq!(again.node_ids().collect::<Vec<_>>(), [2, 3, 4]);
        assert_eq!(again.ports(), [7000, 7002, 7003, 7004, 7100, 7102, 7103, 7104]);
        let args: Vec<String> = again
            .launch_plan(Role::Node(4))
            .args
            .iter()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect();
        assert!(args.contains(&"--join".to_string()), "{args:?}");
        let router = again.launch_plan(Role::Router).args;
        assert!(
            router.contains(&"127.0.0.1:7002,127.0.0.1:7003,127.0.0.1:7004".into()),
            "{router:?}"
        );
        assert_eq!(again.add_joined_node(), Ok(5), "ids are never reused");

        let other_count = ClusterLayout::new(PathBuf::from("/data"), 7000, 5)
            .unwrap()
            .with_membership(record)
            .unwrap_err();
        assert!(
            other_count.contains("--nodes 3") && !other_count.contains('\n'),
            "{other_count}"
        );
    }

    #[test]
    fn ports_past_65535_and_silly_node_counts_are_refused() {
        assert!(ClusterLayout::new(PathBuf::from("d"), 65434, 3).is_err());
        assert!(ClusterLayout::new(PathBuf::from("d"), 65432, 3).is_ok());
        assert!(ClusterLayout::new(PathBuf::from("d"), 7000, 0).is_err());
        assert!(ClusterLayout::new(PathBuf::from("d"), 7000, MAX_NODES + 1).is_err());
        assert!(ClusterLayout::new(PathBuf::from("d"), 0, 3).is_err());
    }
}
