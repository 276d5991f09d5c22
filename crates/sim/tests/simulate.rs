//! The simulator end to end on a generated workload.

use shepherd_sched::Engine;
use shepherd_sim::*;

#[test]
fn profiles_side_by_side_place_everything_and_plot() {
    let workload = generate(&GeneratorConfig { tasks: 600, arrival_seconds: 60.0, mean_duration: 20.0, constrained: 0.2, seed: 1 });
    let config = SimConfig { nodes: 12, node_cpu: 8000, node_memory: 32_768, tick_seconds: 1.0, seed: 1, gpu_nodes: 0, node_gpus: 0 };
    let engine = Engine::default();
    let reports: Vec<ProfileReport> = ["spread", "binpack", "random"].iter().map(|p| simulate(&engine, p, &workload, &config)).collect();
    for r in &reports {
        assert_eq!(r.placed, 600, "{}: {:?}", r.profile, r.unplaced);
        assert!(r.makespan_seconds >= 60.0);
        assert!(r.peak_cpu_utilization <= 1.0 && r.peak_cpu_utilization > 0.3);
        assert_eq!(r.waits.iter().map(|w| w.tasks).sum::<usize>(), 600);
    }
    let table = report::table(&reports);
    assert!(table.contains("| binpack |") && table.contains("queue wait p50"));
    let svg = svg::plot(&reports, "test");
    assert!(svg.starts_with("<svg") && svg.matches("<polyline").count() == 6);
    // Same inputs, same outcome.
    let again = simulate(&engine, "random", &workload, &config);
    assert_eq!(again.placed, reports[2].placed);
    assert_eq!(again.makespan_seconds, reports[2].makespan_seconds);
}

#[test]
fn tasks_that_fit_nowhere_are_reported_with_the_reason() {
    let workload = parse_workload(
        "{\"at\": 0, \"duration\": 5, \"cpu\": 100, \"memory\": 64}\n{\"at\": 1, \"duration\": 5, \"cpu\": 100, \"memory\": 64, \"constraints\": [\"node.labels.region==mars\"]}",
    )
    .unwrap();
    let config = SimConfig { nodes: 3, node_cpu: 1000, node_memory: 1024, tick_seconds: 1.0, seed: 1, gpu_nodes: 0, node_gpus: 0 };
    let r = simulate(&Engine::default(), "spread", &workload, &config);
    assert_eq!(r.placed, 1);
    assert_eq!(
        r.unplaced,
        vec![("no node can ever run this task (0/3 fit even with nothing running): 3 constraint node.labels.region==mars".to_string(), 1)]
    );
}

#[test]
fn gpus_are_a_resource_the_simulated_cluster_runs_out_of() {
    // 8 one-GPU tasks of 10 s; CPU for all at once, but 2 nodes of 2 GPUs:
    // two waves. A 3-GPU task fits no node, and says so.
    let mut lines: Vec<String> =
        (0..8).map(|_| "{\"at\": 0, \"duration\": 10, \"cpu\": 100, \"memory\": 64, \"gpus\": 1}".to_string()).collect();
    lines.push("{\"at\": 0, \"duration\": 10, \"cpu\": 100, \"memory\": 64, \"gpus\": 3}".to_string());
    let workload = parse_workload(&lines.join("\n")).unwrap();
    let config = SimConfig { nodes: 3, node_cpu: 8000, node_memory: 8192, tick_seconds: 1.0, seed: 1, gpu_nodes: 2, node_gpus: 2 };
    for profile in ["spread", "binpack"] {
        let r = simulate(&Engine::default(), profile, &workload, &config);
        assert_eq!(r.placed, 8, "{profile}");
        assert!((20.0..=22.0).contains(&r.makespan_seconds), "{profile}: two waves of four, not one of eight: {}", r.makespan_seconds);
        assert_eq!(r.unplaced.len(), 1);
        assert!(r.unplaced[0].0.contains("too few gpus in all (the task asks 3)"), "{:?}", r.unplaced);
    }
}
