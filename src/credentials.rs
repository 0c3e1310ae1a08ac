//! What the gateway checks requests against and signs its own calls with: each endpoint's
//! webhook secrets, the operator keys and the services' API keys. Swapped whole when the
//! files they came from change ([`crate::config::Config::with_secret_files_reread`]).

use std::sync::Arc;

use crate::{
    config::{Config, OperatorKey, Secret},
    domain::webhook::WebhookKind,
    outbox::Service,
    signature::Verifier,
};

pub struct Credentials {
    verifiers: [Verifier; 3],
    pub operator_keys: Vec<OperatorKey>,
    /// The secrets the verifiers were made from, to tell a rotation from no change.
    webhook_secrets: [Vec<Secret>; 3],
    service_keys: [Secret; 4],
}

impl Credentials {
    pub fn new(config: &Config) -> Self {
        let w = &config.webhooks;
        let webhook_secrets = [
            w.video_secrets.clone(),
            w.last_frame_secrets.clone(),
            w.stitch_secrets.clone(),
        ];
        Self {
            verifiers: webhook_secrets
                .each_ref()
                .map(|secrets| Verifier::new(secrets, w.timestamp_tolerance_secs)),
            operator_keys: config.operator_api_keys.clone(),
            webhook_secrets,
            service_keys: Service::ALL.map(|s| config.services.get(s).api_key.clone()),
        }
    }

    pub fn verifier(&self, kind: WebhookKind) -> &Verifier {
        &self.verifiers[kind as usize]
    }

    /// The API key calls to `service` carry.
    pub fn service_key(&self, service: Service) -> &Secret {
        &self.service_keys[service as usize]
    }

    /// The variables whose values differ in `other`.
    pub fn changed(&self, other: &Credentials) -> Vec<&'static str> {
        const WEBHOOK_SECRETS: [&str; 3] = [
            "VIDEO_WEBHOOK_SECRET",
            "LAST_FRAME_WEBHOOK_SECRET",
            "STITCH_WEBHOOK_SECRET",
        ];
        const API_KEYS: [&str; 4] = [
            "VIDEO_API_KEY",
            "LAST_FRAME_API_KEY",
            "STITCH_API_KEY",
            "NOTIFICATION_API_KEY",
        ];
        let mut changed = Vec::new();
        for (i, name) in WEBHOOK_SECRETS.into_iter().enumerate() {
            if self.webhook_secrets[i] != other.webhook_secrets[i] {
                changed.push(name);
            }
        }
        if self.operator_keys != other.operator_keys {
            changed.push("OPERATOR_API_KEYS");
        }
        for (i, name) in API_KEYS.into_iter().enumerate() {
            if self.service_keys[i] != other.service_keys[i] {
                changed.push(name);
            }
        }
        changed
    }
}

/// The credentials in force, shared by the request handlers and the outbox.
#[derive(Clone)]
pub struct SharedCredentials(Arc<parking_lot::RwLock<Arc<Credentials>>>);

impl SharedCredentials {
    pub fn new(credentials: Credentials) -> Self {
        Self(Arc::new(parking_lot::RwLock::new(Arc::new(credentials))))
    }

    pub fn current(&self) -> Arc<Credentials> {
        self.0.read().clone()
    }

    pub fn replace(&self, credentials: Credentials) {
        *self.0.write() = Arc::new(credentials);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rotation_names_the_variables_that_changed() {
        let before = Config::defaults();
        let mut after = before.clone();
        after.webhooks.video_secrets.push(Secret::new("rotated"));
        after.services.notification.api_key = Secret::new("rotated");
        let (before, after) = (Credentials::new(&before), Credentials::new(&after));
        assert_eq!(
            before.changed(&after),
            ["VIDEO_WEBHOOK_SECRET", "NOTIFICATION_API_KEY"]
        );
        assert!(after.changed(&after).is_empty());
        assert_eq!(after.service_key(Service::Notification).expose(), "rotated");
    }
}
