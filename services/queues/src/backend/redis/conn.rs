//! Connections to Redis that the calling task drives itself.
//!
//! The `redis` crate's multiplexed connection (and the connection manager
//! over it) hands every command to a driver task and the reply back through
//! a channel: two task wake-ups per round trip, which on a multi-threaded
//! runtime usually cross threads. On the 2-core benchmark machine that made
//! a round trip of a trivial `EVALSHA` cost 50-100 µs instead of the ~20 µs
//! it costs on one thread, and a queue handoff is three round trips on one
//! connection. Here a call takes an idle connection from a small pool (or
//! opens one), writes its request, reads the reply in the same task and puts
//! the connection back: the only wake-up is the socket's.
//!
//! The protocol is RESP2 (no `HELLO`), which is all the backend needs:
//! simple strings, errors, integers, bulk strings and arrays, decoded into
//! [`redis::Value`] so the `redis` crate's conversions apply.
//!
//! Cancellation: a connection goes back to the pool only after every reply
//! of its request was read; a call dropped half-way (an abandoned gRPC
//! request) drops its connection with it, so no reply is ever read by the
//! wrong caller.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use redis::{ConnectionAddr, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
#[cfg(unix)]
use tokio::net::UnixStream;
use tokio::sync::Semaphore;

/// Connections open at once per pool; more callers wait for one.
const MAX_CONNECTIONS: usize = 32;
/// Opening a connection (including `AUTH` and `SELECT`) fails after this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A request whose replies have not all arrived by then fails, and its
/// connection is closed.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// A read buffer grown past this by a large reply is released afterwards.
const KEEP_BUFFER: usize = 256 * 1024;

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// The connection broke or could not be opened.
    Io(std::io::Error),
    /// The server sent something that is not RESP2 (the connection is
    /// dropped).
    Protocol(String),
    /// The server answered with an error reply (the connection is fine).
    Server(String),
    /// No reply in time.
    Timeout,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Io(err) => write!(f, "redis connection: {err}"),
            CallError::Protocol(msg) => write!(f, "redis protocol: {msg}"),
            CallError::Server(msg) => write!(f, "redis: {msg}"),
            CallError::Timeout => write!(f, "redis did not answer within {REPLY_TIMEOUT:?}"),
        }
    }
}

impl std::error::Error for CallError {}

impl From<std::io::Error> for CallError {
    fn from(err: std::io::Error) -> Self {
        CallError::Io(err)
    }
}

/// One reply: a value, or the server's error message.
pub(crate) type Reply = Result<Value, String>;

/// Appends one command in RESP form (an array of bulk strings) to `out`.
pub(crate) fn pack<A: AsRef<[u8]>>(out: &mut Vec<u8>, args: &[A]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        let a = a.as_ref();
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[derive(Debug, Clone)]
enum Target {
    Tcp(String, u16),
    #[cfg_attr(not(unix), allow(dead_code))]
    Unix(PathBuf),
}

#[derive(Debug)]
enum Stream {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(UnixStream),
}

impl Stream {
    async fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            #[cfg(unix)]
            Stream::Unix(s) => s.write_all(buf).await,
        }
    }

    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read_buf(buf).await,
            #[cfg(unix)]
            Stream::Unix(s) => s.read_buf(buf).await,
        }
    }
}

/// One connection: the stream and the bytes read but not yet decoded.
#[derive(Debug)]
pub(crate) struct Conn {
    stream: Stream,
    buf: Vec<u8>,
}

impl Conn {
    /// Writes `request` and reads `replies` replies. Fails with `Io` (the
    /// first bool of the error tells whether any reply byte arrived) or
    /// `Protocol`; server errors are replies.
    async fn exchange(
        &mut self,
        request: &[u8],
        replies: usize,
    ) -> Result<Vec<Reply>, (bool, CallError)> {
        self.buf.clear();
        self.stream
            .write_all(request)
            .await
            .map_err(|e| (false, e.into()))?;
        let mut out = Vec::with_capacity(replies);
        let mut start = 0;
        for _ in 0..replies {
            let (reply, end) = self.read_reply(start).await?;
            out.push(reply);
            start = end;
        }
        if start != self.buf.len() {
            return Err((
                true,
                CallError::Protocol("unexpected bytes after the reply".into()),
            ));
        }
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        Ok(out)
    }

    /// Reads until the reply starting at `start` is complete, then decodes
    /// it; returns it with the offset after it.
    async fn read_reply(&mut self, start: usize) -> Result<(Reply, usize), (bool, CallError)> {
        let mut scan = Scan::new(start);
        loop {
            match scan.advance(&self.buf) {
                Ok(true) => break,
                Ok(false) => {}
                Err(msg) => return Err((true, CallError::Protocol(msg))),
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(self.buf.len().max(16 * 1024));
            }
            let n = self
                .stream
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| (!self.buf.is_empty(), e.into()))?;
            if n == 0 {
                let err = std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "redis closed the connection",
                );
                return Err((!self.buf.is_empty(), err.into()));
            }
        }
        let end = scan.pos;
        let mut at = start;
        let reply = decode(&self.buf[..end], &mut at);
        Ok((reply, end))
    }
}

/// A resumable check that a complete RESP2 value has arrived: it walks
/// element headers and skips bulk bodies, keeping how many elements each
/// open array still expects, so more bytes resume where it stopped (a large
/// reply is walked once, however many reads it takes).
struct Scan {
    pos: usize,
    open: Vec<usize>,
    started: bool,
}

impl Scan {
    fn new(pos: usize) -> Self {
        Scan {
            pos,
            open: Vec::new(),
            started: false,
        }
    }

    /// True once the value is complete (`pos` is then its end).
    fn advance(&mut self, buf: &[u8]) -> Result<bool, String> {
        loop {
            if self.started && self.open.is_empty() {
                return Ok(true);
            }
            let Some(eol) = find_crlf(buf, self.pos + 1) else {
                return Ok(false);
            };
            let line = &buf[self.pos + 1..eol];
            let mut end = eol + 2;
            let mut children = 0;
            match buf[self.pos] {
                b'+' | b'-' | b':' => {}
                b'$' => {
                    let n = int(line)?;
                    if n >= 0 {
                        end += usize::try_from(n).map_err(|e| e.to_string())? + 2;
                        if buf.len() < end {
                            return Ok(false);
                        }
                    }
                }
                b'*' => {
                    let n = int(line)?;
                    if n > 0 {
                        children = usize::try_from(n).map_err(|e| e.to_string())?;
                    }
                }
                other => return Err(format!("unexpected reply type byte {other:#04x}")),
            }
            self.pos = end;
            self.started = true;
            if children > 0 {
                self.open.push(children);
                continue;
            }
            // A finished element completes its parent when it was the last.
            while let Some(left) = self.open.last_mut() {
                *left -= 1;
                if *left > 0 {
                    break;
                }
                self.open.pop();
            }
        }
    }
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    if from >= buf.len() {
        return None;
    }
    buf[from..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|i| from + i)
}

fn int(line: &[u8]) -> Result<i64, String> {
    std::str::from_utf8(line)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad integer {:?}", String::from_utf8_lossy(line)))
}

/// Decodes the complete value at `at` (checked by [`Scan`]); an error
/// anywhere in it makes the whole reply that error.
fn decode(buf: &[u8], at: &mut usize) -> Reply {
    let eol = find_crlf(buf, *at + 1).unwrap_or(buf.len());
    let kind = buf[*at];
    let line = &buf[*at + 1..eol];
    *at = eol + 2;
    match kind {
        b'+' if line == b"OK" => Ok(Value::Okay),
        b'+' => Ok(Value::SimpleString(
            String::from_utf8_lossy(line).into_owned(),
        )),
        b'-' => Err(String::from_utf8_lossy(line).into_owned()),
        b':' => Ok(Value::Int(int(line).unwrap_or(0))),
        b'$' => {
            let n = int(line).unwrap_or(-1);
            if n < 0 {
                return Ok(Value::Nil);
            }
            let n = n as usize;
            let body = buf[*at..*at + n].to_vec();
            *at += n + 2;
            Ok(Value::BulkString(body))
        }
        _ => {
            let n = int(line).unwrap_or(-1);
            if n < 0 {
                return Ok(Value::Nil);
            }
            let mut items = Vec::with_capacity(n as usize);
            let mut first_err = None;
            for _ in 0..n {
                match decode(buf, at) {
                    Ok(v) => items.push(v),
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            first_err.map_or(Ok(Value::Array(items)), Err)
        }
    }
}

/// Connections to one Redis server, opened on demand and kept while idle.
#[derive(Debug)]
pub(crate) struct Pool {
    target: Target,
    /// `AUTH` and `SELECT`, sent on every new connection (may be empty).
    hello: Vec<u8>,
    hello_replies: usize,
    idle: Mutex<Vec<Conn>>,
    slots: Semaphore,
}

impl Pool {
    /// A pool for the server of `info` (nothing is opened yet). Fails for
    /// TLS addresses, which this build does not support.
    pub(crate) fn new(info: &redis::ConnectionInfo) -> Result<Pool, CallError> {
        let target = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Target::Tcp(host.clone(), *port),
            ConnectionAddr::Unix(path) => Target::Unix(path.clone()),
            other => {
                return Err(CallError::Protocol(format!(
                    "unsupported redis address {other}"
                )));
            }
        };
        let settings = info.redis_settings();
        let mut hello = Vec::new();
        let mut hello_replies = 0;
        if let Some(password) = settings.password() {
            match settings.username() {
                Some(user) => pack(&mut hello, &["AUTH", user, password]),
                None => pack(&mut hello, &["AUTH", password]),
            }
            hello_replies += 1;
        }
        if settings.db() != 0 {
            pack(&mut hello, &["SELECT", &settings.db().to_string()]);
            hello_replies += 1;
        }
        Ok(Pool {
            target,
            hello,
            hello_replies,
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(MAX_CONNECTIONS),
        })
    }

    /// Opens a connection and authenticates it.
    pub(crate) async fn connect(&self) -> Result<Conn, CallError> {
        let open = async {
            let stream = match &self.target {
                Target::Tcp(host, port) => {
                    let s = TcpStream::connect((host.as_str(), *port)).await?;
                    s.set_nodelay(true)?;
                    Stream::Tcp(s)
                }
                #[cfg(unix)]
                Target::Unix(path) => Stream::Unix(UnixStream::connect(path).await?),
                #[cfg(not(unix))]
                Target::Unix(_) => {
                    return Err(CallError::Protocol(
                        "unix sockets are not supported here".into(),
                    ));
                }
            };
            let mut conn = Conn {
                stream,
                buf: Vec::with_capacity(4096),
            };
            if self.hello_replies > 0 {
                let replies = conn
                    .exchange(&self.hello, self.hello_replies)
                    .await
                    .map_err(|(_, e)| e)?;
                if let Some(Err(msg)) = replies.into_iter().find(Result::is_err) {
                    return Err(CallError::Server(msg));
                }
            }
            Ok(conn)
        };
        tokio::time::timeout(CONNECT_TIMEOUT, open)
            .await
            .unwrap_or_else(|_| {
                Err(CallError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connecting to redis timed out",
                )))
            })
    }

    fn take_idle(&self) -> Option<Conn> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn put_idle(&self, conn: Conn) {
        self.idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(conn);
    }

    /// Sends `request` (one or more packed commands) and returns its
    /// `replies` replies. A request that fails on an idle connection before
    /// any reply byte arrived (the server closed it meanwhile, e.g. a
    /// restart) is sent once more on a new connection, after the other idle
    /// connections (likely as stale) are dropped.
    pub(crate) async fn call(
        &self,
        request: &[u8],
        replies: usize,
    ) -> Result<Vec<Reply>, CallError> {
        let _slot = match self.slots.try_acquire() {
            Ok(p) => p,
            Err(_) => self
                .slots
                .acquire()
                .await
                .map_err(|e| CallError::Protocol(e.to_string()))?,
        };
        let mut retried = false;
        loop {
            let (mut conn, reused) = match self.take_idle() {
                Some(c) => (c, true),
                None => (self.connect().await?, false),
            };
            match tokio::time::timeout(REPLY_TIMEOUT, conn.exchange(request, replies)).await {
                Ok(Ok(out)) => {
                    self.put_idle(conn);
                    return Ok(out);
                }
                Ok(Err((false, CallError::Io(_)))) if reused && !retried => {
                    retried = true;
                    self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
                }
                Ok(Err((_, err))) => return Err(err),
                Err(_) => return Err(CallError::Timeout),
            }
        }
    }

    /// [`Pool::call`] for one command; its error reply becomes `Server`.
    pub(crate) async fn call1(&self, request: &[u8]) -> Result<Value, CallError> {
        let mut out = self.call(request, 1).await?;
        match out.pop() {
            Some(Ok(v)) => Ok(v),
            Some(Err(msg)) => Err(CallError::Server(msg)),
            None => Err(CallError::Protocol("no reply".into())),
        }
    }
}

/// A connection subscribed to one channel, read by its owner.
#[derive(Debug)]
pub(crate) struct Subscription {
    conn: Conn,
    start: usize,
}

impl Subscription {
    /// Opens a connection of `pool` (outside its limit) and subscribes it to
    /// `channel`.
    pub(crate) async fn open(pool: &Pool, channel: &str) -> Result<Subscription, CallError> {
        let mut conn = pool.connect().await?;
        let mut req = Vec::new();
        pack(&mut req, &["SUBSCRIBE", channel]);
        let confirm = tokio::time::timeout(REPLY_TIMEOUT, conn.exchange(&req, 1))
            .await
            .map_err(|_| CallError::Timeout)?
            .map_err(|(_, e)| e)?;
        match confirm.into_iter().next() {
            Some(Ok(_)) => Ok(Subscription { conn, start: 0 }),
            Some(Err(msg)) => Err(CallError::Server(msg)),
            None => Err(CallError::Protocol("no reply".into())),
        }
    }

    /// The payload of the next message on the channel.
    pub(crate) async fn next(&mut self) -> Result<Vec<u8>, CallError> {
        loop {
            if self.start > 0 && self.start == self.conn.buf.len() {
                self.conn.buf.clear();
                self.start = 0;
            }
            let (reply, end) = self.conn.read_reply(self.start).await.map_err(|(_, e)| e)?;
            self.start = end;
            if let Ok(Value::Array(mut parts)) = reply
                && parts.len() == 3
                && matches!(&parts[0], Value::BulkString(k) if k == b"message")
                && let Some(Value::BulkString(payload)) = parts.pop()
            {
                return Ok(payload);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(bytes: &[u8]) -> Option<(Reply, usize)> {
        let mut scan = Scan::new(0);
        if !scan.advance(bytes).unwrap() {
            return None;
        }
        let mut at = 0;
        let reply = decode(&bytes[..scan.pos], &mut at);
        assert_eq!(at, scan.pos);
        Some((reply, scan.pos))
    }

    #[test]
    fn decodes_every_resp2_type() {
        let bytes = b"*7\r\n+OK\r\n+QUEUED\r\n:-42\r\n$5\r\nhe\r\nl\r\n$-1\r\n*0\r\n*2\r\n$0\r\n\r\n*-1\r\n";
        let (reply, end) = complete(bytes).unwrap();
        assert_eq!(end, bytes.len());
        assert_eq!(
            reply.unwrap(),
            Value::Array(vec![
                Value::Okay,
                Value::SimpleString("QUEUED".into()),
                Value::Int(-42),
                Value::BulkString(b"he\r\nl".to_vec()),
                Value::Nil,
                Value::Array(vec![]),
                Value::Array(vec![Value::BulkString(vec![]), Value::Nil]),
            ])
        );
        assert_eq!(
            complete(b"-NOSCRIPT No matching script\r\n").unwrap().0,
            Err("NOSCRIPT No matching script".to_owned())
        );
    }

    #[test]
    fn a_reply_split_anywhere_is_complete_only_at_its_end() {
        let bytes: &[u8] = b"*3\r\n$3\r\nabc\r\n*2\r\n:1\r\n$2\r\nxy\r\n+done\r\n:7\r\n";
        let first_end = bytes.len() - 4;
        for cut in 0..first_end {
            // Resuming the same scan over a longer buffer, as reads arrive.
            let mut scan = Scan::new(0);
            assert!(!scan.advance(&bytes[..cut]).unwrap(), "cut at {cut}");
            assert!(scan.advance(bytes).unwrap());
            assert_eq!(scan.pos, first_end);
        }
        let mut scan = Scan::new(first_end);
        assert!(scan.advance(bytes).unwrap());
        assert_eq!(scan.pos, bytes.len());
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        assert!(Scan::new(0).advance(b"?what\r\n").is_err());
        assert!(Scan::new(0).advance(b"$x\r\n").is_err());
    }

    #[test]
    fn commands_are_packed_as_bulk_arrays() {
        let mut out = Vec::new();
        pack(&mut out, &["EVALSHA", "ab", ""]);
        assert_eq!(out, b"*3\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$0\r\n\r\n");
    }
}
