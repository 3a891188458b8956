//! The resource types ironboot reads and writes in Omni: their COSI type names and
//! namespaces, and their specs' YAML form (cosi-runtime sends YAML next to protobuf:
//! go-yaml's encoding of the Go spec struct, keys = field names in lower case).

use ironboot_proto::{baremetal, omni};
use prost_types::Timestamp;

/// Shared namespace of infra-provider resources (Omni's `resources.InfraProviderNamespace`).
pub(crate) const INFRA_PROVIDER_NS: &str = "infra-provider";
/// Ephemeral namespace (health status).
pub(crate) const INFRA_PROVIDER_EPHEMERAL_NS: &str = "infra-provider-ephemeral";
/// Label Omni stamps on provider-created resources in the shared namespaces.
pub const LABEL_INFRA_PROVIDER_ID: &str = "omni.sidero.dev/infra-provider-id";
/// Label on InfraProviderStatus marking a static provider (like the bare-metal one).
pub const LABEL_IS_STATIC_PROVIDER: &str = "omni.sidero.dev/is-static-infra-provider";

/// The provider-private namespace `infra-provider:<id>`.
pub(crate) fn private_namespace(provider_id: &str) -> String {
    format!("{INFRA_PROVIDER_NS}:{provider_id}")
}

/// The provider-private type `<Name>.<id>.infraprovider.sidero.dev`.
pub(crate) fn private_type(name: &str, provider_id: &str) -> String {
    format!("{name}.{provider_id}.infraprovider.sidero.dev")
}

/// Where a resource kind lives, given the provider ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A type of Omni's with a fixed namespace.
    Omni {
        namespace: &'static str,
        type_name: &'static str,
    },
    /// A provider-private type (namespace and type carry the provider ID).
    Private { name: &'static str },
}

impl Kind {
    pub(crate) fn namespace(self, provider_id: &str) -> String {
        match self {
            Self::Omni { namespace, .. } => namespace.to_owned(),
            Self::Private { .. } => private_namespace(provider_id),
        }
    }

    pub(crate) fn type_name(self, provider_id: &str) -> String {
        match self {
            Self::Omni { type_name, .. } => type_name.to_owned(),
            Self::Private { name } => private_type(name, provider_id),
        }
    }
}

/// A resource spec: its protobuf message, where it lives and its YAML form.
pub trait Spec: prost::Message + Default + Clone + PartialEq + Send + 'static {
    /// Namespace and type.
    const KIND: Kind;
    /// The YAML document cosi-runtime would send with it.
    fn to_yaml(&self) -> String;
}

/// The IPMI fields of a BMC configuration, borrowed from either message.
#[derive(Clone, Copy)]
struct BmcIpmi<'a> {
    address: &'a str,
    port: u32,
    username: &'a str,
    password: &'a str,
}

/// A small block-style YAML writer for flat and nested spec structs.
#[derive(Default)]
pub(crate) struct Yaml {
    out: String,
    indent: usize,
}

impl Yaml {
    fn pad(&mut self) {
        self.out.extend(std::iter::repeat_n(' ', self.indent));
    }

    /// `v` as a double-quoted scalar (a JSON string is a valid YAML one).
    fn quoted(&mut self, v: &str) {
        self.out
            .push_str(&serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into()));
    }

    fn key(&mut self, key: &str) {
        self.pad();
        self.out.push_str(key);
        self.out.push(':');
    }

    fn str(&mut self, key: &str, v: &str) -> &mut Self {
        self.key(key);
        self.out.push(' ');
        self.quoted(v);
        self.out.push('\n');
        self
    }

    fn raw(&mut self, key: &str, v: impl std::fmt::Display) -> &mut Self {
        self.key(key);
        self.out.push_str(&format!(" {v}\n"));
        self
    }

    fn list(&mut self, key: &str, items: &[String]) -> &mut Self {
        if items.is_empty() {
            return self.raw(key, "[]");
        }
        self.key(key);
        self.out.push('\n');
        for item in items {
            self.pad();
            self.out.push_str("- ");
            self.quoted(item);
            self.out.push('\n');
        }
        self
    }

    fn map(&mut self, key: &str, present: bool, body: impl FnOnce(&mut Self)) -> &mut Self {
        if !present {
            return self.raw(key, "null");
        }
        self.key(key);
        self.out.push('\n');
        self.indent += 4;
        body(self);
        self.indent -= 4;
        self
    }

    fn timestamp(&mut self, key: &str, t: Option<&Timestamp>) -> &mut Self {
        self.map(key, t.is_some(), |y| {
            if let Some(t) = t {
                y.raw("seconds", t.seconds).raw("nanos", t.nanos);
            }
        })
    }

    /// The `ipmi` and `api` maps of a BMC configuration (Omni's `InfraMachineBMCConfig`
    /// and the provider's `BMCConfiguration` carry the same fields in distinct messages).
    fn bmc(&mut self, ipmi: Option<BmcIpmi<'_>>, api_address: Option<&str>) -> &mut Self {
        self.map("ipmi", ipmi.is_some(), |y| {
            if let Some(i) = ipmi {
                y.str("address", i.address)
                    .raw("port", i.port)
                    .str("username", i.username)
                    .str("password", i.password);
            }
        })
        .map("api", api_address.is_some(), |y| {
            if let Some(address) = api_address {
                y.str("address", address);
            }
        })
    }

    fn finish(&mut self) -> String {
        if self.out.is_empty() {
            return "{}\n".to_owned();
        }
        std::mem::take(&mut self.out)
    }
}

impl Spec for omni::InfraProviderStatusSpec {
    const KIND: Kind = Kind::Omni {
        namespace: INFRA_PROVIDER_NS,
        type_name: "InfraProviderStatuses.omni.sidero.dev",
    };
    fn to_yaml(&self) -> String {
        Yaml::default()
            .str("schema", &self.schema)
            .str("name", &self.name)
            .str("description", &self.description)
            .str("icon", &self.icon)
            .str("version", &self.version)
            .finish()
    }
}

impl Spec for omni::InfraProviderHealthStatusSpec {
    const KIND: Kind = Kind::Omni {
        namespace: INFRA_PROVIDER_EPHEMERAL_NS,
        type_name: "InfraProviderHealthStatuses.omni.sidero.dev",
    };
    fn to_yaml(&self) -> String {
        Yaml::default()
            .timestamp(
                "lastheartbeattimestamp",
                self.last_heartbeat_timestamp.as_ref(),
            )
            .str("error", &self.error)
            .finish()
    }
}

impl Spec for omni::InfraMachineStatusSpec {
    const KIND: Kind = Kind::Omni {
        namespace: INFRA_PROVIDER_NS,
        type_name: "InfraMachineStatuses.omni.sidero.dev",
    };
    fn to_yaml(&self) -> String {
        Yaml::default()
            .raw("powerstate", self.power_state)
            .raw("readytouse", self.ready_to_use)
            .str("lastrebootid", &self.last_reboot_id)
            .timestamp("lastreboottimestamp", self.last_reboot_timestamp.as_ref())
            .raw("installed", self.installed)
            .str("wipednodeuniquetoken", &self.wiped_node_unique_token)
            .str("lastpoweroffid", &self.last_power_off_id)
            .finish()
    }
}

impl Spec for omni::InfraMachineSpec {
    const KIND: Kind = Kind::Omni {
        namespace: INFRA_PROVIDER_NS,
        type_name: "InfraMachines.omni.sidero.dev",
    };
    fn to_yaml(&self) -> String {
        Yaml::default()
            .raw("preferredpowerstate", self.preferred_power_state)
            .raw("acceptancestatus", self.acceptance_status)
            .str("clustertalosversion", &self.cluster_talos_version)
            .list("extensions", &self.extensions)
            .str("wipeid", &self.wipe_id)
            .str("extrakernelargs", &self.extra_kernel_args)
            .str("requestedrebootid", &self.requested_reboot_id)
            .raw("cordoned", self.cordoned)
            .raw("installeventid", self.install_event_id)
            .str("nodeuniquetoken", &self.node_unique_token)
            .str("poweroffrequestid", &self.power_off_request_id)
            .finish()
    }
}

impl Spec for omni::BmcConfigSpec {
    const KIND: Kind = Kind::Omni {
        namespace: INFRA_PROVIDER_NS,
        type_name: "BMCConfigs.omni.sidero.dev",
    };
    fn to_yaml(&self) -> String {
        let c = self.config.as_ref();
        Yaml::default()
            .map("config", c.is_some(), |y| {
                let ipmi = c.and_then(|c| c.ipmi.as_ref()).map(|i| BmcIpmi {
                    address: &i.address,
                    port: i.port,
                    username: &i.username,
                    password: &i.password,
                });
                let api = c.and_then(|c| c.api.as_ref()).map(|a| a.address.as_str());
                y.bmc(ipmi, api);
            })
            .finish()
    }
}

impl Spec for omni::ProviderJoinConfigSpec {
    const KIND: Kind = Kind::Omni {
        namespace: INFRA_PROVIDER_NS,
        type_name: "ProviderJoinConfigs.omni.sidero.dev",
    };
    fn to_yaml(&self) -> String {
        let c = self.config.as_ref();
        Yaml::default()
            .map("config", c.is_some(), |y| {
                if let Some(c) = c {
                    y.list("kernelargs", &c.kernel_args)
                        .str("config", &c.config);
                }
            })
            .str("jointoken", &self.join_token)
            .finish()
    }
}

/// Omni's default namespace (an older Omni keeps `ConnectionParams` there).
pub(crate) const DEFAULT_NS: &str = "default";

impl Spec for omni::ConnectionParamsSpec {
    const KIND: Kind = Kind::Omni {
        namespace: DEFAULT_NS,
        type_name: "ConnectionParams.omni.sidero.dev",
    };
    fn to_yaml(&self) -> String {
        Yaml::default()
            .str("args", &self.args)
            .str("apiendpoint", &self.api_endpoint)
            .str("wireguardendpoint", &self.wireguard_endpoint)
            .str("jointoken", &self.join_token)
            .raw("usegrpctunnel", self.use_grpc_tunnel)
            .raw("eventsport", self.events_port)
            .raw("logsport", self.logs_port)
            .finish()
    }
}

impl Spec for baremetal::BmcConfigurationSpec {
    const KIND: Kind = Kind::Private {
        name: "BMCConfiguration",
    };
    fn to_yaml(&self) -> String {
        let ipmi = self.ipmi.as_ref().map(|i| BmcIpmi {
            address: &i.address,
            port: i.port,
            username: &i.username,
            password: &i.password,
        });
        let api = self.api.as_ref().map(|a| a.address.as_str());
        Yaml::default()
            .bmc(ipmi, api)
            .raw("manuallyconfigured", self.manually_configured)
            .finish()
    }
}

impl Spec for baremetal::MachineStatusSpec {
    const KIND: Kind = Kind::Private {
        name: "MachineStatus",
    };
    fn to_yaml(&self) -> String {
        Yaml::default()
            .raw("agentaccessible", self.agent_accessible)
            .raw("powerstate", self.power_state)
            .raw("initialized", self.initialized)
            .finish()
    }
}

impl Spec for baremetal::PowerOperationSpec {
    const KIND: Kind = Kind::Private {
        name: "PowerOperation",
    };
    fn to_yaml(&self) -> String {
        Yaml::default()
            .raw("lastpoweroperation", self.last_power_operation)
            .timestamp(
                "lastpowerontimestamp",
                self.last_power_on_timestamp.as_ref(),
            )
            .str("lastpoweroffid", &self.last_power_off_id)
            .str("wipeidatpoweroff", &self.wipe_id_at_power_off)
            .finish()
    }
}

impl Spec for baremetal::RebootStatusSpec {
    const KIND: Kind = Kind::Private {
        name: "RebootStatus",
    };
    fn to_yaml(&self) -> String {
        Yaml::default()
            .str("lastrebootid", &self.last_reboot_id)
            .timestamp("lastreboottimestamp", self.last_reboot_timestamp.as_ref())
            .finish()
    }
}

impl Spec for baremetal::WipeStatusSpec {
    const KIND: Kind = Kind::Private { name: "WipeStatus" };
    fn to_yaml(&self) -> String {
        Yaml::default()
            .str("lastwipeid", &self.last_wipe_id)
            .raw("lastwipeinstalleventid", self.last_wipe_install_event_id)
            .raw("initialwipedone", self.initial_wipe_done)
            .str("wipednodeuniquetoken", &self.wiped_node_unique_token)
            .finish()
    }
}

impl Spec for baremetal::TlsConfigSpec {
    const KIND: Kind = Kind::Private { name: "TLSConfig" };
    fn to_yaml(&self) -> String {
        Yaml::default()
            .str("cacert", &self.ca_cert)
            .str("cakey", &self.ca_key)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_names_follow_omni() {
        assert_eq!(private_namespace("bare-metal"), "infra-provider:bare-metal");
        assert_eq!(
            baremetal::WipeStatusSpec::KIND.type_name("bare-metal"),
            "WipeStatus.bare-metal.infraprovider.sidero.dev"
        );
        assert_eq!(
            omni::InfraProviderHealthStatusSpec::KIND.namespace("x"),
            "infra-provider-ephemeral"
        );
    }

    #[test]
    fn yaml_shapes() {
        let s = omni::InfraMachineSpec {
            extensions: vec!["a\"b".into(), "c".into()],
            install_event_id: 7,
            ..Default::default()
        };
        let y = s.to_yaml();
        assert!(y.contains("extensions:\n- \"a\\\"b\"\n- \"c\"\n"), "{y}");
        assert!(y.contains("installeventid: 7\n"), "{y}");
        let h = omni::InfraProviderHealthStatusSpec {
            last_heartbeat_timestamp: Some(Timestamp {
                seconds: 5,
                nanos: 6,
            }),
            error: String::new(),
        };
        assert_eq!(
            h.to_yaml(),
            "lastheartbeattimestamp:\n    seconds: 5\n    nanos: 6\nerror: \"\"\n"
        );
    }
}
