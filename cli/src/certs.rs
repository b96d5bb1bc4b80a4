//! `raftkv certs create`: a development CA and the certificates of a local cluster, written
//! as PEM files for `raftkv-node`/`raftkv-router` (`--cert node.pem --key node-key.pem --ca
//! ca.pem`) and for the CLI (`--cacert ca.pem --cert client.pem --key client-key.pem`).
//!
//! Making and writing them is the library's (`raftkv::tls::dev_certs`, shared with
//! `cluster up --tls` and the tests); here are the flags and what is printed.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::Args;
use raftkv::tls::dev_certs::{DevCertError, DevCertificates, DEFAULT_HOSTS};

use crate::CliError;

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Directory to write ca.pem, node.pem, node-key.pem, client.pem and client-key.pem in
    /// (created, 0700, if missing).
    #[arg(long, value_name = "DIR")]
    dir: PathBuf,
    /// The names clients and peers reach the nodes (and the router) by: IP addresses or DNS
    /// names, comma separated. The node certificate is valid for these only.
    #[arg(long, value_name = "HOST,...", value_delimiter = ',', default_values_t = DEFAULT_HOSTS.map(String::from))]
    hosts: Vec<String>,
    /// Replace certificates already in DIR.
    #[arg(long)]
    force: bool,
}

/// `raftkv certs create`.
pub fn create(args: CreateArgs) -> Result<(), CliError> {
    let hosts: Vec<String> = args
        .hosts
        .iter()
        .map(|host| host.trim().to_string())
        .filter(|host| !host.is_empty())
        .collect();
    if hosts.is_empty() {
        return Err(CliError::Usage("--hosts names no host".to_string()));
    }
    let written = write(&args.dir, &hosts, args.force)?;
    println!(
        "wrote {} for {} (keys readable by you only):",
        written.join(", "),
        hosts.join(", ")
    );
    let dir = args.dir.display();
    println!("  nodes and router: --cert {dir}/node.pem --key {dir}/node-key.pem --ca {dir}/ca.pem");
    println!("  raftkv:           --cacert {dir}/ca.pem --cert {dir}/client.pem --key {dir}/client-key.pem");
    Ok(())
}

/// Makes and writes the certificates for `hosts` into `dir`; the names of the files written.
pub fn write(dir: &Path, hosts: &[String], replace: bool) -> Result<Vec<String>, CliError> {
    let certificates = DevCertificates::generate(hosts).map_err(|error| match error {
        DevCertError::Generate(_) => {
            CliError::Usage(format!("{error} (is every --hosts entry an IP address or a DNS name?)"))
        }
        other => CliError::Failed(anyhow!(other)),
    })?;
    // Existing files are refused like any other failure to write (exit 3), in one line.
    let written = certificates
        .write(dir, replace)
        .map_err(|error| CliError::Failed(anyhow!(error)))?;
    Ok(written
        .iter()
        .filter_map(|path| path.file_name().map(|name| name.to_string_lossy().into_owned()))
        .collect())
}
