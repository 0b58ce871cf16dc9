//! Registering a plugin with the kubelet, and dialing gRPC over unix sockets.
//!
//! The kubelet serves `Registration` on `kubelet.sock` in its plugin directory. A plugin sends
//! `RegisterRequest{version: "v1beta1", endpoint: <its socket's file name, not a path>,
//! resource_name, options: {get_preferred_allocation_available: true}}`; while handling it the
//! kubelet dials the plugin's socket (10 s timeout), calls `GetDevicePluginOptions` and opens
//! `ListAndWatch`, so the plugin must be serving before it registers.
//!
//! Dialing: tonic has no unix-socket URIs, so the channel is made for `http://localhost` with a
//! connector that opens the socket. The `:authority` on the wire is then `localhost`, which is
//! what the kubelet itself sends since Kubernetes 1.26.

use std::path::Path;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::api::registration_client::RegistrationClient;
use super::api::{DevicePluginOptions, RegisterRequest, VERSION};
use super::server::DevicePluginError;

/// Opens a gRPC channel to a unix socket, with `:authority` `localhost`.
pub async fn connect_unix(socket: &Path) -> Result<Channel, tonic::transport::Error> {
    let socket = socket.to_owned();
    Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(socket).await?)) }
        }))
        .await
}

/// Pure: the request a plugin registers with.
pub fn register_request(resource_name: &str, endpoint: &str) -> RegisterRequest {
    RegisterRequest {
        version: VERSION.to_owned(),
        endpoint: endpoint.to_owned(),
        resource_name: resource_name.to_owned(),
        options: Some(DevicePluginOptions { pre_start_required: false, get_preferred_allocation_available: true }),
    }
}

/// Registers `resource_name`, served on `endpoint` (a file name in the kubelet's plugin
/// directory), with the kubelet at `kubelet_socket`. The whole exchange (connect, and the
/// kubelet's dial-back inside Register) must finish within `timeout`.
pub async fn register(
    kubelet_socket: &Path,
    resource_name: &str,
    endpoint: &str,
    timeout: Duration,
) -> Result<(), DevicePluginError> {
    let attempt = async {
        let channel = connect_unix(kubelet_socket).await.map_err(|source| DevicePluginError::Connect {
            resource: resource_name.to_owned(),
            kubelet_socket: kubelet_socket.to_owned(),
            source,
        })?;
        RegistrationClient::new(channel).register(register_request(resource_name, endpoint)).await.map_err(|s| {
            DevicePluginError::Register {
                resource: resource_name.to_owned(),
                kubelet_socket: kubelet_socket.to_owned(),
                status: Box::new(s),
            }
        })?;
        Ok(())
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or_else(|_| {
        Err(DevicePluginError::RegisterTimeout {
            resource: resource_name.to_owned(),
            kubelet_socket: kubelet_socket.to_owned(),
            timeout,
        })
    })
}
