//! Test helpers: run any tasklab [`Server`] in-process on an ephemeral
//! loopback port and talk to it through real generated clients over a real
//! socket.
//!
//! ```ignore
//! let running = tasklab_testkit::spawn(Server::new(&settings).add_service(svc)).await;
//! let mut client = TasksServiceClient::new(running.channel().await);
//! // ...
//! running.stop().await;
//! ```

use std::net::SocketAddr;

use tasklab_config::GrpcSettings;
use tasklab_server::Server;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in the current runtime.
#[derive(Debug)]
pub struct Running {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: JoinHandle<std::io::Result<()>>,
}

/// Settings for test servers: short timeouts, a short shutdown grace.
pub fn test_grpc_settings() -> GrpcSettings {
    GrpcSettings {
        request_timeout_secs: 30,
        concurrency_limit: 256,
        shutdown_grace_secs: 2,
    }
}

/// Binds `127.0.0.1:0` and serves `server` there until [`Running::stop`].
pub async fn spawn(server: Server) -> Running {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(listener, async move {
        let _ = stopped.await;
    }));
    Running {
        addr,
        stop: Some(stop),
        handle,
    }
}

impl Running {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A connected gRPC channel to the server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .expect("valid endpoint")
            .connect()
            .await
            .expect("connect to test server")
    }

    /// Triggers graceful shutdown and waits for the server to finish.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.handle).await.expect("server task panicked")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.handle.abort();
        }
    }
}
