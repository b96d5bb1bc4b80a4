//! `raftkv snapshot save | status | restore`: backups of a cluster's whole store, as etcd's
//! `snapshot save` / `snapshot restore`.
//!
//! A backup is a snapshot file (`raftkv::snapshot_format`: checksummed, with the log position
//! it was taken at), streamed by one node (`Cluster.SnapshotSave`). `save` writes it to
//! `FILE.part` as it arrives, checking the checksum as the bytes go by, fsyncs it and renames
//! it to FILE only when it is whole and sound; nothing is held in memory. `status` reads a
//! file through once. `restore` makes a data directory, which is the node's business: it runs
//! `raftkv-node restore` (this crate never links the node).

use raftkv::snapshot_format::sync_parent;
use std::io::{BufReader, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use raftkv::client::Client;
use raftkv::pb;
use raftkv::raft_pb;
use raftkv::snapshot_format::{self, ChecksumCheck, RecordReader};
use raftkv::wire::backup_stream::BACKUP_IDLE_TIMEOUT;
use serde::Serialize;

use crate::cluster::{locate_binary, NODE_BINARY};
use crate::status::OutputFormat;
use crate::CliError;

/// On a terminal that is not a TTY, a progress line at most this often.
const PLAIN_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// The buffer between the file and the disk when a backup is read through.
const READ_BUFFER_BYTES: usize = 1 << 20;

#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Where to write the backup (replaced if it exists, only once the new one is whole).
    pub file: PathBuf,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The backup file.
    pub file: PathBuf,
    #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    pub file: PathBuf,
    /// The data directory to make for this node (must not exist, or be empty).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
    /// The id of the node the directory is for.
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    pub id: u64,
    /// Every member of the NEW cluster as ID=HOST:PORT, comma separated; the same for every
    /// node restored, and when the nodes start.
    #[arg(long, value_name = "ID=HOST:PORT,...")]
    pub initial_cluster: String,
    /// The storage engine the node will run with (fjall or sled).
    #[arg(long, default_value = "fjall")]
    pub engine: String,
}

/// What a backup file holds, as `status` reports it.
#[derive(Debug, Serialize)]
struct BackupStatus {
    file: String,
    /// The file's size.
    bytes: u64,
    keys: u64,
    /// Keys and values together.
    data_bytes: u64,
    sessions: u64,
    term: u64,
    index: u64,
    crc32: String,
    checksum_ok: bool,
    /// The membership of the cluster it was taken from.
    members: Vec<BackupMember>,
}

#[derive(Debug, Serialize)]
struct BackupMember {
    id: u64,
    address: String,
}

/// `raftkv snapshot save FILE`.
pub async fn save(client: &Client, file: &Path) -> Result<(), CliError> {
    let part = with_suffix(file, ".part");
    // Ctrl-C leaves no partial file behind (a kill -9 may: the next save replaces it).
    let saved = tokio::select! {
        saved = save_into(client, &part) => saved,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted; nothing was saved").into()),
    };
    let header = match saved {
        Ok(header) => header,
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
    };
    std::fs::rename(&part, file)
        .and_then(|()| sync_parent(file))
        .with_context(|| format!("cannot rename {} to {}", part.display(), file.display()))?;
    let crc = std::fs::File::open(file)
        .map_err(anyhow::Error::from)
        .and_then(|f| Ok(snapshot_format::read_framing(&f)?.trailer.crc))
        .with_context(|| format!("cannot read back {}", file.display()))?;
    println!(
        "saved {}: {} bytes, log position term {} index {}, crc32 {crc:08x} (from node {})",
        file.display(),
        header.length,
        header.term,
        header.index,
        header.node_id
    );
    Ok(())
}

/// Receives the backup into `part`, checked and durable; returns its header.
async fn save_into(client: &Client, part: &Path) -> Result<pb::SnapshotSaveHeader, CliError> {
    use pb::snapshot_save_chunk::Kind;
    let mut out = std::io::BufWriter::with_capacity(
        READ_BUFFER_BYTES,
        raftkv::write_behind::WriteBehind::new(
            std::fs::File::create(part).with_context(|| format!("cannot create {}", part.display()))?,
        ),
    );
    let mut stream = client.snapshot_save().await?;
    let mut progress = Progress::new();
    let mut header: Option<pb::SnapshotSaveHeader> = None;
    let mut check = ChecksumCheck::new(0);
    let mut received = 0u64;
    loop {
        let message = tokio::time::timeout(BACKUP_IDLE_TIMEOUT, stream.message())
            .await
            .map_err(|_| {
                anyhow!(
                    "the backup stream was idle for {} s; gave up",
                    BACKUP_IDLE_TIMEOUT.as_secs()
                )
            })?
            .map_err(|status| CliError::Client(raftkv::client::Error::from_status(status)))?;
        let Some(chunk) = message else { break };
        match (chunk.kind, &header) {
            (Some(Kind::BuildingBytes(bytes)), None) => progress.building(bytes),
            (Some(Kind::Header(h)), None) => {
                check = ChecksumCheck::new(h.length);
                progress.start(h.length);
                header = Some(h);
            }
            (Some(Kind::Data(data)), Some(_)) => {
                out.write_all(&data)
                    .with_context(|| format!("cannot write {}", part.display()))?;
                check.update(&data);
                received += data.len() as u64;
                progress.received(received);
            }
            _ => return Err(anyhow!("the node sent the backup out of order").into()),
        }
    }
    progress.finish();
    let header = header.ok_or_else(|| anyhow!("the backup stream ended before the backup began"))?;
    check
        .finish()
        .map_err(|why| anyhow!("the backup received is damaged or incomplete: {why}"))?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", part.display()))?
        .into_file();
    file.sync_all()
        .with_context(|| format!("cannot sync {}", part.display()))?;
    Ok(header)
}

/// `raftkv snapshot status FILE`.
pub fn status(file: &Path, output: OutputFormat) -> Result<(), CliError> {
    let status = read_status(file).map_err(|why| anyhow!("{}: {why}", file.display()))?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string(&status).expect("a status serialises")),
        OutputFormat::Table => {
            let members: Vec<String> = status
                .members
                .iter()
                .map(|m| format!("{}={}", m.id, m.address))
                .collect();
            println!("file        {}", status.file);
            println!("bytes       {}", status.bytes);
            println!("keys        {}", status.keys);
            println!("data bytes  {}", status.data_bytes);
            println!("sessions    {}", status.sessions);
            println!("log         term {} index {}", status.term, status.index);
            println!("checksum    ok (crc32 {})", status.crc32);
            println!("taken from  {}", members.join(","));
        }
    }
    Ok(())
}

/// Reads the backup `path` through once, checking it whole. One line saying what is wrong if
/// it is damaged or truncated.
fn read_status(path: &Path) -> Result<BackupStatus, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let framing = snapshot_format::read_framing(&file).map_err(|e| format!("not a sound backup: {e}"))?;
    let mut head = vec![0u8; framing.body_start as usize];
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut head, 0).map_err(|e| format!("cannot read it: {e}"))?;
    let mut body = BufReader::with_capacity(READ_BUFFER_BYTES, &file);
    std::io::Seek::seek(&mut body, std::io::SeekFrom::Start(framing.body_start))
        .map_err(|e| format!("cannot read it: {e}"))?;
    let (mut keys, mut data_bytes, mut sessions) = (0u64, 0u64, 0u64);
    for record in RecordReader::new(&framing, &head, body) {
        match record.map_err(|e| format!("not a sound backup: {e}"))?.record {
            Some(raft_pb::snapshot_record::Record::Pair(pair)) => {
                keys += 1;
                data_bytes += (pair.key.len() + pair.value.len()) as u64;
            }
            Some(raft_pb::snapshot_record::Record::Session(_)) => sessions += 1,
            _ => {}
        }
    }
    let log_id = framing.meta.last_log_id.as_ref();
    let membership = framing
        .meta
        .last_membership
        .as_ref()
        .and_then(|m| m.membership.as_ref());
    let members = membership.map_or_else(Vec::new, |m| {
        let mut members: Vec<BackupMember> = m
            .nodes
            .iter()
            .map(|(id, address)| BackupMember {
                id: *id,
                address: address.clone(),
            })
            .collect();
        members.sort_by_key(|m| m.id);
        members
    });
    Ok(BackupStatus {
        file: path.display().to_string(),
        bytes: framing.len,
        keys,
        data_bytes,
        sessions,
        term: log_id.and_then(|id| id.leader_id.as_ref()).map_or(0, |l| l.term),
        index: log_id.map_or(0, |id| id.index),
        crc32: format!("{:08x}", framing.trailer.crc),
        checksum_ok: true,
        members,
    })
}

/// `raftkv snapshot restore FILE --data-dir DIR --id N --initial-cluster …`: runs
/// `raftkv-node restore` with the same arguments, which prints what it made or one line
/// saying why not.
pub async fn restore(args: RestoreArgs) -> Result<(), CliError> {
    let program = locate_binary(NODE_BINARY);
    let output = tokio::process::Command::new(&program)
        .arg("restore")
        .arg(&args.file)
        .arg("--data-dir")
        .arg(&args.data_dir)
        .arg("--id")
        .arg(args.id.to_string())
        .arg("--initial-cluster")
        .arg(&args.initial_cluster)
        .arg("--engine")
        .arg(&args.engine)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("cannot run {}", program.display()))?;
    print!("{}", String::from_utf8_lossy(&output.stdout));
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let why = stderr.trim().trim_start_matches("error: ").to_string();
    Err(match output.status.code() {
        Some(2) => CliError::Usage(why),
        _ => CliError::Failed(anyhow!(why)),
    })
}

/// The progress of a save: a bar on a terminal, a line every few seconds otherwise.
enum Progress {
    Bar(ProgressBar),
    Lines { total: u64, last: std::time::Instant },
}

impl Progress {
    fn new() -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new_spinner();
            bar.enable_steady_tick(Duration::from_millis(200));
            Progress::Bar(bar)
        } else {
            Progress::Lines {
                total: 0,
                last: std::time::Instant::now(),
            }
        }
    }

    fn building(&mut self, bytes: u64) {
        match self {
            Progress::Bar(bar) => bar.set_message(format!("the node is writing the backup: {} MiB", bytes >> 20)),
            Progress::Lines { last, .. } => {
                if last.elapsed() >= PLAIN_PROGRESS_INTERVAL {
                    *last = std::time::Instant::now();
                    eprintln!("the node is writing the backup: {} MiB", bytes >> 20);
                }
            }
        }
    }

    fn start(&mut self, length: u64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_length(length);
                bar.set_style(
                    ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                        .expect("a valid progress template"),
                );
                bar.set_message("");
            }
            Progress::Lines { total, .. } => *total = length,
        }
    }

    fn received(&mut self, bytes: u64) {
        match self {
            Progress::Bar(bar) => bar.set_position(bytes),
            Progress::Lines { total, last } => {
                if last.elapsed() >= PLAIN_PROGRESS_INTERVAL {
                    *last = std::time::Instant::now();
                    eprintln!(
                        "received {} of {} MiB ({}%)",
                        bytes >> 20,
                        *total >> 20,
                        bytes * 100 / (*total).max(1)
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(suffix);
    PathBuf::from(name)
}
