//! Autoscaled pools (issue 17).
//!
//! `autoscale-latency`: from a task no node can run to its start on a new
//! machine (an agent container made by the `docker` provisioner on the
//! local engine), one trial at a time, split into decision (task created →
//! machine recorded), provisioning (→ the provider answered), join (→ the
//! agent registered) and start (→ the task's container started). Baseline
//! in the same run, interleaved: a raw create+start of the same agent
//! image on the engine (what provisioning fundamentally costs).
//!
//! `autoscale-day`: a bursty day replayed on the virtual clock through the
//! server's own planner (`shepherd-sim`'s autoscaled pool), against a
//! fixed pool sized for the autoscaled run's peak: machine-hours and queue
//! wait, and an SVG plot of machines and queued tasks over the day.

use crate::cluster::percentile;
use anyhow::{bail, Context, Result};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use serde_json::{json, Value};
use shepherd_sim::autoscale::{bursty_day, simulate_pool, PoolReport, PoolSim};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct LatencyArgs {
    /// Trials, one scale-up from nothing each.
    #[arg(long, default_value_t = 10)]
    trials: usize,
    #[arg(long)]
    shepherd: Option<PathBuf>,
    #[arg(long)]
    json: Option<PathBuf>,
}

const IMAGE: &str = "shepherd:bench";

fn ms(a: &Value, b: &Value) -> Result<f64> {
    let parse = |v: &Value| -> Result<i64> {
        let text = v.as_str().context("a time")?;
        Ok(shepherd_core::Timestamp::parse_rfc3339(text).map_err(anyhow::Error::msg)?.millis())
    };
    Ok((parse(b)? - parse(a)?) as f64)
}

/// A raw create+start of the agent image (printing its version), ms.
async fn raw_start(docker: &bollard::Docker) -> Result<f64> {
    let name = format!("shepherd-bench-raw-{}", ulid::Ulid::new().to_string().to_lowercase());
    let body = bollard::models::ContainerCreateBody {
        image: Some(IMAGE.into()),
        cmd: Some(vec!["--version".into()]),
        host_config: Some(bollard::models::HostConfig { network_mode: Some("host".into()), init: Some(true), ..Default::default() }),
        ..Default::default()
    };
    let started = Instant::now();
    docker.create_container(Some(CreateContainerOptionsBuilder::default().name(&name).build()), body).await?;
    docker.start_container(&name, None).await?;
    let took = started.elapsed().as_secs_f64() * 1000.0;
    docker.remove_container(&name, Some(RemoveContainerOptionsBuilder::default().force(true).build())).await?;
    Ok(took)
}

pub async fn latency(args: LatencyArgs) -> Result<()> {
    let binary = crate::shepherd_binary(args.shepherd)?;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let built = Command::new("bash").arg(format!("{root}/scripts/build-shepherd-image.sh")).arg(&binary).arg(IMAGE).status()?;
    if !built.success() {
        bail!("could not build {IMAGE}");
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("autoscale.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            interval = "100ms"
            [provisioners.engine]
            driver = "docker"
            image = "{IMAGE}"
            agent_args = ["--warm-max", "0"]
            [pools.lat]
            provisioner = "engine"
            max = 1
            cpu_millicores = 1000
            memory_mib = 1024
            idle_time = "1s"
            scale_up_cooldown = "0s"
            "#
        ),
    )?;
    let server = crate::ingest::start_server(
        &binary,
        &dir.path().join("server"),
        &["--no-agent", "--autoscale-config", &config.display().to_string()],
    )?;
    let client = crate::ingest::bench_client();
    let docker = bollard::Docker::connect_with_defaults()?.negotiate_version().await?;
    println!("autoscale latency: {} trials, a task for an empty pool until it starts on a new machine (docker provisioner)", args.trials);
    let mut parts: Vec<[f64; 5]> = Vec::new();
    let mut raw = Vec::new();
    for trial in 0..args.trials {
        raw.push(raw_start(&docker).await?);
        let task = json!({"image": "busybox:latest", "command": ["true"], "pool": "lat", "pull_policy": "never"});
        let created: Value = client.post(format!("{}/v1/tasks", server.1)).json(&task).send().await?.json().await?;
        let id = created["id"].as_str().context("task id")?.to_string();
        let done: Value = client.get(format!("{}/v1/tasks/{id}/wait?timeout_seconds=120", server.1)).send().await?.json().await?;
        if done["state"] != "succeeded" {
            bail!("trial {trial}: task {done}");
        }
        let list: Value = client.get(format!("{}/v1/machines", server.1)).send().await?.json().await?;
        let machine = list["machines"].as_array().and_then(|m| m.first()).cloned().context("no machine")?;
        let p = [
            ms(&done["created_at"], &machine["created_at"])?,
            ms(&machine["created_at"], &machine["provisioned_at"])?,
            ms(&machine["provisioned_at"], &machine["joined_at"])?,
            ms(&machine["joined_at"], &done["started_at"])?,
            ms(&done["created_at"], &done["started_at"])?,
        ];
        println!(
            "  trial {trial}: decision {:5.0} ms, provisioning {:5.0}, join {:5.0}, start {:5.0}: total {:5.0} ms",
            p[0], p[1], p[2], p[3], p[4]
        );
        parts.push(p);
        // Idle past 1 s: drained and destroyed before the next trial.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let list: Value = client.get(format!("{}/v1/machines", server.1)).send().await?.json().await?;
            if list["machines"].as_array().is_none_or(|m| m.is_empty()) {
                break;
            }
            if Instant::now() > deadline {
                bail!("machine not destroyed: {list}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let column = |i: usize| {
        let mut v: Vec<f64> = parts.iter().map(|p| p[i]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        (percentile(&v, 50.0), percentile(&v, 99.0))
    };
    raw.sort_by(|a, b| a.total_cmp(b));
    let names = ["decision", "provisioning", "join", "start", "total"];
    let mut report = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        let (p50, p99) = column(i);
        println!("{name:>13}: p50 {p50:6.0} ms   p99 {p99:6.0} ms");
        report.insert(format!("{name}_ms"), json!({"p50": p50, "p99": p99}));
    }
    let (r50, r99) = (percentile(&raw, 50.0), percentile(&raw, 99.0));
    println!("raw create+start of the agent image: p50 {r50:6.0} ms   p99 {r99:6.0} ms");
    report.insert("raw_create_start_ms".into(), json!({"p50": r50, "p99": r99}));
    report.insert("trials".into(), json!(args.trials));
    if let Some(path) = args.json {
        std::fs::write(&path, serde_json::to_string_pretty(&Value::Object(report))? + "\n")?;
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct DayArgs {
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Steady tasks per hour.
    #[arg(long, default_value_t = 120)]
    trickle: usize,
    /// Bursts in the day, and tasks per burst.
    #[arg(long, default_value_t = 6)]
    bursts: usize,
    #[arg(long, default_value_t = 3000)]
    burst_tasks: usize,
    /// Mean task run time, seconds.
    #[arg(long, default_value_t = 90.0)]
    mean_duration: f64,
    /// Seconds from asking for a machine to its node taking tasks.
    #[arg(long, default_value_t = 60.0)]
    provision_seconds: f64,
    #[arg(long, default_value_t = 300.0)]
    idle_seconds: f64,
    /// The autoscaled pool's max (the fixed pool gets the autoscaled run's peak).
    #[arg(long, default_value_t = 200)]
    max: u32,
    #[arg(long)]
    json: Option<PathBuf>,
    /// An SVG plot of machines and queued tasks over the day.
    #[arg(long)]
    svg: Option<PathBuf>,
}

pub fn day(args: DayArgs) -> Result<()> {
    let workload = bursty_day(args.seed, args.trickle, args.bursts, args.burst_tasks, args.mean_duration);
    let pool = PoolSim {
        machine_cpu: 4000,
        machine_memory: 8192,
        machine_tasks: 32,
        min: 1,
        max: args.max,
        max_creating: args.max,
        provision_seconds: args.provision_seconds,
        idle_seconds: args.idle_seconds,
        interval_seconds: 10.0,
        tick_seconds: 1.0,
    };
    let engine = shepherd_sched::Engine::default();
    let started = Instant::now();
    let auto = simulate_pool(&engine, &workload, &pool, None);
    let fixed = simulate_pool(&engine, &workload, &pool, Some(auto.peak_machines));
    println!(
        "simulated day: {} tasks ({} per hour steady, {} bursts of {}), machines of 4 cores / 8 GiB, provisioning {} s, idle {} s ({:.1} s to simulate)",
        workload.len(),
        args.trickle,
        args.bursts,
        args.burst_tasks,
        args.provision_seconds,
        args.idle_seconds,
        started.elapsed().as_secs_f64()
    );
    println!("| pool | machine-hours | peak machines | machines made | wait mean s | p50 s | p99 s | max s |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in [&auto, &fixed] {
        println!(
            "| {} | {:.1} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.mode,
            r.machine_hours,
            r.peak_machines,
            r.machines_made,
            r.wait_mean_seconds,
            r.wait_p50_seconds,
            r.wait_p99_seconds,
            r.wait_max_seconds
        );
    }
    println!("autoscaled / fixed machine-hours: {:.2}", auto.machine_hours / fixed.machine_hours.max(1e-9));
    if let Some(path) = &args.json {
        let strip = |r: &PoolReport| {
            let mut v = serde_json::to_value(r).unwrap_or_default();
            v.as_object_mut().map(|o| o.remove("samples"));
            v
        };
        std::fs::write(path, serde_json::to_string_pretty(&json!({"autoscaled": strip(&auto), "fixed": strip(&fixed)}))? + "\n")?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, plot(&auto, &fixed))?;
    }
    Ok(())
}

/// Machines (both pools) and queued tasks (autoscaled) over the day.
fn plot(auto: &PoolReport, fixed: &PoolReport) -> String {
    let (w, h, left, top) = (900.0, 360.0, 60.0, 30.0);
    let (pw, ph) = (w - left - 20.0, h - top - 50.0);
    let day = 86_400.0f64.max(auto.samples.last().map_or(0.0, |s| s.at_seconds));
    let peak_machines = f64::from(fixed.peak_machines.max(auto.peak_machines).max(1));
    let peak_queue = auto.samples.iter().map(|s| s.queued).max().unwrap_or(1).max(1) as f64;
    let line = |samples: &[(f64, f64)], max: f64, color: &str| {
        let points: Vec<String> =
            samples.iter().map(|(t, v)| format!("{:.1},{:.1}", left + t / day * pw, top + ph - v / max * ph)).collect();
        format!(r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{}"/>"#, points.join(" "))
    };
    let machines = |r: &PoolReport| r.samples.iter().map(|s| (s.at_seconds, f64::from(s.machines))).collect::<Vec<_>>();
    let queued: Vec<(f64, f64)> = auto.samples.iter().map(|s| (s.at_seconds, s.queued as f64)).collect();
    let mut svg = format!(r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#);
    svg.push_str(&format!(r##"<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#ccc"/>"##));
    svg.push_str(&format!(
        r#"<text x="{left}" y="18">Machines over a simulated day: autoscaled ({:.0} machine-hours) vs fixed ({:.0}); queued tasks (grey, scaled to its peak of {peak_queue:.0})</text>"#,
        auto.machine_hours, fixed.machine_hours
    ));
    for hour in (0..=24).step_by(3) {
        let x = left + f64::from(hour) * 3600.0 / day * pw;
        svg.push_str(&format!(r#"<text x="{x:.0}" y="{:.0}" text-anchor="middle">{hour}h</text>"#, top + ph + 18.0));
    }
    svg.push_str(&format!(r#"<text x="{:.0}" y="{:.0}" text-anchor="end">{peak_machines:.0}</text>"#, left - 6.0, top + 10.0));
    svg.push_str(&format!(r#"<text x="{:.0}" y="{:.0}" text-anchor="end">0</text>"#, left - 6.0, top + ph));
    svg.push_str(&line(&queued, peak_queue, "#bbb"));
    svg.push_str(&line(&machines(fixed), peak_machines, "#d62728"));
    svg.push_str(&line(&machines(auto), peak_machines, "#1f77b4"));
    svg.push_str(&format!(
        r##"<text x="{left}" y="{:.0}" fill="#1f77b4">— autoscaled machines</text><text x="{:.0}" y="{:.0}" fill="#d62728">— fixed pool</text>"##,
        h - 8.0,
        left + 200.0,
        h - 8.0
    ));
    svg.push_str("</svg>\n");
    svg
}
