//! `raftkv scan`: the keys and values under a prefix, in key order, bounded by a limit.
//!
//! A node answers at most [`SERVER_MAX_PAGE_PAIRS`] pairs per request, so a larger `--limit`
//! is read in pages, each one resuming after the last key of the one before (`start_after`).
//! Each page is a read of the chosen consistency on its own; several pages together are not
//! one snapshot (a write between two pages may be seen by the second only).
//!
//! The pages are checked as they come (keys under the prefix, strictly increasing, no empty
//! page that claims more), so a misbehaving server is reported instead of looping or
//! printing pairs out of order.

use std::ffi::OsString;
use std::future::Future;

use bytes::Bytes;
use clap::{Args, ValueEnum};
use raftkv::client::{self, Client};
use raftkv::pb;
use serde::Serialize;

use crate::bytes_as_text::{escape, JsonBytes};
use crate::kv::{os_bytes, write_json, write_stdout, ServedBy};
use raftkv::usage::ReadConsistency;

use crate::CliError;

/// Pairs shown when no `--limit` is given.
pub const DEFAULT_LIMIT_PAIRS: u32 = 100;
/// The largest `--limit`: everything is held in memory before it is printed.
pub const MAX_LIMIT_PAIRS: u32 = 100_000;
/// The most pairs a node returns for one Scan request (raftkv.proto: "the maximum is 10000").
pub const SERVER_MAX_PAGE_PAIRS: u32 = 10_000;

/// What `raftkv scan` prints.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanOutput {
    /// One `KEY<TAB>VALUE` line per pair, both escaped (see the command's help).
    Table,
    /// {"pairs":[{"key":..,"value":..}],"more":BOOL,"node_id":N,"applied_index":N} and a newline.
    Json,
}

/// `raftkv scan [PREFIX] [--limit N] [--consistency ...] [--output table|json]`.
#[derive(Args, Debug)]
pub struct ScanArgs {
    /// Only keys that start with this; left out or empty: every key.
    #[arg(value_parser = clap::value_parser!(OsString))]
    prefix: Option<OsString>,
    /// At most this many pairs (1 to 100000; more than 10000 are read in several requests).
    #[arg(
        long,
        short = 'n',
        default_value_t = DEFAULT_LIMIT_PAIRS,
        value_parser = clap::value_parser!(u32).range(1..=MAX_LIMIT_PAIRS as i64)
    )]
    limit: u32,
    /// How fresh the scan must be (lease: linearizable without a quorum round, assuming the nodes' clocks run at about the same rate).
    #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
    consistency: ReadConsistency,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = ScanOutput::Table)]
    output: ScanOutput,
}

/// What a scan found.
#[derive(Debug, Default, PartialEq)]
pub struct ScanResult {
    /// In key order, at most the limit.
    pub pairs: Vec<pb::KeyValue>,
    /// More pairs match than were returned.
    pub more: bool,
    /// Who served the last page.
    pub served_by: ServedBy,
}

/// `raftkv scan`.
pub async fn run(client: &Client, args: ScanArgs) -> Result<(), CliError> {
    let prefix = Bytes::from(args.prefix.map(os_bytes).unwrap_or_default());
    let consistency = pb::Consistency::from(args.consistency);
    let result = read_pages(&prefix, args.limit, |start_after, page_limit| {
        client.scan(prefix.clone(), start_after, page_limit, consistency)
    })
    .await?;
    match args.output {
        ScanOutput::Table => {
            write_stdout(render_table(&result.pairs).as_bytes())?;
            if result.more {
                eprintln!(
                    "note: more keys match; only the first {} are shown (raise --limit to see more)",
                    result.pairs.len()
                );
            }
            Ok(())
        }
        ScanOutput::Json => write_json(&ScanJson::from(&result)),
    }
}

/// Reads up to `limit` pairs under `prefix`, page after page, with `fetch_page(start_after,
/// page_limit)` doing one Scan request.
pub async fn read_pages<F, P>(prefix: &[u8], limit: u32, mut fetch_page: F) -> Result<ScanResult, CliError>
where
    F: FnMut(Bytes, u32) -> P,
    P: Future<Output = Result<pb::ScanResponse, client::Error>>,
{
    let limit = limit as usize;
    let mut result = ScanResult::default();
    let mut start_after = Bytes::new();
    loop {
        let remaining = limit - result.pairs.len();
        let page_limit = remaining.min(SERVER_MAX_PAGE_PAIRS as usize);
        let page = fetch_page(start_after.clone(), page_limit as u32).await?;
        check_page(prefix, &start_after, page_limit, &page)?;
        result.served_by = ServedBy::from(page.header);
        if let Some(last) = page.pairs.last() {
            start_after = last.key.clone();
        }
        result.pairs.extend(page.pairs);
        result.more = page.more;
        if !page.more || result.pairs.len() == limit {
            return Ok(result);
        }
    }
}

/// Checks what the paging relies on: a page holds at most what was asked, only keys under
/// the prefix, strictly increasing and after `start_after`; and a page that says "more" is
/// not empty (else paging would never end).
fn check_page(prefix: &[u8], start_after: &[u8], page_limit: usize, page: &pb::ScanResponse) -> Result<(), CliError> {
    let odd = |what: String| {
        Err(CliError::Failed(anyhow::anyhow!(
            "the server's scan answer is inconsistent: {what}"
        )))
    };
    if page.pairs.len() > page_limit {
        return odd(format!("{} pairs for a limit of {page_limit}", page.pairs.len()));
    }
    if page.more && page.pairs.is_empty() {
        return odd("an empty page that says more pairs match".to_string());
    }
    let mut previous: Option<&[u8]> = (!start_after.is_empty()).then_some(start_after);
    for pair in &page.pairs {
        if !pair.key.starts_with(prefix) {
            return odd(format!("key \"{}\" is not under the prefix", escape(&pair.key)));
        }
        if previous.is_some_and(|previous| pair.key.as_ref() <= previous) {
            return odd(format!("key \"{}\" is out of key order", escape(&pair.key)));
        }
        previous = Some(&pair.key);
    }
    Ok(())
}

/// One `KEY<TAB>VALUE` line per pair, both escaped so that neither holds a tab or newline.
fn render_table(pairs: &[pb::KeyValue]) -> String {
    let mut table = String::new();
    for pair in pairs {
        table.push_str(&escape(&pair.key));
        table.push('\t');
        table.push_str(&escape(&pair.value));
        table.push('\n');
    }
    table
}

/// `raftkv scan --output json`.
#[derive(Serialize)]
struct ScanJson {
    pairs: Vec<PairJson>,
    more: bool,
    node_id: Option<u64>,
    applied_index: Option<u64>,
}

#[derive(Serialize)]
struct PairJson {
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_base64: Option<String>,
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

impl From<&ScanResult> for ScanJson {
    fn from(result: &ScanResult) -> Self {
        let pairs = result
            .pairs
            .iter()
            .map(|pair| {
                let key = JsonBytes::of(&pair.key);
                let value = JsonBytes::of(&pair.value);
                PairJson {
                    key: key.text,
                    key_base64: key.base64,
                    value: value.text,
                    value_base64: value.base64,
                }
            })
            .collect();
        ScanJson {
            pairs,
            more: result.more,
            node_id: result.served_by.node_id,
            applied_index: result.served_by.applied_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn pair(key: &str, value: &str) -> pb::KeyValue {
        pb::KeyValue {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    /// A store of `count` keys `k00000`.. that answers pages like a node, but at most
    /// `max_page` pairs each; records the requests it got.
    struct FakeStore {
        keys: Vec<String>,
        max_page: usize,
        requests: RefCell<Vec<(String, u32)>>,
    }

    impl FakeStore {
        fn new(count: usize, max_page: usize) -> FakeStore {
            FakeStore {
                keys: (0..count).map(|index| format!("k{index:05}")).collect(),
                max_page,
                requests: RefCell::new(Vec::new()),
            }
        }

        fn page(&self, start_after: Bytes, limit: u32) -> Result<pb::ScanResponse, client::Error> {
            let start_after = String::from_utf8(start_after.to_vec()).unwrap();
            self.requests.borrow_mut().push((start_after.clone(), limit));
            let limit = (limit as usize).min(self.max_page);
            let matching: Vec<&String> = self
                .keys
                .iter()
                .filter(|key| start_after.is_empty() || key.as_str() > start_after.as_str())
                .collect();
            Ok(pb::ScanResponse {
                pairs: matching.iter().take(limit).map(|key| pair(key, "v")).collect(),
                more: matching.len() > limit,
                header: Some(pb::ReplyHeader {
                    node_id: 2,
                    applied_index: self.requests.borrow().len() as u64,
                }),
            })
        }
    }

    async fn scan(store: &FakeStore, limit: u32) -> Result<ScanResult, CliError> {
        read_pages(b"k", limit, |start_after, page_limit| {
            let page = store.page(start_after, page_limit);
            async move { page }
        })
        .await
    }

    #[tokio::test]
    async fn a_small_scan_is_one_request() {
        let store = FakeStore::new(5, 10_000);
        let result = scan(&store, 100).await.unwrap();
        assert_eq!(result.pairs.len(), 5);
        assert!(!result.more);
        assert_eq!(*store.requests.borrow(), vec![(String::new(), 100)]);
    }

    #[tokio::test]
    async fn the_limit_stops_the_scan_and_more_says_so() {
        let store = FakeStore::new(5, 10_000);
        let result = scan(&store, 3).await.unwrap();
        let keys: Vec<_> = result.pairs.iter().map(|pair| pair.key.clone()).collect();
        assert_eq!(keys, vec!["k00000", "k00001", "k00002"]);
        assert!(result.more);
        // Exactly as many as match: nothing more.
        assert!(!scan(&store, 5).await.unwrap().more);
    }

    #[tokio::test]
    async fn a_limit_over_the_servers_maximum_is_read_in_pages() {
        let store = FakeStore::new(25_000, SERVER_MAX_PAGE_PAIRS as usize);
        let result = scan(&store, 22_000).await.unwrap();
        assert_eq!(result.pairs.len(), 22_000);
        assert!(result.more);
        assert_eq!(
            *store.requests.borrow(),
            vec![
                (String::new(), 10_000),
                ("k09999".to_string(), 10_000),
                ("k19999".to_string(), 2_000)
            ]
        );
        assert!(result.pairs.windows(2).all(|two| two[0].key < two[1].key));
        // The header is the last page's.
        assert_eq!(result.served_by.applied_index, Some(3));
    }

    #[tokio::test]
    async fn short_pages_that_say_more_are_followed() {
        // A server may return fewer pairs than asked (e.g. to bound a reply's size).
        let store = FakeStore::new(10, 4);
        let result = scan(&store, 100).await.unwrap();
        assert_eq!(result.pairs.len(), 10);
        assert!(!result.more);
        assert_eq!(store.requests.borrow().len(), 3);
    }

    #[tokio::test]
    async fn inconsistent_pages_are_reported_instead_of_followed() {
        let answers = [
            pb::ScanResponse {
                pairs: vec![],
                more: true,
                header: None,
            },
            pb::ScanResponse {
                pairs: vec![pair("k2", ""), pair("k1", "")],
                more: false,
                header: None,
            },
            pb::ScanResponse {
                pairs: vec![pair("other", "")],
                more: false,
                header: None,
            },
            pb::ScanResponse {
                pairs: vec![pair("k1", ""), pair("k2", "")],
                more: false,
                header: None,
            },
        ];
        let limits = [100, 100, 100, 1];
        for (answer, limit) in answers.into_iter().zip(limits) {
            let result = read_pages(b"k", limit, |_, _| {
                let answer = answer.clone();
                async move { Ok(answer) }
            })
            .await;
            match result {
                Err(error @ CliError::Failed(_)) => {
                    assert_eq!(error.exit_code(), 3);
                    assert!(error.message().contains("inconsistent"), "{}", error.message());
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn client_errors_pass_through_with_their_exit_code() {
        let result = read_pages(b"", 10, |_, _| async {
            Err(client::Error::InvalidArgument("prefix too long".to_string()))
        })
        .await;
        assert_eq!(result.unwrap_err().exit_code(), 2);
    }

    #[test]
    fn table_lines_are_key_tab_value_with_separators_escaped() {
        let pairs = vec![pair("a", "1"), pair("b\tc", "line\nbreak"), pair("e", "")];
        assert_eq!(render_table(&pairs), "a\t1\nb\\tc\tline\\nbreak\ne\t\n");
    }

    #[test]
    fn json_has_the_documented_shape() {
        let result = ScanResult {
            pairs: vec![
                pair("a", "1"),
                pb::KeyValue {
                    key: Bytes::from_static(b"b"),
                    value: Bytes::from_static(b"\xff"),
                },
            ],
            more: true,
            served_by: ServedBy {
                node_id: Some(1),
                applied_index: Some(9),
            },
        };
        assert_eq!(
            serde_json::to_string(&ScanJson::from(&result)).unwrap(),
            r#"{"pairs":[{"key":"a","value":"1"},{"key":"b","value":null,"value_base64":"/w=="}],"more":true,"node_id":1,"applied_index":9}"#
        );
    }
}
