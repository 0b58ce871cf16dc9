//! The agent's [`Driver`]: reads each claim the kubelet names from the API server (its
//! `status.allocation`), then prepares or unprepares it on a blocking thread
//! ([`super::prepare`]); serves the devices' health from the agent's latest view.
//!
//! Claims are prepared one at a time (the bind state's lock serialises them anyway) and each
//! gets its own answer: one refused claim does not fail the others of the same call.

use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, ApiResource, DynamicObject};
use tokio::sync::{Notify, watch};

use super::prepare::{self, Settings};
use super::{ClaimRef, DeviceHealth, Driver, PrepareResults, UnprepareResults};
use crate::cluster::ApiStats;
use crate::config::Config;
use crate::host::HostRoot;

/// `resource.k8s.io/v1` `ResourceClaim`.
pub fn claim_resource() -> ApiResource {
    ApiResource {
        group: "resource.k8s.io".into(),
        version: "v1".into(),
        api_version: "resource.k8s.io/v1".into(),
        kind: "ResourceClaim".into(),
        plural: "resourceclaims".into(),
    }
}

/// The driver the agent serves.
pub struct AgentDriver {
    pub root: HostRoot,
    pub settings: Settings,
    pub config: watch::Receiver<Arc<Config>>,
    /// `None`: no API server, every Prepare is refused with that reason.
    pub client: Option<kube::Client>,
    pub stats: Arc<ApiStats>,
    pub request_timeout: Duration,
    pub health: watch::Receiver<Vec<DeviceHealth>>,
    /// Poked after every Prepare and Unprepare: the offered devices' health changes with them.
    pub changed: Arc<Notify>,
    /// The kernel Prepare and Unprepare write to.
    pub kernel: crate::bind::KernelFactory,
}

impl AgentDriver {
    async fn read_claim(&self, c: &ClaimRef) -> Result<prepare::ClaimAllocation, String> {
        let Some(client) = &self.client else {
            return Err("nodeprep has no API server connection to read the ResourceClaim".into());
        };
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &c.namespace, &claim_resource());
        let path = format!("/apis/resource.k8s.io/v1/namespaces/{}/resourceclaims/{}", c.namespace, c.name);
        let obj = crate::cluster::call(&self.stats, "GET", path, self.request_timeout, false, api.get(&c.name))
            .await
            .map_err(|e| format!("cannot read ResourceClaim {c}: {e}"))?;
        let value = serde_json::to_value(&obj).map_err(|e| format!("ResourceClaim {c}: {e}"))?;
        let alloc = prepare::claim_allocation(&value, &self.settings.driver)?;
        if alloc.claim.uid != c.uid {
            return Err(format!(
                "ResourceClaim {}/{} now has UID {}, not {}: the claim was replaced",
                c.namespace, c.name, alloc.claim.uid, c.uid
            ));
        }
        Ok(alloc)
    }
}

#[tonic::async_trait]
impl Driver for AgentDriver {
    async fn prepare(&self, claims: Vec<ClaimRef>) -> PrepareResults {
        let mut out = PrepareResults::new();
        for c in claims {
            let result = match self.read_claim(&c).await {
                Err(e) => Err(e),
                Ok(alloc) => {
                    let (root, settings, config, kernel) =
                        (self.root.clone(), self.settings.clone(), self.config.borrow().clone(), self.kernel.clone());
                    tokio::task::spawn_blocking(move || {
                        prepare::prepare(&root, &settings, &config, &alloc, &mut kernel.make(&root))
                    })
                    .await
                    .unwrap_or_else(|e| Err(format!("prepare did not finish: {e}")))
                }
            };
            match &result {
                Ok(d) => tracing::info!(claim = %c, devices = d.len(), "claim prepared"),
                Err(e) => tracing::warn!(claim = %c, error = %e, "claim refused"),
            }
            out.insert(c.uid.clone(), result);
        }
        self.changed.notify_one();
        out
    }

    async fn unprepare(&self, claims: Vec<ClaimRef>) -> UnprepareResults {
        let mut out = UnprepareResults::new();
        for c in claims {
            let (root, settings, uid, kernel) =
                (self.root.clone(), self.settings.clone(), c.uid.clone(), self.kernel.clone());
            let result = tokio::task::spawn_blocking(move || {
                prepare::unprepare(&root, &settings, &uid, &mut kernel.make(&root))
            })
            .await
            .unwrap_or_else(|e| Err(format!("unprepare did not finish: {e}")));
            match &result {
                Ok(()) => tracing::info!(claim = %c, "claim unprepared"),
                Err(e) => tracing::warn!(claim = %c, error = %e, "unprepare failed"),
            }
            out.insert(c.uid.clone(), result);
        }
        self.changed.notify_one();
        out
    }

    fn health(&self) -> watch::Receiver<Vec<DeviceHealth>> {
        self.health.clone()
    }
}
