//! `hearth-bench bench db-delay` and `bench db-rtt`: PostgreSQL a network hop away.
//!
//! Every other figure has Hearth and PostgreSQL on one machine over loopback, where a round trip
//! costs tens of microseconds; a managed database is 0.3–2 ms away. These machines' kernel has no
//! `netem`, so the delay is built here: `db-delay` is a TCP proxy that holds every chunk of bytes,
//! in each direction, for a fixed time before writing it on, in order. `bench/delay.sh` points
//! `DATABASE_URL` through it and runs W1, W4, W5 and W6 at several delays.
//!
//! The proxy also counts **round trips**: a turn is a run of client bytes that follows server
//! bytes on the same connection (or opens it), so a pipelined batch of queries is one turn and a
//! query waiting for the answer of the one before is two. `delay.sh` reads the counters (a JSON
//! line from `--stats`) before and after a measured stretch and divides by what was done in it.
//!
//! Each direction of each connection is a reader thread and a writer thread joined by a channel:
//! plain blocking sockets and `std::thread::sleep`, whose wake-up is finer than tokio's
//! millisecond timer wheel (a 0.5 ms delay on tokio's timer would be a 1 ms one). `db-rtt`
//! measures what the delay really is: sequential `SELECT 1` round trips, direct and through it.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::Context;

#[derive(Debug, Clone, clap::Args)]
pub struct DelayArgs {
    /// Where PostgreSQL clients connect.
    #[arg(long, default_value = "127.0.0.1:6543")]
    pub listen: SocketAddr,
    /// The PostgreSQL server the bytes go to.
    #[arg(long, default_value = "127.0.0.1:5432")]
    pub upstream: SocketAddr,
    /// How long each chunk is held, in each direction (`0s`, `500us`, `1ms`): a round trip costs
    /// twice this on top of the network's own.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub delay: Duration,
    /// Where the counters are read: every connection gets one JSON line and is closed.
    #[arg(long, default_value = "127.0.0.1:6544")]
    pub stats: SocketAddr,
}

/// What the proxy has seen since it started.
#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    turns: AtomicU64,
    client_bytes: AtomicU64,
    server_bytes: AtomicU64,
}

impl Counters {
    fn json(&self) -> String {
        format!(
            "{{\"connections\":{},\"turns\":{},\"client_bytes\":{},\"server_bytes\":{}}}\n",
            self.connections.load(Relaxed),
            self.turns.load(Relaxed),
            self.client_bytes.load(Relaxed),
            self.server_bytes.load(Relaxed),
        )
    }
}

/// Serves until the process is stopped.
pub fn run(args: DelayArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let stats = TcpListener::bind(args.stats)
        .with_context(|| format!("cannot listen on {}", args.stats))?;
    println!(
        "db-delay: {} -> {}, {:?} each way, counters on {}",
        args.listen, args.upstream, args.delay, args.stats
    );
    serve(listener, stats, args.upstream, args.delay)
}

/// Relays every connection `listener` accepts to `upstream`, and answers the counters on
/// `stats`, until accepting fails.
fn serve(
    listener: TcpListener,
    stats: TcpListener,
    upstream: SocketAddr,
    delay: Duration,
) -> anyhow::Result<()> {
    let counters = Arc::new(Counters::default());
    let served = counters.clone();
    thread::spawn(move || serve_stats(stats, &served));
    for client in listener.incoming() {
        let client = client.context("accept failed")?;
        let counters = counters.clone();
        thread::spawn(move || {
            if let Err(e) = relay(client, upstream, delay, &counters) {
                eprintln!("db-delay: connection ended: {e:#}");
            }
        });
    }
    Ok(())
}

fn serve_stats(listener: TcpListener, counters: &Counters) {
    for mut stream in listener.incoming().flatten() {
        // A reader that went away is its own business; the proxy carries on.
        let _ = stream.write_all(counters.json().as_bytes());
    }
}

/// Joins one client to a fresh upstream connection until either side closes.
fn relay(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    counters: &Arc<Counters>,
) -> anyhow::Result<()> {
    let server = TcpStream::connect(upstream)
        .with_context(|| format!("cannot reach the upstream {upstream}"))?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    counters.connections.fetch_add(1, Relaxed);
    // True while the last bytes seen on this connection came from the server: the client's next
    // bytes then start a new turn. The connection opens with the client's turn.
    let server_spoke = Arc::new(AtomicBool::new(true));
    let up = {
        let (from, to) = (client.try_clone()?, server.try_clone()?);
        let (counters, server_spoke) = (counters.clone(), server_spoke.clone());
        thread::spawn(move || {
            pipe(from, to, delay, |n| {
                counters.client_bytes.fetch_add(n, Relaxed);
                if server_spoke.swap(false, Relaxed) {
                    counters.turns.fetch_add(1, Relaxed);
                }
            })
        })
    };
    let counters = counters.clone();
    let down = pipe(server, client, delay, |n| {
        counters.server_bytes.fetch_add(n, Relaxed);
        server_spoke.store(true, Relaxed);
    });
    let up = up
        .join()
        .map_err(|_| anyhow::anyhow!("the client-to-server thread panicked"))?;
    up.and(down).context("relay failed")
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in order; `seen` is told
/// each chunk's size as it is read. Ends both sockets when either side ends.
fn pipe(
    mut from: TcpStream,
    mut to: TcpStream,
    delay: Duration,
    seen: impl Fn(u64),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    if delay.is_zero() {
        while let Ok(n @ 1..) = from.read(&mut buf) {
            seen(n as u64);
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    } else {
        let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
        let mut sink = to.try_clone()?;
        let writer = thread::spawn(move || {
            for (due, chunk) in rx {
                thread::sleep(due.saturating_duration_since(Instant::now()));
                if sink.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        while let Ok(n @ 1..) = from.read(&mut buf) {
            seen(n as u64);
            if tx
                .send((Instant::now() + delay, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
        drop(tx);
        let _ = writer.join();
    }
    // The other side may already be gone; either way this connection is over.
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
    Ok(())
}

#[derive(Debug, Clone, clap::Args)]
pub struct RttArgs {
    /// The database to measure (a `postgres://` URL, through the proxy or not).
    #[arg(long, env = "DATABASE_URL")]
    pub url: String,
    /// Sequential round trips to time.
    #[arg(long, default_value_t = 2000)]
    pub n: usize,
}

/// Prints one JSON line: the p50, p90 and p99 of `n` sequential `SELECT 1`s, in milliseconds.
pub async fn rtt(args: RttArgs) -> anyhow::Result<()> {
    let (client, connection) = tokio_postgres::connect(&args.url, tokio_postgres::NoTls)
        .await
        .context("cannot connect")?;
    tokio::spawn(connection);
    let statement = client.prepare("SELECT 1").await?;
    let mut took = Vec::with_capacity(args.n);
    for _ in 0..args.n.max(1) {
        let start = Instant::now();
        client.query_one(&statement, &[]).await?;
        took.push(start.elapsed().as_secs_f64() * 1e3);
    }
    took.sort_by(f64::total_cmp);
    let at = |q: f64| took[((took.len() - 1) as f64 * q).round() as usize];
    println!(
        "{{\"n\":{},\"p50_ms\":{:.4},\"p90_ms\":{:.4},\"p99_ms\":{:.4}}}",
        took.len(),
        at(0.5),
        at(0.9),
        at(0.99)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: what the proxy relays is bytes, whatever the protocol.
    fn echo() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        thread::spawn(move || {
            for mut stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut buf = [0u8; 1024];
                    while let Ok(n @ 1..) = stream.read(&mut buf) {
                        stream.write_all(&buf[..n]).unwrap();
                    }
                });
            }
        });
        address
    }

    fn counters(stats: SocketAddr) -> serde_json::Value {
        let mut line = String::new();
        TcpStream::connect(stats)
            .unwrap()
            .read_to_string(&mut line)
            .unwrap();
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn each_exchange_is_one_turn_and_waits_the_delay_both_ways() {
        // Arrange: the proxy, 20 ms each way, in front of an echo server.
        let delay = Duration::from_millis(20);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stats = TcpListener::bind("127.0.0.1:0").unwrap();
        let (proxy, stats_address) = (listener.local_addr().unwrap(), stats.local_addr().unwrap());
        let upstream = echo();
        thread::spawn(move || serve(listener, stats, upstream, delay));
        let mut client = TcpStream::connect(proxy).unwrap();

        // Act: three exchanges, each waiting for its answer.
        let start = Instant::now();
        for message in [&b"one"[..], b"two", b"three"] {
            client.write_all(message).unwrap();
            let mut answer = vec![0u8; message.len()];
            client.read_exact(&mut answer).unwrap();
            assert_eq!(answer, message, "bytes arrive unchanged and in order");
        }
        let took = start.elapsed();

        // Assert: three turns, eleven bytes each way, and each exchange held both ways.
        let seen = counters(stats_address);
        assert_eq!(seen["connections"], 1);
        assert_eq!(seen["turns"], 3, "{seen}");
        assert_eq!(seen["client_bytes"], 11);
        assert_eq!(seen["server_bytes"], 11);
        assert!(took >= 3 * 2 * delay, "{took:?} is less than six delays");
    }
}
