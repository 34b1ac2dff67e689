//! A reliable, ordered byte stream over a lossy datagram link: selective-repeat ARQ.
//!
//! A BLE link carries datagrams (GATT writes without response, notifications) of at most
//! the link's MTU minus 3 bytes, and may lose them; reordering does not happen on one BLE
//! link but the state machine does not rely on that. [`Arq`] turns such a link into a byte
//! stream in each direction, as a pure state machine: the caller passes in the time, the
//! datagrams received and the bytes to send, and takes out datagrams to transmit and the
//! next deadline. No clock, socket or task lives here (`stream.rs` drives it).
//!
//! - **Fragmentation**: bytes are cut into data frames of at most `max_datagram - 5` bytes,
//!   or the power policy's chunk size if smaller ([`ArqConfig::max_payload`]).
//! - **Selective repeat**: every data frame has a sequence number; the receiver acks
//!   cumulatively and with a selective-ack bitmap of up to 128 frames, keeps frames that arrive out of
//!   order (within its window) and delivers bytes in order. The sender retransmits a frame
//!   when its retransmission timeout passes (RTT estimated as in RFC 6298, Karn's rule,
//!   backoff doubling per retry), or early when three later frames were acked past it.
//! - **Flow control and backpressure**: the receiver advertises how many frames its receive
//!   buffer still holds; the sender never has more unacked frames in flight than that or
//!   its own window. [`Arq::write`] accepts only what fits the send buffer, so a writer
//!   that outruns the link is told to wait, end to end. A zero window is probed.
//! - **Dead links**: a frame unacked after [`ArqConfig::max_retransmits`] retransmissions,
//!   or nothing heard from the peer for [`ArqConfig::dead_after`] (an idle link sends a
//!   probe every [`ArqConfig::probe_every`], which the peer answers), makes the link
//!   [`LinkState::Dead`]; the caller is told, and nothing is dropped silently: bytes
//!   written but not acknowledged are reported with the state.
//!
//! Bounded: send buffer, receive buffer (in-order and out-of-order bytes together) and the
//! frames in flight are all capped by [`ArqConfig`]. A link carries at most 2^32 frames per
//! direction; past that it is declared dead (a new link starts from zero).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::frame::{
    Frame, FrameError, ResetReason, ACK_HEADER, DATA_HEADER, MAX_SACK_BYTES, MIN_DATAGRAM,
};

/// Acked-past count that triggers an early retransmission.
const FAST_RETRANSMIT_AFTER: u32 = 3;

/// The limits and timers of one link.
#[derive(Debug, Clone)]
pub struct ArqConfig {
    /// Largest datagram the link carries (ATT MTU − 3 on BLE), at least 20.
    pub max_datagram: usize,
    /// A smaller payload per frame than the datagram allows (the power policy's chunk size).
    pub max_payload: Option<usize>,
    /// Most frames in flight (sent, not yet acked).
    pub window: u32,
    /// Bytes [`Arq::write`] accepts beyond what is acked.
    pub send_buffer: usize,
    /// Bytes held for the reader: delivered but unread, plus received out of order.
    pub recv_buffer: usize,
    pub rto_initial: Duration,
    pub rto_min: Duration,
    pub rto_max: Duration,
    /// Retransmissions of one frame before the link is dead.
    pub max_retransmits: u32,
    /// An ack waits this long for more frames to cover (one ack per two frames otherwise).
    pub ack_delay: Duration,
    /// Silence after which a probe is sent.
    pub probe_every: Duration,
    /// Silence after which the link is dead.
    pub dead_after: Duration,
}

impl Default for ArqConfig {
    fn default() -> Self {
        Self {
            max_datagram: 182,
            max_payload: None,
            window: 128,
            send_buffer: 64 * 1024,
            recv_buffer: 64 * 1024,
            rto_initial: Duration::from_millis(500),
            rto_min: Duration::from_millis(100),
            rto_max: Duration::from_secs(4),
            max_retransmits: 20,
            ack_delay: Duration::from_millis(10),
            probe_every: Duration::from_secs(3),
            dead_after: Duration::from_secs(10),
        }
    }
}

impl ArqConfig {
    /// Frames a selective ack fits, past the cumulative ack (bounded by the datagram).
    fn sack_bits(&self) -> u32 {
        let bytes = (self.max_datagram.max(MIN_DATAGRAM) - ACK_HEADER).min(MAX_SACK_BYTES);
        bytes as u32 * 8
    }

    /// Frames in flight at most: the configured window, cut to what one ack can describe
    /// (frames an ack cannot mention would be retransmitted for nothing).
    pub fn effective_window(&self) -> u32 {
        self.window.clamp(1, self.sack_bits() + 1)
    }

    /// Payload bytes per data frame.
    pub fn payload_per_frame(&self) -> usize {
        let by_datagram = self.max_datagram.max(MIN_DATAGRAM) - DATA_HEADER;
        self.max_payload
            .map_or(by_datagram, |p| p.clamp(1, by_datagram))
    }
}

/// Where the link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Open,
    /// Both directions finished and every byte acknowledged.
    Closed,
    Dead(DeadReason),
}

/// Why a link was given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DeadReason {
    #[error("a frame stayed unacknowledged through every retransmission")]
    Unacknowledged,
    #[error("nothing heard from the peer for too long")]
    Silent,
    #[error("the peer reset the link ({0:?})")]
    ResetByPeer(ResetReason),
    #[error("the link was aborted locally")]
    Aborted,
    #[error("the peer broke the link protocol")]
    ProtocolViolation,
    #[error("the link used up its sequence numbers")]
    SequenceExhausted,
    #[error("the radio link under the stream broke")]
    LinkLost,
}

/// What [`Arq::read`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// This many bytes were copied.
    Data(usize),
    /// Nothing to read yet.
    Pending,
    /// The peer finished its stream and every byte was read.
    End,
    /// The link is dead; bytes not yet read are lost with it.
    Dead(DeadReason),
}

/// Counters of one link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ArqStats {
    pub datagrams_sent: u64,
    pub datagrams_received: u64,
    pub data_frames_sent: u64,
    pub retransmissions: u64,
    pub fast_retransmissions: u64,
    pub duplicates_received: u64,
    /// Frames refused: malformed, beyond the window, or no room.
    pub malformed_received: u64,
    pub beyond_window_received: u64,
    pub bytes_acked: u64,
    pub bytes_delivered: u64,
}

#[derive(Debug)]
struct InFlight {
    /// `None` for the fin.
    payload: Option<Vec<u8>>,
    sent_at: Instant,
    retransmits: u32,
    /// Acks, since this frame was last sent, of frames sent after it.
    passed: u32,
    /// When it was last sent, in transmissions of this link (orders acks against sends).
    order: u64,
    /// Waiting to be sent again.
    lost: bool,
}

#[derive(Debug)]
enum Received {
    Data(Vec<u8>),
    Fin,
}

/// One end of a link.
#[derive(Debug)]
pub struct Arq {
    config: ArqConfig,
    state: LinkState,
    stats: ArqStats,
    last_heard: Instant,
    probe_sent_at: Option<Instant>,
    reset_to_send: Option<ResetReason>,

    // Sending.
    unsent: VecDeque<u8>,
    fin_wanted: bool,
    fin_sent: bool,
    next_seq: u32,
    /// Data and fin transmissions so far, retransmissions included.
    transmissions: u64,
    in_flight: BTreeMap<u32, InFlight>,
    in_flight_bytes: usize,
    peer_window: u32,
    srtt: Option<Duration>,
    rttvar: Duration,
    rto: Duration,

    // Receiving.
    recv_next: u32,
    out_of_order: BTreeMap<u32, Received>,
    out_of_order_bytes: usize,
    readable: VecDeque<u8>,
    peer_finished: bool,
    ack_owed: u32,
    ack_due: Option<Instant>,
}

impl Arq {
    pub fn new(config: ArqConfig, now: Instant) -> Self {
        let rto = config.rto_initial;
        let peer_window = config.window;
        Self {
            config,
            state: LinkState::Open,
            stats: ArqStats::default(),
            last_heard: now,
            probe_sent_at: None,
            reset_to_send: None,
            unsent: VecDeque::new(),
            fin_wanted: false,
            fin_sent: false,
            next_seq: 0,
            transmissions: 0,
            in_flight: BTreeMap::new(),
            in_flight_bytes: 0,
            peer_window,
            srtt: None,
            rttvar: Duration::ZERO,
            rto,
            recv_next: 0,
            out_of_order: BTreeMap::new(),
            out_of_order_bytes: 0,
            readable: VecDeque::new(),
            peer_finished: false,
            ack_owed: 0,
            ack_due: None,
        }
    }

    pub fn state(&self) -> LinkState {
        self.state
    }

    pub fn stats(&self) -> ArqStats {
        self.stats
    }

    pub fn config(&self) -> &ArqConfig {
        &self.config
    }

    /// Bytes written but not yet acknowledged by the peer (lost if the link dies now).
    pub fn unacknowledged(&self) -> usize {
        self.unsent.len() + self.in_flight_bytes
    }

    /// Room for [`Arq::write`] now.
    pub fn writable(&self) -> usize {
        if self.state != LinkState::Open || self.fin_wanted {
            return 0;
        }
        self.config
            .send_buffer
            .saturating_sub(self.unacknowledged())
    }

    /// Queues as much of `data` as fits; returns how much. 0 means: wait for acks.
    pub fn write(&mut self, data: &[u8]) -> usize {
        let n = self.writable().min(data.len());
        self.unsent.extend(&data[..n]);
        n
    }

    /// Ends this direction of the stream after the bytes already written.
    pub fn finish(&mut self) {
        if self.state == LinkState::Open {
            self.fin_wanted = true;
        }
    }

    /// Gives the link up now; the peer is told.
    pub fn abort(&mut self) {
        if self.state == LinkState::Open {
            self.die(DeadReason::Aborted);
        }
    }

    /// The link under the stream broke: nothing more can be sent or received.
    pub fn link_lost(&mut self) {
        if self.state == LinkState::Open {
            self.state = LinkState::Dead(DeadReason::LinkLost);
        }
    }

    /// True once everything written, the fin included, is acknowledged.
    pub fn finished_sending(&self) -> bool {
        self.fin_sent && self.in_flight.is_empty()
    }

    /// Copies bytes received in order into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> Read {
        if let LinkState::Dead(reason) = self.state {
            return Read::Dead(reason);
        }
        if self.readable.is_empty() {
            return if self.peer_finished {
                Read::End
            } else {
                Read::Pending
            };
        }
        let before = self.advertised_window();
        let n = buf.len().min(self.readable.len());
        for (slot, byte) in buf.iter_mut().zip(self.readable.drain(..n)) {
            *slot = byte;
        }
        release_idle(&mut self.readable);
        // A window that opened from nothing is announced, or the sender would wait for its
        // next probe.
        if before == 0 && self.advertised_window() > 0 {
            self.ack_owed = self.ack_owed.max(2);
        }
        self.check_closed();
        Read::Data(n)
    }

    /// Bytes ready for [`Arq::read`].
    pub fn readable(&self) -> usize {
        self.readable.len()
    }

    /// Takes one datagram from the peer.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Result<(), FrameError> {
        if matches!(self.state, LinkState::Dead(_)) {
            return Ok(());
        }
        self.stats.datagrams_received += 1;
        let frame = match Frame::decode(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                self.stats.malformed_received += 1;
                return Err(error);
            }
        };
        self.last_heard = now;
        self.probe_sent_at = None;
        match frame {
            Frame::Data { seq, payload } => self.on_data(now, seq, Received::Data(payload)),
            Frame::Fin { seq } => self.on_data(now, seq, Received::Fin),
            Frame::Ack { next, window, sack } => self.on_ack(now, next, window, &sack),
            Frame::Probe => self.ack_owed = self.ack_owed.max(2),
            Frame::Reset { reason } => {
                self.state = LinkState::Dead(DeadReason::ResetByPeer(reason))
            }
        }
        self.check_closed();
        Ok(())
    }

    /// The next datagram to send, if any; call until `None` whenever the link can take one.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(reason) = self.reset_to_send.take() {
            return Some(self.sent(Frame::Reset { reason }));
        }
        if matches!(self.state, LinkState::Dead(_)) {
            return None;
        }
        let ack_due = self.ack_owed >= 2 || self.ack_due.is_some_and(|due| now >= due);
        if ack_due {
            let ack = self.ack_frame();
            self.check_closed();
            return Some(ack);
        }
        if self.state == LinkState::Closed {
            // A closed link lingers only to ack a peer that missed our last ack.
            return None;
        }
        if let Some(frame) = self.next_retransmission(now) {
            return Some(frame);
        }
        if let Some(frame) = self.next_new_frame(now) {
            return Some(frame);
        }
        if self.probe_due(now) {
            self.probe_sent_at = Some(now);
            return Some(self.sent(Frame::Probe));
        }
        None
    }

    /// Runs the timers: retransmission timeouts and dead-link detection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state != LinkState::Open {
            return;
        }
        if now.saturating_duration_since(self.last_heard) >= self.config.dead_after {
            self.die(DeadReason::Silent);
            return;
        }
        let mut dead = false;
        for frame in self.in_flight.values_mut() {
            if frame.lost {
                continue;
            }
            let rto = backoff(self.rto, frame.retransmits, self.config.rto_max);
            if now.saturating_duration_since(frame.sent_at) >= rto {
                if frame.retransmits >= self.config.max_retransmits {
                    dead = true;
                    break;
                }
                frame.lost = true;
            }
        }
        if dead {
            self.die(DeadReason::Unacknowledged);
        }
    }

    /// The earliest time [`Arq::handle_timeout`] or [`Arq::poll_transmit`] has work to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != LinkState::Open {
            return None;
        }
        let mut earliest = self.last_heard + self.config.dead_after;
        if let Some(due) = self.ack_due {
            earliest = earliest.min(due);
        }
        for frame in self.in_flight.values().filter(|f| !f.lost) {
            let rto = backoff(self.rto, frame.retransmits, self.config.rto_max);
            earliest = earliest.min(frame.sent_at + rto);
        }
        if let Some(probe_at) = self.next_probe_at() {
            earliest = earliest.min(probe_at);
        }
        Some(earliest)
    }

    fn on_data(&mut self, now: Instant, seq: u32, received: Received) {
        if self.state == LinkState::Closed {
            self.stats.duplicates_received += 1;
            self.ack_owed = self.ack_owed.max(2);
            return;
        }
        let offset = seq.wrapping_sub(self.recv_next);
        if offset >= 1 << 31 {
            // Behind the cumulative ack: a retransmission of something we have. Ack again,
            // the sender evidently missed our ack.
            self.stats.duplicates_received += 1;
            self.ack_owed = self.ack_owed.max(2);
            return;
        }
        let window = self.config.effective_window();
        if offset >= window || self.out_of_order.contains_key(&seq) {
            if offset < window {
                self.stats.duplicates_received += 1;
            } else {
                self.stats.beyond_window_received += 1;
            }
            self.ack_owed = self.ack_owed.max(2);
            return;
        }
        if self.peer_finished {
            // Data after the fin was delivered: the peer broke the protocol.
            self.die(DeadReason::ProtocolViolation);
            self.reset_to_send = Some(ResetReason::ProtocolViolation);
            return;
        }
        let len = match &received {
            Received::Data(payload) => payload.len(),
            Received::Fin => 0,
        };
        if self.readable.len() + self.out_of_order_bytes + len > self.config.recv_buffer {
            // The sender overran our window; it retransmits once we have room.
            self.stats.beyond_window_received += 1;
            self.ack_owed = self.ack_owed.max(2);
            return;
        }
        self.out_of_order_bytes += len;
        self.out_of_order.insert(seq, received);
        let in_order = offset == 0;
        while let Some(next) = self.out_of_order.remove(&self.recv_next) {
            match next {
                Received::Data(payload) => {
                    self.out_of_order_bytes -= payload.len();
                    self.stats.bytes_delivered += payload.len() as u64;
                    self.readable.extend(payload);
                }
                Received::Fin => self.peer_finished = true,
            }
            self.recv_next = self.recv_next.wrapping_add(1);
        }
        if in_order {
            self.ack_owed += 1;
            if self.ack_due.is_none() {
                self.ack_due = Some(now + self.config.ack_delay);
            }
        } else {
            // A gap: tell the sender at once which frames arrived.
            self.ack_owed = self.ack_owed.max(2);
        }
        if self.peer_finished {
            self.ack_owed = self.ack_owed.max(2);
        }
    }

    fn on_ack(&mut self, now: Instant, next: u32, window: u16, sack: &[u8]) {
        self.peer_window = u32::from(window);
        let outstanding = self.next_seq.wrapping_sub(self.lowest_unacked());
        let acked_count = next.wrapping_sub(self.lowest_unacked());
        if acked_count > outstanding {
            // Acks something never sent.
            self.stats.malformed_received += 1;
            return;
        }
        let mut newly_acked: Vec<u32> = self
            .in_flight
            .keys()
            .copied()
            .filter(|&seq| seq_lt(seq, next))
            .collect();
        for (byte_index, byte) in sack.iter().enumerate() {
            for bit in 0..8u32 {
                if byte & (1 << bit) != 0 {
                    let seq = next.wrapping_add(1 + byte_index as u32 * 8 + bit);
                    if self.in_flight.contains_key(&seq) {
                        newly_acked.push(seq);
                    }
                }
            }
        }
        // The latest transmission acked now: a frame still in flight that was sent before
        // it was lost (no reordering on the link) or is about to be acked; three such acks
        // make it lost. Frames sent after it are not judged by it.
        let mut latest_acked = None;
        for seq in newly_acked {
            if let Some(frame) = self.in_flight.remove(&seq) {
                let len = frame.payload.as_ref().map_or(0, Vec::len);
                self.in_flight_bytes -= len;
                self.stats.bytes_acked += len as u64;
                if frame.retransmits == 0 && !frame.lost {
                    self.sample_rtt(now.saturating_duration_since(frame.sent_at));
                }
                latest_acked = latest_acked.max(Some(frame.order));
            }
        }
        if let Some(latest) = latest_acked {
            for frame in self.in_flight.values_mut() {
                if frame.order < latest && !frame.lost {
                    frame.passed += 1;
                    if frame.passed >= FAST_RETRANSMIT_AFTER
                        && frame.retransmits < self.config.max_retransmits
                    {
                        frame.lost = true;
                        self.stats.fast_retransmissions += 1;
                    }
                }
            }
        }
    }

    fn sample_rtt(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let delta = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + delta) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        let srtt = self.srtt.unwrap_or(rtt);
        self.rto = (srtt + (self.rttvar * 4).max(self.config.ack_delay * 2))
            .clamp(self.config.rto_min, self.config.rto_max);
    }

    fn next_retransmission(&mut self, now: Instant) -> Option<Vec<u8>> {
        let (&seq, frame) = self.in_flight.iter_mut().find(|(_, f)| f.lost)?;
        frame.lost = false;
        frame.retransmits += 1;
        frame.passed = 0;
        frame.sent_at = now;
        frame.order = self.transmissions;
        self.transmissions += 1;
        self.stats.retransmissions += 1;
        let out = match &frame.payload {
            Some(payload) => Frame::Data {
                seq,
                payload: payload.clone(),
            },
            None => Frame::Fin { seq },
        };
        Some(self.sent(out))
    }

    fn next_new_frame(&mut self, now: Instant) -> Option<Vec<u8>> {
        let window = self.config.effective_window().min(self.peer_window);
        let in_flight = self.next_seq.wrapping_sub(self.lowest_unacked());
        if in_flight >= window {
            return None;
        }
        let fin_now = self.unsent.is_empty() && self.fin_wanted && !self.fin_sent;
        if self.unsent.is_empty() && !fin_now {
            return None;
        }
        if self.next_seq == u32::MAX {
            self.die(DeadReason::SequenceExhausted);
            return None;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let payload = if fin_now {
            self.fin_sent = true;
            None
        } else {
            let n = self.config.payload_per_frame().min(self.unsent.len());
            let bytes: Vec<u8> = self.unsent.drain(..n).collect();
            release_idle(&mut self.unsent);
            self.in_flight_bytes += bytes.len();
            self.stats.data_frames_sent += 1;
            Some(bytes)
        };
        let out = match &payload {
            Some(payload) => Frame::Data {
                seq,
                payload: payload.clone(),
            },
            None => Frame::Fin { seq },
        };
        self.in_flight.insert(
            seq,
            InFlight {
                payload,
                sent_at: now,
                retransmits: 0,
                passed: 0,
                order: self.transmissions,
                lost: false,
            },
        );
        self.transmissions += 1;
        Some(self.sent(out))
    }

    fn probe_due(&self, now: Instant) -> bool {
        self.next_probe_at().is_some_and(|at| now >= at)
    }

    /// Probes go out after `probe_every` of silence, and while the peer's window is shut and
    /// we have something to send (every retransmission timeout).
    fn next_probe_at(&self) -> Option<Instant> {
        let since = self.probe_sent_at.unwrap_or(self.last_heard);
        let quiet = since + self.config.probe_every;
        let shut = (self.peer_window == 0 && (!self.unsent.is_empty() || self.fin_wanted))
            .then(|| since + self.rto);
        Some(shut.map_or(quiet, |s| s.min(quiet)))
    }

    fn ack_frame(&mut self) -> Vec<u8> {
        self.ack_owed = 0;
        self.ack_due = None;
        let bits = self.config.sack_bits();
        let mut sack = Vec::new();
        for &seq in self.out_of_order.keys() {
            let offset = seq.wrapping_sub(self.recv_next);
            if (1..=bits).contains(&offset) {
                let bit = (offset - 1) as usize;
                if sack.len() <= bit / 8 {
                    sack.resize(bit / 8 + 1, 0);
                }
                sack[bit / 8] |= 1 << (bit % 8);
            }
        }
        let window = u16::try_from(self.advertised_window()).unwrap_or(u16::MAX);
        self.sent(Frame::Ack {
            next: self.recv_next,
            window,
            sack,
        })
    }

    /// Frames the receive buffer still has room for.
    fn advertised_window(&self) -> u32 {
        let used = self.readable.len() + self.out_of_order_bytes;
        let free = self.config.recv_buffer.saturating_sub(used);
        let frames = free / self.config.payload_per_frame();
        u32::try_from(frames)
            .unwrap_or(u32::MAX)
            .min(self.config.effective_window())
    }

    fn lowest_unacked(&self) -> u32 {
        self.in_flight
            .keys()
            .next()
            .copied()
            .unwrap_or(self.next_seq)
    }

    fn sent(&mut self, frame: Frame) -> Vec<u8> {
        self.stats.datagrams_sent += 1;
        frame.encode()
    }

    fn die(&mut self, reason: DeadReason) {
        self.state = LinkState::Dead(reason);
        if !matches!(reason, DeadReason::ResetByPeer(_)) {
            self.reset_to_send = Some(match reason {
                DeadReason::Aborted => ResetReason::Aborted,
                DeadReason::ProtocolViolation => ResetReason::ProtocolViolation,
                _ => ResetReason::Dead,
            });
        }
    }

    fn check_closed(&mut self) {
        if self.state == LinkState::Open
            && self.finished_sending()
            && self.peer_finished
            && self.readable.is_empty()
            && self.ack_owed == 0
        {
            self.state = LinkState::Closed;
        }
    }
}

/// `a < b` in sequence space (within half the space).
fn seq_lt(a: u32, b: u32) -> bool {
    let d = b.wrapping_sub(a);
    d != 0 && d < 1 << 31
}

fn backoff(rto: Duration, retransmits: u32, max: Duration) -> Duration {
    rto.saturating_mul(1 << retransmits.min(16)).min(max)
}

/// Capacity an empty buffer keeps. A burst grows a buffer to its bound (64 KiB); holding
/// that on every idle link would cost a phone with 7 links ~1.8 MiB for nothing.
const IDLE_CAPACITY: usize = 4096;

fn release_idle(buffer: &mut VecDeque<u8>) {
    if buffer.is_empty() && buffer.capacity() > IDLE_CAPACITY {
        buffer.shrink_to(IDLE_CAPACITY);
    }
}

#[cfg(test)]
mod tests;
