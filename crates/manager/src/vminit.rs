//! A VM's initialization (oVirt's `vm.initialization`): what cloud-init reads from its
//! config drive, or what Windows' sysprep reads from its answer file.
//!
//! The Manager turns an [`Initialization`] into a *payload*, files with their contents,
//! as oVirt's `CloudInitHandler` and `SysprepHandler` do, and sends it in the domain XML
//! (`<ovirt-vm:payload>`, base64 files) on a CD-ROM or floppy whose source is
//! `PAYLOAD:`; the host agent builds the image (VDSM's payload) and attaches it for the
//! run that asked for it.
//!
//! - cloud-init: the OpenStack `config-2` layout: `openstack/latest/meta_data.json`
//!   (a new instance uuid each run, the host name, the authorized keys),
//!   `openstack/latest/user_data` (`#cloud-config`: user, password, time zone, then the
//!   custom script as given), and the network either as `network_data.json`
//!   (`cloud_init_network_protocol` openstack_metadata, the default) or as an ENI file
//!   (`eni`).
//! - sysprep: `Unattend.xml` (or the custom script, which oVirt takes as the whole answer
//!   file), on a floppy on i440fx and on a CD on q35.
//!
//! Every field is checked here; values only ever reach the guest as quoted YAML/JSON
//! strings or escaped XML text, never as something a shell or parser would run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// The longest custom script (cloud-config YAML or a sysprep answer file).
pub const MAX_CUSTOM_SCRIPT: usize = 64 * 1024;
/// The most authorized keys' text.
pub const MAX_AUTHORIZED_KEYS: usize = 64 * 1024;
/// The most NIC configurations.
pub const MAX_NICS: usize = 16;
/// The longest short text field (a password, a locale, a domain, an OU ...).
pub const MAX_FIELD: usize = 1024;

/// One NIC's configuration (oVirt's NicConfiguration).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicConfig {
    pub name: String,
    #[serde(default)]
    pub on_boot: bool,
    /// none, dhcp or static (oVirt's BootProtocol; autoconf only for IPv6).
    #[serde(default)]
    pub boot_protocol: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub netmask: String,
    #[serde(default)]
    pub gateway: String,
    #[serde(default)]
    pub ipv6_boot_protocol: String,
    #[serde(default)]
    pub ipv6_address: String,
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
    #[serde(default)]
    pub ipv6_gateway: String,
}

/// oVirt's Initialization (the members Halyard acts on). Empty strings are unset.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Initialization {
    pub host_name: String,
    pub user_name: String,
    /// Secret: never rendered, never logged.
    pub root_password: String,
    pub authorized_ssh_keys: String,
    pub regenerate_ssh_keys: Option<bool>,
    pub timezone: String,
    /// Space-separated addresses.
    pub dns_servers: String,
    /// Space-separated domains.
    pub dns_search: String,
    pub nic_configurations: Vec<NicConfig>,
    pub custom_script: String,
    /// openstack_metadata (empty: the default) or eni.
    pub cloud_init_network_protocol: String,
    // Sysprep.
    pub domain: String,
    pub org_name: String,
    pub active_directory_ou: String,
    pub input_locale: String,
    pub ui_language: String,
    pub system_locale: String,
    pub user_locale: String,
    /// Secret: never rendered, never logged.
    pub windows_license_key: String,
}

/// Which initialization a run gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CloudInit,
    Sysprep,
}

/// The device a payload rides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Medium {
    Cdrom,
    Floppy,
}

/// Files for the guest, as the host agent will write them into the payload image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The volume label (`config-2` for cloud-init; none for sysprep, as oVirt).
    pub vol_id: Option<String>,
    pub medium: Medium,
    /// Relative paths and contents, in order.
    pub files: Vec<(String, Vec<u8>)>,
}

fn too_long(what: &str, max: usize) -> String {
    format!("initialization {what} is longer than {max} characters")
}

/// Text without control characters (newlines allowed where `lines`).
fn plain(what: &str, v: &str, max: usize, lines: bool) -> Result<(), String> {
    if v.len() > max {
        return Err(too_long(what, max));
    }
    if v.chars()
        .any(|c| c.is_control() && !(lines && matches!(c, '\n' | '\r' | '\t')))
    {
        return Err(format!(
            "initialization {what} has control characters; only printable text is allowed"
        ));
    }
    Ok(())
}

/// A DNS name: labels of letters, digits and hyphens, not starting or ending with one.
pub fn is_dns_name(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

/// A netmask as dotted quad (255.255.255.0) or a prefix length (24).
fn prefix_of_netmask(v: &str) -> Option<u8> {
    if let Ok(p) = v.parse::<u8>() {
        return (p <= 32).then_some(p);
    }
    let m: Ipv4Addr = v.parse().ok()?;
    let bits = u32::from(m);
    let p = bits.leading_ones();
    (bits.checked_shl(p).unwrap_or(0) == 0).then_some(p as u8)
}

impl Initialization {
    /// Checks every field; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if !self.host_name.is_empty() && !is_dns_name(&self.host_name) {
            return Err(format!(
                "initialization host_name {:?} is not a host name (letters, digits, hyphens and dots)",
                self.host_name.chars().take(64).collect::<String>()
            ));
        }
        if !self.user_name.is_empty() {
            let ok = self.user_name.len() <= 32
                && self
                    .user_name
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
                && self.user_name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !ok {
                return Err(format!(
                    "initialization user_name {:?} is not a user name (lower-case letters, digits, _ and -, at most 32)",
                    self.user_name.chars().take(64).collect::<String>()
                ));
            }
        }
        plain("root_password", &self.root_password, MAX_FIELD, false)?;
        plain(
            "authorized_ssh_keys",
            &self.authorized_ssh_keys,
            MAX_AUTHORIZED_KEYS,
            true,
        )?;
        for k in self.keys() {
            let kind = k.split_whitespace().next().unwrap_or("");
            let known = kind.starts_with("ssh-")
                || kind.starts_with("ecdsa-sha2-")
                || kind.starts_with("sk-ssh-")
                || kind.starts_with("sk-ecdsa-");
            if !known || k.split_whitespace().nth(1).is_none() {
                return Err(format!(
                    "initialization authorized_ssh_keys: {:?} is not an OpenSSH public key line",
                    k.chars().take(40).collect::<String>()
                ));
            }
        }
        if !self.timezone.is_empty()
            && (self.timezone.len() > 64
                || !self
                    .timezone
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_+-/ ".contains(&b)))
        {
            return Err("initialization timezone is not a time zone name".into());
        }
        for s in self.dns_servers.split_whitespace() {
            if s.parse::<IpAddr>().is_err() {
                return Err(format!(
                    "initialization dns_servers: {:?} is not an IP address",
                    s.chars().take(64).collect::<String>()
                ));
            }
        }
        plain("dns_servers", &self.dns_servers, MAX_FIELD, false)?;
        for s in self.dns_search.split_whitespace() {
            if !is_dns_name(s) {
                return Err(format!(
                    "initialization dns_search: {:?} is not a domain name",
                    s.chars().take(64).collect::<String>()
                ));
            }
        }
        plain("dns_search", &self.dns_search, MAX_FIELD, false)?;
        plain(
            "custom_script",
            &self.custom_script,
            MAX_CUSTOM_SCRIPT,
            true,
        )?;
        if !matches!(
            self.cloud_init_network_protocol.as_str(),
            "" | "openstack_metadata" | "eni"
        ) {
            return Err(format!(
                "initialization cloud_init_network_protocol {:?}: openstack_metadata or eni",
                self.cloud_init_network_protocol
                    .chars()
                    .take(32)
                    .collect::<String>()
            ));
        }
        if self.nic_configurations.len() > MAX_NICS {
            return Err(format!(
                "initialization has more than {MAX_NICS} nic_configurations"
            ));
        }
        for n in &self.nic_configurations {
            n.validate()?;
        }
        for (what, v) in [
            ("domain", &self.domain),
            ("org_name", &self.org_name),
            ("active_directory_ou", &self.active_directory_ou),
            ("input_locale", &self.input_locale),
            ("ui_language", &self.ui_language),
            ("system_locale", &self.system_locale),
            ("user_locale", &self.user_locale),
            ("windows_license_key", &self.windows_license_key),
        ] {
            plain(what, v, MAX_FIELD, false)?;
        }
        Ok(())
    }

    /// The authorized keys, one per non-empty line.
    pub fn keys(&self) -> Vec<&str> {
        self.authorized_ssh_keys
            .split(['\n', '\r'])
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// cloud-init's payload (`config-2`), with `instance_id` as meta_data's uuid (a new
    /// one per run, so cloud-init applies it again, as oVirt does).
    pub fn cloud_init(&self, instance_id: &str) -> Result<Payload, String> {
        self.validate()?;
        let mut meta = Map::new();
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        if !self.host_name.is_empty() {
            meta.insert("hostname".into(), json!(self.host_name));
            meta.insert("name".into(), json!(self.host_name));
        }
        let keys = self.keys();
        if !keys.is_empty() {
            meta.insert("public_keys".into(), json!(keys));
        }
        let eni = self.cloud_init_network_protocol == "eni";
        let mut network_data = None;
        if eni {
            let interfaces = self.eni();
            if !interfaces.is_empty() {
                meta.insert("network-interfaces".into(), json!(interfaces));
                meta.insert(
                    "network_config".into(),
                    json!({"content_path": "/content/0000", "path": "/etc/network/interfaces"}),
                );
                files.push(("openstack/content/0000".into(), interfaces.into_bytes()));
            }
        } else {
            network_data = self.network_data()?;
        }
        meta.insert("uuid".into(), json!(instance_id));
        meta.insert(
            "meta".into(),
            json!({"dsmode": "local", "essential": "false", "role": "server"}),
        );
        meta.insert("launch_index".into(), json!("0"));
        meta.insert("availability_zone".into(), json!("nova"));

        let mut user = Map::new();
        if let Some(r) = self.regenerate_ssh_keys {
            user.insert("ssh_deletekeys".into(), json!(r));
        }
        if !self.timezone.is_empty() {
            user.insert("timezone".into(), json!(self.timezone));
        }
        if !self.root_password.is_empty() {
            user.insert("password".into(), json!(self.root_password));
        }
        if !self.user_name.is_empty() {
            user.insert("user".into(), json!(self.user_name));
        }
        user.insert("disable_root".into(), json!(false));
        user.insert(
            "output".into(),
            json!({"all": ">> /var/log/cloud-init-output.log"}),
        );
        user.insert("chpasswd".into(), json!({"expire": false}));
        user.insert("ssh_pwauth".into(), json!(true));
        let mut user_data = String::from("#cloud-config\n");
        yaml_block(&Value::Object(user), 0, &mut user_data);
        if !self.custom_script.is_empty() {
            user_data.push_str(&self.custom_script);
            if !self.custom_script.ends_with('\n') {
                user_data.push('\n');
            }
        }
        let meta_json = serde_json::to_vec(&Value::Object(meta)).map_err(|e| e.to_string())?;
        let mut out = vec![
            ("openstack/latest/meta_data.json".to_string(), meta_json),
            (
                "openstack/latest/user_data".to_string(),
                user_data.into_bytes(),
            ),
        ];
        if let Some(n) = network_data {
            out.push((
                "openstack/latest/network_data.json".into(),
                serde_json::to_vec(&n).map_err(|e| e.to_string())?,
            ));
        }
        out.extend(files);
        Ok(Payload {
            vol_id: Some("config-2".into()),
            medium: Medium::Cdrom,
            files: out,
        })
    }

    /// The NICs as an ENI file (oVirt's legacy protocol; IPv4 only, as oVirt).
    fn eni(&self) -> String {
        let mut s = String::new();
        for n in &self.nic_configurations {
            if n.on_boot {
                s.push_str(&format!("auto {}\n", n.name));
            }
            let proto = match n.boot_protocol.as_str() {
                "static" => "static",
                "dhcp" => "dhcp",
                _ => "none",
            };
            s.push_str(&format!("iface {} inet {proto}\n", n.name));
            for (k, v) in [
                ("address", &n.address),
                ("netmask", &n.netmask),
                ("gateway", &n.gateway),
            ] {
                if !v.is_empty() {
                    s.push_str(&format!("  {k} {v}\n"));
                }
            }
            if !self.dns_servers.is_empty() {
                s.push_str(&format!("  dns-nameservers {}\n", self.dns_servers));
            }
            if !self.dns_search.is_empty() {
                s.push_str(&format!("  dns-search {}\n", self.dns_search));
            }
        }
        s
    }

    /// OpenStack's network_data.json (links, networks, dns services), as oVirt's
    /// VmInitToOpenStackMetadataAdapter makes it; None when it would be empty.
    fn network_data(&self) -> Result<Option<Value>, String> {
        let mut links = Vec::new();
        let mut networks = Vec::new();
        let dns: Vec<&str> = self.dns_servers.split_whitespace().collect();
        let search: Vec<&str> = self.dns_search.split_whitespace().collect();
        let with_dns = |mut m: Map<String, Value>| {
            if !dns.is_empty() {
                m.insert("dns_nameservers".into(), json!(dns));
            }
            if !search.is_empty() {
                m.insert("dns_search".into(), json!(search));
            }
            Value::Object(m)
        };
        for n in &self.nic_configurations {
            if !n.on_boot {
                return Err(format!(
                    "initialization NIC {}: 'Start on boot' must be true for the openstack_metadata protocol",
                    n.name
                ));
            }
            let mut link = false;
            let mut v4 = Map::new();
            match n.boot_protocol.as_str() {
                "dhcp" => {
                    v4.insert("type".into(), json!("ipv4_dhcp"));
                }
                "static" => {
                    v4.insert("type".into(), json!("ipv4"));
                    v4.insert("ip_address".into(), json!(n.address));
                    if !n.netmask.is_empty() {
                        v4.insert("netmask".into(), json!(n.netmask));
                    }
                    if !n.gateway.is_empty() {
                        v4.insert("gateway".into(), json!(n.gateway));
                    }
                }
                _ => {}
            }
            if !v4.is_empty() {
                v4.insert("id".into(), json!(n.name));
                v4.insert("link".into(), json!(n.name));
                networks.push(with_dns(v4));
                link = true;
            }
            let mut v6 = Map::new();
            match n.ipv6_boot_protocol.as_str() {
                "dhcp" => {
                    v6.insert("type".into(), json!("ipv6_dhcp"));
                }
                "static" => {
                    v6.insert("type".into(), json!("ipv6"));
                    v6.insert("ip_address".into(), json!(n.ipv6_address));
                    if let Some(p) = n.ipv6_prefix {
                        v6.insert("netmask".into(), json!(p.to_string()));
                    }
                    if !n.ipv6_gateway.is_empty() {
                        v6.insert("gateway".into(), json!(n.ipv6_gateway));
                    }
                }
                _ => {}
            }
            if !v6.is_empty() {
                v6.insert("id".into(), json!(n.name));
                v6.insert("link".into(), json!(n.name));
                networks.push(with_dns(v6));
                link = true;
            }
            if link {
                links.push(json!({"id": n.name, "name": n.name, "type": "vif"}));
            }
        }
        let services: Vec<Value> = dns
            .iter()
            .map(|a| json!({"type": "dns", "address": a}))
            .collect();
        let mut m = Map::new();
        if !links.is_empty() {
            m.insert("links".into(), json!(links));
        }
        if !networks.is_empty() {
            m.insert("networks".into(), json!(networks));
        }
        if !services.is_empty() {
            m.insert("services".into(), json!(services));
        }
        Ok((!m.is_empty()).then_some(Value::Object(m)))
    }

    /// sysprep's payload: the custom script as the answer file when given (as oVirt),
    /// else an Unattend.xml made from the fields. `os_type` picks the file name
    /// (sysprep.inf on XP and 2003, Unattend.xml after) and `q35` the medium.
    pub fn sysprep(&self, os_type: &str, q35: bool) -> Result<Payload, String> {
        self.validate()?;
        let legacy = matches!(os_type, "windows_xp" | "windows_2003" | "windows_2003x64");
        let content = if !self.custom_script.is_empty() {
            self.custom_script.clone()
        } else if legacy {
            return Err(format!(
                "sysprep for {os_type} needs its sysprep.inf as the initialization's custom_script"
            ));
        } else {
            self.unattend(os_type)
        };
        Ok(Payload {
            vol_id: None,
            medium: if q35 { Medium::Cdrom } else { Medium::Floppy },
            files: vec![(
                if legacy {
                    "sysprep.inf"
                } else {
                    "Unattend.xml"
                }
                .to_string(),
                content.into_bytes(),
            )],
        })
    }

    /// An answer file for Windows Vista and later: computer name, organization, product
    /// key, time zone, locales, administrator password, domain join. Every value is XML
    /// text, escaped.
    fn unattend(&self, os_type: &str) -> String {
        let e = crate::vms::esc;
        let arch = if os_type.ends_with("x64")
            || matches!(
                os_type,
                "windows_2012" | "windows_2016" | "windows_2019" | "windows_2022"
            ) {
            "amd64"
        } else {
            "x86"
        };
        let comp = |name: &str, body: String| {
            format!(
                "<component name=\"{name}\" processorArchitecture=\"{arch}\" publicKeyToken=\"31bf3856ad364e35\" language=\"neutral\" versionScope=\"nonSxS\">{body}</component>"
            )
        };
        let leaf = |k: &str, v: &str| {
            if v.is_empty() {
                String::new()
            } else {
                format!("<{k}>{}</{k}>", e(v))
            }
        };
        let computer = if self.host_name.is_empty() {
            "*".to_string()
        } else {
            // Windows' NetBIOS name: the host name's first label, at most 15.
            self.host_name
                .split('.')
                .next()
                .unwrap_or("")
                .chars()
                .take(15)
                .collect()
        };
        let mut spec = leaf("ComputerName", &computer);
        spec.push_str(&leaf("RegisteredOrganization", &self.org_name));
        spec.push_str(&leaf("ProductKey", &self.windows_license_key));
        spec.push_str(&leaf("TimeZone", &self.timezone));
        let mut specialize = comp("Microsoft-Windows-Shell-Setup", spec);
        if !self.domain.is_empty() {
            specialize.push_str(&comp(
                "Microsoft-Windows-UnattendedJoin",
                format!(
                    "<Identification>{}{}</Identification>",
                    leaf("JoinDomain", &self.domain),
                    leaf("MachineObjectOU", &self.active_directory_ou)
                ),
            ));
        }
        let mut intl = leaf("InputLocale", &self.input_locale);
        intl.push_str(&leaf("SystemLocale", &self.system_locale));
        intl.push_str(&leaf("UILanguage", &self.ui_language));
        intl.push_str(&leaf("UserLocale", &self.user_locale));
        let oobe_body = format!(
            "<OOBE><HideEULAPage>true</HideEULAPage><SkipMachineOOBE>true</SkipMachineOOBE><SkipUserOOBE>true</SkipUserOOBE></OOBE>{}",
            if self.root_password.is_empty() {
                String::new()
            } else {
                format!(
                    "<UserAccounts><AdministratorPassword><Value>{}</Value><PlainText>true</PlainText></AdministratorPassword></UserAccounts>",
                    e(&self.root_password)
                )
            }
        );
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<unattend xmlns=\"urn:schemas-microsoft-com:unattend\">\
             <settings pass=\"specialize\">{specialize}</settings>\
             <settings pass=\"oobeSystem\">{}{}</settings></unattend>\n",
            comp("Microsoft-Windows-International-Core", intl),
            comp("Microsoft-Windows-Shell-Setup", oobe_body)
        )
    }
}

impl NicConfig {
    fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if n.is_empty()
            || n.len() > 15
            || !n
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        {
            return Err(format!(
                "initialization NIC name {:?}: letters, digits, '_', '.', '-', at most 15",
                n.chars().take(32).collect::<String>()
            ));
        }
        match self.boot_protocol.as_str() {
            "" | "none" | "dhcp" => {}
            "static" => {
                if self.address.parse::<Ipv4Addr>().is_err() {
                    return Err(format!(
                        "initialization NIC {n}: a static IPv4 configuration needs an IPv4 address"
                    ));
                }
                if !self.netmask.is_empty() && prefix_of_netmask(&self.netmask).is_none() {
                    return Err(format!("initialization NIC {n}: bad netmask"));
                }
                if !self.gateway.is_empty() && self.gateway.parse::<Ipv4Addr>().is_err() {
                    return Err(format!("initialization NIC {n}: bad IPv4 gateway"));
                }
            }
            other => {
                return Err(format!(
                    "initialization NIC {n}: boot_protocol {:?} (none, dhcp or static)",
                    other.chars().take(16).collect::<String>()
                ))
            }
        }
        match self.ipv6_boot_protocol.as_str() {
            "" | "none" | "dhcp" => {}
            "static" => {
                if self.ipv6_address.parse::<Ipv6Addr>().is_err() {
                    return Err(format!(
                        "initialization NIC {n}: a static IPv6 configuration needs an IPv6 address"
                    ));
                }
                if self.ipv6_prefix.is_some_and(|p| p > 128) {
                    return Err(format!("initialization NIC {n}: bad IPv6 prefix"));
                }
                if !self.ipv6_gateway.is_empty() && self.ipv6_gateway.parse::<Ipv6Addr>().is_err()
                {
                    return Err(format!("initialization NIC {n}: bad IPv6 gateway"));
                }
            }
            "autoconf" | "poly_dhcp_autoconf" => {
                return Err(format!(
                    "initialization NIC {n}: 'Stateless address autoconfiguration' (auto conf) is not supported for virtual machines"
                ))
            }
            other => {
                return Err(format!(
                    "initialization NIC {n}: ipv6_boot_protocol {:?} (none, dhcp or static)",
                    other.chars().take(16).collect::<String>()
                ))
            }
        }
        Ok(())
    }
}

/// Writes `v` as block-style YAML. Scalars are JSON (a subset of YAML): strings are
/// always double-quoted and escaped, so no value is read as anything but text.
fn yaml_block(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(m) => {
            for (k, val) in m {
                out.push_str(&pad);
                out.push_str(&yaml_scalar(&Value::String(k.clone())));
                out.push(':');
                match val {
                    Value::Object(c) if !c.is_empty() => {
                        out.push('\n');
                        yaml_block(val, indent + 2, out);
                    }
                    Value::Array(c) if !c.is_empty() => {
                        out.push('\n');
                        yaml_block(val, indent + 2, out);
                    }
                    _ => {
                        out.push(' ');
                        out.push_str(&yaml_scalar(val));
                        out.push('\n');
                    }
                }
            }
        }
        Value::Array(items) => {
            for it in items {
                out.push_str(&pad);
                out.push_str("- ");
                out.push_str(&yaml_scalar(it));
                out.push('\n');
            }
        }
        other => {
            out.push_str(&pad);
            out.push_str(&yaml_scalar(other));
            out.push('\n');
        }
    }
}

fn yaml_scalar(v: &Value) -> String {
    // Nested collections inside sequences are written in flow style (JSON).
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Initialization {
        Initialization {
            host_name: "myvm.example.com".into(),
            user_name: "halyard".into(),
            root_password: "a'b\"c$(reboot)\n".trim_end().into(),
            authorized_ssh_keys: "ssh-ed25519 AAAAC3Nza test$(touch /tmp/pwned);`id`\n".into(),
            timezone: "Europe/Prague".into(),
            dns_servers: "192.168.0.1 192.168.0.2".into(),
            dns_search: "example.com".into(),
            nic_configurations: vec![NicConfig {
                name: "eth0".into(),
                on_boot: true,
                boot_protocol: "static".into(),
                address: "192.168.0.100".into(),
                netmask: "255.255.255.0".into(),
                gateway: "192.168.0.1".into(),
                ..NicConfig::default()
            }],
            custom_script: "write_files:\n  - path: /tmp/x\n    content: hi\n".into(),
            ..Initialization::default()
        }
    }

    #[test]
    fn cloud_init_makes_config_2() {
        let p = sample()
            .cloud_init("11111111-2222-3333-4444-555555555555")
            .expect("test step");
        assert_eq!(p.vol_id.as_deref(), Some("config-2"));
        let names: Vec<&str> = p.files.iter().map(|f| f.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "openstack/latest/meta_data.json",
                "openstack/latest/user_data",
                "openstack/latest/network_data.json"
            ]
        );
        let meta: Value = serde_json::from_slice(&p.files[0].1).expect("test step");
        assert_eq!(meta["hostname"], "myvm.example.com");
        assert_eq!(meta["uuid"], "11111111-2222-3333-4444-555555555555");
        assert_eq!(
            meta["public_keys"][0],
            "ssh-ed25519 AAAAC3Nza test$(touch /tmp/pwned);`id`"
        );
        let user = String::from_utf8(p.files[1].1.clone()).expect("test step");
        assert!(user.starts_with("#cloud-config\n"), "{user}");
        // The password is one double-quoted YAML string, its quotes escaped.
        assert!(
            user.contains("\"password\": \"a'b\\\"c$(reboot)\"\n"),
            "{user}"
        );
        assert!(user.ends_with("write_files:\n  - path: /tmp/x\n    content: hi\n"));
        let net: Value = serde_json::from_slice(&p.files[2].1).expect("test step");
        assert_eq!(net["networks"][0]["ip_address"], "192.168.0.100");
        assert_eq!(net["networks"][0]["dns_nameservers"][1], "192.168.0.2");
        assert_eq!(net["links"][0]["type"], "vif");
        assert_eq!(net["services"][0]["address"], "192.168.0.1");
    }

    #[test]
    fn eni_protocol_writes_interfaces() {
        let mut i = sample();
        i.cloud_init_network_protocol = "eni".into();
        let p = i.cloud_init("x").expect("test step");
        let (_, eni) = p
            .files
            .iter()
            .find(|f| f.0 == "openstack/content/0000")
            .expect("test step");
        let eni = String::from_utf8(eni.clone()).expect("test step");
        assert!(eni.starts_with("auto eth0\niface eth0 inet static\n  address 192.168.0.100\n"));
        assert!(!p.files.iter().any(|f| f.0.ends_with("network_data.json")));
    }

    #[test]
    fn bad_fields_are_refused_by_name() {
        for (f, want) in [
            (
                Box::new(|i: &mut Initialization| i.host_name = "a;reboot".into())
                    as Box<dyn Fn(&mut Initialization)>,
                "host_name",
            ),
            (Box::new(|i| i.user_name = "Root$".into()), "user_name"),
            (
                Box::new(|i| i.root_password = "a\u{0}b".into()),
                "root_password",
            ),
            (
                Box::new(|i| i.authorized_ssh_keys = "hello".into()),
                "authorized_ssh_keys",
            ),
            (Box::new(|i| i.timezone = "$(x)".into()), "timezone"),
            (
                Box::new(|i| i.dns_servers = "1.2.3.4 nope".into()),
                "dns_servers",
            ),
            (Box::new(|i| i.dns_search = "a b;c".into()), "dns_search"),
            (
                Box::new(|i| i.custom_script = "x".repeat(MAX_CUSTOM_SCRIPT + 1)),
                "custom_script",
            ),
            (
                Box::new(|i| i.nic_configurations[0].address = "300.1.1.1".into()),
                "IPv4 address",
            ),
            (
                Box::new(|i| i.nic_configurations[0].name = "eth0; x".into()),
                "NIC name",
            ),
            (
                Box::new(|i| i.nic_configurations[0].ipv6_boot_protocol = "autoconf".into()),
                "auto conf",
            ),
            (
                Box::new(|i| i.cloud_init_network_protocol = "nm".into()),
                "cloud_init_network_protocol",
            ),
        ] {
            let mut i = sample();
            f(&mut i);
            let e = i.validate().expect_err("refused");
            assert!(e.contains(want), "{want}: {e}");
        }
        let mut i = sample();
        i.nic_configurations[0].on_boot = false;
        assert!(i
            .cloud_init("x")
            .expect_err("refused")
            .contains("Start on boot"));
    }

    #[test]
    fn sysprep_escapes_and_picks_its_medium() {
        let mut i = sample();
        i.custom_script.clear();
        i.org_name = "A & B <Corp>".into();
        let p = i.sysprep("windows_10x64", false).expect("test step");
        assert_eq!(p.medium, Medium::Floppy);
        assert_eq!(p.files[0].0, "Unattend.xml");
        let x = String::from_utf8(p.files[0].1.clone()).expect("test step");
        assert!(x.contains("<ComputerName>myvm</ComputerName>"), "{x}");
        assert!(x.contains("A &amp; B &lt;Corp&gt;"), "{x}");
        assert!(x.contains("processorArchitecture=\"amd64\""));
        assert!(x.contains("a&apos;b&quot;c$(reboot)"), "{x}");
        assert_eq!(
            i.sysprep("windows_10x64", true).expect("test step").medium,
            Medium::Cdrom
        );
        assert!(i.sysprep("windows_xp", false).is_err());
        i.custom_script = "<unattend/>".into();
        let p = i.sysprep("windows_7x64", false).expect("test step");
        assert_eq!(p.files[0].1, b"<unattend/>");
    }

    #[test]
    fn netmasks() {
        assert_eq!(prefix_of_netmask("255.255.255.0"), Some(24));
        assert_eq!(prefix_of_netmask("24"), Some(24));
        assert_eq!(prefix_of_netmask("255.0.255.0"), None);
        assert_eq!(prefix_of_netmask("33"), None);
        assert_eq!(prefix_of_netmask("0.0.0.0"), Some(0));
    }
}
