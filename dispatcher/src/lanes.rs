//! One lane per endpoint in this process: at most `cap` attempts in flight, an optional rate
//! cap (a token bucket holding one second of tokens), and a bounded queue of deliveries
//! waiting for room. A slow or busy endpoint only ever waits on its own lane; a lane whose
//! queue is full takes nothing more (intake writes the delivery for later, and claims leave
//! the endpoint out), so it never takes capacity from the others.
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

struct Lane<J> {
    in_flight: u32,
    cap: u32,
    rate: u32,
    tokens: f64,
    refilled: Instant,
    queue: VecDeque<J>,
}

impl<J> Lane<J> {
    fn refill(&mut self, now: Instant) {
        if self.rate > 0 {
            let earned = now.duration_since(self.refilled).as_secs_f64() * f64::from(self.rate);
            self.tokens = (self.tokens + earned).min(f64::from(self.rate));
        }
        self.refilled = now;
    }

    /// Takes a place for one attempt if the caps allow.
    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.in_flight >= self.cap || (self.rate > 0 && self.tokens < 1.0) {
            return false;
        }
        self.in_flight += 1;
        if self.rate > 0 {
            self.tokens -= 1.0;
        }
        true
    }
}

pub struct Lanes<J> {
    default_cap: u32,
    /// Jobs a lane may hold waiting.
    max_queued: usize,
    lanes: Mutex<HashMap<String, Lane<J>>>,
}

/// What became of a job offered to a lane.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit<J> {
    /// It may start now.
    Start(J),
    /// It waits in the lane and starts when the lane has room (`finish` or `ready` hand it out).
    Queued,
    /// The lane's queue is full: the job is handed back.
    Full(J),
}

impl<J> Lanes<J> {
    pub fn new(default_cap: u32, max_queued: usize) -> Self {
        Lanes { default_cap, max_queued, lanes: Mutex::default() }
    }

    /// The effective concurrency cap for an endpoint's setting (0 = default).
    pub fn cap(&self, setting: u32) -> u32 {
        if setting == 0 { self.default_cap } else { setting }
    }

    /// Starts the job now if the lane has room, else queues it behind the lane's others, or
    /// hands it back when the queue is full.
    pub fn admit(&self, endpoint: &str, cap: u32, rate: u32, job: J) -> Admit<J> {
        self.admit_at(endpoint, cap, rate, job, Instant::now())
    }

    fn admit_at(&self, endpoint: &str, cap: u32, rate: u32, job: J, now: Instant) -> Admit<J> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let lane = lanes.entry(endpoint.to_string()).or_insert_with(|| Lane {
            in_flight: 0,
            cap: 0,
            rate,
            tokens: f64::from(rate),
            refilled: now,
            queue: VecDeque::new(),
        });
        lane.cap = self.cap(cap);
        lane.rate = rate;
        if lane.queue.is_empty() && lane.take(now) {
            return Admit::Start(job);
        }
        if lane.queue.len() >= self.max_queued {
            return Admit::Full(job);
        }
        lane.queue.push_back(job);
        Admit::Queued
    }

    /// An attempt ended: frees its place and returns the next queued job if it may start.
    pub fn finish(&self, endpoint: &str) -> Option<J> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let lane = lanes.get_mut(endpoint)?;
        lane.in_flight = lane.in_flight.saturating_sub(1);
        let next = if !lane.queue.is_empty() && lane.take(Instant::now()) { lane.queue.pop_front() } else { None };
        if lane.in_flight == 0 && lane.queue.is_empty() && lane.rate == 0 {
            lanes.remove(endpoint);
        }
        next
    }

    /// Queued jobs whose lane has room again (rate-capped lanes refill over time).
    pub fn ready(&self) -> Vec<J> {
        let now = Instant::now();
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for lane in lanes.values_mut() {
            while !lane.queue.is_empty() && lane.take(now) {
                out.extend(lane.queue.pop_front());
            }
        }
        out
    }

    /// Endpoints whose queue holds `rounds` × their cap: the next claim leaves them out.
    pub fn full(&self, rounds: u32) -> Vec<String> {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        let full = |l: &Lane<J>| l.queue.len() >= self.max_queued.min((l.cap * rounds) as usize);
        lanes.iter().filter(|(_, l)| full(l)).map(|(id, _)| id.clone()).collect()
    }

    /// Attempts in flight and jobs queued, over all lanes.
    pub fn load(&self) -> (usize, usize) {
        let lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.values().fold((0, 0), |(f, q), l| (f + l.in_flight as usize, q + l.queue.len()))
    }

    /// Empties every queue (shutdown: the jobs are handed back).
    pub fn drain(&self) -> Vec<J> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|p| p.into_inner());
        lanes.values_mut().flat_map(|l| l.queue.drain(..)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn concurrency_cap_queues_then_hands_over() {
        let lanes = Lanes::new(2, 3);
        assert_eq!(lanes.admit("a", 0, 0, 1), Admit::Start(1));
        assert_eq!(lanes.admit("a", 0, 0, 2), Admit::Start(2));
        assert_eq!(lanes.admit("a", 0, 0, 3), Admit::Queued, "third waits");
        assert_eq!(lanes.admit("a", 0, 0, 4), Admit::Queued);
        assert_eq!(lanes.admit("b", 0, 0, 9), Admit::Start(9), "other endpoints unaffected");
        assert_eq!(lanes.full(1), vec!["a".to_string()]);
        assert!(lanes.full(2).is_empty());
        assert_eq!(lanes.load(), (3, 2));
        assert_eq!(lanes.finish("a"), Some(3), "the next queued job takes the freed place, in order");
        assert_eq!(lanes.finish("a"), Some(4));
        assert!(lanes.full(1).is_empty());
        assert_eq!(lanes.admit("c", 3, 0, 5), Admit::Start(5));
        assert_eq!(lanes.drain(), Vec::<i32>::new());
        for j in 10..13 {
            assert_eq!(lanes.admit("a", 0, 0, j), Admit::Queued);
        }
        assert_eq!(lanes.admit("a", 0, 0, 13), Admit::Full(13), "the queue holds at most 3");
    }

    #[test]
    fn rate_cap_per_endpoint() {
        let lanes = Lanes::new(100, 100);
        let t0 = Instant::now();
        let started = (0..10).filter(|j| matches!(lanes.admit_at("a", 0, 3, *j, t0), Admit::Start(_))).count();
        assert_eq!(started, 3, "one second of tokens");
        let mut lanes_now = lanes.lanes.lock().unwrap();
        let lane = lanes_now.get_mut("a").unwrap();
        lane.in_flight = 0;
        assert!(!lane.take(t0 + Duration::from_millis(200)), "no token yet after 0.2 s");
        assert!(lane.take(t0 + Duration::from_millis(340)), "a token came back after 1/3 s");
        assert!(!lane.take(t0 + Duration::from_millis(340)));
        drop(lanes_now);
        assert_eq!(lanes.drain().len(), 7, "the rest waited in the queue");
    }
}
