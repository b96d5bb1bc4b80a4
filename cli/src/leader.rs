//! `raftkv leader transfer`: moves leadership on purpose — before taking the leader's machine
//! down, or off a slow one — and returns only once the new leader serves, so a script can go
//! on with the maintenance at once.
//!
//! The leader picks the target when none is given (the voter whose log is most up to date)
//! and answers once it sees the new leader elected. A node that has just been elected does
//! not serve until it has committed an entry of its own term, so the command then sends the
//! new leader a linearizable read: it succeeds only once the node has confirmed its
//! leadership with a quorum and applied that entry.

use std::time::Duration;

use bytes::Bytes;
use raftkv::client::{Client, ClientOptions, Error};
use raftkv::pb;
use tokio::time::Instant;

use crate::CliError;

/// The key the serving check reads. Whether it exists does not matter: a linearizable read
/// answered at all, NOT_FOUND included, proves the node serves.
const SERVING_CHECK_KEY: &[u8] = b"raftkv/leader-transfer-check";
/// The pause between two serving checks of a node that is not serving yet.
const SERVING_CHECK_PAUSE: Duration = Duration::from_millis(20);

/// Hands leadership to `to` (or the most up-to-date voter), waits until the new leader serves
/// reads, and prints who it is. Fails with a timeout (exit code 3) when that did not happen
/// within the client's timeout.
pub async fn transfer(client: &Client, to: Option<u64>) -> Result<(), CliError> {
    let deadline = Instant::now() + client.timeout();
    let moved = client.transfer_leader(to).await?;
    wait_until_serving(client, &moved.leader_address, deadline).await?;
    println!(
        "node {} at {} leads (term {})",
        moved.leader_id, moved.leader_address, moved.term
    );
    Ok(())
}

/// Returns once the node at `address` answers a linearizable read, or fails at `deadline`.
/// Asks it the way `client` talks to servers (TLS or not), one call at a time.
async fn wait_until_serving(client: &Client, address: &str, deadline: Instant) -> Result<(), Error> {
    let options = ClientOptions {
        batching: false,
        ..client.options()
    };
    loop {
        let time_left = deadline.saturating_duration_since(Instant::now());
        if time_left.is_zero() {
            return Err(Error::Timeout(format!(
                "node at {address} was elected but did not serve reads in time"
            )));
        }
        let node = Client::with_options(vec![address.to_string()], time_left, options.clone())?;
        match node
            .get(Bytes::from_static(SERVING_CHECK_KEY), pb::Consistency::Linearizable)
            .await
        {
            Ok(_) | Err(Error::NotFound) => return Ok(()),
            Err(Error::Timeout(_)) => continue,
            // Not serving yet (UNAVAILABLE while it confirms its leadership): ask again.
            Err(_) => tokio::time::sleep_until(deadline.min(Instant::now() + SERVING_CHECK_PAUSE)).await,
        }
    }
}
