//! Identity claims in etcd: `<prefix>/identities/<id>` is created by a transaction that
//! succeeds only if the key does not exist yet (create_revision == 0), so of two agents
//! claiming one number at once exactly one wins; the other reads the holder and moves on.
//! Identity keys have no lease: a number stays with its labels while any node may use it.

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, TxnOpResponse};
use sluice_model::identity::{Claim, IdentityStore};

use super::records::identity_key;

const CLAIM_TIMEOUT: Duration = Duration::from_secs(5);

pub struct EtcdIdentities {
    endpoints: Vec<String>,
    prefix: String,
    runtime: tokio::runtime::Handle,
    /// Connected lazily and dropped after an error, so the next claim reconnects.
    client: Option<Client>,
}

impl EtcdIdentities {
    pub fn new(endpoints: Vec<String>, prefix: String, runtime: tokio::runtime::Handle) -> Self {
        Self {
            endpoints,
            prefix,
            runtime,
            client: None,
        }
    }

    async fn claim_async(client: &mut Client, key: String, labels: &str) -> Result<Claim, String> {
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), labels, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let response = client
            .txn(txn)
            .await
            .map_err(|e| format!("etcd: claiming {key}: {e}"))?;
        if response.succeeded() {
            return Ok(Claim::Won);
        }
        let holder = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
            _ => None,
        });
        match holder {
            Some(h) if h == labels.as_bytes() => Ok(Claim::AlreadyOurs),
            // Anything else, corrupt bytes included, holds the number: try the next one.
            Some(h) => Ok(Claim::HeldBy(String::from_utf8_lossy(&h).into_owned())),
            None => Err(format!("etcd: {key} vanished while claiming it")),
        }
    }
}

impl IdentityStore for EtcdIdentities {
    type Error = String;

    /// Blocks the calling (non-runtime) thread for at most a few seconds.
    fn claim(&mut self, id: u32, key: &str) -> Result<Claim, String> {
        let etcd_key = identity_key(&self.prefix, id);
        let endpoints = self.endpoints.clone();
        let mut client = self.client.take();
        let (result, client) = self.runtime.block_on(async move {
            let work = async {
                let mut c = match client.take() {
                    Some(c) => c,
                    None => super::connect(&endpoints).await?,
                };
                let claimed = Self::claim_async(&mut c, etcd_key, key).await;
                client = Some(c);
                claimed
            };
            let result = tokio::time::timeout(CLAIM_TIMEOUT, work)
                .await
                .unwrap_or_else(|_| Err("etcd: identity claim timed out".to_string()));
            (result, client)
        });
        if result.is_ok() {
            self.client = client;
        }
        result
    }
}
