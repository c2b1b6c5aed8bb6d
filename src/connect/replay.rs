//! `doudi dlq replay`: corrected records re-enter through the feed's own connector.
//!
//! Guarantees: a replayed file goes through the same mapping, validation, keys and exactly-once
//! transaction as the feed itself, so a corrected row is indistinguishable from one that was right
//! the first time (its provenance says `replay:<sha256>`); a row still wrong goes back to the
//! dead-letter topic with its reason; the same file replayed twice produces nothing the second
//! time (its SHA-256 is the committed position).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::config::ConnectorConfig;
use super::push::items_from_body;
use super::run::{ConnectError, Connector, Summary};

/// The connector config in `dir` that writes `topic` (a `dlq.` prefix is ignored), or the one
/// named `name` when several do.
pub fn find_config(dir: &Path, schemas: &Path, topic: &str, name: Option<&str>) -> Result<PathBuf, String> {
    let topic = crate::topics::original_topic(topic);
    let entries = std::fs::read_dir(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    let mut paths: Vec<PathBuf> =
        entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "toml")).collect();
    paths.sort();
    let candidates: Vec<PathBuf> = paths
        .into_iter()
        .filter(|path| {
            ConnectorConfig::load(path, schemas).is_ok_and(|c| c.connector.topic == topic && name.is_none_or(|n| n == c.connector.name))
        })
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no connector in {} writes {topic}{}",
            dir.display(),
            name.map(|n| format!(" under the name {n}")).unwrap_or_default()
        )),
        _ => Err(format!("several connectors write {topic}; choose one with --connector")),
    }
}

/// Re-submits corrected records (JSON Lines or a JSON array of objects keyed by the feed's own
/// column or field names) through `connector`.
pub async fn replay(connector: &mut Connector, body: &[u8], label: &str) -> Result<Summary, ConnectError> {
    let source = format!("replay:{}", hex::encode(Sha256::digest(body)));
    connector.process_items(&source, label, items_from_body(body), None, None).await
}
