//! `fogmesh store check` output for a person.

use std::fmt::Write;

use fogmesh_store::integrity::{CheckReport, RepairReport};

/// What losing each table's entries costs, so a person can judge a repair.
fn consequence(table: &str) -> &'static str {
    match table {
        "revocations" => "revocations are re-gossiped by peers within 5 minutes of rejoining",
        "telemetry" => "telemetry is relearned from the next publications",
        "peers" => "peers are rediscovered through bootstrap, mDNS and gossip",
        "meta" => "the telemetry sequence restarts from the clock",
        _ => "",
    }
}

pub fn render_check(report: &CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "store {}", report.path.display());
    if let Some(error) = &report.open_error {
        let _ = writeln!(out, "  unreadable: {error}");
        let _ = write!(out, "  verdict     DAMAGED (nothing can be read)");
        return out;
    }
    if let Some(error) = &report.marker_error {
        let _ = writeln!(out, "  marker      {error}");
    }
    let generation = |g: Option<u64>| g.map_or("none".to_owned(), |g| g.to_string());
    let _ = writeln!(
        out,
        "  durable commits  {} recorded, {} present{}",
        generation(report.recorded_generation),
        generation(report.found_generation),
        match report.lost_commits() {
            0 => String::new(),
            n => format!(" ({n} acknowledged commits LOST)"),
        }
    );
    for table in &report.tables {
        let _ = writeln!(
            out,
            "  table {:<12} {} readable{}",
            table.name,
            table.readable,
            match table.unreadable {
                0 => String::new(),
                n => format!(", {n} UNREADABLE"),
            }
        );
    }
    let _ = write!(
        out,
        "  verdict     {}",
        if report.healthy() {
            "healthy"
        } else {
            "DAMAGED"
        }
    );
    out
}

pub fn render_repair(report: &RepairReport) -> String {
    let mut out = render_check(&report.before);
    let _ = writeln!(out, "\nrepaired:");
    for after in &report.after.tables {
        let before = report
            .before
            .tables
            .iter()
            .find(|t| t.name == after.name)
            .map_or(0, |t| t.unreadable);
        let _ = writeln!(
            out,
            "  table {:<12} kept {}, dropped {} unreadable",
            after.name, after.readable, before
        );
    }
    let lost = report.before.lost_commits();
    if lost > 0 || report.before.open_error.is_some() {
        let _ = writeln!(
            out,
            "  lost: {} — writes acknowledged after the last one that survived. What that costs:",
            if lost > 0 {
                format!("{lost} durable commits")
            } else {
                "everything (sled could not open the store)".to_owned()
            }
        );
        for table in ["revocations", "telemetry", "peers", "meta"] {
            let _ = writeln!(out, "    {table}: {}", consequence(table));
        }
    }
    let _ = write!(
        out,
        "  the damaged store was moved to {} (delete it when you no longer need it)",
        report.damaged_copy.display()
    );
    out
}
