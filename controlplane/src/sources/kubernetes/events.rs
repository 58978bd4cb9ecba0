//! # Recording `events.k8s.io/v1` Events, repeats folded into a series
//!
//! What kube-rs's `Recorder` does, with one difference that matters to operators: a repeat
//! carries its own message. The first occurrence of an Event (same Service, reporting controller
//! and instance, type, reason and action) is created; a repeat within [`SERIES_WINDOW`] of the
//! last one patches that object: `series.count` and `series.lastObservedTime` as the
//! events.k8s.io API defines them, and `note` set to the repeat's message, so that
//! `kubectl describe` shows the newest state (the holder named in `RequestedIPUnavailable`, the
//! peers in `BGPAnnounced`) next to the count instead of the first one's. A repeat whose Event
//! is gone from the cluster (Events expire, an hour by default) starts a new one.
use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::Client;
use serde_json::json;

/// Repeats within this time of the last occurrence fold into one Event (client-go's six
/// minutes).
pub const SERIES_WINDOW: Duration = Duration::from_secs(6 * 60);

/// What makes two Events one series.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    namespace: String,
    name: String,
    uid: Option<String>,
    kind: Option<String>,
    warning: bool,
    reason: String,
    action: String,
}

/// The Event object of a series and its count.
#[derive(Debug, Clone)]
struct Series {
    name: String,
    count: i32,
    last: Timestamp,
}

/// Records Events for one reporting controller and instance.
pub(crate) struct EventRecorder {
    client: Client,
    controller: String,
    instance: String,
    series: HashMap<Key, Series>,
}

impl EventRecorder {
    /// A recorder that signs Events as `controller` / `instance`.
    pub(crate) fn new(client: Client, controller: String, instance: String) -> Self {
        EventRecorder {
            client,
            controller,
            instance,
            series: HashMap::new(),
        }
    }

    /// Records `ev` about `regarding`: a new Event, or the next one of its series.
    ///
    /// # Errors
    /// The API server's answer when it refused both the patch and the create.
    pub(crate) async fn publish(
        &mut self,
        ev: &Event,
        regarding: &ObjectReference,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let window = k8s_openapi::jiff::SignedDuration::try_from(SERIES_WINDOW)
            .unwrap_or(k8s_openapi::jiff::SignedDuration::ZERO);
        self.series
            .retain(|_, s| now.duration_since(s.last) < window);
        let namespace = regarding
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let key = Key {
            namespace: namespace.clone(),
            name: regarding.name.clone().unwrap_or_default(),
            uid: regarding.uid.clone(),
            kind: regarding.kind.clone(),
            warning: matches!(ev.type_, EventType::Warning),
            reason: ev.reason.clone(),
            action: ev.action.clone(),
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        if let Some(s) = self.series.get_mut(&key) {
            let count = s.count + 1;
            let patch = json!({
                "series": {"count": count, "lastObservedTime": MicroTime(now)},
                "note": ev.note,
            });
            match api
                .patch(&s.name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    s.count = count;
                    s.last = now;
                    return Ok(());
                }
                // Expired from the cluster: start a new series.
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    self.series.remove(&key);
                }
                Err(e) => return Err(e),
            }
        }
        let name = format!(
            "{}.{:x}",
            regarding.name.as_deref().unwrap_or(&self.controller),
            now.as_nanosecond()
        );
        let event = K8sEvent {
            action: Some(ev.action.clone()),
            reason: Some(ev.reason.clone()),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            related: ev.secondary.clone(),
            note: ev.note.clone(),
            metadata: ObjectMeta {
                namespace: Some(namespace),
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(
                match ev.type_ {
                    EventType::Normal => "Normal",
                    EventType::Warning => "Warning",
                }
                .to_owned(),
            ),
            ..K8sEvent::default()
        };
        api.create(&PostParams::default(), &event).await?;
        self.series.insert(
            key,
            Series {
                name,
                count: 1,
                last: now,
            },
        );
        Ok(())
    }
}
