//! Endpoint health from what connections see, at L4: DestinationRule
//! `outlierDetection` (consecutive errors are connect failures, refused
//! CONNECTs and HBONE errors; ejection for `baseEjectionTime` × times
//! ejected, within `maxEjectionPercent` of the service's endpoints). Without
//! a rule, an endpoint the agent cannot reach is set aside the same way with
//! strait's defaults, so failover never depends on configuring detection.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;
use strait_config::{duration, manifest::networking::OutlierDetection};

/// How outliers are found and set aside for one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub consecutive_errors: u32,
    pub base_ejection: Duration,
    pub max_ejection_percent: u32,
    /// Ejected endpoints are looked at again only on this beat, as Envoy's
    /// sweep does: an ejection ends at the first beat after its time.
    pub interval: Duration,
    /// Below this share of healthy endpoints (percent), ejections are
    /// ignored and every endpoint takes connections again.
    pub min_health_percent: u32,
}

impl Settings {
    /// Istio's defaults where the rule is silent; without a rule, one
    /// failure sets the endpoint aside for 5 s (doubling each time).
    pub fn from_rule(rule: Option<&OutlierDetection>) -> Self {
        let Some(od) = rule else {
            return Self {
                consecutive_errors: 1,
                base_ejection: Duration::from_secs(5),
                max_ejection_percent: 100,
                interval: Duration::ZERO,
                min_health_percent: 0,
            };
        };
        let time = |text: &Option<String>, default: u64| {
            text.as_deref()
                .and_then(|t| duration::parse(t).ok())
                .unwrap_or(Duration::from_secs(default))
        };
        Self {
            consecutive_errors: od
                .consecutive_gateway_errors
                .or(od.consecutive_5xx_errors)
                .or(od.consecutive_errors)
                .or(od.consecutive_local_origin_failures)
                .unwrap_or(5)
                .max(1),
            base_ejection: time(&od.base_ejection_time, 30),
            max_ejection_percent: od.max_ejection_percent.unwrap_or(10).min(100),
            interval: time(&od.interval, 10),
            min_health_percent: od.min_health_percent.unwrap_or(0).min(100),
        }
    }
}

/// The longest an endpoint stays out however often it was ejected.
const MAX_EJECTION: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, Default)]
struct State {
    consecutive: u32,
    times_ejected: u32,
    ejected_until: Option<Instant>,
}

/// What `/config_dump` and `straitctl endpoints` show of an endpoint.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub consecutive_errors: u32,
    pub times_ejected: u32,
    /// Seconds until it is back, when ejected now.
    pub ejected_for_seconds: Option<f64>,
}

/// Health of every endpoint this agent has connected to.
#[derive(Debug, Default)]
pub struct Health {
    endpoints: Mutex<HashMap<SocketAddr, State>>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, State>> {
        self.endpoints
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Forgets endpoints `keep` does not want (they left the config), so
    /// the table is bounded by the endpoints that exist.
    pub fn retain(&self, keep: impl Fn(SocketAddr) -> bool) {
        self.lock().retain(|addr, _| keep(*addr));
    }

    /// Endpoints with a health record.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `addr` is set aside at `now`.
    pub fn is_ejected(&self, addr: SocketAddr, now: Instant) -> bool {
        self.lock()
            .get(&addr)
            .and_then(|s| s.ejected_until)
            .is_some_and(|until| until > now)
    }

    /// A connection to `addr` worked: its error run ends.
    pub fn success(&self, addr: SocketAddr) {
        if let Some(state) = self.lock().get_mut(&addr) {
            state.consecutive = 0;
        }
    }

    /// A connection to `addr` failed. `service` lists the endpoints of its
    /// service (for `maxEjectionPercent`). Returns whether it was ejected
    /// now.
    pub fn failure(
        &self,
        addr: SocketAddr,
        service: &[SocketAddr],
        settings: Settings,
        now: Instant,
    ) -> bool {
        let mut all = self.lock();
        let ejected_now = service
            .iter()
            .filter(|a| {
                all.get(a)
                    .and_then(|s| s.ejected_until)
                    .is_some_and(|u| u > now)
            })
            .count();
        let state = all.entry(addr).or_default();
        if state.ejected_until.is_some_and(|u| u > now) {
            return false;
        }
        state.consecutive += 1;
        if state.consecutive < settings.consecutive_errors {
            return false;
        }
        // At least one may always be ejected, as in Envoy.
        let cap = (service.len() as u64 * u64::from(settings.max_ejection_percent) / 100).max(1);
        if ejected_now as u64 >= cap {
            return false;
        }
        state.times_ejected += 1;
        state.consecutive = 0;
        let factor = state.times_ejected.min(64);
        let time = settings
            .base_ejection
            .saturating_mul(factor)
            .min(MAX_EJECTION.max(settings.base_ejection));
        state.ejected_until = Some(now + on_beat(time, settings.interval));
        true
    }

    /// Whether ejections should be ignored for a service of `total`
    /// endpoints of which `healthy` are not ejected: Istio's
    /// `minHealthPercent` (Envoy's panic threshold).
    pub fn below_min_health(settings: Settings, healthy: usize, total: usize) -> bool {
        total > 0 && (healthy as u64) * 100 < u64::from(settings.min_health_percent) * total as u64
    }

    pub fn report(&self, addr: SocketAddr, now: Instant) -> Option<Report> {
        self.lock().get(&addr).map(|s| Report {
            consecutive_errors: s.consecutive,
            times_ejected: s.times_ejected,
            ejected_for_seconds: s
                .ejected_until
                .filter(|u| *u > now)
                .map(|u| (u - now).as_secs_f64()),
        })
    }

    /// Every endpoint currently ejected.
    pub fn ejected(&self, now: Instant) -> Vec<(SocketAddr, Report)> {
        let all = self.lock();
        let mut out: Vec<(SocketAddr, Report)> = all
            .iter()
            .filter(|(_, s)| s.ejected_until.is_some_and(|u| u > now))
            .map(|(a, s)| {
                (
                    *a,
                    Report {
                        consecutive_errors: s.consecutive,
                        times_ejected: s.times_ejected,
                        ejected_for_seconds: s.ejected_until.map(|u| (u - now).as_secs_f64()),
                    },
                )
            })
            .collect();
        out.sort_by_key(|(a, _)| *a);
        out
    }
}

/// `time` rounded up to a whole number of `interval`s.
fn on_beat(time: Duration, interval: Duration) -> Duration {
    if interval.is_zero() {
        return time;
    }
    let beats = time.as_nanos().div_ceil(interval.as_nanos());
    interval.saturating_mul(u32::try_from(beats).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, i], 80))
    }

    fn settings(consecutive: u32, max_percent: u32) -> Settings {
        Settings {
            consecutive_errors: consecutive,
            base_ejection: Duration::from_secs(10),
            max_ejection_percent: max_percent,
            interval: Duration::from_secs(1),
            min_health_percent: 0,
        }
    }

    #[test]
    fn ejected_after_consecutive_errors_and_back_after_the_time() {
        let health = Health::default();
        let service = [addr(1), addr(2)];
        let t0 = Instant::now();
        let s = settings(3, 100);
        assert!(!health.failure(addr(1), &service, s, t0));
        assert!(!health.failure(addr(1), &service, s, t0));
        health.success(addr(1));
        assert!(
            !health.failure(addr(1), &service, s, t0),
            "a success resets"
        );
        assert!(!health.failure(addr(1), &service, s, t0));
        assert!(health.failure(addr(1), &service, s, t0));
        assert!(health.is_ejected(addr(1), t0 + Duration::from_secs(9)));
        assert!(!health.is_ejected(addr(1), t0 + Duration::from_secs(11)));
        // The second ejection lasts twice as long.
        let t1 = t0 + Duration::from_secs(11);
        for _ in 0..3 {
            health.failure(addr(1), &service, s, t1);
        }
        assert!(health.is_ejected(addr(1), t1 + Duration::from_secs(19)));
        assert!(!health.is_ejected(addr(1), t1 + Duration::from_secs(21)));
    }

    #[test]
    fn max_ejection_percent_caps_ejections() {
        let health = Health::default();
        let service: Vec<SocketAddr> = (1..=4).map(addr).collect();
        let t0 = Instant::now();
        let s = settings(1, 50);
        assert!(health.failure(addr(1), &service, s, t0));
        assert!(health.failure(addr(2), &service, s, t0));
        assert!(!health.failure(addr(3), &service, s, t0), "50% of 4 is 2");
        assert_eq!(health.ejected(t0).len(), 2);
        // At least one may always go.
        let small = [addr(9), addr(8)];
        assert!(health.failure(addr(9), &small, settings(1, 10), t0));
    }

    #[test]
    fn settings_follow_the_rule_or_strait_defaults() {
        let none = Settings::from_rule(None);
        assert_eq!(none.consecutive_errors, 1);
        let od = OutlierDetection {
            consecutive_5xx_errors: Some(7),
            base_ejection_time: Some("1m".into()),
            max_ejection_percent: Some(40),
            ..Default::default()
        };
        assert_eq!(
            Settings::from_rule(Some(&od)),
            Settings {
                consecutive_errors: 7,
                base_ejection: Duration::from_secs(60),
                max_ejection_percent: 40,
                interval: Duration::from_secs(10),
                min_health_percent: 0,
            }
        );
    }

    #[test]
    fn ejections_end_on_the_interval_beat() {
        assert_eq!(
            on_beat(Duration::from_millis(2500), Duration::from_secs(1)),
            Duration::from_secs(3)
        );
        assert_eq!(
            on_beat(Duration::from_secs(30), Duration::from_secs(10)),
            Duration::from_secs(30)
        );
        assert_eq!(
            on_beat(Duration::from_secs(5), Duration::ZERO),
            Duration::from_secs(5)
        );
        let health = Health::default();
        let t0 = Instant::now();
        let s = Settings {
            base_ejection: Duration::from_millis(2500),
            ..settings(1, 100)
        };
        assert!(health.failure(addr(1), &[addr(1), addr(2)], s, t0));
        assert!(health.is_ejected(addr(1), t0 + Duration::from_millis(2900)));
        assert!(!health.is_ejected(addr(1), t0 + Duration::from_millis(3001)));
    }

    #[test]
    fn min_health_percent_is_a_panic_threshold() {
        let s = Settings {
            min_health_percent: 50,
            ..settings(1, 100)
        };
        assert!(!Health::below_min_health(s, 2, 4), "50% is enough");
        assert!(Health::below_min_health(s, 1, 4));
        assert!(
            !Health::below_min_health(settings(1, 100), 0, 4),
            "0 never panics"
        );
        assert!(!Health::below_min_health(s, 0, 0));
    }
}
