//! An echo server with one task per connection: the notes' generator server (`server()` and
//! `client()` yielding to `event_loop()`), written with `async`/`await`.
//!
//! ```text
//! cargo run --release --example async_echo                  # listens on 127.0.0.1:8009
//! cargo run --release --example async_echo -- 127.0.0.1:9000
//! ```
//!
//! Try it with `nc 127.0.0.1 8009` (type lines; they come back), or several at once:
//! `python3 -c "import socket; s=socket.create_connection(('127.0.0.1',8009)); s.sendall(b'hi'); print(s.recv(9))"`.
//!
//! Where the notes' `client()` yields `('read', sock)` and the loop resumes it when `select`
//! finds the socket readable, `conn.read(..).await` does the same through the selector. The
//! `echo` example is the same server with callbacks.

use std::io;
use std::net::{TcpListener, TcpStream};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use selreactor::task::{self, Async};

/// The notes' `client()`: echo until the peer closes. The buffer lives in the task (16 KiB
/// per connection).
async fn client(mut conn: Async<TcpStream>) -> io::Result<()> {
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        conn.write_all(&buf[..n]).await?;
    }
}

/// The notes' `server()`: accept, and start a task for each connection.
async fn server(addr: String) -> io::Result<()> {
    let listener = Async::<TcpListener>::bind(addr)?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (conn, _peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            // Out of descriptors, or the peer gave up in the backlog: the server goes on.
            Err(e) => {
                eprintln!("accept: {e}");
                task::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        // Small replies go out at once rather than waiting for the previous one's ACK.
        let _ = conn.get_ref().set_nodelay(true);
        task::spawn(async move {
            if let Err(e) = client(conn).await {
                eprintln!("connection: {e}");
            }
        })
        .detach();
    }
}

fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8009".to_owned());
    task::block_on(server(addr))?
}
