//! The mock GPU pool as a library: the same server the `vigie-mock-pool` binary runs,
//! for in-process tests (`spawn`). The only fake in Vigie's tests; it speaks the real
//! wire protocols (OpenAI, Anthropic, vLLM metrics).

pub mod behaviour;
pub mod server;
mod text;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

pub use behaviour::{Behaviour, Failure};
pub use server::{Mock, router};

/// Serves a mock on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, mock: Arc<Mock>) -> std::io::Result<()> {
    // Small SSE frames on keep-alive connections must not wait for delayed ACKs
    // (real servers such as uvicorn set TCP_NODELAY too).
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(mock)).await
}

/// Starts a mock on a free loopback port in the current runtime.
pub async fn spawn(
    name: &str,
    models: &[&str],
    behaviour: Behaviour,
) -> std::io::Result<(SocketAddr, Arc<Mock>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let mock = Mock::new(
        name.to_string(),
        models.iter().map(|m| m.to_string()).collect(),
        behaviour,
    );
    let served = mock.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(listener, served).await {
            tracing::error!(error = %e, "mock pool stopped");
        }
    });
    Ok((addr, mock))
}
