//! Reading a process's monitoring endpoint (`--metrics-listen`) the way Prometheus and a load
//! balancer do: a plain HTTP GET, and the value of a metric in the text exposition format.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The longest a scrape may take before it counts as no answer.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// GETs `path` from `address` over HTTP/1.0 (the server closes the connection after the
/// reply); returns the status code and the body, or why there was no reply.
pub async fn http_get(address: &str, path: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut stream = TcpStream::connect(address).await.map_err(|e| e.to_string())?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n").as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await.map_err(|e| e.to_string())?;
        let (head, body) = reply.split_once("\r\n\r\n").ok_or("a reply without a header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("no status code in {head:?}"))?;
        Ok((status, body.to_string()))
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| Err(format!("no reply within {SCRAPE_TIMEOUT:?}")))
}

/// The body of `/metrics` at `address`; panics when it cannot be read.
pub async fn scrape(address: &str) -> String {
    match http_get(address, "/metrics").await {
        Ok((200, body)) => body,
        other => panic!("scraping {address}/metrics: {other:?}"),
    }
}

/// The sum of every series of metric `name` whose labels contain each of `labels`
/// (`method="Kv/Put"`); None when there is no such series.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = series.split_once('{').unwrap_or((series, ""));
        if series_name == name && labels.iter().all(|label| series_labels.contains(label)) {
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}: not a number"));
            found = Some(found.unwrap_or(0.0) + value);
        }
    }
    found
}
