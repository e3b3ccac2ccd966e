//! strait's rate-limit service, as Envoy's reference service
//! (`envoyproxy/ratelimit`) works: limits by domain and descriptor in its
//! YAML ([`limits`]), fixed windows counted in Redis ([`counter`]) so that
//! every waypoint replica draws on the same count, answered over gRPC as
//! `envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit`
//! ([`proto`]). The waypoint's client speaks the same messages.
#[cfg(feature = "server")]
pub mod counter;
pub mod limits;
pub mod proto;
#[cfg(feature = "server")]
pub mod service;
