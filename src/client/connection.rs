//! How a raftkv process connects to another: one lazily connecting HTTP/2 [`channel`] per
//! address, with the same settings everywhere (the client library's endpoints, the router's
//! nodes, a node's peers), plaintext or TLS ([`ClientTls`]), and the client library's
//! [`Connection`] to one server: that channel and the [`KvBatcher`] that sends the client's
//! Kv requests over it.

use std::future::Future;
use std::time::Duration;

use futures::future::Either;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use super::Error;
use crate::batch::{Batchable, KvBatcher};
use crate::pb::kv_client::KvClient;
use crate::tls::ClientTls;

/// How long opening a TCP connection to a node may take before the attempt fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an open connection is probed with an HTTP/2 PING, even while idle, so that a
/// silently dead peer is noticed without waiting for a request to time out.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a PING may stay unanswered before the connection is declared dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Checks that `address` is HOST:PORT (a non-empty host without a scheme, and a port number).
pub fn check_address(address: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "address {address:?} {why}; expected HOST:PORT, e.g. 127.0.0.1:7000"
        )))
    };
    let Some((host, port)) = address.rsplit_once(':') else {
        return invalid("has no port");
    };
    if host.is_empty() {
        return invalid("has no host");
    }
    if host.contains('/') || host.contains(char::is_whitespace) {
        return invalid("is not a host and port");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => invalid("has no valid port"),
        Ok(_) => Ok(()),
    }
}

/// A lazily connecting channel to HOST:PORT: HTTP/2 in plaintext, or over TLS when `tls` is
/// given (the server's certificate must name HOST); TCP_NODELAY, HTTP/2 keepalive every
/// [`KEEPALIVE_INTERVAL`] even while idle, and a [`CONNECT_TIMEOUT`]. Nothing is connected
/// until the first request, and a broken connection is re-opened by the next one.
pub fn channel(address: &str, tls: Option<&ClientTls>) -> Result<Channel, Error> {
    Ok(endpoint(address, tls)?.connect_lazy())
}

/// The endpoint [`channel`] connects to, for callers that need to adjust it (a node binds
/// its outgoing connections to its own address, for example).
pub fn endpoint(address: &str, tls: Option<&ClientTls>) -> Result<Endpoint, Error> {
    check_address(address)?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{address}"))
        .map_err(|error| Error::InvalidArgument(format!("address {address:?}: {error}")))?;
    let endpoint = match tls {
        Some(tls) => endpoint
            .tls_config(tls.config())
            .map_err(|error| Error::InvalidArgument(format!("TLS for {address}: {error}")))?,
        None => endpoint,
    };
    Ok(endpoint
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// A client's connection to one server (router or node): its channel, and (unless the client
/// was made with [`super::Client::new_unbatched`]) the batcher that sends the Kv requests of
/// all the client's tasks that are ready together as one `KvBatch.Batch` call over it (see
/// [`crate::batch`]). Cheap to clone; clones share both.
#[derive(Clone)]
pub(super) struct Connection {
    pub(super) channel: Channel,
    batcher: Option<KvBatcher>,
}

impl Connection {
    /// A connection to `address`, with a batcher when `batching`; connects nothing yet.
    pub(super) fn open(address: &str, batching: bool, tls: Option<&ClientTls>) -> Result<Connection, Error> {
        let channel = channel(address, tls)?;
        Ok(Connection {
            batcher: batching.then(|| KvBatcher::start(channel.clone())),
            channel,
        })
    }

    /// Sends `request`, which the server must answer within `time_left`: in the next batch, or
    /// (without a batcher) as its own call, made by `direct`.
    pub(super) fn send<R, D, F>(
        &self,
        request: R,
        time_left: Duration,
        direct: D,
    ) -> impl Future<Output = Result<tonic::Response<R::Reply>, Status>>
    where
        R: Batchable,
        R::Reply: Send,
        D: FnOnce(KvClient<Channel>, tonic::Request<R>) -> F,
        F: Future<Output = Result<tonic::Response<R::Reply>, Status>>,
    {
        match &self.batcher {
            Some(batcher) => Either::Left(batcher.call(request, time_left)),
            None => {
                let mut request = tonic::Request::new(request);
                request.set_timeout(time_left);
                Either::Right(direct(KvClient::new(self.channel.clone()), request))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_be_host_and_port() {
        for good in ["127.0.0.1:7000", "localhost:1", "[::1]:7000", "node-1.example:65535"] {
            assert!(check_address(good).is_ok(), "{good}");
        }
        for bad in [
            "notanaddress",
            ":7000",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "http://h:1",
            "a b:1",
        ] {
            assert!(matches!(check_address(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }
}
