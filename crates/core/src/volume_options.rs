//! Which driver options a project's volume may carry: an allow-list per
//! driver, never a deny-list.
//!
//! The `local` driver runs `mount(2)` on the host with whatever `type`,
//! `device` and `o` it is given: an overlay with a host `lowerdir`, a bind,
//! a block device or a relative path all reach the host's files as root. So
//! a `local` volume is one of exactly three things:
//! - no options: a directory the engine makes under its own volume root;
//! - a tmpfs: `type=tmpfs`, `device=tmpfs`, and in `o` only `size`,
//!   `nr_inodes`, `uid`, `gid` and `mode`, each with a plain number;
//! - NFS (`type=nfs` or `nfs4`, `device=:/export/path`), only from a server
//!   whose IP address the admin listed in the project's policy
//!   (`nfs_servers`), named by `addr=` as a literal address (the kernel
//!   connects to exactly that), with a short list of mount flags.
//!
//! Any other driver is a plugin the admin allowed for the project; its
//! options are passed only where the admin named their keys
//! (`volume_options`), since only the admin knows what that plugin does
//! with them.
//!
//! The server checks against the project's policy when a volume is made;
//! the node checks the `local` shapes again before the engine sees them
//! (a volume stored by an older version, or a store the node does not
//! trust), with any literal address for NFS.

use crate::FieldError;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// Where NFS servers are checked against.
#[derive(Debug, Clone, Copy)]
pub enum NfsServers<'a> {
    /// Only these addresses (the project's policy).
    Listed(&'a [IpAddr]),
    /// Any literal address (the node's check: the server checked the policy).
    AnyLiteral,
}

/// What the admin allows beyond the `local` shapes.
#[derive(Debug, Clone, Copy)]
pub struct OptionPolicy<'a> {
    pub nfs_servers: NfsServers<'a>,
    /// Option keys a plugin driver may be given, by driver.
    pub plugin_keys: &'a BTreeMap<String, Vec<String>>,
}

fn refuse(why: impl Into<String>) -> FieldError {
    FieldError::new("options", why.into())
}

/// Checks a volume's driver options against the allow-list of its driver.
pub fn check(driver: &str, options: &BTreeMap<String, String>, policy: OptionPolicy<'_>) -> Result<(), FieldError> {
    if driver == "local" {
        return check_local(options, policy.nfs_servers);
    }
    let allowed = policy.plugin_keys.get(driver).map(Vec::as_slice).unwrap_or_default();
    match options.keys().find(|key| !allowed.contains(key)) {
        None => Ok(()),
        Some(key) => Err(refuse(format!(
            "option `{key}` is not allowed for driver `{driver}` (the admin allows a plugin's options by key: project policy volume_options)"
        ))),
    }
}

/// Checks the options of a `local` volume: none, a tmpfs or NFS.
pub fn check_local(options: &BTreeMap<String, String>, servers: NfsServers<'_>) -> Result<(), FieldError> {
    if options.is_empty() {
        return Ok(());
    }
    if let Some(key) = options.keys().find(|k| !matches!(k.as_str(), "type" | "device" | "o")) {
        return Err(refuse(format!("a local volume takes only `type`, `device` and `o`, not `{key}`")));
    }
    let get = |key: &str| options.get(key).map(String::as_str);
    match get("type") {
        Some("tmpfs") => check_tmpfs(get("device"), get("o").unwrap_or_default()),
        Some("nfs" | "nfs4") => check_nfs(get("device"), get("o").unwrap_or_default(), servers),
        Some(other) => Err(refuse(format!("a local volume is a plain volume, a tmpfs or NFS: type `{other}` is not allowed"))),
        None => Err(refuse("a local volume with options names its type: tmpfs or nfs")),
    }
}

/// Splits `o` into flags, each `name` or `name=value`, refusing empty ones
/// and any given twice.
fn flags(o: &str) -> Result<Vec<(&str, Option<&str>)>, FieldError> {
    let mut seen: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for flag in o.split(',') {
        let (name, value) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        };
        if name.is_empty() {
            return Err(refuse(format!("`o={o}`: an empty mount flag")));
        }
        if seen.contains(&name) {
            return Err(refuse(format!("`o`: `{name}` is given twice")));
        }
        seen.push(name);
        out.push((name, value));
    }
    Ok(out)
}

fn digits(value: &str, max_len: usize) -> bool {
    !value.is_empty() && value.len() <= max_len && value.bytes().all(|b| b.is_ascii_digit())
}

/// A number with an optional `k`, `m` or `g`.
fn sized(value: &str) -> bool {
    let number = value.strip_suffix(['k', 'm', 'g', 'K', 'M', 'G']).unwrap_or(value);
    digits(number, 12)
}

fn check_tmpfs(device: Option<&str>, o: &str) -> Result<(), FieldError> {
    if device != Some("tmpfs") {
        return Err(refuse("a tmpfs volume has `device=tmpfs`"));
    }
    if o.is_empty() {
        return Ok(());
    }
    for (name, value) in flags(o)? {
        let ok = match (name, value) {
            ("size" | "nr_inodes", Some(v)) => sized(v),
            ("uid" | "gid", Some(v)) => digits(v, 10),
            ("mode", Some(v)) => (3..=4).contains(&v.len()) && v.bytes().all(|b| (b'0'..=b'7').contains(&b)),
            _ => false,
        };
        if !ok {
            let given = value.map_or(name.to_string(), |v| format!("{name}={v}"));
            return Err(refuse(format!("tmpfs flag `{given}` is not allowed: use size=N[k|m|g], nr_inodes=N, uid=N, gid=N, mode=OCTAL")));
        }
    }
    Ok(())
}

/// Flags an NFS mount may carry besides `addr`: numbers, versions and
/// the harmless switches.
fn nfs_flag_ok(name: &str, value: Option<&str>) -> bool {
    match (name, value) {
        (
            "ro" | "rw" | "soft" | "hard" | "intr" | "nointr" | "nolock" | "noatime" | "nodiratime" | "noac" | "nosuid" | "nodev"
            | "noexec" | "tcp" | "udp",
            None,
        ) => true,
        ("vers" | "nfsvers", Some(v)) => !v.is_empty() && v.len() <= 4 && v.bytes().all(|b| b.is_ascii_digit() || b == b'.'),
        (
            "timeo" | "retrans" | "rsize" | "wsize" | "actimeo" | "acregmin" | "acregmax" | "acdirmin" | "acdirmax" | "port"
            | "minorversion",
            Some(v),
        ) => digits(v, 9),
        ("proto", Some(v)) => matches!(v, "tcp" | "udp" | "tcp6" | "udp6"),
        ("sec", Some(v)) => v == "sys",
        _ => false,
    }
}

fn check_nfs(device: Option<&str>, o: &str, servers: NfsServers<'_>) -> Result<(), FieldError> {
    // `:/export/path`: the server is `addr`, never a name in the device.
    let path = device.and_then(|d| d.strip_prefix(':')).unwrap_or_default();
    let clean = path.starts_with('/')
        && path.len() <= 1024
        && path.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'))
        && path.split('/').skip(1).all(|part| part != "." && part != "..");
    if !clean {
        return Err(refuse("an NFS volume has `device=:/export/path` (a-z A-Z 0-9 / - _ ., no `..`) and the server in `o=addr=IP`"));
    }
    let mut addr = None;
    for (name, value) in flags(o)? {
        if name == "addr" {
            addr = value;
        } else if !nfs_flag_ok(name, value) {
            let given = value.map_or(name.to_string(), |v| format!("{name}={v}"));
            return Err(refuse(format!("NFS flag `{given}` is not allowed")));
        }
    }
    let Some(addr) = addr else { return Err(refuse("an NFS volume names its server as `o=addr=IP`")) };
    // Only the canonical spelling: what the kernel connects to is what was checked.
    let Ok(ip) = addr.parse::<IpAddr>() else {
        return Err(refuse(format!("NFS `addr={addr}` is not an IP address (names are not allowed: the admin lists servers by address)")));
    };
    if ip.to_string() != addr {
        return Err(refuse(format!("NFS `addr={addr}`: write the address as {ip}")));
    }
    match servers {
        NfsServers::Listed(list) if !list.contains(&ip) => {
            Err(refuse(format!("NFS server {ip} is not one the project may mount (the admin lists them: project policy nfs_servers)")))
        }
        _ if ip.is_unspecified() || ip.is_multicast() => Err(refuse(format!("NFS server {ip} is not a host address"))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const NFS: [IpAddr; 1] = [IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 5))];

    fn policy(keys: &BTreeMap<String, Vec<String>>) -> OptionPolicy<'_> {
        OptionPolicy { nfs_servers: NfsServers::Listed(&NFS), plugin_keys: keys }
    }

    #[test]
    fn local_volumes_are_plain_tmpfs_or_listed_nfs() {
        let none = BTreeMap::new();
        let ok = |pairs: &[(&str, &str)]| check("local", &opts(pairs), policy(&none)).is_ok();
        assert!(ok(&[]));
        assert!(ok(&[("type", "tmpfs"), ("device", "tmpfs")]));
        assert!(ok(&[("type", "tmpfs"), ("device", "tmpfs"), ("o", "size=64m,uid=1000,gid=1000,mode=0750")]));
        assert!(ok(&[("type", "nfs"), ("device", ":/exports/data"), ("o", "addr=10.0.0.5,rw,nfsvers=4.1,soft,timeo=30")]));
        assert!(ok(&[("type", "nfs4"), ("device", ":/"), ("o", "addr=10.0.0.5")]));
    }

    #[test]
    fn every_other_local_shape_is_refused() {
        let none = BTreeMap::new();
        let refused = |pairs: &[(&str, &str)]| {
            let err = check("local", &opts(pairs), policy(&none)).unwrap_err();
            assert_eq!(err.field, "options", "{pairs:?}");
        };
        // The attack: an overlay over host directories.
        refused(&[("type", "overlay"), ("device", "overlay"), ("o", "lowerdir=/etc,upperdir=/etc/cron.d,workdir=/tmp/w")]);
        refused(&[("type", "none"), ("o", "bind"), ("device", "/etc")]);
        refused(&[("o", "bind"), ("device", "/etc")]);
        refused(&[("type", "ext4"), ("device", "../dev/sda")]);
        refused(&[("type", "ext4"), ("device", "/dev/sda1")]);
        refused(&[("type", "TMPFS"), ("device", "tmpfs")]);
        refused(&[("type", "tmpfs "), ("device", "tmpfs")]);
        refused(&[("type", "tmpfs"), ("device", "/etc")]);
        refused(&[("type", "tmpfs"), ("device", "tmpfs"), ("o", "size=64m,bind")]);
        refused(&[("type", "tmpfs"), ("device", "tmpfs"), ("o", "size=64m,size=1g")]);
        refused(&[("type", "tmpfs"), ("device", "tmpfs"), ("o", "mode=0999")]);
        refused(&[("type", "tmpfs"), ("device", "tmpfs"), ("o", "uid=-1")]);
        refused(&[("type", "tmpfs"), ("device", "tmpfs"), ("o", "size=64m,,")]);
        refused(&[("type", "tmpfs"), ("device", "tmpfs"), ("extra", "1")]);
        refused(&[("type", "btrfs"), ("device", "tmpfs")]);
        refused(&[("device", "tmpfs")]);
        refused(&[("type", "cifs"), ("device", "//10.0.0.5/share")]);
        // NFS: only listed servers, by canonical literal address.
        refused(&[("type", "nfs"), ("device", ":/x"), ("o", "addr=10.0.0.6")]);
        refused(&[("type", "nfs"), ("device", ":/x"), ("o", "addr=010.0.0.5")]);
        refused(&[("type", "nfs"), ("device", ":/x"), ("o", "addr=167772165")]);
        refused(&[("type", "nfs"), ("device", ":/x"), ("o", "addr=nfs.example.com")]);
        refused(&[("type", "nfs"), ("device", ":/x")]);
        refused(&[("type", "nfs"), ("device", "10.0.0.5:/x"), ("o", "addr=10.0.0.5")]);
        refused(&[("type", "nfs"), ("device", ":/x/../../etc"), ("o", "addr=10.0.0.5")]);
        refused(&[("type", "nfs"), ("device", ":relative"), ("o", "addr=10.0.0.5")]);
        refused(&[("type", "nfs"), ("device", ":/x"), ("o", "addr=10.0.0.5,addr=127.0.0.1")]);
        refused(&[("type", "nfs"), ("device", ":/x"), ("o", "addr=10.0.0.5,suid")]);
        refused(&[("type", "nfs"), ("device", ":/x"), ("o", "addr=10.0.0.5,sec=krb5")]);
    }

    #[test]
    fn the_node_checks_shapes_with_any_literal_server() {
        let nfs = opts(&[("type", "nfs"), ("device", ":/x"), ("o", "addr=192.168.1.9")]);
        assert!(check_local(&nfs, NfsServers::AnyLiteral).is_ok());
        assert!(check_local(&nfs, NfsServers::Listed(&NFS)).is_err());
        let zero = opts(&[("type", "nfs"), ("device", ":/x"), ("o", "addr=0.0.0.0")]);
        assert!(check_local(&zero, NfsServers::AnyLiteral).is_err());
        let overlay = opts(&[("type", "overlay"), ("device", "overlay"), ("o", "lowerdir=/")]);
        assert!(check_local(&overlay, NfsServers::AnyLiteral).is_err());
    }

    #[test]
    fn plugin_drivers_take_only_the_keys_the_admin_named() {
        let mut keys = BTreeMap::new();
        assert!(check("rexray/ebs", &BTreeMap::new(), policy(&keys)).is_ok());
        assert!(check("rexray/ebs", &opts(&[("volumetype", "gp3")]), policy(&keys)).is_err());
        keys.insert("rexray/ebs".to_string(), vec!["volumetype".to_string()]);
        assert!(check("rexray/ebs", &opts(&[("volumetype", "gp3")]), policy(&keys)).is_ok());
        assert!(check("rexray/ebs", &opts(&[("volumetype", "gp3"), ("iops", "3000")]), policy(&keys)).is_err());
        assert!(check("other", &opts(&[("volumetype", "gp3")]), policy(&keys)).is_err());
    }
}
