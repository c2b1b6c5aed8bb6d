//! A TCP proxy that can cut the network between doudi and a server, and let it back.
//!
//! While cut, every open connection is closed and new ones are accepted and closed at once (what a
//! client meets when a firewall or a switch drops it). A Kafka client reconnects to the address
//! the broker advertises, so a broker behind the proxy must advertise the proxy's port.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<AbortHandle>>>,
    listener: AbortHandle,
}

impl Proxy {
    /// Listens on a free local port and forwards each connection to `127.0.0.1:target`.
    pub async fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let connections: Arc<std::sync::Mutex<Vec<AbortHandle>>> = Arc::default();
        let (c, conns) = (cut.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                if c.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(("127.0.0.1", target)).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                let mut open = conns.lock().unwrap();
                open.retain(|h| !h.is_finished());
                open.push(task.abort_handle());
            }
        });
        Proxy { port, cut, connections, listener: accept.abort_handle() }
    }

    /// Closes every connection and refuses new ones until [`Proxy::resume`].
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for h in self.connections.lock().unwrap().drain(..) {
            h.abort();
        }
    }

    pub fn resume(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.listener.abort();
        for h in self.connections.lock().unwrap().drain(..) {
            h.abort();
        }
    }
}

/// A Kafka broker of the test's own (`scripts/kafka` with its own port and data folder), behind
/// a [`Proxy`] it advertises. Dropping it stops the broker and removes its folder, even when the
/// test fails.
pub struct OwnKafka {
    pub proxy: Proxy,
    port: u16,
    data: String,
}

impl OwnKafka {
    pub async fn start() -> OwnKafka {
        // The controller listens on port + 1: find two free ports in a row.
        let port = loop {
            let p = super::free_port();
            if p < 65000 && std::net::TcpListener::bind(("127.0.0.1", p + 1)).is_ok() {
                break p;
            }
        };
        let proxy = Proxy::start(port).await;
        let data = format!("/tmp/doudi-kafka-fault-{}", uuid::Uuid::new_v4().simple());
        let kafka = OwnKafka { proxy, port, data };
        kafka.script("start").await;
        kafka
    }

    /// Settings for clients: every connection goes through the proxy.
    pub fn settings(&self) -> doudi::config::KafkaSettings {
        doudi::config::KafkaSettings { bootstrap_servers: format!("127.0.0.1:{}", self.proxy.port), ..Default::default() }
    }

    pub async fn script(&self, action: &str) {
        let (port, data, advertised) = (self.port, self.data.clone(), self.proxy.port);
        let action = action.to_string();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
                .arg(&action)
                .env("DOUDI_KAFKA_PORT", port.to_string())
                .env("DOUDI_KAFKA_ADVERTISED_PORT", advertised.to_string())
                .env("DOUDI_KAFKA_DATA", &data)
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        assert!(out.status.success(), "scripts/kafka: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        let _ = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kafka"))
            .arg("stop")
            .env("DOUDI_KAFKA_PORT", self.port.to_string())
            .env("DOUDI_KAFKA_DATA", &self.data)
            .output();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
