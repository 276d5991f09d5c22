//! `shepherd project`, `shepherd token`, `shepherd secret`, `shepherd audit`.

use crate::client::{encode, Client};
use crate::output::print_table;
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};
use shepherd_core::ProjectLimits;
use std::io::Read;
use std::process::ExitCode;

/// Quota flags shared by `project create` and `project limits`.
#[derive(Args)]
pub struct LimitFlags {
    /// Most queued tasks; more are refused (HTTP 429).
    #[arg(long)]
    max_queued: Option<u64>,
    /// Most tasks running at once; the rest wait.
    #[arg(long)]
    max_running: Option<u32>,
    /// Most CPU in use, in millicores.
    #[arg(long)]
    max_cpu: Option<u64>,
    /// Most memory in use, in MiB.
    #[arg(long)]
    max_memory: Option<u64>,
    /// Requests per second per token (at least 1).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    rate_limit: Option<u32>,
    /// Most named volumes.
    #[arg(long)]
    max_volumes: Option<u64>,
    /// Most MiB the project's sized volumes add up to.
    #[arg(long, value_name = "MIB")]
    max_volume_size: Option<u64>,
    /// Most GPUs in use.
    #[arg(long)]
    max_gpus: Option<u64>,
    /// Most code packages stored (default 100).
    #[arg(long)]
    max_packages: Option<u64>,
    /// Most MiB of code packages stored (default 1024).
    #[arg(long, value_name = "MIB")]
    max_package_size: Option<u64>,
    /// Most live codes (default 1000).
    #[arg(long)]
    max_codes: Option<u64>,
    /// Most revisions of one code (default 1000).
    #[arg(long)]
    max_code_revisions: Option<u64>,
    /// Most schedules not cancelled or ended (default 1000).
    #[arg(long)]
    max_schedules: Option<u64>,
}

/// A limit `project limits --clear` can remove.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Limit {
    MaxQueued,
    MaxRunning,
    MaxCpu,
    MaxMemory,
    #[allow(clippy::enum_variant_names)]
    RateLimit,
    MaxVolumes,
    MaxVolumeSize,
    MaxGpus,
    MaxPackages,
    MaxPackageSize,
    MaxCodes,
    MaxCodeRevisions,
    MaxSchedules,
}

impl LimitFlags {
    fn limits(&self) -> ProjectLimits {
        self.over(ProjectLimits::default())
    }

    /// `current` with the limits given here set.
    fn over(&self, current: ProjectLimits) -> ProjectLimits {
        ProjectLimits {
            max_queued: self.max_queued.or(current.max_queued),
            max_running: self.max_running.or(current.max_running),
            max_cpu_millicores: self.max_cpu.or(current.max_cpu_millicores),
            max_memory_mib: self.max_memory.or(current.max_memory_mib),
            requests_per_second: self.rate_limit.or(current.requests_per_second),
            max_volumes: self.max_volumes.or(current.max_volumes),
            max_volume_size_mib: self.max_volume_size.or(current.max_volume_size_mib),
            max_gpus: self.max_gpus.or(current.max_gpus),
            max_packages: self.max_packages.or(current.max_packages),
            max_package_mib: self.max_package_size.or(current.max_package_mib),
            max_codes: self.max_codes.or(current.max_codes),
            max_code_revisions: self.max_code_revisions.or(current.max_code_revisions),
            max_schedules: self.max_schedules.or(current.max_schedules),
        }
    }
}

#[derive(Args)]
pub struct ProjectArgs {
    #[command(subcommand)]
    command: ProjectCommand,
}

#[derive(Subcommand)]
enum ProjectCommand {
    /// Create a project and print its first token (shown once).
    Create {
        name: String,
        #[command(flatten)]
        limits: LimitFlags,
    },
    /// List projects and their limits.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Change a project's limits: those given are set, --clear ones removed, the rest kept.
    Limits {
        name: String,
        #[command(flatten)]
        limits: LimitFlags,
        /// Remove this limit (unlimited again); repeatable.
        #[arg(long, value_enum, value_name = "LIMIT")]
        clear: Vec<Limit>,
    },
    /// Show or change what a project's tasks may use: volume drivers,
    /// egress, devices (flags given replace those fields; the rest is kept).
    Policy {
        name: String,
        /// A volume driver the project may use (repeatable; replaces the
        /// list; without any: `local` only).
        #[arg(long = "volume-driver", value_name = "DRIVER")]
        volume_drivers: Vec<String>,
        /// `allowed`, or `none`: every network of the project is internal
        /// (its tasks reach each other, nothing outside).
        #[arg(long, value_parser = ["allowed", "none"])]
        egress: Option<String>,
        /// A device (as agents name them: `--device /dev/fuse` is `fuse`)
        /// its tasks may ask for (repeatable; replaces the list).
        #[arg(long = "device", value_name = "NAME")]
        devices: Vec<String>,
        /// An NFS server (IP address) its `local` volumes may mount
        /// (repeatable; replaces the list; without any: none).
        #[arg(long = "nfs-server", value_name = "IP")]
        nfs_servers: Vec<String>,
        /// An option key a plugin volume driver may be given, DRIVER=KEY
        /// (repeatable; replaces the lists).
        #[arg(long = "volume-option", value_name = "DRIVER=KEY")]
        volume_options: Vec<String>,
        /// How long its finished tasks are kept after they finish (e.g.
        /// 30d, 12h), or `default` for the cluster's `--task-retention`.
        #[arg(long, value_name = "DURATION|default")]
        retention: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Give a project a named network (or change or remove one): its tasks
    /// join it with `run --network NAME`.
    Network {
        project: String,
        /// The network's name in the project.
        #[arg(default_value = "default")]
        name: String,
        /// Docker network driver: bridge (default), macvlan, ipvlan, overlay or a plugin's.
        #[arg(long)]
        driver: Option<String>,
        /// A driver option, k=v (repeatable).
        #[arg(long = "opt", value_name = "K=V")]
        options: Vec<String>,
        /// No route out: its tasks reach only each other.
        #[arg(long)]
        internal: bool,
        /// Remove the network from the project.
        #[arg(long, conflicts_with_all = ["driver", "options", "internal"])]
        rm: bool,
    },
}

fn print_policy(project: &str, policy: &Value) {
    let list = |key: &str, default: &str| {
        let items: Vec<&str> = policy[key].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        if items.is_empty() {
            default.to_string()
        } else {
            items.join(", ")
        }
    };
    println!("project:        {project}");
    println!("volume drivers: {}", list("volume_drivers", "local"));
    println!("egress:         {}", policy["egress"].as_str().unwrap_or("allowed"));
    println!("devices:        {}", list("devices", "none"));
    println!("nfs servers:    {}", list("nfs_servers", "none"));
    match policy["retention_seconds"].as_u64() {
        Some(seconds) => println!("retention:      {}", humantime::format_duration(std::time::Duration::from_secs(seconds))),
        None => println!("retention:      the cluster's (--task-retention)"),
    }
    for (driver, keys) in policy["volume_options"].as_object().into_iter().flatten() {
        let keys: Vec<&str> = keys.as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        println!("volume options: {driver}: {}", keys.join(", "));
    }
    let networks = policy["networks"].as_object().cloned().unwrap_or_default();
    if networks.is_empty() {
        println!("networks:       none (tasks get `none`, or `bridge`: the project's own)");
    }
    for (name, network) in networks {
        let internal = if network["internal"] == true { ", internal" } else { "" };
        println!("network:        {name} ({}{internal})", network["driver"].as_str().unwrap_or("bridge"));
    }
}

fn limits_text(limits: &Value) -> String {
    let text: Vec<String> = limits.as_object().into_iter().flatten().map(|(k, v)| format!("{k}={v}")).collect();
    if text.is_empty() {
        "unlimited".into()
    } else {
        text.join(" ")
    }
}

pub async fn project(client: &Client, args: ProjectArgs) -> Result<ExitCode> {
    let admin = client.admin();
    match args.command {
        ProjectCommand::Create { name, limits } => {
            let created: Value = admin.post("/v1/projects", &json!({ "name": name, "limits": limits.limits() })).await?;
            println!("project {name} created ({})", limits_text(&created["project"]["limits"]));
            println!("token {} (shown once; keep it safe):", created["token"]["id"].as_str().unwrap_or("?"));
            println!("{}", created["token"]["token"].as_str().unwrap_or_default());
        }
        ProjectCommand::Ls { json } => {
            let list: Value = admin.get("/v1/projects").await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            let rows: Vec<Vec<String>> = list["projects"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|p| vec![p["name"].as_str().unwrap_or_default().to_string(), limits_text(&p["limits"])])
                .collect();
            print_table(&["NAME", "LIMITS"], &rows);
        }
        ProjectCommand::Policy { name, volume_drivers, egress, devices, nfs_servers, volume_options, retention, json } => {
            let path = format!("/v1/projects/{}/policy", encode(&name));
            let mut policy: Value = admin.get(&path).await?;
            let changing = !volume_drivers.is_empty()
                || egress.is_some()
                || !devices.is_empty()
                || !nfs_servers.is_empty()
                || !volume_options.is_empty()
                || retention.is_some();
            match retention.as_deref() {
                None => {}
                Some("default") => {
                    if let Some(map) = policy.as_object_mut() {
                        map.remove("retention_seconds");
                    }
                }
                Some(text) => {
                    let keep = humantime::parse_duration(text)
                        .map_err(|e| anyhow::anyhow!("--retention {text}: {e} (use 30d, 12h, or default)"))?;
                    if keep.as_secs() == 0 {
                        bail!("--retention {text}: must be at least 1s (or `default`)");
                    }
                    policy["retention_seconds"] = json!(keep.as_secs());
                }
            }
            if !nfs_servers.is_empty() {
                policy["nfs_servers"] = json!(nfs_servers);
            }
            if !volume_options.is_empty() {
                let mut by_driver: std::collections::BTreeMap<String, Vec<String>> = Default::default();
                for option in volume_options {
                    let Some((driver, key)) = option.rsplit_once('=') else { bail!("--volume-option {option}: use DRIVER=KEY") };
                    by_driver.entry(driver.to_string()).or_default().push(key.to_string());
                }
                policy["volume_options"] = json!(by_driver);
            }
            if !volume_drivers.is_empty() {
                policy["volume_drivers"] = json!(volume_drivers);
            }
            if let Some(egress) = egress {
                policy["egress"] = egress.into();
            }
            if !devices.is_empty() {
                policy["devices"] = json!(devices);
            }
            if changing {
                policy = admin.send(reqwest::Method::PUT, &path, &policy).await?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&policy)?);
            } else {
                print_policy(&name, &policy);
            }
        }
        ProjectCommand::Network { project, name, driver, options, internal, rm } => {
            let path = format!("/v1/projects/{}/policy", encode(&project));
            let mut policy: Value = admin.get(&path).await?;
            if !policy["networks"].is_object() {
                policy["networks"] = json!({});
            }
            if rm {
                if policy["networks"].as_object_mut().and_then(|n| n.remove(&name)).is_none() {
                    bail!("project {project} has no network {name}");
                }
            } else {
                let mut opts = serde_json::Map::new();
                for option in options {
                    let Some((k, v)) = option.split_once('=') else { bail!("--opt {option}: use KEY=VALUE") };
                    opts.insert(k.to_string(), v.into());
                }
                policy["networks"][&name] =
                    json!({ "driver": driver.unwrap_or_else(|| "bridge".into()), "options": opts, "internal": internal });
            }
            let policy: Value = admin.send(reqwest::Method::PUT, &path, &policy).await?;
            if rm {
                println!("network {name} removed from project {project}");
            } else {
                println!("network {name} set for project {project}");
            }
            print_policy(&project, &policy);
        }
        ProjectCommand::Limits { name, limits, clear } => {
            let path = format!("/v1/projects/{}", encode(&name));
            let current: Value = admin.get(&path).await?;
            let current: ProjectLimits = serde_json::from_value(current["limits"].clone()).context("bad project from server")?;
            let mut new = limits.over(current);
            for limit in clear {
                match limit {
                    Limit::MaxQueued => new.max_queued = None,
                    Limit::MaxRunning => new.max_running = None,
                    Limit::MaxCpu => new.max_cpu_millicores = None,
                    Limit::MaxMemory => new.max_memory_mib = None,
                    Limit::RateLimit => new.requests_per_second = None,
                    Limit::MaxVolumes => new.max_volumes = None,
                    Limit::MaxVolumeSize => new.max_volume_size_mib = None,
                    Limit::MaxGpus => new.max_gpus = None,
                    Limit::MaxPackages => new.max_packages = None,
                    Limit::MaxPackageSize => new.max_package_mib = None,
                    Limit::MaxCodes => new.max_codes = None,
                    Limit::MaxCodeRevisions => new.max_code_revisions = None,
                    Limit::MaxSchedules => new.max_schedules = None,
                }
            }
            let updated: Value = admin.send(reqwest::Method::PATCH, &path, &json!({ "limits": new })).await?;
            println!("project {name}: {}", limits_text(&updated["limits"]));
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct TokenArgs {
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Make another token for a project (printed once).
    Create {
        project: String,
        /// What the token is for.
        #[arg(long)]
        name: Option<String>,
    },
    /// List a project's tokens (never the tokens themselves).
    Ls { project: String },
    /// Revoke a token: it stops working at once.
    Revoke { project: String, id: String },
}

pub async fn token(client: &Client, args: TokenArgs) -> Result<ExitCode> {
    let admin = client.admin();
    match args.command {
        TokenCommand::Create { project, name } => {
            let created: Value = admin.post(&format!("/v1/projects/{}/tokens", encode(&project)), &json!({ "name": name })).await?;
            println!("token {} for project {project} (shown once; keep it safe):", created["id"].as_str().unwrap_or("?"));
            println!("{}", created["token"].as_str().unwrap_or_default());
        }
        TokenCommand::Ls { project } => {
            let list: Value = admin.get(&format!("/v1/projects/{}/tokens", encode(&project))).await?;
            let rows: Vec<Vec<String>> = list["tokens"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let field = |k: &str| t[k].as_str().unwrap_or("-").to_string();
                    vec![field("id"), field("name"), field("created_at"), field("revoked_at")]
                })
                .collect();
            print_table(&["ID", "NAME", "CREATED", "REVOKED"], &rows);
        }
        TokenCommand::Revoke { project, id } => {
            admin
                .send_empty::<()>(reqwest::Method::DELETE, &format!("/v1/projects/{}/tokens/{}", encode(&project), encode(&id)), None)
                .await?;
            println!("token {id} revoked");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct SecretArgs {
    /// The project (default: the token's own, when it sees exactly one).
    #[arg(long, global = true)]
    project: Option<String>,
    #[command(subcommand)]
    command: SecretCommand,
}

#[derive(Subcommand)]
enum SecretCommand {
    /// Set a secret from --value, --from-file, or standard input.
    Set {
        name: String,
        /// The value (visible in your shell history: prefer --from-file or stdin).
        #[arg(long, conflicts_with = "from_file")]
        value: Option<String>,
        /// Read the value from a file (`-`: standard input).
        #[arg(long, value_name = "FILE|-")]
        from_file: Option<String>,
    },
    /// List a project's secrets (names only).
    Ls,
    /// Delete a secret.
    Rm { name: String },
}

/// The project a command is about: the flag, or the only one the token sees.
pub(crate) async fn which_project(client: &Client, flag: Option<String>) -> Result<String> {
    if let Some(project) = flag {
        return Ok(project);
    }
    let list: Value = client.get("/v1/projects").await?;
    let names: Vec<&str> = list["projects"].as_array().into_iter().flatten().filter_map(|p| p["name"].as_str()).collect();
    match names.as_slice() {
        [only] => Ok(only.to_string()),
        [] => bail!("this token sees no project; name one with --project"),
        _ => bail!("this token sees several projects ({}); name one with --project", names.join(", ")),
    }
}

pub async fn secret(client: &Client, args: SecretArgs) -> Result<ExitCode> {
    let project = which_project(client, args.project).await?;
    let base = format!("/v1/projects/{}/secrets", encode(&project));
    match args.command {
        SecretCommand::Set { name, value, from_file } => {
            let value = match (value, from_file.as_deref()) {
                (Some(value), _) => value,
                (None, Some("-")) | (None, None) => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text).context("reading the secret from standard input")?;
                    text
                }
                (None, Some(path)) => std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?,
            };
            client.send_empty(reqwest::Method::PUT, &format!("{base}/{}", encode(&name)), Some(&json!({ "value": value }))).await?;
            println!("secret {name} set in project {project}");
        }
        SecretCommand::Ls => {
            let list: Value = client.get(&base).await?;
            let rows: Vec<Vec<String>> = list["secrets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| vec![s["name"].as_str().unwrap_or_default().to_string(), s["updated_at"].as_str().unwrap_or("-").to_string()])
                .collect();
            print_table(&["NAME", "UPDATED"], &rows);
        }
        SecretCommand::Rm { name } => {
            client.send_empty::<()>(reqwest::Method::DELETE, &format!("{base}/{}", encode(&name)), None).await?;
            println!("secret {name} deleted from project {project}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args)]
pub struct AuditArgs {
    /// Only this project (a project token always sees its own only).
    #[arg(long)]
    project: Option<String>,
    /// How many entries, newest first.
    #[arg(long, default_value_t = 50)]
    limit: u32,
    #[arg(long)]
    json: bool,
}

pub async fn audit(client: &Client, args: AuditArgs) -> Result<ExitCode> {
    let mut path = format!("/v1/audit?limit={}", args.limit);
    if let Some(project) = &args.project {
        path.push_str(&format!("&project={}", encode(project)));
    }
    let list: Value = client.admin().get(&path).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or("-").to_string();
            vec![field("at"), field("actor"), field("project"), field("action"), field("target"), field("detail")]
        })
        .collect();
    print_table(&["AT", "ACTOR", "PROJECT", "ACTION", "TARGET", "DETAIL"], &rows);
    Ok(ExitCode::SUCCESS)
}
