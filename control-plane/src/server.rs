//! Wires the services into one tonic server: health, reflection (v1 and v1alpha, so
//! grpcurl 1.8 works without .proto files), optional TLS / mTLS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tracing::info;
use vigie_proto::v1::audit_service_server::AuditServiceServer;
use vigie_proto::v1::discovery_service_server::DiscoveryServiceServer;
use vigie_proto::v1::egress_service_server::EgressServiceServer;
use vigie_proto::v1::policy_service_server::PolicyServiceServer;
use vigie_proto::v1::quota_service_server::QuotaServiceServer;
use vigie_proto::v1::status_service_server::StatusServiceServer;
use vigie_proto::v1::usage_service_server::UsageServiceServer;

use crate::auth::Authenticator;
use crate::hub::Hub;
use crate::k8s_tokens::{K8sTokenSettings, K8sTokens};
use crate::service::audit::AuditApi;
use crate::service::discovery::DiscoveryApi;
use crate::service::egress::EgressApi;
use crate::service::policy::PolicyApi;
use crate::service::quota::QuotaApi;
use crate::service::status::StatusApi;
use crate::service::usage::{UsageApi, UsageReads};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    pub max_message_bytes: usize,
    pub resync: Duration,
    pub replica: String,
    /// Accept Kubernetes projected service-account tokens from workloads.
    pub k8s_tokens: Option<K8sTokenSettings>,
    pub metrics: crate::metrics::Metrics,
    /// Policies from Git: the directory to reconcile.
    pub gitops: Option<GitOpsSettings>,
    /// How the usage ledger stores users, and how long it keeps records.
    pub ledger: LedgerSettings,
}

#[derive(Debug, Clone)]
pub struct LedgerSettings {
    pub users: crate::users::LedgerUsers,
    /// Records are kept for the current month and this many before it, then folded
    /// into monthly aggregates (0: kept forever).
    pub retention_months: u32,
}

#[derive(Debug, Clone)]
pub struct GitOpsSettings {
    pub dir: PathBuf,
    pub prune: bool,
    pub interval: Duration,
    pub exclusive: crate::gitops::Exclusive,
}

fn read(path: &PathBuf) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

pub async fn serve(
    store: Arc<dyn Store>,
    settings: ServerSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let hub = Hub::new(store.clone(), settings.replica.clone());
    hub.refresh(false)
        .await
        .context("loading policies from the store")?;
    let hub_task = tokio::spawn(hub.clone().run(settings.resync));
    let retention_task = tokio::spawn(crate::retention::run(
        store.clone(),
        settings.replica.clone(),
        settings.ledger.retention_months,
    ));

    let mut auth = Authenticator::new(store.clone());
    if let Some(k8s) = settings.k8s_tokens.clone() {
        auth = auth.with_k8s_tokens(
            K8sTokens::start(k8s)
                .await
                .context("loading the service-account issuer keys")?,
        );
    }
    let max = settings.max_message_bytes;
    // A policy is at most 1 MiB (limits::POLICY_BYTES) plus its request envelope; a
    // usage report of 5,000 records fits in 2 MiB; other calls carry a few fields.
    let policy_max = max.min(vigie_proto::validate::limits::POLICY_BYTES + 64 * 1024);
    let usage_max = max.min(2 * 1024 * 1024);
    let small = max.min(256 * 1024);
    let gate = crate::gate::GateLayer::new(auth.clone(), policy_max, usage_max);
    let reconciler = settings.gitops.as_ref().map(|g| {
        crate::gitops::Reconciler::new(
            g.dir.clone(),
            g.prune,
            g.exclusive,
            settings.replica.clone(),
            g.interval,
        )
    });
    let policy_api = PolicyApi {
        store: store.clone(),
        auth: auth.clone(),
        hub: hub.clone(),
        validator: crate::policy::Validator::default(),
        gitops: reconciler.as_ref().map(|r| r.state.clone()),
    };
    // The first sync lands before the API answers: managed policies are known (and
    // protected) from the first call.
    let gitops_task = match reconciler {
        Some(r) => {
            r.sync(&policy_api).await;
            Some(tokio::spawn(r.run(policy_api.clone())))
        }
        None => None,
    };
    let policy = PolicyServiceServer::new(policy_api).max_decoding_message_size(policy_max);
    let discovery = DiscoveryServiceServer::new(DiscoveryApi {
        auth: auth.clone(),
        hub: hub.clone(),
    })
    .max_decoding_message_size(small);
    let status = StatusServiceServer::new(StatusApi {
        store: store.clone(),
        auth: auth.clone(),
    })
    .max_decoding_message_size(small);
    let usage = UsageServiceServer::new(UsageApi {
        store: store.clone(),
        auth: auth.clone(),
        metrics: settings.metrics.clone(),
        reads: UsageReads::default(),
        users: settings.ledger.users.clone(),
        retention_months: settings.ledger.retention_months,
    })
    .max_decoding_message_size(usage_max);
    let quota = QuotaServiceServer::new(QuotaApi {
        store: store.clone(),
        auth: auth.clone(),
        hub: hub.clone(),
        metrics: settings.metrics.clone(),
    })
    .max_decoding_message_size(small);
    let egress = EgressServiceServer::new(EgressApi {
        store: store.clone(),
        auth: auth.clone(),
        metrics: settings.metrics.clone(),
    })
    .max_decoding_message_size(max.min(1024 * 1024));
    let audit = AuditServiceServer::new(AuditApi {
        store: store.clone(),
        auth,
    })
    .max_decoding_message_size(small);

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PolicyServiceServer<PolicyApi>>()
        .await;
    health_reporter
        .set_serving::<DiscoveryServiceServer<DiscoveryApi>>()
        .await;

    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(vigie_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc.BadRequest, so grpcurl decodes the field violations it prints.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection().build_v1().context("reflection v1")?;
    let reflection_v1alpha = reflection().build_v1alpha().context("reflection v1alpha")?;

    let mut builder = Server::builder()
        // Streams per connection (unset, hyper allows any number).
        .max_concurrent_streams(Some(128))
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)));
    if let Some(tls) = &settings.tls {
        let mut config =
            ServerTlsConfig::new().identity(Identity::from_pem(read(&tls.cert)?, read(&tls.key)?));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        builder = builder.tls_config(config).context("TLS configuration")?;
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    let local = listener.local_addr()?;
    info!(
        listen = %local,
        tls = settings.tls.is_some(),
        mtls = settings.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        replica = %settings.replica,
        "vigie-control-plane serving"
    );
    // Machine-readable line for harnesses that pass port 0.
    println!("{}", serde_json::json!({ "listening": local.to_string() }));

    let hub_for_shutdown = hub.clone();
    let result = builder
        // The called method, for security events about refused calls.
        .layer(tower::util::MapRequestLayer::new(
            |mut req: http::Request<tonic::body::Body>| {
                let path = req.uri().path().trim_start_matches('/').to_string();
                req.extensions_mut().insert(crate::events::CallPath(path));
                req
            },
        ))
        .layer(gate)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(policy)
        .add_service(discovery)
        .add_service(status)
        .add_service(audit)
        .add_service(usage)
        .add_service(quota)
        .add_service(egress)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            async move {
                shutdown.await;
                info!("shutting down: closing watch streams");
                // Watch streams never end on their own; end them so the server can stop.
                hub_for_shutdown.close();
            },
        )
        .await;
    hub_task.abort();
    retention_task.abort();
    if let Some(t) = gitops_task {
        t.abort();
    }
    // Let the status writer record the disconnections (it batches every ~20 ms).
    tokio::time::sleep(Duration::from_millis(200)).await;
    result.context("gRPC server")
}
