//! One `failsafe` circuit breaker per downstream service, with its state exposed for metrics
//! and `GET /api/v1/services`.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU8, Ordering},
    },
    time::Duration,
};

use failsafe::{
    Config, Instrument, StateMachine,
    backoff::{self, Exponential},
    failure_policy::{self, ConsecutiveFailures},
};

use super::Service;

/// Breaker states, as the `scenehook_circuit_breaker_state` gauge reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed = 0,
    HalfOpen = 1,
    Open = 2,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::HalfOpen => "half_open",
            Self::Open => "open",
        }
    }
}

/// Mirrors transitions into an atomic, the gauge and a transition counter.
#[derive(Debug, Clone)]
struct Probe {
    service: &'static str,
    state: Arc<AtomicU8>,
}

impl Probe {
    fn set(&self, state: BreakerState) {
        self.state.store(state as u8, Ordering::Relaxed);
        metrics::gauge!("scenehook_circuit_breaker_state", "service" => self.service)
            .set(state as u8 as f64);
        metrics::counter!(
            "scenehook_circuit_breaker_transitions_total",
            "service" => self.service,
            "to" => state.as_str()
        )
        .increment(1);
        tracing::info!(
            service = self.service,
            state = state.as_str(),
            "circuit breaker"
        );
    }
}

impl Instrument for Probe {
    fn on_call_rejected(&self) {}
    fn on_open(&self) {
        self.set(BreakerState::Open);
    }
    fn on_half_open(&self) {
        self.set(BreakerState::HalfOpen);
    }
    fn on_closed(&self) {
        self.set(BreakerState::Closed);
    }
}

/// A service's breaker: opens after consecutive failures, lets one probe through once its
/// open time (growing exponentially between bounds) has passed.
#[derive(Clone)]
pub struct Breaker {
    machine: StateMachine<ConsecutiveFailures<Exponential>, Probe>,
    state: Arc<AtomicU8>,
}

impl Breaker {
    pub fn new(service: Service, failures: u32, open_min: Duration, open_max: Duration) -> Self {
        let state = Arc::new(AtomicU8::new(BreakerState::Closed as u8));
        let probe = Probe {
            service: service.as_str(),
            state: state.clone(),
        };
        // failsafe's backoff works in whole seconds: at least 1 s open.
        let open_min = open_min.max(Duration::from_secs(1));
        let policy = failure_policy::consecutive_failures(
            failures.max(1),
            backoff::exponential(open_min, open_max.max(open_min)),
        );
        Self {
            machine: Config::new()
                .failure_policy(policy)
                .instrument(probe)
                .build(),
            state,
        }
    }

    /// Whether a call may go out now (moves an expired open breaker to half-open).
    pub fn permits(&self) -> bool {
        self.machine.is_call_permitted()
    }
    pub fn success(&self) {
        self.machine.on_success();
    }
    pub fn failure(&self) {
        self.machine.on_error();
    }
    pub fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Relaxed) {
            0 => BreakerState::Closed,
            1 => BreakerState::HalfOpen,
            _ => BreakerState::Open,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_consecutive_failures_and_closes_after_a_good_probe() {
        let b = Breaker::new(
            Service::Video,
            3,
            Duration::from_secs(1),
            Duration::from_secs(2),
        );
        for _ in 0..3 {
            assert!(b.permits());
            b.failure();
        }
        assert_eq!(b.state(), BreakerState::Open);
        assert!(!b.permits());
        std::thread::sleep(Duration::from_millis(1100));
        assert!(b.permits());
        assert_eq!(b.state(), BreakerState::HalfOpen);
        b.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }
}
