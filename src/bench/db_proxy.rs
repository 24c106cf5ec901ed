//! A pass-through in front of Postgres, for `EBRA_BENCH_DB_RTT_MS`: it delays each
//! direction by half the round-trip time asked for (a database across a network, as RDS is
//! from Lambda) and counts the round trips the stack makes, at the wire: a round trip is a
//! request from the client after it was given an answer, so requests sent together
//! (pipelined) before the answer count once. It costs CPU of its own (every byte crosses two
//! more sockets and, with a delay, a timer), so runs through it are for its counts and for
//! what a latency does, not for comparing throughput with a direct run.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub struct DbProxy {
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    round_trips: Arc<AtomicU64>,
    accepting: JoinHandle<()>,
}

impl DbProxy {
    /// Listens on a free port of 127.0.0.1 and forwards to `upstream` (`host:port`), each
    /// direction `one_way` later.
    pub async fn start(upstream: String, one_way: Duration) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the database pass-through")?;
        let port = listener.local_addr()?.port();
        let round_trips = Arc::new(AtomicU64::new(0));
        let counted = round_trips.clone();
        let accepting = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let counted = counted.clone();
                tokio::spawn(async move {
                    if let Err(error) = relay(client, &upstream, one_way, counted).await {
                        eprintln!(
                            "   warning: the database pass-through dropped a connection: {error:#}"
                        );
                    }
                });
            }
        });
        Ok(Self {
            port,
            round_trips,
            accepting,
        })
    }

    /// Round trips made through it so far (connections' start-up included).
    pub fn round_trips(&self) -> u64 {
        self.round_trips.load(Ordering::Relaxed)
    }

    /// Stops accepting; connections made stay until their ends close them.
    pub fn stop(self) {
        self.accepting.abort();
    }
}

/// One connection, both ways, until either side closes.
async fn relay(
    client: TcpStream,
    upstream: &str,
    one_way: Duration,
    round_trips: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let server = TcpStream::connect(upstream)
        .await
        .with_context(|| format!("connecting to Postgres at {upstream}"))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    // Whether the client has been given an answer since its last request: its next bytes
    // begin a round trip. Set when the answer is written to the client, not when it is read
    // from the server, so that requests the client sent together, before it could have seen
    // the answer, count once (while the pass-through holds the answer back for the delay).
    let answered = Arc::new(AtomicBool::new(true));
    let requests = {
        let answered = answered.clone();
        pump(client_read, server_write, one_way, move |_| {
            if answered.swap(false, Ordering::AcqRel) {
                round_trips.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let answers = pump(server_read, client_write, one_way, move |event| {
        if event == Event::Written {
            answered.store(true, Ordering::Release);
        }
    });
    // Either direction ending ends the connection: the other's half is dropped with it.
    tokio::select! {
        done = requests => done,
        done = answers => done,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Read,
    Written,
}

/// Copies `from` to `to`, each chunk `delay` after it was read, in order; `on` sees each
/// chunk read and each written. With no delay, chunks are written as they are read: tokio's
/// timer counts whole milliseconds, so even a zero sleep would wait for its next tick.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    delay: Duration,
    on: impl Fn(Event) + Send + Sync + 'static,
) -> anyhow::Result<()> {
    let on = Arc::new(on);
    let mut buffer = vec![0u8; 64 * 1024];
    if delay.is_zero() {
        loop {
            let read = from.read(&mut buffer).await.context("reading")?;
            if read == 0 {
                break;
            }
            on(Event::Read);
            to.write_all(&buffer[..read]).await.context("writing")?;
            on(Event::Written);
        }
        let _ = to.shutdown().await;
        return Ok(());
    }
    let (chunks, mut due) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = {
        let on = on.clone();
        tokio::spawn(async move {
            while let Some((at, chunk)) = due.recv().await {
                tokio::time::sleep_until(at).await;
                if to.write_all(&chunk).await.is_err() {
                    break;
                }
                on(Event::Written);
            }
            let _ = to.shutdown().await;
        })
    };
    loop {
        let read = from.read(&mut buffer).await.context("reading")?;
        if read == 0 {
            break;
        }
        on(Event::Read);
        if chunks
            .send((Instant::now() + delay, buffer[..read].to_vec()))
            .is_err()
        {
            break;
        }
    }
    drop(chunks);
    let _ = writer.await;
    Ok(())
}
