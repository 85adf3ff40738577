//! The compile step of `consumers:`, `consumers_file` and `consumer_auth:`. Like the other
//! stateful sections it owns a fingerprint: a reload that changes no consumer keeps the
//! compiled set (and its cache of verified Basic credentials); any change, in the config or
//! in the consumers file, builds a new one, so a revoked key is refused from that reload on.

use crate::config::GatewayConfig;
use crate::consumer::{ConsumerConfig, Consumers, ConsumersFile};
use crate::invalid::Invalid;
use std::path::Path;
use std::sync::Arc;

/// The compiled consumers, if any are configured.
#[derive(Default)]
pub struct ConsumerSection {
    pub consumers: Option<Arc<Consumers>>,
    pub fingerprint: Option<[u8; 32]>,
}

impl ConsumerSection {
    /// Reads the consumers file (relative to the config's directory) and compiles every
    /// consumer, keeping `previous` when nothing changed.
    pub fn compile(
        cfg: &GatewayConfig,
        base: &Path,
        previous: Option<&ConsumerSection>,
    ) -> Result<Self, Invalid> {
        // `join` keeps an absolute path as it is.
        let file = cfg.consumers_file.as_ref().map(|f| base.join(f));
        if cfg.consumers.is_empty() && file.is_none() && cfg.consumer_auth.is_none() {
            return Ok(ConsumerSection::default());
        }
        let text = match &file {
            Some(f) => Some(std::fs::read_to_string(f).map_err(|e| {
                Invalid::new(
                    "consumers_file",
                    format!("cannot read {}: {e}", f.display()),
                )
            })?),
            None => None,
        };
        let fingerprint = Some(fingerprint(cfg, text.as_deref()));
        if let Some(kept) = previous.filter(|p| p.fingerprint == fingerprint) {
            return Ok(ConsumerSection {
                consumers: kept.consumers.clone(),
                fingerprint,
            });
        }
        let from_file = match (&file, &text) {
            (Some(f), Some(t)) => {
                serde_yaml::from_str::<ConsumersFile>(t)
                    .map_err(|e| Invalid::new("consumers_file", format!("{}: {e}", f.display())))?
                    .consumers
            }
            _ => Vec::new(),
        };
        let mut entries: Vec<(String, &ConsumerConfig)> = cfg
            .consumers
            .iter()
            .enumerate()
            .map(|(i, c)| (format!("consumers[{i}]"), c))
            .collect();
        if let Some(f) = &file {
            entries.extend(
                from_file
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (format!("{}: consumers[{i}]", f.display()), c)),
            );
        }
        let settings = cfg.consumer_auth.clone().unwrap_or_default();
        Ok(ConsumerSection {
            consumers: Some(Arc::new(Consumers::compile(&entries, &settings)?)),
            fingerprint,
        })
    }
}

fn fingerprint(cfg: &GatewayConfig, file_text: Option<&str>) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(format!("{:?}|{:?}", cfg.consumers, cfg.consumer_auth).as_bytes())
        .chain_update(b"\xff")
        .chain_update(file_text.unwrap_or("").as_bytes())
        .finalize()
        .into()
}
