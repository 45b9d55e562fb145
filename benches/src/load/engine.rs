//! The drivers of a run, all on the caller's runtime (one thread under `meshbench load`):
//! HTTP/1.1 lanes (one request at a time per connection), the open-loop dispatcher (HTTP/2
//! multiplexing and new-connection-per-request) and closed-loop lanes. Only hyper's
//! connection tasks are spawned; lanes and requests are futures of the calling task, sharing
//! one recorder.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use futures::stream::FuturesUnordered;
use http_body_util::Full;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};

use super::Spec;
use super::proto::{Failure, Shape, chain, finish};
use super::record::{Recorder, Shared};
use super::schedule::Plan;

type Body = Full<Bytes>;

const NOT_SENT: &str = "not sent: still queued behind late answers when the drain after the \
                        window ended (the target cannot sustain the rate)";
/// Closed loop against a target that refuses connections must not spin a core.
const CLOSED_LOOP_BACKOFF: Duration = Duration::from_millis(10);

/// The run's time line: warm-up from `t0`, the measured window `[ws, we)`, then at most
/// `--timeout` of drain; nothing is sent or awaited after `drain`.
#[derive(Debug, Clone, Copy)]
struct Clock {
    t0: Instant,
    ws: Instant,
    we: Instant,
    drain: Instant,
}

impl Clock {
    fn start_now(spec: &Spec) -> Self {
        let t0 = Instant::now();
        let ws = t0 + spec.warmup;
        let we = ws + spec.duration;
        Self {
            t0,
            ws,
            we,
            drain: we + spec.timeout,
        }
    }
}

/// A connection ready to carry requests.
enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

impl Sender {
    /// Whether another request can go out (an HTTP/1.1 connection the server closed after its
    /// last answer is not an error, just a reason to reconnect).
    async fn usable(&mut self) -> bool {
        match self {
            Sender::H1(s) => s.ready().await.is_ok(),
            Sender::H2(s) => !s.is_closed(),
        }
    }

    async fn exchange(&mut self, shape: &Shape) -> Result<(), Failure> {
        let response = match self {
            Sender::H1(s) => s.try_send_request(shape.request(false)).await,
            Sender::H2(s) => s.try_send_request(shape.request(true)).await,
        };
        let response = response.map_err(|e| {
            let unsent = e.message().is_some();
            let text = chain(e.error());
            if unsent {
                Failure::Unsent(text)
            } else {
                Failure::Transport(text)
            }
        })?;
        finish(response, shape.expect).await
    }
}

struct Ctx<'a> {
    spec: &'a Spec,
    shape: Shape,
    stats: Shared,
    clock: Clock,
}

pub(crate) async fn drive(spec: &Spec, shape: Shape) -> anyhow::Result<Recorder> {
    let mut ctx = Ctx {
        spec,
        shape,
        stats: Shared::new(Recorder::new()?),
        clock: Clock::start_now(spec),
    };
    // Connections made before the clock starts belong to the first phase.
    let count_initial = spec.warmup.is_zero();
    let conns = spec.conns;
    match spec.rate {
        Some(rate) if spec.new_conn || spec.proto.is_h2() => {
            let slots: Vec<AsyncMutex<Option<http2::SendRequest<Body>>>> = if spec.new_conn {
                Vec::new()
            } else {
                let limit = spec.timeout;
                let connects =
                    (0..conns).map(|_| tokio::time::timeout(limit, ctx.connect_h2(count_initial)));
                let made = join_all(connects).await;
                made.into_iter()
                    .map(|c| AsyncMutex::new(c.ok().and_then(Result::ok)))
                    .collect()
            };
            ctx.clock = Clock::start_now(spec);
            let plan = Plan::new(rate, spec.warmup, spec.duration);
            ctx.open_dispatch(&plan, &slots).await;
        }
        Some(rate) => {
            let senders = ctx.initial(count_initial).await;
            ctx.clock = Clock::start_now(spec);
            let plan = Plan::new(rate, spec.warmup, spec.duration);
            let lanes = senders
                .into_iter()
                .enumerate()
                .map(|(lane, conn)| ctx.open_lane(&plan, lane as u64, conn));
            all(lanes).await;
        }
        None => {
            let senders = if spec.new_conn {
                (0..conns).map(|_| None).collect()
            } else {
                ctx.initial(count_initial).await
            };
            ctx.clock = Clock::start_now(spec);
            all(senders.into_iter().map(|conn| ctx.closed_lane(conn))).await;
        }
    }
    Ok(ctx.stats.into_inner())
}

/// Runs the lanes to completion. Unlike `join_all`, only the lane that was woken is polled,
/// which matters at tens of thousands of requests per second over 64 lanes.
async fn all<F: Future<Output = ()>>(lanes: impl Iterator<Item = F>) {
    let mut running: FuturesUnordered<F> = lanes.collect();
    while running.next().await.is_some() {}
}

// === impl Ctx ===

impl Ctx<'_> {
    /// One keep-alive connection per lane; a failed one is retried by the lane's first request
    /// (which then counts the failure).
    async fn initial(&self, count: bool) -> Vec<Option<Sender>> {
        let limit = self.spec.timeout;
        let made = join_all(
            (0..self.spec.conns).map(|_| tokio::time::timeout(limit, self.connect(count))),
        )
        .await;
        made.into_iter()
            .map(|c| c.ok().and_then(Result::ok))
            .collect()
    }

    async fn tcp(&self, count: bool) -> Result<TokioIo<TcpStream>, Failure> {
        let target = self.spec.target;
        let stream = TcpStream::connect(target)
            .await
            .map_err(|e| Failure::Transport(format!("connect {target}: {e}")))?;
        if count {
            self.stats.with(|r| r.connections += 1);
        }
        stream
            .set_nodelay(true)
            .map_err(|e| Failure::Transport(format!("TCP_NODELAY on {target}: {e}")))?;
        Ok(TokioIo::new(stream))
    }

    async fn connect(&self, count: bool) -> Result<Sender, Failure> {
        if self.spec.proto.is_h2() {
            return self.connect_h2(count).await.map(Sender::H2);
        }
        let io = self.tcp(count).await?;
        let (sender, conn) = http1::handshake(io)
            .await
            .map_err(|e| Failure::Transport(format!("HTTP/1.1 handshake: {}", chain(&e))))?;
        // The connection's own errors surface on the request that was using it.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(Sender::H1(sender))
    }

    async fn connect_h2(&self, count: bool) -> Result<http2::SendRequest<Body>, Failure> {
        let io = self.tcp(count).await?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| Failure::Transport(format!("HTTP/2 handshake: {}", chain(&e))))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A request may take `--timeout` from its send, and never run past the drain.
    fn deadline(&self, sent: Instant) -> Instant {
        (sent + self.spec.timeout).min(self.clock.drain)
    }

    fn timed_out(&self, deadline: Instant) -> Failure {
        if deadline >= self.clock.drain {
            Failure::Transport(format!(
                "still unanswered when the drain ended ({:?} after the window)",
                self.spec.timeout
            ))
        } else {
            Failure::Transport(format!(
                "timeout: no complete answer within {:?}",
                self.spec.timeout
            ))
        }
    }

    fn record(&self, result: Result<(), Failure>, start: Instant, sent: Instant) {
        let done = Instant::now();
        self.stats.with(|r| match result {
            Ok(()) => r.ok(done - start, done - sent),
            Err(failure) => r.error(failure.message()),
        });
    }

    /// One request on a lane's keep-alive connection, reconnecting first if it is gone; a
    /// transport failure drops the connection.
    async fn on_lane(
        &self,
        conn: &mut Option<Sender>,
        count: bool,
        sent: Instant,
    ) -> Result<(), Failure> {
        let deadline = self.deadline(sent);
        let attempt = async {
            let current = match conn.take() {
                Some(mut s) => {
                    if s.usable().await {
                        s
                    } else {
                        self.connect(count).await?
                    }
                }
                None => self.connect(count).await?,
            };
            match conn.insert(current).exchange(&self.shape).await {
                Err(Failure::Unsent(_)) => {
                    *conn = None;
                    conn.insert(self.connect(count).await?)
                        .exchange(&self.shape)
                        .await
                }
                other => other,
            }
        };
        let result = timeout_at(deadline, attempt)
            .await
            .unwrap_or_else(|_| Err(self.timed_out(deadline)));
        if result.as_ref().is_err_and(Failure::is_transport) {
            *conn = None;
        }
        result
    }

    /// One request on a connection of its own, closed after the answer.
    async fn on_fresh(&self, count: bool, sent: Instant) -> Result<(), Failure> {
        let deadline = self.deadline(sent);
        let attempt = async {
            let mut sender = self.connect(count).await?;
            sender.exchange(&self.shape).await
            // Dropping the sender closes the connection (h1: the server closes first, asked
            // by `connection: close`).
        };
        timeout_at(deadline, attempt)
            .await
            .unwrap_or_else(|_| Err(self.timed_out(deadline)))
    }

    /// One request multiplexed on a shared HTTP/2 connection, which the first request to find
    /// it closed replaces (the others wait for that one connect).
    async fn on_shared(
        &self,
        slot: &AsyncMutex<Option<http2::SendRequest<Body>>>,
        count: bool,
        sent: Instant,
    ) -> Result<(), Failure> {
        let deadline = self.deadline(sent);
        let attempt = async {
            // A connection that went away before the request left is replaced once.
            let mut tries = 0;
            loop {
                tries += 1;
                let sender = {
                    let mut guard = slot.lock().await;
                    let current = match guard.take() {
                        Some(s) if !s.is_closed() => s,
                        _ => self.connect_h2(count).await?,
                    };
                    guard.insert(current).clone()
                };
                match Sender::H2(sender).exchange(&self.shape).await {
                    Err(Failure::Unsent(_)) if tries < 2 => {
                        slot.lock().await.take_if(|s| s.is_closed());
                    }
                    other => return other,
                }
            }
        };
        timeout_at(deadline, attempt)
            .await
            .unwrap_or_else(|_| Err(self.timed_out(deadline)))
    }

    /// Open loop on one HTTP/1.1 keep-alive connection: indices `lane, lane + N, …`.
    async fn open_lane(&self, plan: &Plan, lane: u64, mut conn: Option<Sender>) {
        let step = self.spec.conns as u64;
        let mut k = lane;
        while k < plan.end {
            let due = self.clock.t0 + plan.offset(k);
            let now = Instant::now();
            if now >= self.clock.drain {
                let left = plan.measured_left(k, step);
                self.stats.with(|r| r.errors(left, NOT_SENT));
                return;
            }
            let measured = plan.measured(k);
            // Past its due time already: the previous answer on this connection came late,
            // so the target held this request back and it counts from its intended time.
            let held = now > due;
            if !held {
                sleep_until(due).await;
            }
            let sent = Instant::now();
            if measured && !held {
                self.stats.with(|r| r.lag(sent - due));
            }
            let result = self.on_lane(&mut conn, measured, sent).await;
            if measured {
                self.record(result, if held { due } else { sent }, sent);
            }
            k += step;
        }
    }

    /// Open loop with concurrent requests (HTTP/2 round-robin over `slots`, or a new connection
    /// per request when `slots` is empty), at most `--max-in-flight` at once.
    async fn open_dispatch(
        &self,
        plan: &Plan,
        slots: &[AsyncMutex<Option<http2::SendRequest<Body>>>],
    ) {
        let cap = self.spec.max_in_flight;
        let mut in_flight = FuturesUnordered::new();
        let mut k = 0u64;
        // When the cap last went from full to not full: a request due before that was held
        // back by the target's slowness and counts from its intended time.
        let mut freed: Option<Instant> = None;
        let timer = sleep_until(self.clock.t0);
        tokio::pin!(timer);
        loop {
            if k >= plan.end && in_flight.is_empty() {
                break;
            }
            let can_start = k < plan.end && in_flight.len() < cap;
            tokio::select! {
                biased;
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {
                    if in_flight.len() + 1 == cap {
                        freed = Some(Instant::now());
                    }
                }
                () = &mut timer, if can_start => {
                    let due = self.clock.t0 + plan.offset(k);
                    let now = Instant::now();
                    if now >= self.clock.drain {
                        self.stats.with(|r| r.errors(plan.measured_left(k, 1), NOT_SENT));
                        k = plan.end;
                        continue;
                    }
                    let held = freed.is_some_and(|f| f > due);
                    let measured = plan.measured(k);
                    if measured && !held {
                        self.stats.with(|r| r.lag(now - due));
                    }
                    let slot = (!slots.is_empty()).then(|| &slots[(k % slots.len() as u64) as usize]);
                    in_flight.push(self.dispatched(slot, measured, if held { due } else { now }, now));
                    k += 1;
                    if k < plan.end {
                        timer.as_mut().reset(self.clock.t0 + plan.offset(k));
                    }
                }
                else => break,
            }
        }
    }

    async fn dispatched(
        &self,
        slot: Option<&AsyncMutex<Option<http2::SendRequest<Body>>>>,
        measured: bool,
        start: Instant,
        sent: Instant,
    ) {
        let result = match slot {
            Some(slot) => self.on_shared(slot, measured, sent).await,
            None => self.on_fresh(measured, sent).await,
        };
        if measured {
            self.record(result, start, sent);
        }
    }

    /// Closed loop: back to back on one connection (or a new one per request) until the
    /// window ends, each request measured from its send.
    async fn closed_lane(&self, mut conn: Option<Sender>) {
        loop {
            let sent = Instant::now();
            if sent >= self.clock.we {
                return;
            }
            let measured = sent >= self.clock.ws;
            let result = if self.spec.new_conn {
                self.on_fresh(measured, sent).await
            } else {
                self.on_lane(&mut conn, measured, sent).await
            };
            let transport = result.as_ref().is_err_and(Failure::is_transport);
            if measured {
                self.record(result, sent, sent);
            }
            if transport {
                sleep(CLOSED_LOOP_BACKOFF).await;
            }
        }
    }
}
