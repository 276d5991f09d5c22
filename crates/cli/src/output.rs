//! Output for people: aligned tables, relative times, exit codes, and
//! tenants' text made safe for a terminal.

use shepherd_core::{Task, TaskState, Timestamp};
use unicode_width::UnicodeWidthStr;

/// Text from the API (labels, commands, names, reasons: anything a tenant
/// wrote) with control characters escaped, so that it can never move the
/// cursor, retitle or recolour the reader's terminal.
pub fn safe(text: &str) -> String {
    if !text.chars().any(is_control) {
        return text.to_string();
    }
    text.chars().map(|c| if is_control(c) { c.escape_default().to_string() } else { c.to_string() }).collect()
}

fn is_control(c: char) -> bool {
    c.is_control() || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Prints rows as columns separated by three spaces, like `docker ps`; cells
/// are made safe and aligned by their width on screen (wide characters count twice).
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    print!("{}", table(header, rows));
}

/// The text of [`print_table`].
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows.iter().map(|row| row.iter().map(|cell| safe(cell)).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.width()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.width());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    let pad = widths[i].saturating_sub(c.width());
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect();
        out.push_str(text.join("   ").trim_end());
        out.push('\n');
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row);
    }
    out
}

/// "1 second", "3 seconds".
pub fn plural(count: u64, unit: &str) -> String {
    if count == 1 {
        format!("1 {unit}")
    } else {
        format!("{count} {unit}s")
    }
}

/// "3 seconds ago", "1 hour ago".
pub fn ago(then: Timestamp) -> String {
    let seconds = (Timestamp::now().millis() - then.millis()).max(0) as u64 / 1000;
    match seconds {
        0 => "just now".into(),
        1..=59 => format!("{} ago", plural(seconds, "second")),
        60..=3599 => format!("{} ago", plural(seconds / 60, "minute")),
        3600..=86399 => format!("{} ago", plural(seconds / 3600, "hour")),
        _ => format!("{} ago", plural(seconds / 86400, "day")),
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
///
/// | the task | exit code |
/// |---|---|
/// | succeeded | 0 |
/// | failed with exit code N | N |
/// | killed for memory (OOM) | 137, as Docker (128 + SIGKILL), whatever its own code |
/// | timed out | 124, as `timeout(1)` |
/// | cancelled | 130 |
/// | failed without an exit code (could not start, lost) | 126 |
///
/// The CLI's own failures in these commands (the server unreachable for
/// five minutes, a bad answer) exit 125, as `docker run`'s do.
pub fn exit_code_of(task: &Task) -> u8 {
    match (task.state, task.exit_code) {
        (TaskState::Succeeded, _) => 0,
        (TaskState::TimedOut, _) => 124,
        (TaskState::Cancelled, _) => 130,
        _ if task.reason.as_deref() == Some("oom_killed") => 137,
        (_, Some(code)) => u8::try_from(code.clamp(0, 255)).unwrap_or(1).max(1),
        _ => 126,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_untouched() {
        assert_eq!(safe("plain text, ünïcode 名前"), "plain text, ünïcode 名前");
        assert_eq!(safe("a\u{1b}[2Jb"), "a\\u{1b}[2Jb");
        assert_eq!(safe("line\nbreak\r"), "line\\nbreak\\r");
        assert_eq!(safe("\u{202e}evil"), "\\u{202e}evil");
        assert_eq!(safe("\u{9b}31m"), "\\u{9b}31m");
    }

    #[test]
    fn exit_codes_follow_one_documented_mapping() {
        let mut task = shepherd_core::Task::from_spec(
            "01ARZ3NDEKTSV4RRFFQ69G5FAV".parse().unwrap(),
            shepherd_core::TaskSpec::new("busybox", vec![]),
            0,
            Timestamp(0),
        );
        let mut ended = |state, code: Option<i32>, reason: Option<&str>| {
            task.state = state;
            task.exit_code = code;
            task.reason = reason.map(str::to_string);
            exit_code_of(&task)
        };
        assert_eq!(ended(TaskState::Succeeded, Some(0), None), 0);
        assert_eq!(ended(TaskState::Failed, Some(3), None), 3);
        assert_eq!(ended(TaskState::Failed, Some(0), Some("oom_killed")), 137, "a shell that exits 0 after its child's OOM kill");
        assert_eq!(ended(TaskState::Failed, Some(137), Some("oom_killed")), 137);
        assert_eq!(ended(TaskState::TimedOut, None, None), 124);
        assert_eq!(ended(TaskState::Cancelled, Some(143), None), 130);
        assert_eq!(ended(TaskState::Failed, None, Some("lost")), 126);
    }

    #[test]
    fn tables_align_by_display_width_and_escape_control_characters() {
        let rows = vec![vec!["名前名前".to_string(), "x".to_string()], vec!["ab\u{1b}c".to_string(), "y".to_string()]];
        let text = table(&["NAME", "V"], &rows);
        let lines: Vec<&str> = text.lines().collect();
        // The second column starts at the same screen column on every line.
        let column = |line: &str, cell: &str| line[..line.find(cell).unwrap()].width();
        assert_eq!(column(lines[1], "   x"), column(lines[2], "   y"), "{text}");
        assert!(lines[2].starts_with("ab\\u{1b}c"), "{text}");
    }

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "attempt"), "1 attempt");
        assert_eq!(plural(2, "attempt"), "2 attempts");
        assert_eq!(plural(0, "attempt"), "0 attempts");
    }
}
