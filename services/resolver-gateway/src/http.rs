//! The gateway's answers to the HTTP endpoint of `dnsfence_telemetry::http`: ready once it
//! caught up with the store.

use crate::identity::Identities;

impl dnsfence_telemetry::http::Probe for Identities {
    fn ready(&self) -> bool {
        self.is_ready()
    }
}
