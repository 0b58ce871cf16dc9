//! `nodeprep plugins probe`: talks to a device-plugin socket the way the kubelet does (authority
//! `localhost`, v1beta1) and reports what it advertises and what an Allocate would give a
//! container. For admins debugging a node without a kubelet in the loop, and for the real-kernel
//! tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use tokio_stream::StreamExt;

use super::api::device_plugin_client::DevicePluginClient;
use super::api::{AllocateRequest, ContainerAllocateRequest, Empty};
use super::registration::connect_unix;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect to {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("{call} on {socket}: {status}")]
    Call { call: &'static str, socket: PathBuf, status: String },
}

/// One device as a ListAndWatch message lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbedDevice {
    pub id: String,
    pub health: String,
    pub numa_nodes: Vec<i64>,
}

/// One ListAndWatch message, with the time it arrived after the probe connected.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbedList {
    pub after_ms: f64,
    pub devices: Vec<ProbedDevice>,
}

/// What Allocate gave one container.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbedAllocation {
    pub envs: std::collections::BTreeMap<String, String>,
    /// `container_path host_path permissions` per device.
    pub devices: Vec<String>,
    pub cdi_devices: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProbeReport {
    pub socket: PathBuf,
    pub preferred_allocation_available: bool,
    pub lists: Vec<ProbedList>,
    pub allocation: Option<ProbedAllocation>,
    /// Set when Allocate failed: the plugin's message.
    pub allocate_error: Option<String>,
}

/// Dials `socket`, reads `updates` ListAndWatch messages (or as many as arrive within
/// `timeout`), then allocates `allocate` (when not empty) for one container.
pub async fn probe(
    socket: &Path,
    updates: usize,
    timeout: Duration,
    allocate: &[String],
) -> Result<ProbeReport, ProbeError> {
    let started = tokio::time::Instant::now();
    let channel =
        connect_unix(socket).await.map_err(|source| ProbeError::Connect { socket: socket.to_owned(), source })?;
    let mut client = DevicePluginClient::new(channel);
    let call_err = |call: &'static str| {
        let socket = socket.to_owned();
        move |s: tonic::Status| ProbeError::Call { call, socket, status: format!("{}: {}", s.code(), s.message()) }
    };
    let options =
        client.get_device_plugin_options(Empty {}).await.map_err(call_err("GetDevicePluginOptions"))?.into_inner();
    let mut stream = client.list_and_watch(Empty {}).await.map_err(call_err("ListAndWatch"))?.into_inner();
    let mut lists = Vec::new();
    let deadline = started + timeout;
    while lists.len() < updates.max(1) {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(Some(msg)) = next else { break };
        let msg = msg.map_err(call_err("ListAndWatch"))?;
        let devices = msg
            .devices
            .iter()
            .map(|d| ProbedDevice {
                id: d.id.clone(),
                health: d.health.clone(),
                numa_nodes: d.topology.as_ref().map(|t| t.nodes.iter().map(|n| n.id).collect()).unwrap_or_default(),
            })
            .collect();
        tracing::info!(message = lists.len() + 1, devices = msg.devices.len(), "ListAndWatch message received");
        lists.push(ProbedList { after_ms: started.elapsed().as_secs_f64() * 1e3, devices });
    }
    let (mut allocation, mut allocate_error) = (None, None);
    if !allocate.is_empty() {
        let req =
            AllocateRequest { container_requests: vec![ContainerAllocateRequest { devices_ids: allocate.to_vec() }] };
        match client.allocate(req).await {
            Ok(resp) => {
                let c = resp.into_inner().container_responses.into_iter().next().unwrap_or_default();
                allocation = Some(ProbedAllocation {
                    envs: c.envs.into_iter().collect(),
                    devices: c
                        .devices
                        .iter()
                        .map(|d| format!("{} {} {}", d.container_path, d.host_path, d.permissions))
                        .collect(),
                    cdi_devices: c.cdi_devices.iter().map(|d| d.name.clone()).collect(),
                });
            }
            Err(s) => allocate_error = Some(format!("{}: {}", s.code(), s.message())),
        }
    }
    Ok(ProbeReport {
        socket: socket.to_owned(),
        preferred_allocation_available: options.get_preferred_allocation_available,
        lists,
        allocation,
        allocate_error,
    })
}
