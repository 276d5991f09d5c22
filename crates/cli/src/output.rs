//! Output for people: aligned tables, relative times, exit codes.

use shepherd_core::{Task, TaskState, Timestamp};

/// Prints rows as columns separated by three spaces, like `docker ps`.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| if i == last { c } else { format!("{c:<width$}", width = widths[i]) })
            .collect();
        println!("{}", text.join("   ").trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// "3 seconds ago", "2 hours ago".
pub fn ago(then: Timestamp) -> String {
    let seconds = (Timestamp::now().millis() - then.millis()).max(0) / 1000;
    match seconds {
        0 => "just now".into(),
        1 => "1 second ago".into(),
        2..=59 => format!("{seconds} seconds ago"),
        60..=3599 => format!("{} minutes ago", seconds / 60),
        3600..=86399 => format!("{} hours ago", seconds / 3600),
        _ => format!("{} days ago", seconds / 86400),
    }
}

/// Shortens text for a table cell.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_string()
    } else {
        format!("{}…", text.chars().take(max - 1).collect::<String>())
    }
}

/// The process exit code that stands for how a task ended, so that
/// `shepherd run --wait` and `shepherd wait` compose in shell scripts:
/// the task's own code when it exited, 124 on timeout (as `timeout(1)`),
/// 130 when cancelled, 125 when it failed without an exit code.
pub fn exit_code_of(task: &Task) -> u8 {
    match (task.state, task.exit_code) {
        (TaskState::Succeeded, _) => 0,
        (TaskState::TimedOut, _) => 124,
        (TaskState::Cancelled, _) => 130,
        (_, Some(code)) => u8::try_from(code.clamp(0, 255)).unwrap_or(1).max(1),
        _ => 125,
    }
}
