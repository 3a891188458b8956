//! Redfish resources as far as ironboot reads them, and the pure decisions made from
//! them (which system, which `ResetType`, what an error body says). No I/O here.

use std::fmt;

use serde::Deserialize;
use serde_json::Value;

use crate::PowerState;

/// A Redfish `ComputerSystem.Reset` type (DSP0268 `Resource.ResetType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResetType {
    /// Turn the unit on.
    On,
    /// Turn the unit on immediately.
    ForceOn,
    /// Turn the unit off immediately (non-graceful).
    ForceOff,
    /// Shut down gracefully and power off.
    GracefulShutdown,
    /// Shut down gracefully and restart.
    GracefulRestart,
    /// Shut down immediately and non-gracefully and restart.
    ForceRestart,
    /// Generate a diagnostic interrupt (NMI).
    Nmi,
    /// Simulate pressing the physical power button.
    PushPowerButton,
    /// Power cycle: off, then on.
    PowerCycle,
    /// Full power cycle including auxiliary power.
    FullPowerCycle,
}

impl ResetType {
    /// The value as Redfish spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetType::On => "On",
            ResetType::ForceOn => "ForceOn",
            ResetType::ForceOff => "ForceOff",
            ResetType::GracefulShutdown => "GracefulShutdown",
            ResetType::GracefulRestart => "GracefulRestart",
            ResetType::ForceRestart => "ForceRestart",
            ResetType::Nmi => "Nmi",
            ResetType::PushPowerButton => "PushPowerButton",
            ResetType::PowerCycle => "PowerCycle",
            ResetType::FullPowerCycle => "FullPowerCycle",
        }
    }
}

impl fmt::Display for ResetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reset types tried for "power on", best first.
pub(crate) const ON_PREFERENCES: &[ResetType] = &[ResetType::On, ResetType::ForceOn];
/// Reset types tried for "power off", best first. `GracefulShutdown` is the last resort
/// for BMCs that offer no hard off: it needs the OS to cooperate, so a caller should
/// poll the power state (see [`super::wait_for_power_state`]).
pub(crate) const OFF_PREFERENCES: &[ResetType] =
    &[ResetType::ForceOff, ResetType::GracefulShutdown];
/// Reset types tried for "power cycle", best first.
pub(crate) const CYCLE_PREFERENCES: &[ResetType] = &[
    ResetType::ForceRestart,
    ResetType::PowerCycle,
    ResetType::GracefulRestart,
];

/// Picks the first of `preferences` that the BMC allows. With no `AllowableValues`
/// list (the property is optional), the first preference is used as is. `Err` carries
/// the allowed list for the error message.
pub(crate) fn choose_reset(
    preferences: &[ResetType],
    allowed: Option<&[String]>,
) -> Result<ResetType, String> {
    let Some(allowed) = allowed else {
        return preferences.first().copied().ok_or_else(String::new);
    };
    preferences
        .iter()
        .copied()
        .find(|p| allowed.iter().any(|a| a == p.as_str()))
        .ok_or_else(|| {
            format!(
                "none of {} is among the allowable values [{}]",
                preferences
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                allowed.join(", ")
            )
        })
}

/// `{"@odata.id": "..."}`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Link {
    #[serde(rename = "@odata.id")]
    pub(crate) id: String,
}

/// The service root (`/redfish/v1/`), the parts we use.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ServiceRoot {
    #[serde(rename = "RedfishVersion", default)]
    pub(crate) redfish_version: Option<String>,
    #[serde(rename = "Systems")]
    pub(crate) systems: Option<Link>,
    #[serde(rename = "SessionService")]
    pub(crate) session_service: Option<Link>,
    #[serde(rename = "Links", default)]
    pub(crate) links: Option<RootLinks>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RootLinks {
    #[serde(rename = "Sessions")]
    pub(crate) sessions: Option<Link>,
}

impl ServiceRoot {
    /// Where to POST a new session, if the service offers sessions.
    pub(crate) fn sessions_uri(&self) -> Option<String> {
        if let Some(s) = self.links.as_ref().and_then(|l| l.sessions.as_ref()) {
            return Some(s.id.clone());
        }
        self.session_service
            .as_ref()
            .map(|s| format!("{}/Sessions", s.id.trim_end_matches('/')))
    }
}

/// A resource collection (`Members`).
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Collection {
    #[serde(rename = "Members", default)]
    pub(crate) members: Vec<Link>,
}

/// The parts of a `ComputerSystem` we read.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ComputerSystem {
    #[serde(rename = "Id", default)]
    pub(crate) id: Option<String>,
    #[serde(rename = "UUID", default)]
    pub(crate) uuid: Option<String>,
    #[serde(rename = "PowerState", default)]
    pub(crate) power_state: Option<String>,
    #[serde(rename = "Boot", default)]
    pub(crate) boot: Option<Boot>,
    #[serde(rename = "Actions", default)]
    pub(crate) actions: Option<Actions>,
}

/// `ComputerSystem.Boot`, the override part.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
pub struct Boot {
    /// `BootSourceOverrideTarget` (`Pxe`, `Hdd`, `None`, ...).
    #[serde(rename = "BootSourceOverrideTarget", default)]
    pub target: Option<String>,
    /// `BootSourceOverrideEnabled` (`Once`, `Continuous`, `Disabled`).
    #[serde(rename = "BootSourceOverrideEnabled", default)]
    pub enabled: Option<String>,
    /// `BootSourceOverrideMode` (`UEFI`, `Legacy`).
    #[serde(rename = "BootSourceOverrideMode", default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Actions {
    #[serde(rename = "#ComputerSystem.Reset")]
    pub(crate) reset: Option<ResetAction>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ResetAction {
    pub(crate) target: Option<String>,
    #[serde(rename = "ResetType@Redfish.AllowableValues")]
    pub(crate) allowable: Option<Vec<String>>,
    #[serde(rename = "@Redfish.ActionInfo")]
    pub(crate) action_info: Option<String>,
}

/// `ActionInfo` (DSP0268): the allowable values of each parameter.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ActionInfo {
    #[serde(rename = "Parameters", default)]
    pub(crate) parameters: Vec<ActionParameter>,
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct ActionParameter {
    #[serde(rename = "Name")]
    pub(crate) name: String,
    #[serde(rename = "AllowableValues")]
    pub(crate) allowable: Option<Vec<String>>,
}

impl ActionInfo {
    pub(crate) fn reset_types(&self) -> Option<Vec<String>> {
        self.parameters
            .iter()
            .find(|p| p.name == "ResetType")
            .and_then(|p| p.allowable.clone())
    }
}

/// Maps Redfish `PowerState` to ours. A transition reports the state it leaves: the
/// machine reaches "On" only when `PoweringOn` ends. `Paused` is powered.
pub(crate) fn parse_power_state(value: &str) -> Option<PowerState> {
    match value {
        "On" | "PoweringOff" | "Paused" => Some(PowerState::On),
        "Off" | "PoweringOn" => Some(PowerState::Off),
        _ => None,
    }
}

/// What a Redfish error body says: `error.message`, `error.code` and each
/// `@Message.ExtendedInfo[]` `MessageId`/`Message`. Non-JSON bodies are quoted
/// (shortened). Empty bodies give an empty string.
pub(crate) fn describe_error_body(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let Ok(json) = serde_json::from_str::<Value>(text) else {
        return shorten(text, 300);
    };
    let err = json.get("error").unwrap_or(&json);
    let mut parts = Vec::new();
    if let Some(m) = err.get("message").and_then(Value::as_str) {
        parts.push(m.to_owned());
    }
    let infos = err
        .get("@Message.ExtendedInfo")
        .or_else(|| json.get("@Message.ExtendedInfo"))
        .and_then(Value::as_array);
    for info in infos.into_iter().flatten() {
        let id = info.get("MessageId").and_then(Value::as_str);
        let msg = info.get("Message").and_then(Value::as_str);
        match (id, msg) {
            (Some(id), Some(msg)) => parts.push(format!("{msg} [{id}]")),
            (None, Some(msg)) => parts.push(msg.to_owned()),
            (Some(id), None) => parts.push(format!("[{id}]")),
            (None, None) => {}
        }
    }
    if parts.is_empty() {
        if let Some(code) = err.get("code").and_then(Value::as_str) {
            parts.push(code.to_owned());
        } else {
            return shorten(text, 300);
        }
    }
    parts.join("; ")
}

fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.to_owned(),
    }
}

/// AMI BMCs refuse a boot override PATCH on the system and point at `<system>/SD`.
pub(crate) const AMI_FUTURE_STATE: &str = "OperationSupportedInFutureStateURI";

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn reset_choice_follows_preferences_and_allowable_values() {
        // sushy-tools' list: ForceRestart is there.
        let sushy = strings(&[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "Nmi",
            "ForceOn",
        ]);
        assert_eq!(
            choose_reset(CYCLE_PREFERENCES, Some(&sushy)),
            Ok(ResetType::ForceRestart)
        );
        assert_eq!(
            choose_reset(ON_PREFERENCES, Some(&sushy)),
            Ok(ResetType::On)
        );
        assert_eq!(
            choose_reset(OFF_PREFERENCES, Some(&sushy)),
            Ok(ResetType::ForceOff)
        );
        // A BMC with PowerCycle but no ForceRestart.
        let pc = strings(&["On", "ForceOff", "PowerCycle", "GracefulRestart"]);
        assert_eq!(
            choose_reset(CYCLE_PREFERENCES, Some(&pc)),
            Ok(ResetType::PowerCycle)
        );
        let graceful = strings(&["On", "GracefulShutdown", "GracefulRestart"]);
        assert_eq!(
            choose_reset(CYCLE_PREFERENCES, Some(&graceful)),
            Ok(ResetType::GracefulRestart)
        );
        assert_eq!(
            choose_reset(OFF_PREFERENCES, Some(&graceful)),
            Ok(ResetType::GracefulShutdown)
        );
        let force_on_only = strings(&["ForceOn", "ForceOff"]);
        assert_eq!(
            choose_reset(ON_PREFERENCES, Some(&force_on_only)),
            Ok(ResetType::ForceOn)
        );
        // No list: the first preference.
        assert_eq!(
            choose_reset(CYCLE_PREFERENCES, None),
            Ok(ResetType::ForceRestart)
        );
        // Nothing usable: the message lists what the BMC allows.
        let err = choose_reset(CYCLE_PREFERENCES, Some(&strings(&["On", "Nmi"]))).unwrap_err();
        assert!(err.contains("[On, Nmi]"), "{err}");
        assert!(
            err.contains("ForceRestart, PowerCycle, GracefulRestart"),
            "{err}"
        );
    }

    #[test]
    fn error_bodies_are_summarised() {
        let sushy = br#"{"error":{"code":"Base.1.0.GeneralError","message":"Power state Nmi is not supported","@Message.ExtendedInfo":[{"@odata.type":"x","MessageId":"Base.1.0.GeneralError"}]}}"#;
        assert_eq!(
            describe_error_body(sushy),
            "Power state Nmi is not supported; [Base.1.0.GeneralError]"
        );
        let ami = br#"{"error":{"code":"Base.1.10.GeneralError","message":"A general error has occurred. See ExtendedInfo for more information.","@Message.ExtendedInfo":[{"MessageId":"Ami.1.0.OperationSupportedInFutureStateURI","Message":"The operation is supported in /redfish/v1/Systems/Self/SD"}]}}"#;
        let d = describe_error_body(ami);
        assert!(d.contains(AMI_FUTURE_STATE), "{d}");
        assert!(d.contains("/redfish/v1/Systems/Self/SD"), "{d}");
        assert_eq!(describe_error_body(b"  "), "");
        assert_eq!(describe_error_body(b"Bad gateway"), "Bad gateway");
        let long = "x".repeat(1000);
        assert_eq!(describe_error_body(long.as_bytes()).len(), 303);
        assert_eq!(
            describe_error_body(br#"{"error":{"code":"Base.1.0.Oops"}}"#),
            "Base.1.0.Oops"
        );
    }

    #[test]
    fn power_states_and_session_links() {
        assert_eq!(parse_power_state("On"), Some(PowerState::On));
        assert_eq!(parse_power_state("PoweringOn"), Some(PowerState::Off));
        assert_eq!(parse_power_state("PoweringOff"), Some(PowerState::On));
        assert_eq!(parse_power_state("Off"), Some(PowerState::Off));
        assert_eq!(parse_power_state("bogus"), None);

        let root: ServiceRoot = serde_json::from_str(
            r#"{"Systems":{"@odata.id":"/redfish/v1/Systems"},
                "SessionService":{"@odata.id":"/redfish/v1/SessionService"},
                "Links":{"Sessions":{"@odata.id":"/redfish/v1/SessionService/Sessions"}}}"#,
        )
        .unwrap();
        assert_eq!(
            root.sessions_uri().as_deref(),
            Some("/redfish/v1/SessionService/Sessions")
        );
        let root: ServiceRoot = serde_json::from_str(
            r#"{"Systems":{"@odata.id":"/redfish/v1/Systems"},
                "SessionService":{"@odata.id":"/redfish/v1/SessionService/"}}"#,
        )
        .unwrap();
        assert_eq!(
            root.sessions_uri().as_deref(),
            Some("/redfish/v1/SessionService/Sessions")
        );
        let root: ServiceRoot =
            serde_json::from_str(r#"{"Systems":{"@odata.id":"/redfish/v1/Systems"}}"#).unwrap();
        assert_eq!(root.sessions_uri(), None);
    }
}
