//! The Manager's directory: the users and groups that the API's `/users` and `/groups`
//! add from, and that log in (oVirt's aaa-jdbc role: `ovirt-aaa-jdbc-tool`).
//!
//! A directory holds profiles (oVirt's login profiles). `internal` always exists; its
//! authorization domain is `internal-authz`, and another profile `P` is shown as the
//! domain `P-authz`. A user logs in as `principal@profile`; the API names it
//! `principal@profile-authz`. Entries are written by `halyard-manager directory …`
//! into the Manager's database, and the running Manager reads them when it looks a
//! principal up ([`refresh`]), so no restart is needed.
//!
//! Who may log in: finer permissions are not enforced yet, so a session can do
//! everything. Until they are, only a user holding the `SuperUser` role on the
//! system (directly, or through a group it is a member of) may log in; any other
//! directory user is refused at login ([`may_log_in`]).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::api::access::SUPER_USER_ROLE;
use crate::db::Db;
use crate::model::Inventory;
use crate::state::{hash_password, User};

/// The profile that always exists.
pub const INTERNAL_PROFILE: &str = "internal";
/// Longest principal, group or profile name.
pub const MAX_NAME: usize = 64;
/// Most members of one group.
pub const MAX_MEMBERS: usize = 10_000;
/// Shortest password.
pub const MIN_PASSWORD: usize = 8;

#[derive(Debug, Error)]
pub enum DirectoryError {
    #[error("{0:?} is not a valid name: 1 to {MAX_NAME} of A-Z a-z 0-9 . _ -")]
    BadName(String),
    #[error("{0:?} must be NAME@PROFILE")]
    NotQualified(String),
    #[error("profile {0:?} does not exist (add it with `directory profile add`)")]
    NoProfile(String),
    #[error("{0} {1:?} exists")]
    Exists(&'static str, String),
    #[error("{0} {1:?} does not exist")]
    Missing(&'static str, String),
    #[error("the password must have at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("a group has at most {MAX_MEMBERS} members")]
    TooManyMembers,
    #[error("admin@internal is the Manager's administrator and cannot be removed")]
    Admin,
    #[error("database: {0}")]
    Db(String),
}

type Result<T> = std::result::Result<T, DirectoryError>;

fn db<E: std::fmt::Display>(e: E) -> DirectoryError {
    DirectoryError::Db(e.to_string())
}

/// A profile other than `internal` (database kind `profile`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    pub name: String,
}

/// A group (database kind `group`, key `name@profile`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Group {
    pub name: String,
    pub id: String,
    /// Its members' `principal@profile`.
    #[serde(default)]
    pub members: Vec<String>,
}

/// What the Manager knows of its directory (read with [`load`]).
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Every profile, `internal` first.
    pub profiles: Vec<String>,
    pub users: Vec<User>,
    pub groups: Vec<Group>,
}

/// The authorization domain of a profile, as the API names it.
pub fn authz(profile: &str) -> String {
    format!("{profile}-authz")
}

/// The profile of an authorization domain or profile name.
pub fn profile_of(domain: &str) -> &str {
    match domain {
        "" => INTERNAL_PROFILE,
        d => d.strip_suffix("-authz").unwrap_or(d),
    }
}

/// A domain's id as oVirt's API shows it: the hex of its name.
pub fn domain_id(authz: &str) -> String {
    authz.bytes().map(|b| format!("{b:02X}")).collect()
}

fn check_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= MAX_NAME
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(DirectoryError::BadName(n.to_string()))
    }
}

/// Splits and checks `name@profile`.
pub fn qualified(full: &str) -> Result<(&str, &str)> {
    let (n, p) = full
        .rsplit_once('@')
        .ok_or_else(|| DirectoryError::NotQualified(full.to_string()))?;
    check_name(n)?;
    check_name(p)?;
    Ok((n, p))
}

impl Directory {
    /// The user `principal` of a profile or domain.
    pub fn user(&self, principal: &str, domain: &str) -> Option<&User> {
        let key = format!("{principal}@{}", profile_of(domain));
        self.users.iter().find(|u| u.name == key)
    }

    pub fn group(&self, name: &str, domain: &str) -> Option<&Group> {
        let key = format!("{name}@{}", profile_of(domain));
        self.groups.iter().find(|g| g.name == key)
    }

    pub fn has_profile(&self, p: &str) -> bool {
        self.profiles.iter().any(|x| x == p)
    }
}

/// Reads the directory from the database.
pub async fn load(db: &Db) -> Result<Directory> {
    let mut profiles = vec![INTERNAL_PROFILE.to_string()];
    let mut more: Vec<Profile> = db.all("profile").await.map_err(self::db)?;
    more.sort_by(|a, b| a.name.cmp(&b.name));
    profiles.extend(more.into_iter().map(|p| p.name));
    let mut users: Vec<User> = db.all("user").await.map_err(self::db)?;
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let mut groups: Vec<Group> = db.all("group").await.map_err(self::db)?;
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Directory {
        profiles,
        users,
        groups,
    })
}

/// Reads the directory again and keeps it in the inventory; each profile's domain
/// becomes a predefined `/domains` entry (a domain cannot be removed through the API).
pub async fn refresh(m: &crate::state::Manager) -> anyhow::Result<()> {
    let dir = load(&m.db).await?;
    for p in &dir.profiles {
        let name = authz(p);
        let id = domain_id(&name);
        let rec = {
            let inv = m.read();
            if inv.records.contains_key(&id) {
                continue;
            }
            crate::api::records::builtin(
                &inv,
                "Domain",
                &id,
                &format!("<domain><name>{name}</name></domain>"),
            )
        };
        match rec {
            Some(r) => m.insert(&r).await?,
            None => anyhow::bail!("the domain {name} does not fit the model"),
        }
    }
    m.write().directory = std::sync::Arc::new(dir);
    Ok(())
}

/// `directory profile add NAME`.
pub async fn add_profile(db: &Db, name: &str) -> Result<()> {
    check_name(name)?;
    let dir = load(db).await?;
    if dir.has_profile(name) {
        return Err(DirectoryError::Exists("profile", name.to_string()));
    }
    db.put("profile", name, &Profile { name: name.into() })
        .await
        .map_err(self::db)
}

/// `directory user add NAME@PROFILE [--password-file F]`. A user without a password
/// cannot log in.
pub async fn add_user(db: &Db, full: &str, password: Option<&str>) -> Result<User> {
    let (_, p) = qualified(full)?;
    let dir = load(db).await?;
    if !dir.has_profile(p) {
        return Err(DirectoryError::NoProfile(p.to_string()));
    }
    if dir.users.iter().any(|u| u.name == full) {
        return Err(DirectoryError::Exists("user", full.to_string()));
    }
    let hash = match password {
        Some(pw) => hashed(pw)?,
        None => String::new(),
    };
    let u = User {
        name: full.to_string(),
        hash,
        id: uuid::Uuid::new_v4().to_string(),
    };
    db.put("user", full, &u).await.map_err(self::db)?;
    Ok(u)
}

fn hashed(pw: &str) -> Result<String> {
    if pw.chars().count() < MIN_PASSWORD {
        return Err(DirectoryError::ShortPassword);
    }
    hash_password(pw).map_err(self::db)
}

/// `directory user password NAME@PROFILE --password-file F`.
pub async fn set_password(db: &Db, full: &str, password: &str) -> Result<()> {
    let mut u: User = db
        .get("user", full)
        .await
        .map_err(self::db)?
        .ok_or_else(|| DirectoryError::Missing("user", full.to_string()))?;
    u.hash = hashed(password)?;
    db.put("user", full, &u).await.map_err(self::db)
}

/// `directory user remove NAME@PROFILE` (also out of every group).
pub async fn remove_user(db: &Db, full: &str) -> Result<()> {
    if full == "admin@internal" {
        return Err(DirectoryError::Admin);
    }
    let dir = load(db).await?;
    if !dir.users.iter().any(|u| u.name == full) {
        return Err(DirectoryError::Missing("user", full.to_string()));
    }
    for mut g in dir.groups {
        if g.members.iter().any(|m| m == full) {
            g.members.retain(|m| m != full);
            db.put("group", &g.name, &g).await.map_err(self::db)?;
        }
    }
    db.delete("user", full).await.map_err(self::db)
}

/// `directory group add NAME@PROFILE`.
pub async fn add_group(db: &Db, full: &str) -> Result<Group> {
    let (_, p) = qualified(full)?;
    let dir = load(db).await?;
    if !dir.has_profile(p) {
        return Err(DirectoryError::NoProfile(p.to_string()));
    }
    if dir.groups.iter().any(|g| g.name == full) {
        return Err(DirectoryError::Exists("group", full.to_string()));
    }
    let g = Group {
        name: full.to_string(),
        id: uuid::Uuid::new_v4().to_string(),
        members: Vec::new(),
    };
    db.put("group", full, &g).await.map_err(self::db)?;
    Ok(g)
}

/// `directory group remove NAME@PROFILE`.
pub async fn remove_group(db: &Db, full: &str) -> Result<()> {
    if db
        .get::<Group>("group", full)
        .await
        .map_err(self::db)?
        .is_none()
    {
        return Err(DirectoryError::Missing("group", full.to_string()));
    }
    db.delete("group", full).await.map_err(self::db)
}

/// `directory group member add|remove GROUP USER` (both `name@profile`).
pub async fn set_member(db: &Db, group: &str, user: &str, member: bool) -> Result<()> {
    let mut g: Group = db
        .get("group", group)
        .await
        .map_err(self::db)?
        .ok_or_else(|| DirectoryError::Missing("group", group.to_string()))?;
    if db
        .get::<User>("user", user)
        .await
        .map_err(self::db)?
        .is_none()
    {
        return Err(DirectoryError::Missing("user", user.to_string()));
    }
    let has = g.members.iter().any(|m| m == user);
    match (member, has) {
        (true, false) => {
            if g.members.len() >= MAX_MEMBERS {
                return Err(DirectoryError::TooManyMembers);
            }
            g.members.push(user.to_string());
        }
        (false, true) => g.members.retain(|m| m != user),
        _ => return Ok(()),
    }
    db.put("group", group, &g).await.map_err(self::db)
}

/// Whether the directory user `login` (`principal@profile`) may log in: it holds
/// `SuperUser` on the system, directly or through a group (see the module's header).
pub fn may_log_in(inv: &Inventory, login: &str) -> bool {
    let Ok((principal, profile)) = qualified(login) else {
        return false;
    };
    let user_name = format!("{principal}@{}", authz(profile));
    let Some(user) = inv
        .records_of("User")
        .find(|r| r.text("user_name") == Some(user_name.as_str()))
    else {
        return false;
    };
    let groups: Vec<&str> = inv
        .records_of("Group")
        .filter(|g| {
            let domain = g
                .link("domain")
                .and_then(|d| inv.records.get(d))
                .and_then(|d| d.text("name"))
                .unwrap_or("");
            inv.directory
                .group(g.text("name").unwrap_or(""), domain)
                .map(|dg| dg.members.iter().any(|m| m == login))
                .unwrap_or(false)
        })
        .map(|g| g.id.as_str())
        .collect();
    inv.records_of("Permission").any(|p| {
        let system = crate::api::access::OBJECTS
            .iter()
            .all(|o| p.doc.get(o).is_none());
        let whom = p.link("user") == Some(user.id.as_str())
            || p.link("group").map(|g| groups.contains(&g)) == Some(true);
        system && whom && p.link("role") == Some(SUPER_USER_ROLE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(qualified("myuser@mydomain").is_ok());
        for bad in [
            "myuser",
            "@internal",
            "a b@internal",
            "x@",
            "x@y@",
            "é@internal",
        ] {
            assert!(qualified(bad).is_err(), "{bad}");
        }
        assert!(qualified(&format!("{}@internal", "a".repeat(MAX_NAME + 1))).is_err());
        assert_eq!(profile_of("mydomain-authz"), "mydomain");
        assert_eq!(profile_of("internal"), "internal");
        assert_eq!(
            domain_id("internal-authz"),
            crate::api::access::INTERNAL_DOMAIN_ID
        );
    }

    #[tokio::test]
    async fn limits_are_kept() {
        let dir = tempfile::tempdir().expect("tmp");
        let db = Db::open(&format!("sqlite://{}/d.db?mode=rwc", dir.path().display()))
            .await
            .expect("db");
        add_profile(&db, "corp").await.expect("profile");
        assert!(matches!(
            add_profile(&db, "internal").await,
            Err(DirectoryError::Exists(..))
        ));
        assert!(matches!(
            add_user(&db, "a@corp", Some("1234567")).await,
            Err(DirectoryError::ShortPassword)
        ));
        add_user(&db, "a@corp", None).await.expect("user");
        add_user(&db, "b@corp", None).await.expect("user");
        let mut g = add_group(&db, "g@corp").await.expect("group");
        // A full group takes no further member (filled directly: 10,000 calls are slow).
        g.members = (0..MAX_MEMBERS).map(|i| format!("u{i}@corp")).collect();
        db.put("group", &g.name, &g).await.expect("put");
        assert!(matches!(
            set_member(&db, "g@corp", "a@corp", true).await,
            Err(DirectoryError::TooManyMembers)
        ));
        g.members.truncate(1);
        g.members.push("a@corp".into());
        db.put("group", &g.name, &g).await.expect("put");
        // Removing a user takes it out of its groups.
        remove_user(&db, "a@corp").await.expect("remove");
        let d = load(&db).await.expect("load");
        assert_eq!(d.groups[0].members, vec!["u0@corp".to_string()]);
        assert!(d.user("b", "corp-authz").is_some() && d.user("a", "corp").is_none());
        assert!(matches!(
            remove_user(&db, "admin@internal").await,
            Err(DirectoryError::Admin)
        ));
    }
}
