//! gRPC user servers. The processor-client is the client: one server-streaming
//! call per configuration, on one HTTP/2 connection that multiplexes them all,
//! in either of two contracts whose `.proto` files are in `openapi/proto/`:
//! the generic event source (`generic.Eventing/StartEventSource`) and Argo
//! v0.6's gRPC gateway (`gateways.GatewayExecutor/RunGateway`). Each streamed
//! message is one event of its configuration ([`stream`] drives a call's
//! lifecycle); here is the connection and the one place that knows the two
//! contracts apart.

pub mod stream;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Request, Status, Streaming};

use gateway_common::env::join_host_port;

/// The code generated from `openapi/proto/` by `build.rs`.
pub mod proto {
    /// The generic event source contract.
    pub mod generic {
        tonic::include_proto!("generic");
    }
    /// Argo Events v0.6's gRPC gateway contract.
    pub mod gateways {
        tonic::include_proto!("gateways");
    }
}

use proto::gateways::gateway_executor_client::GatewayExecutorClient;
use proto::generic::eventing_client::EventingClient;

/// Bytes of one stream's messages received before the processor-client reads them.
const STREAM_WINDOW: u32 = 64 * 1024;
/// Bytes of all streams' messages received before they are read.
const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// Which proto the user server serves (`GATEWAY_PROCESSOR_SERVER_PROTOCOL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Contract {
    /// `grpc`: `StartEventSource(EventSource {name, config}) returns (stream Event {name, payload})`.
    Generic,
    /// `grpc-v06`: `RunGateway(GatewayConfig {src, config}) returns (stream Event {data})`.
    V06,
}

impl Contract {
    /// The method a call of this contract is made to, and the setting of
    /// `GATEWAY_PROCESSOR_SERVER_PROTOCOL` that chooses it.
    pub fn method(self) -> (&'static str, &'static str) {
        match self {
            Contract::Generic => ("generic.Eventing/StartEventSource", "grpc"),
            Contract::V06 => ("gateways.GatewayExecutor/RunGateway", "grpc-v06"),
        }
    }
}

/// Why the user server's endpoint could not be set up; each stops the process
/// at start naming what to fix.
#[derive(Debug, thiserror::Error)]
pub enum GrpcSetupError {
    #[error("GATEWAY_PROCESSOR_SERVER_HOST/GRPC_PORT {address:?} does not make a URI: {source}")]
    Address {
        address: String,
        source: tonic::transport::Error,
    },
    #[error("GATEWAY_PROCESSOR_SERVER_TLS_CA {path}: {source}")]
    Ca {
        path: String,
        source: std::io::Error,
    },
    #[error("GATEWAY_PROCESSOR_SERVER_TLS_CA {path}: {source}")]
    Tls {
        path: String,
        source: tonic::transport::Error,
    },
    #[error("GATEWAY_PROCESSOR_CLIENT_TOKEN cannot be sent as gRPC metadata")]
    Token,
}

/// The user server as a gRPC endpoint.
#[derive(Clone)]
pub struct GrpcServer {
    channel: Channel,
    contract: Contract,
    authorization: Option<MetadataValue<Ascii>>,
    /// How long a call may take to send its response headers.
    open_timeout: Duration,
}

impl GrpcServer {
    /// The proto the user server is called by.
    pub fn contract(&self) -> Contract {
        self.contract
    }

    /// An endpoint at `host:port`, connected lazily (and again after the server
    /// restarts): a server that is not up yet stops nothing.
    pub fn new(
        host: &str,
        port: u16,
        contract: Contract,
        tls_ca: Option<&Path>,
        token: Option<&str>,
        open_timeout: Duration,
    ) -> Result<GrpcServer, GrpcSetupError> {
        let scheme = if tls_ca.is_some() { "https" } else { "http" };
        let address = format!("{scheme}://{}", join_host_port(host, port));
        let mut endpoint = Endpoint::from_shared(address.clone())
            .map_err(|source| GrpcSetupError::Address { address, source })?
            .connect_timeout(open_timeout)
            // A server that vanishes without closing its connections (a
            // killed VM, a cut network) is noticed within seconds.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true)
            // Backpressure: a stream the processor-client is not reading holds
            // at most this much of the server's output before HTTP/2 flow
            // control stops the server. The connection's window is shared by
            // every stream, so it is large enough that stalled streams do not
            // hold back the others.
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW);
        if let Some(ca) = tls_ca {
            let path = ca.display().to_string();
            let pem = std::fs::read(ca).map_err(|source| GrpcSetupError::Ca {
                path: path.clone(),
                source,
            })?;
            let tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(pem))
                .domain_name(host.trim_matches(['[', ']']));
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|source| GrpcSetupError::Tls { path, source })?;
        }
        let authorization = token
            .map(|t| format!("Bearer {t}").parse::<MetadataValue<Ascii>>())
            .transpose()
            .map_err(|_| GrpcSetupError::Token)?;
        Ok(GrpcServer {
            channel: endpoint.connect_lazy(),
            contract,
            authorization,
            open_timeout,
        })
    }

    pub fn open_timeout(&self) -> Duration {
        self.open_timeout
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }

    /// Calls the server for one configuration; resolves once the response
    /// headers have arrived (the stream is open), or with the call's status.
    pub async fn open(&self, src: &str, config: &str) -> Result<Events, Status> {
        match self.contract {
            Contract::Generic => {
                let request = self.request(proto::generic::EventSource {
                    name: src.to_owned(),
                    config: config.as_bytes().to_vec(),
                });
                let response = EventingClient::new(self.channel.clone())
                    .start_event_source(request)
                    .await?;
                Ok(Events::Generic(response.into_inner()))
            }
            Contract::V06 => {
                let request = self.request(proto::gateways::GatewayConfig {
                    src: src.to_owned(),
                    config: config.to_owned(),
                });
                let response = GatewayExecutorClient::new(self.channel.clone())
                    .run_gateway(request)
                    .await?;
                Ok(Events::V06(response.into_inner()))
            }
        }
    }
}

/// A configuration's open stream: each message's payload, in order.
pub enum Events {
    Generic(Streaming<proto::generic::Event>),
    V06(Streaming<proto::gateways::Event>),
}

impl Events {
    /// The next event's payload; `None` when the server ended the stream with OK.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Status> {
        Ok(match self {
            Events::Generic(s) => s.message().await?.map(|e| Bytes::from(e.payload)),
            Events::V06(s) => s.message().await?.map(|e| Bytes::from(e.data)),
        })
    }
}

/// Whether a call that ended with `status` may be tried again: these codes say
/// the configuration (or the caller) is wrong, and trying again will not help
/// until the value changes.
pub fn is_permanent(status: &Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::FailedPrecondition
            | Code::Unimplemented
            | Code::PermissionDenied
            | Code::Unauthenticated
    )
}
