//! A TCP proxy between one agent and RabbitMQ that the test can partition.
//!
//! A real partition neither closes connections nor refuses new ones: packets just stop.
//! [`Mode::Blackhole`] does exactly that (sockets stay open, no bytes move), so the agent
//! has to notice through AMQP heartbeats, as on a device whose uplink died. [`Mode::Refuse`]
//! models a broker that is down (connections reset at once).

use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Forward,
    Blackhole,
    Refuse,
}

#[derive(Debug, Clone)]
pub struct PartitionProxy {
    address: SocketAddr,
    mode: Arc<watch::Sender<Mode>>,
}

impl PartitionProxy {
    /// Listens on a free loopback port and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr, mode: Mode) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        let (sender, receiver) = watch::channel(mode);
        tokio::spawn(accept_loop(listener, upstream, receiver));
        Ok(Self {
            address,
            mode: Arc::new(sender),
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// An AMQP URL that reaches the broker through this proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.address)
    }

    /// Switches mode. Leaving `Blackhole` or `Refuse` drops every connection that was open,
    /// as the peers' TCP stacks would have given up on them by then.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Receiver<Mode>) {
    while let Ok((client, _)) = listener.accept().await {
        let mode = mode.clone();
        tokio::spawn(async move {
            if *mode.borrow() == Mode::Refuse {
                // SO_LINGER 0 turns the close into a reset: "connection refused" as near as
                // an accepted socket can get.
                let _ = client.set_zero_linger();
                return;
            }
            let _ = connection(client, upstream, mode).await;
        });
    }
}

async fn connection(
    mut client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
) -> std::io::Result<()> {
    let initial = *mode.borrow_and_update();
    if initial == Mode::Blackhole {
        // Accept and then say nothing until the partition heals; then drop the socket.
        while *mode.borrow_and_update() == Mode::Blackhole {
            if mode.changed().await.is_err() {
                break;
            }
        }
        return client.shutdown().await;
    }
    let mut server = TcpStream::connect(upstream).await?;
    let (mut client_read, mut client_write) = client.split();
    let (mut server_read, mut server_write) = server.split();
    let forward = async {
        tokio::select! {
            result = tokio::io::copy(&mut client_read, &mut server_write) => result.map(|_| ()),
            result = tokio::io::copy(&mut server_read, &mut client_write) => result.map(|_| ()),
        }
    };
    tokio::pin!(forward);
    loop {
        tokio::select! {
            result = &mut forward => return result,
            changed = mode.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                match *mode.borrow_and_update() {
                    Mode::Forward => {}
                    Mode::Refuse => return Ok(()),
                    Mode::Blackhole => break,
                }
            }
        }
    }
    // Blackholed: stop moving bytes but keep both sockets open until the partition heals.
    while *mode.borrow_and_update() == Mode::Blackhole {
        if mode.changed().await.is_err() {
            break;
        }
    }
    Ok(())
}
