//! `<initialization>` of a VM (oVirt's Initialization type): read from a VM document or
//! a run-once start, checked, and shown back without its secrets.

use super::handlers::ApiError;
use super::node::Node;
use crate::vminit::{Initialization, NicConfig};

/// The members of `<initialization>` Halyard acts on, as paths below a `<vm>` document
/// (others, such as `configuration` or `regenerate_ids`, are refused by name).
pub const PATHS: &[&str] = &[
    "initialization/host_name",
    "initialization/user_name",
    "initialization/root_password",
    "initialization/authorized_ssh_keys",
    "initialization/regenerate_ssh_keys",
    "initialization/timezone",
    "initialization/dns_servers",
    "initialization/dns_search",
    "initialization/nic_configurations",
    "initialization/custom_script",
    "initialization/cloud_init_network_protocol",
    "initialization/domain",
    "initialization/org_name",
    "initialization/active_directory_ou",
    "initialization/input_locale",
    "initialization/ui_language",
    "initialization/system_locale",
    "initialization/user_locale",
    "initialization/windows_license_key",
];

fn boolean(n: &Node, k: &str) -> Result<Option<bool>, ApiError> {
    match n.text_of(k) {
        None => Ok(None),
        Some("true") => Ok(Some(true)),
        Some("false") => Ok(Some(false)),
        Some(v) => Err(ApiError::bad(format!(
            "initialization {k}: {:?} is not a boolean",
            v.chars().take(16).collect::<String>()
        ))),
    }
}

/// The `<initialization>` of `vm` (a checked `<vm>` document), if it has one.
pub fn of(vm: &Node) -> Result<Option<Initialization>, ApiError> {
    let Some(n) = vm.get("initialization") else {
        return Ok(None);
    };
    let t = |k: &str| n.text_of(k).unwrap_or("").to_string();
    let mut nics = Vec::new();
    if let Some(list) = n.get("nic_configurations") {
        for c in list.all("nic_configuration") {
            let ct = |k: &str| c.text_of(k).unwrap_or("").to_string();
            let ip = |node: &str, k: &str| {
                c.get(node)
                    .and_then(|i| i.text_of(k))
                    .unwrap_or("")
                    .to_string()
            };
            let ipv6_prefix = match ip("ipv6", "netmask").as_str() {
                "" => None,
                p => Some(p.parse::<u8>().map_err(|_| {
                    ApiError::bad(format!(
                        "initialization NIC {}: IPv6 netmask is a prefix length (0-128)",
                        ct("name")
                    ))
                })?),
            };
            nics.push(NicConfig {
                name: ct("name"),
                on_boot: boolean(c, "on_boot")?.unwrap_or(false),
                boot_protocol: ct("boot_protocol"),
                address: ip("ip", "address"),
                netmask: ip("ip", "netmask"),
                gateway: ip("ip", "gateway"),
                ipv6_boot_protocol: ct("ipv6_boot_protocol"),
                ipv6_address: ip("ipv6", "address"),
                ipv6_prefix,
                ipv6_gateway: ip("ipv6", "gateway"),
            });
        }
    }
    let init = Initialization {
        host_name: t("host_name"),
        user_name: t("user_name"),
        root_password: t("root_password"),
        authorized_ssh_keys: t("authorized_ssh_keys"),
        regenerate_ssh_keys: boolean(n, "regenerate_ssh_keys")?,
        timezone: t("timezone"),
        dns_servers: t("dns_servers"),
        dns_search: t("dns_search"),
        nic_configurations: nics,
        custom_script: t("custom_script"),
        cloud_init_network_protocol: t("cloud_init_network_protocol"),
        domain: t("domain"),
        org_name: t("org_name"),
        active_directory_ou: t("active_directory_ou"),
        input_locale: t("input_locale"),
        ui_language: t("ui_language"),
        system_locale: t("system_locale"),
        user_locale: t("user_locale"),
        windows_license_key: t("windows_license_key"),
    };
    init.validate().map_err(ApiError::bad)?;
    Ok(Some(init))
}

/// `<initialization>` as the API shows it: the root password and the license key are
/// never shown.
pub fn render(i: &Initialization) -> Node {
    let s = |v: &String| (!v.is_empty()).then(|| v.clone());
    let mut nics = Node::new("nic_configurations");
    for c in &i.nic_configurations {
        let mut n = Node::new("nic_configuration")
            .with(Node::leaf("name", &c.name))
            .with(Node::leaf("on_boot", c.on_boot))
            .opt("boot_protocol", s(&c.boot_protocol));
        if !c.address.is_empty() {
            n.push(
                Node::new("ip")
                    .with(Node::leaf("address", &c.address))
                    .opt("gateway", s(&c.gateway))
                    .opt("netmask", s(&c.netmask))
                    .with(Node::leaf("version", "v4")),
            );
        }
        n = n.opt("ipv6_boot_protocol", s(&c.ipv6_boot_protocol));
        if !c.ipv6_address.is_empty() {
            n.push(
                Node::new("ipv6")
                    .with(Node::leaf("address", &c.ipv6_address))
                    .opt("gateway", s(&c.ipv6_gateway))
                    .opt("netmask", c.ipv6_prefix)
                    .with(Node::leaf("version", "v6")),
            );
        }
        nics.push(n);
    }
    let mut n = Node::new("initialization")
        .opt("active_directory_ou", s(&i.active_directory_ou))
        .opt("authorized_ssh_keys", s(&i.authorized_ssh_keys))
        .opt(
            "cloud_init_network_protocol",
            s(&i.cloud_init_network_protocol),
        )
        .opt("custom_script", s(&i.custom_script))
        .opt("dns_search", s(&i.dns_search))
        .opt("dns_servers", s(&i.dns_servers))
        .opt("domain", s(&i.domain))
        .opt("host_name", s(&i.host_name))
        .opt("input_locale", s(&i.input_locale));
    if !i.nic_configurations.is_empty() {
        n.push(nics);
    }
    n.opt("org_name", s(&i.org_name))
        .opt("regenerate_ssh_keys", i.regenerate_ssh_keys)
        .opt("system_locale", s(&i.system_locale))
        .opt("timezone", s(&i.timezone))
        .opt("ui_language", s(&i.ui_language))
        .opt("user_locale", s(&i.user_locale))
        .opt("user_name", s(&i.user_name))
}
