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
use super::proto::{Failure, Shape, chain, finish, is_fd_exhaustion, is_refused_stream};
use super::record::{LAG_NOTICE, Recorder, Shared};
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

/// Where a request's latency starts. Held back by the target (its connection busy with a late
/// answer, or the in-flight cap full): from its intended time. Otherwise from its send, but
/// at most [`LAG_NOTICE`] (tokio's timer tick) after the intended time: a generator too busy
/// to send on time (e.g. sharing its core with the proxy under test) must not hide the
/// queueing it suffered with the target.
fn charged_from(due: Instant, sent: Instant, held: bool) -> Instant {
    if held {
        due
    } else {
        sent.min(due + LAG_NOTICE)
    }
}

/// When to wake for a request due at `due`. tokio rounds a deadline up to its next 1 ms tick
/// and epoll's timeout up to a whole millisecond, so a timer set for `due` fires 0–2 ms late
/// (most requests would count as lagged, and be charged up to 1 ms that is nobody's). Set
/// 1 ms early, it fires within about ±1 ms of `due`; an early request goes out at once and is
/// measured from its send.
fn wake_for(due: Instant) -> Instant {
    due.checked_sub(LAG_NOTICE).unwrap_or(due)
}

/// An HTTP/2 connection shared by many requests, and how many times it was replaced (so a
/// request that saw its connection fail replaces that one, not a newer one).
struct Slot {
    conn: Option<http2::SendRequest<Body>>,
    generation: u64,
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
            } else if is_refused_stream(&text) {
                Failure::Refused(text)
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
            let slots: Vec<AsyncMutex<Slot>> = if spec.new_conn {
                Vec::new()
            } else {
                let limit = spec.timeout;
                let connects =
                    (0..conns).map(|_| tokio::time::timeout(limit, ctx.connect_h2(count_initial)));
                let made = join_all(connects).await;
                made.into_iter()
                    .map(|c| {
                        AsyncMutex::new(Slot {
                            conn: c.ok().and_then(Result::ok),
                            generation: 0,
                        })
                    })
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
        let stream = TcpStream::connect(target).await.map_err(|e| {
            if is_fd_exhaustion(&e) {
                Failure::Generator(format!(
                    "connect {target}: {e} (raise the open-files limit or lower \
                     --max-in-flight)"
                ))
            } else {
                Failure::Transport(format!("connect {target}: {e}"))
            }
        })?;
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
        let in_window = done <= self.clock.we;
        self.stats.with(|r| match result {
            Ok(()) => r.ok(done - start, done - sent, in_window),
            Err(Failure::Generator(message)) => r.generator_error(&message),
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
        slot: &AsyncMutex<Slot>,
        count: bool,
        sent: Instant,
    ) -> Result<(), Failure> {
        let deadline = self.deadline(sent);
        let attempt = async {
            // A request the server never processed is sent once more: after an Unsent on a
            // new connection (the old one is dying even if it does not say closed yet), after
            // REFUSED_STREAM on the same one.
            let mut tries = 0;
            loop {
                tries += 1;
                let (sender, generation) = {
                    let mut guard = slot.lock().await;
                    let current = match guard.conn.take() {
                        Some(s) if !s.is_closed() => s,
                        _ => {
                            let fresh = self.connect_h2(count).await?;
                            guard.generation += 1;
                            fresh
                        }
                    };
                    (guard.conn.insert(current).clone(), guard.generation)
                };
                match Sender::H2(sender).exchange(&self.shape).await {
                    Err(Failure::Unsent(_)) if tries < 2 => {
                        let mut guard = slot.lock().await;
                        if guard.generation == generation {
                            guard.conn = None;
                        }
                    }
                    Err(Failure::Refused(_)) if tries < 2 => {}
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
        // When the previous exchange on this connection ended.
        let mut answered = self.clock.t0;
        while k < plan.end {
            let due = self.clock.t0 + plan.offset(k);
            if Instant::now() >= self.clock.drain {
                let left = plan.measured_left(k, step);
                self.stats.with(|r| r.errors(left, NOT_SENT));
                return;
            }
            let measured = plan.measured(k);
            // The previous answer came after this request's due time: the target held it
            // back, and it counts from its intended time. Merely finding the time passed is
            // not enough: the generator itself may have been late to run the lane.
            let held = answered > due;
            if !held {
                sleep_until(wake_for(due)).await;
            }
            let sent = Instant::now();
            if measured && !held {
                self.stats.with(|r| r.lag(sent - due));
            }
            let result = self.on_lane(&mut conn, measured, sent).await;
            answered = Instant::now();
            if measured {
                self.record(result, charged_from(due, sent, held), sent);
            }
            k += step;
        }
    }

    /// Open loop with concurrent requests (HTTP/2 round-robin over `slots`, or a new connection
    /// per request when `slots` is empty), at most `--max-in-flight` at once. Every request
    /// that is due goes out before another completion is taken: a burst of answers must not
    /// delay the schedule.
    async fn open_dispatch(&self, plan: &Plan, slots: &[AsyncMutex<Slot>]) {
        let cap = self.spec.max_in_flight;
        let mut in_flight = FuturesUnordered::new();
        let mut k = 0u64;
        // When the cap last went from full to not full: a request due before that was held
        // back by the target's slowness and counts from its intended time.
        let mut freed: Option<Instant> = None;
        let timer = sleep_until(self.clock.t0);
        tokio::pin!(timer);
        loop {
            while k < plan.end && in_flight.len() < cap {
                let due = self.clock.t0 + plan.offset(k);
                let now = Instant::now();
                if now < wake_for(due) {
                    break;
                }
                if now >= self.clock.drain {
                    self.stats
                        .with(|r| r.errors(plan.measured_left(k, 1), NOT_SENT));
                    k = plan.end;
                    break;
                }
                let held = freed.is_some_and(|f| f > due);
                let measured = plan.measured(k);
                if measured && !held {
                    self.stats.with(|r| r.lag(now - due));
                }
                let slot = (!slots.is_empty()).then(|| &slots[(k % slots.len() as u64) as usize]);
                let start = charged_from(due, now, held);
                in_flight.push(self.dispatched(slot, measured, start, now));
                k += 1;
            }
            if k >= plan.end && in_flight.is_empty() {
                break;
            }
            let waiting = k < plan.end && in_flight.len() < cap;
            if waiting {
                timer
                    .as_mut()
                    .reset(wake_for(self.clock.t0 + plan.offset(k)));
            }
            tokio::select! {
                biased;
                () = &mut timer, if waiting => {}
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {
                    if in_flight.len() + 1 == cap {
                        freed = Some(Instant::now());
                    }
                }
                else => break,
            }
        }
    }

    async fn dispatched(
        &self,
        slot: Option<&AsyncMutex<Slot>>,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_timer_tick_is_forgiven() {
        let due = Instant::now();
        let ms = Duration::from_millis;
        // On time or within the tick: from the send.
        assert_eq!(charged_from(due, due, false), due);
        assert_eq!(charged_from(due, due + ms(1), false), due + ms(1));
        // A starved generator sending 30 ms late: charged from 1 ms after the intended time.
        assert_eq!(charged_from(due, due + ms(30), false), due + ms(1));
        // Held back by the target: from the intended time.
        assert_eq!(charged_from(due, due + ms(30), true), due);
    }
}
