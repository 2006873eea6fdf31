//! Per-endpoint admission in this process: a concurrency cap and an optional rate cap (a
//! token bucket holding one second of tokens), so a slow or busy endpoint only ever waits
//! on itself. Endpoints without room are left out of the next claim.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

struct Slot {
    in_flight: u32,
    cap: u32,
    rate: u32,
    tokens: f64,
    refilled: Instant,
}

impl Slot {
    fn refill(&mut self, now: Instant) {
        if self.rate > 0 {
            let earned = now.duration_since(self.refilled).as_secs_f64() * f64::from(self.rate);
            self.tokens = (self.tokens + earned).min(f64::from(self.rate));
        }
        self.refilled = now;
    }

    fn has_room(&self) -> bool {
        self.in_flight < self.cap && (self.rate == 0 || self.tokens >= 1.0)
    }
}

pub struct Slots {
    default_cap: u32,
    slots: Mutex<HashMap<String, Slot>>,
}

impl Slots {
    pub fn new(default_cap: u32) -> Slots {
        Slots { default_cap, slots: Mutex::default() }
    }

    /// Takes a place for one attempt to `endpoint` if its caps allow (`cap` 0 = default).
    pub fn try_start(&self, endpoint: &str, cap: u32, rate: u32) -> bool {
        self.try_start_at(endpoint, cap, rate, Instant::now())
    }

    fn try_start_at(&self, endpoint: &str, cap: u32, rate: u32, now: Instant) -> bool {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = slots.entry(endpoint.to_string()).or_insert_with(|| Slot {
            in_flight: 0,
            cap: 0,
            rate,
            tokens: f64::from(rate),
            refilled: now,
        });
        slot.cap = if cap == 0 { self.default_cap } else { cap };
        slot.rate = rate;
        slot.refill(now);
        if !slot.has_room() {
            return false;
        }
        slot.in_flight += 1;
        if rate > 0 {
            slot.tokens -= 1.0;
        }
        true
    }

    pub fn finish(&self, endpoint: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = slots.get_mut(endpoint) {
            slot.in_flight = slot.in_flight.saturating_sub(1);
            if slot.in_flight == 0 && slot.rate == 0 {
                slots.remove(endpoint);
            }
        }
    }

    /// Endpoints with no room right now.
    pub fn busy(&self) -> Vec<String> {
        self.busy_at(Instant::now())
    }

    fn busy_at(&self, now: Instant) -> Vec<String> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .iter_mut()
            .filter_map(|(id, slot)| {
                slot.refill(now);
                (!slot.has_room()).then(|| id.clone())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrency_cap_per_endpoint() {
        let slots = Slots::new(2);
        assert!(slots.try_start("a", 0, 0) && slots.try_start("a", 0, 0));
        assert!(!slots.try_start("a", 0, 0), "third in flight refused");
        assert!(slots.try_start("b", 0, 0), "other endpoints unaffected");
        assert_eq!(slots.busy(), vec!["a".to_string()]);
        slots.finish("a");
        assert!(slots.try_start("a", 0, 0));
        assert!(slots.try_start("c", 5, 0) && slots.try_start("c", 5, 0) && slots.try_start("c", 5, 0));
    }

    #[test]
    fn rate_cap_per_endpoint() {
        let slots = Slots::new(100);
        let t0 = Instant::now();
        let admitted = (0..10).filter(|_| slots.try_start_at("a", 0, 3, t0)).count();
        assert_eq!(admitted, 3, "one second of tokens");
        assert_eq!(slots.busy_at(t0), vec!["a".to_string()]);
        let later = t0 + std::time::Duration::from_millis(200);
        assert!(!slots.try_start_at("a", 0, 3, later), "no token yet after 0.2 s");
        let later = t0 + std::time::Duration::from_millis(340);
        assert!(slots.try_start_at("a", 0, 3, later), "a token came back after 1/3 s");
        assert!(!slots.try_start_at("a", 0, 3, later));
    }
}
